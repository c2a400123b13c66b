"""Generation stops as soon as every row of a batch has ended its answer (issue 15, lever b).

Capture answers with greedy ``generate``; a batch whose rows all answer one token must cost the
prefill plus one decode step (the one that yields the end-of-turn token), not
``max_new_tokens`` steps. That needs the model's end-of-sequence ids reach ``generate``.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from priorscope.engine.data import synth
from priorscope.engine.models.registry import load_model


def test_generate_stops_once_every_row_has_ended() -> None:
    adapter = load_model("builtin:organism", device="cpu", dtype="fp32")
    rows = synth.generate(synth.SynthConfig(n=6, seed=4, size=84))
    batch = adapter.encode(rows, [r.image for r in rows])
    eos = adapter.model.generation_config.eos_token_id
    assert eos is not None, "the organism's generation_config must name its end-of-turn id"
    calls: list[int] = []
    head = adapter.model.get_output_embeddings()
    handle = head.register_forward_hook(lambda *_: calls.append(1))
    try:
        texts = adapter.generate(batch, max_new_tokens=16)
    finally:
        handle.remove()
    assert len(texts) == len(rows) and all(texts)
    # Every organism answer is one word: the prefill picks it, one decode step ends the turn.
    assert all(len(adapter.tokenizer(t, add_special_tokens=False).input_ids) == 1 for t in texts)
    assert len(calls) == 2, f"Expected prefill + 1 decode step. Got {len(calls)} lm_head calls."
    with torch.no_grad():
        out = adapter.model.generate(
            **batch, max_new_tokens=16, do_sample=False, pad_token_id=adapter.tokenizer.pad_token_id
        )
    new = out[:, batch["input_ids"].shape[1] :]
    assert new.shape[1] == 2 and (new[:, 1] == eos).all()


# -- capture --answer-from candidates (issue 15, lever b) --------------------------------------
def _capture_counting(root, name, rows, answer_from):
    """Return (store path, lm_head calls) of a capture of ``rows`` (clean, one blur, total)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from capture_support import DEFAULTS

    from priorscope.engine.capture import CaptureConfig, capture

    adapter = load_model("builtin:organism", device="cpu", dtype="fp32")
    calls: list[int] = []
    handle = adapter.model.get_output_embeddings().register_forward_hook(lambda *_: calls.append(1))
    data = synth.write_tsv(rows, root / f"{name}.tsv")
    options = {**DEFAULTS, "ladder": (0.02,), "max_new_tokens": 8, "batch_size": 8}
    cfg = CaptureConfig(
        model="builtin:organism",
        data=str(data),
        out=str(root / f"{name}.zarr"),
        answer_from=answer_from,
        **options,
    )
    try:
        capture(cfg, adapter=adapter)
    finally:
        handle.remove()
    return root / f"{name}.zarr", len(calls)


def _arrays_equal(a, b, skip=()):
    from store_support import store_arrays

    left, right = store_arrays(a), store_arrays(b)
    assert sorted(left) == sorted(right)
    for key, x in left.items():
        if key in skip:
            continue
        y = right[key]
        same = (
            np.array_equal(x.view(f"u{x.itemsize}"), y.view(f"u{y.itemsize}"))
            if x.dtype.kind == "f"
            else np.array_equal(x, y)
        )
        assert same, key


def test_answers_read_at_the_prefill_equal_generated_ones_without_decoding(tmp_path) -> None:
    # Open questions: the organism answers with one vocabulary word, so reading the most likely
    # vocabulary answer at the prefill must give the generated answer, every store array equal.
    rows = synth.generate(synth.SynthConfig(n=24, seed=3, size=84))
    gen, gen_calls = _capture_counting(tmp_path, "gen", rows, "generate")
    cand, cand_calls = _capture_counting(tmp_path, "cand", rows, "candidates")
    _arrays_equal(gen, cand)
    batches = -(-24 // 8)
    assert cand_calls == batches, "one prefill per batch (every condition in one forward)"
    assert gen_calls >= 2 * batches, "generation decodes at least one step"
    from priorscope.engine import open_store

    assert open_store(cand).attrs["config"]["answer_from"] == "candidates"


def test_multiple_choice_answers_are_the_best_letter_or_option_text(tmp_path) -> None:
    from priorscope.engine import open_store

    rows = synth.generate(synth.SynthConfig(n=16, seed=4, size=84, mc=True))
    gen, _ = _capture_counting(tmp_path, "gen", rows, "generate")
    cand, calls = _capture_counting(tmp_path, "cand", rows, "candidates")
    answers = ("outputs/raw", "outputs/answer", "outputs/score", "outputs/extracted")
    _arrays_equal(gen, cand, skip=answers)  # the prefill's states and log-probs either way
    assert calls == 2
    a, b = open_store(gen), open_store(cand)
    generated, read = a.outputs("raw"), b.outputs("raw")
    options = b.examples().column("options")
    # The organism was not trained on multiple choice: it often answers with some other word.
    # Read among the letters and the option texts, the answer is always one of them, and it is
    # the generated one wherever that was one of them (greedy's first token is the argmax).
    alternatives = [set(opts) | set("ABCDEFGH"[: len(opts)]) for opts in options]
    hits = 0
    for row, allowed in enumerate(alternatives):
        assert set(read[row]) <= allowed, (row, read[row])
        for got, want in zip(read[row], generated[row], strict=True):
            if want in allowed:
                assert got == want, (row, got, want)
                hits += 1
    assert hits >= 10, "enough generated answers are options to check against"
    assert b.outputs("extracted").all()


def test_examples_with_unseparable_candidates_are_still_generated(tmp_path) -> None:
    # Two gold answers the word-level tokenizer does not know share its unknown token: those
    # examples cannot be read at the prefill and are generated; the others in the batch are not.
    rows = synth.generate(synth.SynthConfig(n=16, seed=5, size=84))
    odd = {1: "aquamarine", 6: "vermilion"}
    rows = [
        dataclasses.replace(r, answers=(odd[i],)) if i in odd else r for i, r in enumerate(rows)
    ]
    gen, _ = _capture_counting(tmp_path, "gen", rows, "generate")
    cand, calls = _capture_counting(tmp_path, "cand", rows, "candidates")
    _arrays_equal(gen, cand)  # the generated answers are vocabulary words here too
    assert calls > 2, "the batches holding those examples decode"


def test_an_option_text_that_reads_as_another_letter_is_not_an_answer(tmp_path) -> None:
    # Options ("b", "a"): the text of option B is "a", which the scorer reads as letter A; read
    # at the prefill it would be scored as A, so it is not among the answers read. "c" is.
    from priorscope.engine.capture.run import _Job
    from priorscope.engine.data import Example

    adapter = load_model("builtin:organism", device="cpu", dtype="fp32")
    job = _Job.__new__(_Job)
    job.adapter, job.scorer, job.answer_tokens, job.vocabulary = adapter, "priorscope", {}, ()
    ex = Example(id="x", question="q", answers=("A",), options=("b", "a", "c"))
    names = [name for name, _ in job.choices(ex)]
    assert names[:3] == ["A", "B", "C"] and "a" not in names and "b" not in names
    assert "c" in names  # its own letter: C
