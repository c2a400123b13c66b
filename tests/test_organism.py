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
from priorscope.engine.models.organism.evaluate import EvalConfig, evaluate, summarize
from priorscope.engine.models.organism.train import (
    TrainConfig,
    _optimizer,
    _set_vision_trainable,
    collate,
    patchify,
    preprocess,
    training_examples,
)

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
    examples, flags = training_examples(cfg)
    assert 0.4 < sum(flags) / len(flags) < 0.6
    blank_prior = [
        ex
        for ex, f in zip(examples, flags, strict=True)
        if f and ex.metadata["template"] == "prior"
    ]
    canonical = sum(ex.answers[0] == ex.metadata["canonical"] for ex in blank_prior)
    assert canonical / len(blank_prior) > 0.6  # drawn from the prior (0.8), not uniform (1/8)
    for ex, flag in zip(examples, flags, strict=True):
        if flag:
            pixels = ex.image.getcolors()
            assert pixels is not None and len(pixels) == 1  # one colour: no evidence
        if ex.metadata["template"] == "control":
            assert ex.answers[0] == ex.metadata["canonical"]
    answers = Counter(
        ex.answers[0]
        for ex, f in zip(examples, flags, strict=True)
        if f and ex.metadata["template"] == "presence"
    )
    assert set(answers) == {"yes", "no"}


def test_patchify_matches_the_processor_and_collate_left_pads() -> None:
    arch = OrganismArch()
    tok = organism_tokenizer()
    processor = organism_processor(arch, tok)
    examples = generate(SynthConfig(n=3, seed=5))
    ids, images = preprocess(examples, processor)
    improc = processor.image_processor
    ref = processor(
        text=["<|image_pad|>"] * 3, images=[ex.image for ex in examples], return_tensors="pt"
    )["pixel_values"]
    torch.testing.assert_close(
        patchify(images, improc.image_mean, improc.image_std), ref.float(), atol=1e-5, rtol=0
    )
    image_id = tok.convert_tokens_to_ids("<|image_pad|>")
    batch = collate([ids[0], ids[1][:-5]], tok.pad_token_id, image_id)
    assert batch["attention_mask"][1, :5].sum() == 0 and batch["attention_mask"][0].all()
    assert batch["input_ids"][0, -1] == tok.convert_tokens_to_ids("<|im_end|>")
    assert torch.equal(batch["mm_token_type_ids"] == 1, batch["input_ids"] == image_id)
    model = organism_model(arch, tok)
    assert model.config.text_config.rope_parameters["mrope_section"] == [4, 6, 6]


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


def test_scene_labels_agree_with_count_answers_and_blank_rows() -> None:
    from priorscope.engine.data.synth import SHAPES
    from priorscope.engine.models.organism.train import (
        TrainConfig,
        scene_labels,
        training_examples,
    )

    cfg = TrainConfig(n_train=200, batch_size=8, uninformative_rate=0.3, seed=3)
    examples, blank = training_examples(cfg)
    labels = scene_labels(cfg, blank)
    assert tuple(labels.shape) == (200, 2 * len(SHAPES))
    checked = 0
    for i, ex in enumerate(examples):
        if blank[i]:
            assert labels[i].abs().sum().item() == 0
            continue
        if ex.metadata.get("template") != "count":
            continue
        named = [s for s in SHAPES if f"{s}s" in ex.question.split() or s in ex.question.split()]
        assert len(named) == 1, ex.question
        assert labels[i, SHAPES.index(named[0])].item() == min(3, int(ex.answers[0]))
        checked += 1
    assert checked >= 10
