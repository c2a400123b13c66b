"""Generation stops as soon as every row of a batch has ended its answer (issue 15, lever b).

Capture answers with greedy ``generate``; a batch whose rows all answer one token must cost the
prefill plus one decode step (the one that yields the end-of-turn token), not
``max_new_tokens`` steps. That needs the model's end-of-sequence ids reach ``generate``.
"""

from __future__ import annotations

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
