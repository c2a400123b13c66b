"""The shipped model organism and the pieces that train it."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import pytest
import torch

from priorscope.engine.data.synth import SynthConfig, generate
from priorscope.engine.errors import UsageError
from priorscope.engine.models import ORGANISM_DIR, load_model
from priorscope.engine.models.organism.build import (
    OrganismArch,
    organism_model,
    organism_processor,
    organism_tokenizer,
)
from priorscope.engine.training.data import (
    collate,
    patchify,
    preprocess,
    prompt_text,
    row_image,
    token_labels,
    training_rows,
)
from priorscope.engine.training.evaluate import EvalConfig, evaluate, summarize
from priorscope.engine.training.organism import TrainConfig, _optimizer, _set_vision_trainable

CARD = json.loads((ORGANISM_DIR / "metrics.json").read_text())


@pytest.fixture(scope="module")
def organism():  # type: ignore[no-untyped-def]
    return load_model("builtin:organism")


def test_builtin_organism_is_a_small_shipped_qwen2_5_vl(organism) -> None:  # type: ignore[no-untyped-def]
    assert organism.family == "qwen2_5_vl"
    assert type(organism.model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    params = sum(p.numel() for p in organism.model.parameters())
    assert 1_000_000 <= params <= 3_000_000
    weights = ORGANISM_DIR / "model.safetensors"
    assert weights.stat().st_size < 10 * 2**20
    for name in (
        "README.md",
        "metrics.json",
        "training.json",
        "tokenizer.json",
        "processor_config.json",
        "config.json",
    ):
        assert (ORGANISM_DIR / name).is_file(), name


def _binomial_tolerance(p: float, n: int) -> float:
    # 3.5 standard errors of a rate p measured on n rows, plus the card's own sampling error.
    var = max(p * (1 - p), 0.01)
    return 3.5 * (math.sqrt(var / n) + math.sqrt(var / CARD["eval"]["n"]))


def test_organism_answers_held_out_clean_batch_at_card_accuracy(organism) -> None:  # type: ignore[no-untyped-def]
    # A seed neither training (1_000_003+) nor the card's evaluation set uses.
    n = 250
    result = evaluate(organism, EvalConfig(n=n, seed=CARD["eval"]["seed"] + 101))
    card = CARD["overall_clean_acc"]
    assert abs(result["overall_clean_acc"] - card) <= _binomial_tolerance(card, n)
    # The image matters: colour questions are answered far better clean than under total.
    color, card_color = result["per_template"]["color"], CARD["per_template"]["color"]
    assert (
        color["clean_acc"] - color["total_acc"]
        >= (card_color["clean_acc"] - card_color["total_acc"]) / 2
    )
    prior_card = CARD["prior_total_canonical_rate"]
    n_prior = result["per_template"]["prior"]["n"]
    assert abs(result["prior_total_canonical_rate"] - prior_card) <= _binomial_tolerance(
        prior_card, n_prior
    )


def test_organism_generates_single_word_answers(organism) -> None:  # type: ignore[no-untyped-def]
    examples = generate(SynthConfig(n=10, seed=4242))
    batch = organism.encode(examples, [ex.image for ex in examples])
    texts = organism.generate(batch, max_new_tokens=4)
    # Trained to stop after one word: <|im_end|> ends every answer.
    assert all(len(t.split()) == 1 for t in texts), texts
    right = sum(t == ex.answers[0] for t, ex in zip(texts, examples, strict=True))
    assert right >= 5


def test_training_mix_plants_the_prior() -> None:
    cfg = TrainConfig(n_train=600, uninformative_rate=0.5, seed=3)
    rows = training_rows(cfg)
    flags = [bool(r.blank) for r in rows]
    assert 0.4 < sum(flags) / len(flags) < 0.6
    assert {r.blank for r in rows} == {"", "mean", "background"}
    blank_prior = [r for r in rows if r.blank and r.row.template == "prior"]
    canonical = sum(r.answer == r.row.canonical for r in blank_prior)
    assert canonical / len(blank_prior) > 0.6  # drawn from the prior (0.8), not uniform (1/8)
    for r in rows[:80]:
        image = row_image(r, 84)
        assert image.size == (84, 84)
        if r.blank:
            pixels = image.getcolors()
            assert pixels is not None and len(pixels) == 1  # one colour: no evidence
        else:
            assert r.answer == r.row.answer
    assert all(r.answer == r.row.canonical for r in rows if r.row.template == "control")
    answers = Counter(r.answer for r in rows if r.blank and r.row.template == "presence")
    assert set(answers) == {"yes", "no"}


def _preprocessed(seed: int, k: int):  # type: ignore[no-untyped-def]
    """Return (arch, tokenizer, processor, first k training rows, their ids, their images)."""
    arch = OrganismArch()
    tok = organism_tokenizer()
    processor = organism_processor(arch, tok)
    rows = training_rows(TrainConfig(n_train=40, batch_size=8, seed=seed))[:k]
    ids, images = preprocess(rows, processor, arch.image_size)
    return arch, tok, processor, rows, ids, images


def test_patchify_matches_the_processor_and_collate_left_pads() -> None:
    arch, tok, processor, rows, ids, images = _preprocessed(seed=5, k=6)
    assert tuple(images.shape) == (6, arch.image_size, arch.image_size, 3)
    improc = processor.image_processor
    # The processor sees the rendered (and blanked) image at the synth size and resizes it.
    originals = [row_image(r, 112) for r in rows]
    ref = processor(text=["<|image_pad|>"] * 6, images=originals, return_tensors="pt")
    torch.testing.assert_close(
        patchify(images, improc.image_mean, improc.image_std),
        ref["pixel_values"].float(),
        atol=1e-5,
        rtol=0,
    )
    for row, row_ids, image in zip(rows, ids, originals, strict=True):
        prompt = processor(text=[prompt_text(processor, _open(row))], images=[image])
        assert row_ids == [
            *prompt["input_ids"][0],
            tok.convert_tokens_to_ids(row.answer),
            tok.convert_tokens_to_ids("<|im_end|>"),
        ]
    image_id = tok.convert_tokens_to_ids("<|image_pad|>")
    batch = collate([ids[0], ids[1][:-5]], tok.pad_token_id, image_id)
    assert batch["attention_mask"][1, :5].sum() == 0 and batch["attention_mask"][0].all()
    assert batch["input_ids"][0, -1] == tok.convert_tokens_to_ids("<|im_end|>")
    assert torch.equal(batch["mm_token_type_ids"] == 1, batch["input_ids"] == image_id)
    model = organism_model(arch, tok)
    assert model.config.text_config.rope_parameters["mrope_section"] == [4, 6, 6]


def _open(row):  # type: ignore[no-untyped-def]
    from priorscope.engine.data.example import Example

    return Example(id="0", question=row.row.question, answers=(row.answer,))


def test_vision_tower_freeze_schedule() -> None:
    tok = organism_tokenizer()
    model = organism_model(
        OrganismArch(d_model=32, layers=1, ffn=64, vision_width=32, vision_depth=1), tok
    )
    cfg = TrainConfig(vision_freeze_steps=5, vision_lr_scale=0.5)
    opt = _optimizer(model, cfg)
    assert [g["scale"] for g in opt.param_groups] == [1.0, 0.5]
    visual = list(model.model.visual.parameters())
    assert not any(p.requires_grad for p in visual)
    assert all(p.requires_grad for p in model.model.language_model.parameters())
    _set_vision_trainable(model, cfg, 5)
    assert all(p.requires_grad for p in visual)
    frozen = TrainConfig(vision_lr_scale=0.0)
    assert len(_optimizer(model, frozen).param_groups) == 1
    assert not any(p.requires_grad for p in visual)


def test_summarize_rates() -> None:
    examples = generate(SynthConfig(n=50, seed=9))
    gold = [ex.answers[0] for ex in examples]
    canon = [ex.metadata["canonical"] or "red" for ex in examples]
    result = summarize(examples, clean=gold, total=canon)
    assert result["overall_clean_acc"] == 1.0
    assert result["prior_total_canonical_rate"] == 1.0
    assert all(row["clean_acc"] == 1.0 for row in result["per_template"].values())
    assert result["per_template"]["control"]["total_acc"] == 1.0


def test_train_config_validation() -> None:
    with pytest.raises(UsageError, match="uninformative_rate"):
        TrainConfig(uninformative_rate=1.5)
    with pytest.raises(UsageError, match="multiple of 28"):
        OrganismArch(image_size=100)
    with pytest.raises(UsageError, match="binding_layer"):
        TrainConfig(binding_layer=4)
    from priorscope.engine.training.data import build_training_set

    blank = TrainConfig(n_train=8, batch_size=8, uninformative_rate=0.999)
    with pytest.raises(UsageError, match="all with blank images"):
        build_training_set(blank, organism_processor(OrganismArch(), organism_tokenizer()))
    assert Path(ORGANISM_DIR).name == "checkpoint"


def test_qwen2_5_vl_needs_mm_token_type_ids(organism) -> None:  # type: ignore[no-untyped-def]
    # Without mm_token_type_ids Qwen2.5-VL silently uses 1-D positions: different logits.
    examples = generate(SynthConfig(n=4, seed=77))
    batch = organism.encode(examples, [ex.image for ex in examples])
    assert "mm_token_type_ids" in batch
    without = {k: v for k, v in batch.items() if k != "mm_token_type_ids"}
    with torch.no_grad():
        full = organism.model(**batch, use_cache=False).logits[:, -1]
        flat = organism.model(**without, use_cache=False).logits[:, -1]
    assert (full - flat).abs().max() > 1e-3


def test_cli_model_info_and_organism_eval(tmp_path: Path) -> None:
    from priorscope.cli.main import main

    assert main(["model", "info", "builtin:organism"]) == 0
    out = tmp_path / "m.json"
    assert main(["organism", "eval", "--n", "25", "--seed", "5", "--json", str(out)]) == 0
    metrics = json.loads(out.read_text())
    assert metrics["eval"]["n"] == 25 and set(metrics["per_template"]) == {
        "color",
        "count",
        "presence",
        "prior",
        "control",
    }
    assert main(["organism", "eval", "--threads", "0"]) == 2
    assert main(["model", "info", "builtin:nope"]) == 2


def test_token_labels_agree_with_answers_and_blank_rows() -> None:
    from priorscope.engine.data.synth import PALETTE, PRIOR_OBJECTS, SHAPES

    kinds = ["", *SHAPES, *PRIOR_OBJECTS]
    colours = ["", *PALETTE]
    cfg = TrainConfig(n_train=300, batch_size=8, uninformative_rate=0.3, seed=3)
    rows = training_rows(cfg)
    labels = token_labels(rows, 84)
    assert tuple(labels.shape) == (300, 9, 3)
    checked = {"count": 0, "color": 0, "presence": 0, "prior": 0}
    for row, label in zip(rows, labels, strict=True):
        drawn = [kinds[k] for k in label[:, 0].tolist() if k]
        if row.blank:
            assert label.abs().sum().item() == 0
            continue
        # One item per token: the synth grid's 3 x 3 cells are the 84-pixel image's tokens.
        assert len(drawn) == len(row.row.scene.items)
        words = row.row.question.rstrip("?").split()
        template = row.row.template
        if template == "count":
            shape = next(s for s in SHAPES if f"{s}s" in words)
            assert drawn.count(shape) == int(row.answer)
            # Every token showing the shape also carries how many there are.
            mine = [t for t in range(9) if kinds[label[t, 0]] == shape]
            assert all(label[t, 2] == int(row.answer) for t in mine)
        elif template == "presence":
            assert (words[-1] in drawn) == (row.answer == "yes")
        elif template in ("color", "prior"):
            (token,) = [t for t in range(9) if kinds[label[t, 0]] == words[-1]]
            assert colours[label[token, 1]] == row.answer
        else:
            continue
        checked[template] += 1
    assert min(checked.values()) >= 10, checked
    # The token under an item is where the processor puts its 2 x 2 patch block: row-major.
    top_left = next(
        i
        for i, r in enumerate(rows)
        if not r.blank and any(it.cx < 37 and it.cy < 37 for it in r.row.scene.items)
    )
    assert labels[top_left, 0, 0] != 0


def test_noun_index_points_at_the_asked_shape_or_object() -> None:
    from priorscope.engine.training.data import noun_index

    _, tok, _, rows, ids, _ = _preprocessed(seed=11, k=10)
    for row, row_ids in zip(rows, ids, strict=True):
        index = noun_index(row, row_ids, tok)
        if row.row.template == "control":
            assert index == -1
            continue
        word = tok.convert_ids_to_tokens(row_ids[index])
        assert (
            word == row.row.question.rstrip("?").split()[-1 if row.row.template != "count" else 2]
        )


def test_cli_train_saves_a_plain_checkpoint_without_auxiliary_heads(tmp_path: Path) -> None:
    from safetensors import safe_open

    from priorscope.cli.main import main

    out = tmp_path / "ckpt"
    args = ["organism", "train", "--out", str(out), "--steps", "3", "--n-train", "64"]
    assert main([*args, "--batch-size", "8", "--save-every", "2"]) == 0
    training = json.loads((out / "training.json").read_text())
    assert training["config"]["aux_weight"] > 0 and training["config"]["binding_weight"] > 0
    organism_model(OrganismArch(), organism_tokenizer()).save_pretrained(tmp_path / "fresh")

    def keys(folder: Path) -> set[str]:
        with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
            return set(f.keys())

    # Exactly a fresh organism's tensors: the training-only read-out heads are not saved.
    assert keys(out) == keys(tmp_path / "fresh")
    assert (out / "step-2" / "model.safetensors").is_file()
    adapter = load_model(str(out))
    examples = generate(SynthConfig(n=5, seed=1))
    assert (
        len(
            adapter.generate(
                adapter.encode(examples, [e.image for e in examples]), max_new_tokens=2
            )
        )
        == 5
    )
    assert main(["organism", "train", "--out", str(out), "--binding-weight", "-1"]) == 2
