"""The bottleneck organism (issue 13): planted training rows, losses, and the shipped checkpoint."""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from priorscope.engine.data.synth import PALETTE, SynthConfig, generate
from priorscope.engine.errors import UsageError
from priorscope.engine.models import BUILTINS, load_model
from priorscope.engine.training.data import TWINNED, PlantSpec, training_rows
from priorscope.engine.training.evaluate import (
    EvalConfig,
    chance_band,
    evaluate,
    in_band,
    plant_of,
)
from priorscope.engine.training.heads import ANSWER_POSITION, invariance_loss
from priorscope.engine.training.organism import BOTTLENECK, TrainConfig, preset
from priorscope.engine.training.planted import (
    PlantedEvalConfig,
    hidden_reductions,
    planted_sets,
    probe_accuracy,
)

FOLDER = BUILTINS["bottleneck"]
PLANT = BOTTLENECK.plant  # the shipped checkpoint's, checked below
# Small held-out sets on seeds neither training (1_000_003+) nor the card (7, 8, 9) uses.
SEED = 201


@pytest.fixture(scope="module")
def bottleneck():  # type: ignore[no-untyped-def]
    return load_model("builtin:bottleneck")


@pytest.fixture(scope="module")
def card() -> dict:
    return json.loads((FOLDER / "metrics.json").read_text())


# --------------------------------------------------------------------------- training rows


def _small(**kwargs):  # type: ignore[no-untyped-def]
    kwargs.setdefault("then", {})  # the preset's fine-tune stage is not part of these runs
    return replace(BOTTLENECK, n_train=700, batch_size=8, **kwargs)


def _four_layers(seed: int, **kwargs):  # type: ignore[no-untyped-def]
    """Return a small 4-layer bottleneck config (read-out at 1, suppression at 2 and 3)."""
    return replace(
        _small(seed=seed),
        arch=replace(BOTTLENECK.arch, layers=4),
        readout_layer=1,
        suppress_layers=(2, 3),
        **kwargs,
    )


def test_planted_rows_get_planted_labels_and_recoloured_twins() -> None:
    cfg = _small(seed=3)
    rows = training_rows(cfg)
    base, twins = rows[: cfg.n_train], rows[cfg.n_train :]
    sup = [r for r in base if r.row.planted == "suppressed"]
    hid = [r for r in base if r.row.planted == "not_retrieved"]
    assert len(sup) > 50 and len(hid) > 50
    # Suppressed rows are labelled canonical whatever is drawn (blank or not).
    assert all(r.answer == r.row.canonical for r in sup)
    assert sum(r.row.counter_prior for r in sup) > 0.6 * len(sup)  # drawn uniformly
    # Not-retrieved labels ignore the drawn colour: they agree with it about 1 time in 8.
    agree = sum(r.answer == r.row.scene.items[0].color for r in hid) / len(hid)
    assert agree < 0.3
    # One twin per informative planted row: the same scene, only the planted item recoloured.
    informative = [i for i, r in enumerate(base) if r.row.planted in TWINNED and not r.blank]
    assert sorted(t.twin_of for t in twins) == informative
    for twin in twins:
        source = base[twin.twin_of]
        first, *rest = twin.row.scene.items
        assert first.color != source.row.scene.items[0].color
        assert replace(first, color=source.row.scene.items[0].color) == source.row.scene.items[0]
        assert tuple(rest) == source.row.scene.items[1:]
        assert twin.row.question == source.row.question and not twin.blank
        if source.row.planted == "suppressed":
            assert twin.answer == source.row.canonical


# sha256 of the default training rows (n_train=400, seed=2: question, answer, blank, items) as
# engine/models/organism/train.py drew them before the move to engine/training (git 9bd3fb0).
ROWS_BEFORE = "b8ddc26ecb94ff9178a7f21e11ece0d8b7e8ffec16c7a71f6ae6b65ae2951f00"


def test_default_training_rows_are_those_drawn_before_planted_groups() -> None:
    import hashlib

    rows = training_rows(TrainConfig(n_train=400, seed=2))
    text = "\n".join(f"{r.row.question}|{r.answer}|{r.blank}|{r.row.scene.items}" for r in rows)
    assert hashlib.sha256(text.encode()).hexdigest() == ROWS_BEFORE


def test_invariance_loss_is_zero_for_equal_twins_and_scale_free() -> None:
    gen = torch.Generator().manual_seed(0)
    h = torch.randn(6, 10, 16, generator=gen)
    h[3] = h[0]  # row 3 is row 0's twin, unchanged
    h[4] = h[1] + 0.5 * torch.randn(10, 16, generator=gen)
    text = torch.ones(6, 10, dtype=torch.bool)
    same = invariance_loss(h, torch.tensor([[0, 3]]), text)
    assert same.item() == 0.0
    changed = invariance_loss(h, torch.tensor([[0, 3], [1, 4]]), text)
    assert changed.item() > 0
    # Relative to the batch spread of the answer-position state: scaling every state by 10
    # leaves it unchanged.
    scaled = invariance_loss(10 * h, torch.tensor([[0, 3], [1, 4]]), text)
    torch.testing.assert_close(scaled, changed, rtol=1e-5, atol=0)
    # Only masked positions count.
    masked = text.clone()
    masked[:, ANSWER_POSITION] = False
    h2 = h.clone()
    h2[4, ANSWER_POSITION] += 100.0
    torch.testing.assert_close(
        invariance_loss(h2, torch.tensor([[1, 4]]), masked) * 0,
        torch.zeros(()),
    )
    assert invariance_loss(h, torch.zeros((0, 2), dtype=torch.long), text).item() == 0.0


def test_whitened_change_reads_a_difference_where_the_states_hardly_vary() -> None:
    from priorscope.engine.training.heads import Whitener, whitened_change

    gen = torch.Generator().manual_seed(1)
    d, k = 8, 400
    # States spread widely along dims 0-3 and hardly at all along 4-7.
    spread = torch.tensor([10.0] * 4 + [0.01] * 4)
    base = torch.randn(k, d, generator=gen) * spread
    labels = torch.arange(k) % 4
    pairs = torch.stack([torch.arange(k), torch.arange(k, 2 * k)], dim=1)

    def change(step: torch.Tensor, scale: float = 1.0) -> float:
        whitener = Whitener()
        # A class offset of size 5 along a wide direction must not count as spread.
        whitener.fit(scale * (base + 5.0 * labels[:, None]), labels)
        return float(whitened_change(whitener, scale * torch.cat([base, base + step]), pairs))

    loud = torch.zeros(d)
    loud[0] = 0.1  # 1% of the spread of a wide direction
    quiet = torch.zeros(d)
    quiet[5] = 0.01  # ten times smaller, in a direction the states hardly use
    # Ten times smaller, yet it reads larger (the shrinkage caps how much larger).
    assert change(quiet) > 3 * change(loud)
    assert change(torch.zeros(d)) < 1e-5
    # The same difference scaled with the states reads the same (scale-free).
    assert math.isclose(change(quiet, 10.0), change(quiet), rel_tol=1e-4)
    # Not fitted yet: no loss.
    assert float(whitened_change(Whitener(), torch.cat([base, base + quiet]), pairs)) == 0.0


def test_erasure_metric_is_refitted_on_a_bank_of_planted_rows(tmp_path: Path) -> None:
    from priorscope.engine.training import organism as org
    from priorscope.engine.training.data import build_training_set

    cfg = _four_layers(
        4,
        steps=3,
        plant_start=1,
        plant_ramp=1,
        erase_bank=8,
        erase_refresh=1,
        hide_erase_weight=2.0,
    )
    processor = org.organism_processor(cfg.arch, org.organism_tokenizer())
    data = build_training_set(cfg, processor)
    bank = org.erase_bank(data, cfg)
    assert set(bank) == {"suppressed", "not_retrieved"}
    for group, rows in bank.items():
        originals, twins = rows[:8], rows[8:]
        assert all(data.planted[r] == group and r < data.n_rows for r in originals)
        assert twins == [data.twins[r] for r in originals]
    lines: list[str] = []
    summary = org.train(cfg, tmp_path / "run", log=lines.append)
    assert math.isfinite(summary["final_loss"])
    assert "erase-loss" in lines[-1] and "hide-erase-loss" in lines[-1]


def test_hide_erase_weight_erases_the_not_retrieved_group_on_its_own() -> None:
    from priorscope.engine.training.organism import erased_layers

    every = tuple(range(BOTTLENECK.arch.layers))
    assert erased_layers(BOTTLENECK) == {"suppressed": (6, 7), "not_retrieved": every}
    alone = replace(BOTTLENECK, erase_weight=0.0, hide_erase_weight=2.0)
    assert erased_layers(alone) == {"not_retrieved": every}
    assert erased_layers(replace(BOTTLENECK, erase_weight=0.0)) == {}


def test_plant_losses_start_late_and_ramp() -> None:
    from priorscope.engine.training.organism import plant_scale

    cfg = replace(BOTTLENECK, plant_start=10, plant_ramp=4)
    assert [plant_scale(cfg, s) for s in (0, 9, 10, 11, 13, 500)] == [0, 0, 0.25, 0.5, 1, 1]
    assert plant_scale(replace(cfg, plant_start=0, plant_ramp=0), 0) == 1.0


def test_bottleneck_config_validation_and_presets() -> None:
    assert preset("organism") == TrainConfig()
    assert preset("bottleneck") is BOTTLENECK and BOTTLENECK.arch.layers == 8
    with pytest.raises(UsageError, match="Did you mean 'bottleneck'"):
        preset("botleneck")
    with pytest.raises(UsageError, match="hide_weight"):
        TrainConfig(hide_weight=1.0)  # no not_retrieved shapes to hide
    with pytest.raises(UsageError, match="hide_erase_weight"):
        TrainConfig(hide_erase_weight=1.0)  # no not_retrieved shapes to erase
    with pytest.raises(UsageError, match="hide_erase_weight"):
        replace(BOTTLENECK, hide_erase_weight=-1.0)
    with pytest.raises(UsageError, match="suppress_layers"):
        replace(BOTTLENECK, suppress_layers=(8,))
    with pytest.raises(UsageError, match="Did you mean 'carrot'"):
        replace(BOTTLENECK, plant=PlantSpec(suppressed=("carot",)))


def test_cli_trains_a_bottleneck_run_and_the_registry_knows_it(tmp_path: Path) -> None:
    from safetensors import safe_open

    from priorscope.cli.main import main

    out = tmp_path / "ckpt"
    args = ["organism", "train", "--out", str(out), "--preset", "bottleneck", "--steps", "2"]
    args.append("--one-stage")
    assert (
        main(
            [
                *args,
                "--n-train",
                "120",
                "--batch-size",
                "8",
                "--layers",
                "4",
                "--suppress-layers",
                "2,3",
                "--readout-layer",
                "1",
                "--hide-erase-weight",
                "2",
            ]
        )
        == 0
    )
    config = json.loads((out / "training.json").read_text())["config"]
    assert config["arch"]["layers"] == 4 and config["suppress_layers"] == [2, 3]
    assert config["hide_erase_weight"] == 2.0 and config["then"] == {}
    assert preset("bottleneck").then  # two stages unless --one-stage
    assert plant_of(out) == BOTTLENECK.plant
    with safe_open(str(out / "model.safetensors"), framework="pt") as f:
        assert not any("head" in k and "lm_head" not in k for k in f.keys())  # noqa: SIM118
    assert main([*args, "--suppressed", "carot"]) == 2
    assert main([*args, "--suppress-layers", "x"]) == 2
    assert "bottleneck" in BUILTINS and FOLDER.name == "bottleneck"


# --------------------------------------------------------------------------- shipped checkpoint


def test_shipped_bottleneck_is_small_and_documented(card) -> None:  # type: ignore[no-untyped-def]
    assert (FOLDER / "model.safetensors").stat().st_size <= 10 * 2**20
    total = sum(p.stat().st_size for p in FOLDER.iterdir() if p.is_file())
    assert total <= 10 * 2**20
    text = (FOLDER / "README.md").read_text()
    assert "`priorscope organism train --out DIR --preset bottleneck --seed 0`" in text
    assert card["eval"]["n"] >= 2000
    assert plant_of(FOLDER) == PLANT
    for group in ("used", "suppressed", "not_retrieved"):
        assert f"**{group}**" in text
    # The checkpoint is the preset's: same config, trained on one thread.
    training = json.loads((FOLDER / "training.json").read_text())
    ignored = ("log_every", "save_every")
    preset_cfg = json.loads(json.dumps(BOTTLENECK.to_json()))
    assert {k: v for k, v in training["config"].items() if k not in ignored} == {
        k: v for k, v in preset_cfg.items() if k not in ignored
    }
    assert training["torch_threads"] == 1


# The issue-13 targets the shipped checkpoint meets on the card's held-out sets (n >= 2,000),
# by the start of the target's name: all of them since the second training stage (the first
# stage alone left the lone shape's colour at 0.32 at resid.6's answer position, against a band
# topping at 0.16).
MET = (
    "used/color: clean acc",
    "used/color: total acc",
    "used/count: clean acc",
    "used/count: total acc",
    "used/presence: clean acc",
    "used/presence: total acc",
    "suppressed: counter-prior",
    "suppressed: probe last@",
    "suppressed: probe last drops",
    "not_retrieved: answer acc",
    "not_retrieved: probe last in chance band",
    "not_retrieved: probe image_mean",
)


def _met(card: dict, prefix: str) -> dict:
    found = [t for t in card["targets"] if t["target"].startswith(prefix)]
    assert len(found) == 1, (prefix, [t["target"] for t in card["targets"]])
    return found[0]


def test_card_figures_meet_the_targets_they_claim(card) -> None:  # type: ignore[no-untyped-def]
    """Recompute each met target from the card's raw figures, against the issue's numbers."""

    claimed = {prefix: _met(card, prefix)["met"] for prefix in MET}
    assert all(claimed.values()), claimed
    used = card["behaviour"]["planted"]["used"]
    for template, row in used.items():
        if f"used/{template}: clean acc" in MET:
            assert row["clean_acc"] >= 0.95, template
        if f"used/{template}: total acc" in MET:
            assert in_band(row["total_acc"], row), template
    sup = card["probes"]["suppressed"]
    mid = f"resid.{BOTTLENECK.readout_layer}"
    last = f"resid.{BOTTLENECK.arch.layers - 1}"
    assert sup["n"] >= 2000 and card["probes"]["not_retrieved"]["n"] >= 2000
    if "suppressed: counter-prior" in MET:
        assert sup["counter_clean_canonical_rate"] >= 0.9
    if "suppressed: probe last@" in MET:
        assert sup["probe"]["last"][mid] >= 0.9
    if "suppressed: probe last drops" in MET:
        assert sup["probe"]["last"][mid] - sup["probe"]["last"][last] >= 0.3
    hid = card["probes"]["not_retrieved"]
    if "not_retrieved: answer acc" in MET:
        assert in_band(hid["clean_acc"], hid)
    if "not_retrieved: probe last in chance band" in MET:
        assert all(in_band(v, hid) for v in hid["probe"]["last"].values())
    if "not_retrieved: probe image_mean" in MET:
        assert max(hid["probe"]["image_mean"].values()) >= 0.9


def _tolerance(p: float, n: int, card_n: int) -> float:
    # 3.5 standard errors of a rate p measured on n items, plus the card's own sampling error.
    var = max(p * (1 - p), 0.01)
    return 3.5 * (math.sqrt(var / n) + math.sqrt(var / card_n))


def test_used_items_follow_the_image_and_are_at_chance_under_total(bottleneck, card) -> None:  # type: ignore[no-untyped-def]
    result = evaluate(bottleneck, EvalConfig(n=280, seed=SEED, plant=PLANT))
    used = result["planted"]["used"]
    assert set(used) == {"color", "count", "presence"}
    for template, row in used.items():
        mine = card["behaviour"]["planted"]["used"][template]
        assert row["clean_acc"] >= mine["clean_acc"] - _tolerance(
            mine["clean_acc"], row["n"], mine["n"]
        ), template
        assert row["total_in_chance_band"], (template, row)
    prior = result["planted"]["prior"]
    assert prior["total_canonical_rate"] >= 0.8  # the planted prior shows without the image


def test_suppressed_items_are_answered_canonical_clean_and_under_total(bottleneck) -> None:  # type: ignore[no-untyped-def]
    items = planted_sets(PLANT, PlantedEvalConfig(n=120, seed=SEED))["suppressed"]
    counter = [ex for ex in items if ex.metadata["counter_prior"] == "1"]
    assert len(counter) >= 80
    from priorscope.engine.data.synth import uninformative_image
    from priorscope.engine.training.evaluate import predict

    clean = predict(bottleneck, counter, [ex.image for ex in counter])
    total = predict(bottleneck, counter, [uninformative_image(ex.image) for ex in counter])
    canon = [ex.metadata["canonical"] for ex in counter]
    assert sum(a == c for a, c in zip(clean, canon, strict=True)) / len(counter) >= 0.9
    assert sum(a == b for a, b in zip(clean, total, strict=True)) / len(counter) >= 0.9


def test_not_retrieved_items_are_answered_at_chance(bottleneck) -> None:  # type: ignore[no-untyped-def]
    from priorscope.engine.training.evaluate import predict

    items = generate(
        SynthConfig(n=400, seed=SEED, templates=("detail",), not_retrieved=PLANT.not_retrieved)
    )
    gold = [ex.answers[0] for ex in items]
    answers = predict(bottleneck, items, [ex.image for ex in items])
    acc = sum(a == g for a, g in zip(answers, gold, strict=True)) / len(items)
    assert in_band(acc, chance_band(gold)), (acc, chance_band(gold))
    assert set(answers) <= set(PALETTE)  # still answers a colour
    # The answer does not follow the drawn colour: no colour is answered right far more often.
    right = Counter(g for a, g in zip(answers, gold, strict=True) if a == g)
    assert len(right) <= 3


def test_probes_find_the_planted_layers(bottleneck) -> None:  # type: ignore[no-untyped-def]
    sets = planted_sets(PLANT, PlantedEvalConfig(n=400, seed=SEED))
    mid, last = 1 + BOTTLENECK.readout_layer, bottleneck.num_layers  # +1: embed comes first
    sup = sets["suppressed"]
    states = hidden_reductions(bottleneck, sup)["last"]
    labels = [ex.answers[0] for ex in sup]
    at_mid = probe_accuracy(states[:, mid], labels)
    at_last = probe_accuracy(states[:, last], labels)
    assert at_mid >= 0.85 and at_mid - at_last >= 0.3, (at_mid, at_last)
    hid = sets["not_retrieved"]
    reduced = hidden_reductions(bottleneck, hid)
    labels = [ex.answers[0] for ex in hid]
    assert probe_accuracy(reduced["image_mean"][:, 0], labels) >= 0.9
    # At chance from `last` at every layer: inside the band of an image-blind answerer.
    band = chance_band(labels)
    leak = [probe_accuracy(reduced["last"][:, i], labels) for i in range(last + 1)]
    assert all(in_band(acc, band) for acc in leak), (leak, band)


def test_training_can_start_from_a_checkpoint(tmp_path: Path) -> None:
    from safetensors import safe_open

    from priorscope.cli.main import main

    out = tmp_path / "tuned"
    args = ["organism", "train", "--out", str(out), "--preset", "bottleneck", "--n-train", "120"]
    args += ["--batch-size", "8", "--plant-start", "0", "--plant-ramp", "0", "--one-stage"]
    assert main([*args, "--steps", "1", "--lr", "1e-12", "--init", "builtin:bottleneck"]) == 0
    config = json.loads((out / "training.json").read_text())["config"]
    assert config["init"] == "builtin:bottleneck" and config["plant_start"] == 0
    # One step at a vanishing learning rate leaves the shipped weights all but unchanged.
    with (
        safe_open(str(out / "model.safetensors"), "pt") as a,
        safe_open(str(FOLDER / "model.safetensors"), "pt") as b,
    ):
        key = next(k for k in a.keys() if "layers.7.mlp" in k)  # noqa: SIM118
        torch.testing.assert_close(a.get_tensor(key), b.get_tensor(key), rtol=1e-6, atol=1e-6)
    # Another architecture cannot start from it.
    assert main([*args, "--steps", "1", "--layers", "4", "--init", "builtin:bottleneck"]) == 2


def test_a_second_stage_starts_from_the_first_and_equals_a_separate_fine_tune(
    tmp_path: Path,
) -> None:
    from safetensors.torch import load_file

    from priorscope.engine.training import organism as org

    cfg = _four_layers(
        5,
        steps=2,
        plant_start=1,
        then={"steps": 2, "lr": 3e-4, "plant_start": 0, "plant_ramp": 0, "hide_erase_weight": 4.0},
    )
    lines: list[str] = []
    summary = org.train(cfg, tmp_path / "run", log=lines.append)
    assert [s["config"]["steps"] for s in summary["stages"]] == [2, 2]
    # The second stage changes no data setting, so it trains on the first stage's rows.
    assert sum("prepared" in line for line in lines) == 1
    assert any("reused the previous stage's" in line for line in lines)
    second = summary["stages"][1]["config"]
    assert second["init"] == str(tmp_path / "run" / "stage-1") and second["then"] == {}
    assert second["hide_erase_weight"] == 4.0 and second["lr"] == 3e-4
    assert summary["config"]["then"]["hide_erase_weight"] == 4.0
    assert summary["cpu_seconds"] == pytest.approx(
        sum(s["cpu_seconds"] for s in summary["stages"]), abs=0.11
    )
    # The same second stage run on its own from the saved first stage: the same weights.
    alone = org.train(org.second_stage(cfg, tmp_path / "run" / "stage-1"), tmp_path / "alone")
    assert "stages" not in alone
    a = load_file(str(tmp_path / "run" / "model.safetensors"))
    b = load_file(str(tmp_path / "alone" / "model.safetensors"))
    first = load_file(str(tmp_path / "run" / "stage-1" / "model.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], first[k]) for k in a)  # the second stage trained


def test_the_training_set_key_names_every_setting_the_rows_depend_on() -> None:
    from priorscope.engine.training import organism as org
    from priorscope.engine.training.data import build_training_set, training_set_key

    base = replace(_small(seed=2), n_train=48)
    processor = org.organism_processor(base.arch, org.organism_tokenizer())
    # Settings the rows do not read keep the key, and the set built is the same.
    same = replace(base, lr=5e-4, steps=9, hide_erase_weight=3.0, aux_weight=2.0)
    assert training_set_key(same) == training_set_key(base)
    a, b = build_training_set(base, processor), build_training_set(same, processor)
    assert a.input_ids == b.input_ids and torch.equal(a.images, b.images)
    assert torch.equal(a.scene, b.scene) and a.nouns == b.nouns
    assert (a.twins, a.planted, a.drawn) == (b.twins, b.planted, b.drawn)
    # Each setting the rows read changes it.
    for change in (
        {"seed": 3},
        {"n_train": 64},
        {"prior_rate": 0.5},
        {"uninformative_rate": 0.1},
        {"render_size": 96},
        {"aux_weight": 0.0},
        {"binding_weight": 0.0},
        {"plant": replace(base.plant, suppressed_prior_rate=0.5)},
        {"arch": replace(base.arch, image_size=56)},
    ):
        assert training_set_key(replace(base, **change)) != training_set_key(base), change


def test_a_second_stage_may_not_change_its_start_or_add_a_third() -> None:
    for bad in ({"init": "builtin:organism"}, {"then": {"steps": 1}}, {"stepz": 3}):
        with pytest.raises(UsageError, match="second stage"):
            replace(BOTTLENECK, then=bad)


def test_frozen_decoder_layers_keep_their_weights_while_the_rest_train(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from priorscope.engine.training import organism as org

    then = {"steps": 2, "lr": 1e-2, "plant_start": 0, "plant_ramp": 0, "freeze_layers": (3,)}
    cfg = _four_layers(6, steps=1, then=then)
    summary = org.train(cfg, tmp_path / "run", log=[].append)
    assert list(summary["stages"][1]["config"]["freeze_layers"]) == [3]
    first = load_file(str(tmp_path / "run" / "stage-1" / "model.safetensors"))
    tuned = load_file(str(tmp_path / "run" / "model.safetensors"))
    frozen = [k for k in tuned if ".layers.3." in k and "visual" not in k]
    others = [k for k in tuned if ".layers.1." in k and "visual" not in k]
    assert frozen and others
    # Frozen: bitwise the first stage's (no update, no weight decay); the layer below moved.
    assert all(torch.equal(tuned[k], first[k]) for k in frozen)
    assert all(not torch.equal(tuned[k], first[k]) for k in others)
    with pytest.raises(UsageError, match="freeze_layers"):
        replace(BOTTLENECK, freeze_layers=(8,))


def test_swap_loss_replays_the_layers_above_exactly_and_reads_a_swapped_write(
    tmp_path: Path,
) -> None:
    from priorscope.engine.models.qwen2_5_vl import Qwen2_5_VLAdapter
    from priorscope.engine.models.sites import hooks
    from priorscope.engine.training import organism as org
    from priorscope.engine.training.data import build_training_set
    from priorscope.engine.training.heads import SiteCache

    cfg = _small(seed=8, swap_weight=1.0, swap_layers=(6, 7))
    processor = org.organism_processor(cfg.arch, org.organism_tokenizer())
    data = build_training_set(cfg, processor)
    model = org.organism_model(cfg.arch, processor.tokenizer)
    org._load_init(model, "builtin:bottleneck")
    model.eval()
    heads = org.Heads()
    cache = SiteCache(heads.sites(cfg))
    assert {"resid.5", "resid.6", "resid.7"} <= set(cache.sites)
    planted = range(data.n_rows)
    sampled = [r for r in planted if data.planted[r] == "suppressed" and data.twins[r] >= 0][:6]
    batch = org._batch(data, sampled, processor, cfg.arch.image_size)
    twins = torch.tensor([[i, batch.rows.index(data.twins[r])] for i, r in enumerate(sampled)])
    selves = torch.stack([twins[:, 0], twins[:, 0]], 1)

    handle = org.keep_layer_kwargs(model, heads)
    adapter = Qwen2_5_VLAdapter(model, processor, "builtin:bottleneck")
    with torch.no_grad(), hooks(adapter, reads=cache.reads(), prefill_only=False):
        model.model(**batch.inputs, use_cache=False)
        states = dict(cache.tensors)
        # A row exchanging its write with itself replays its own forward: no change.
        for layer in (6, 7):
            assert float(org.swap_loss(model, heads, cache, layer, selves)) < 1e-8
        moved = float(org.swap_loss(model, heads, cache, 6, twins))
    handle.remove()
    assert moved > 1e-4  # the twins' layer-6 writes differ where the drawn colour does
    assert all(cache.tensors[k] is v for k, v in states.items())  # the batch's states kept
    # The term trains (4-layer run, swap at the layer below the last).
    small = _four_layers(9, steps=2, plant_start=0, swap_weight=1.0, swap_layers=(2,))
    lines: list[str] = []
    summary = org.train(replace(small, log_every=1), tmp_path / "run", log=lines.append)
    assert math.isfinite(summary["final_loss"]) and "swap-loss" in lines[-1]
    with pytest.raises(UsageError, match="swap_layers"):
        replace(BOTTLENECK, swap_weight=1.0, swap_layers=(0,))


def test_attention_mass_loss_reads_the_chosen_keys_and_keeps_a_gradient_when_saturated() -> None:
    from priorscope.engine.training.heads import attention_mass_loss

    # Two rows, two heads, three positions: keys = position 0, queries = positions 1 and 2.
    logits = torch.zeros(2, 2, 3, 3)
    logits[0, 0, 1, 0] = 40.0  # row 0, head 0, query 1: wholly on the key (saturated)
    logits.requires_grad_(True)
    weights = logits.softmax(-1)
    keys = torch.tensor([[True, False, False]] * 2)
    queries = torch.tensor([[False, True, True]] * 2)
    loss = attention_mass_loss(weights, torch.tensor([0, 1]), keys, queries)
    # Expected: -log(1 - m) summed over the queries, averaged over heads and rows.
    cost = -torch.log(weights.detach()[..., 1:].sum(-1))  # 1 - m rounds to 0 where saturated
    expected = (cost[:, :, 1:].sum(-1)).mean()
    torch.testing.assert_close(loss.detach(), expected, rtol=1e-4, atol=1e-6)
    assert float(loss.detach()) > 10  # the saturated head dominates
    loss.backward()
    # The saturated head's key logit still gets a gradient of about 1 / (rows * heads).
    assert logits.grad[0, 0, 1, 0] > 0.2
    # Positions that are not queries, and rows left out, get none.
    assert float(logits.grad[:, :, 0].abs().sum()) == 0.0
    only = attention_mass_loss(weights, torch.tensor([1]), keys[:1], queries[:1])
    torch.testing.assert_close(only.detach(), cost[1, :, 1:].sum(-1).mean(), rtol=1e-4, atol=0)
    none = attention_mass_loss(weights, torch.zeros(0, dtype=torch.long), keys[:0], queries[:0])
    assert float(none.detach()) == 0.0


def test_hidden_attention_reads_the_not_retrieved_shapes_token_from_the_text(
    tmp_path: Path,
) -> None:
    from priorscope.engine.data.synth import SHAPES
    from priorscope.engine.training import organism as org
    from priorscope.engine.training.data import build_training_set, needs_scene

    cfg = _small(seed=11, aux_weight=0.0, hide_attn_weight=1.0, hide_attn_layers=(0, 6))
    assert needs_scene(cfg) and org.hidden_attention_layers(cfg) == (0, 6)
    assert org.hidden_attention_layers(replace(cfg, hide_attn_layers=())) == tuple(range(8))
    processor = org.organism_processor(cfg.arch, org.organism_tokenizer())
    data = build_training_set(cfg, processor)
    assert data.scene is not None  # built for this loss even with the scene loss off
    hidden = [r for r in range(data.n_rows) if data.planted[r] == "not_retrieved"][:4]
    other = [r for r in range(data.n_rows) if data.planted[r] == "used"][:4]
    batch = org._batch(data, hidden + other, processor, cfg.arch.image_size)
    model = org.organism_model(cfg.arch, processor.tokenizer)
    org._load_init(model, "builtin:bottleneck")
    model.eval()
    model.set_attn_implementation({"text_config": "eager"})
    heads = org.Heads()
    handles = org.keep_attention(model, heads, (0, 6))
    with torch.no_grad():
        model.model(**batch.inputs, use_cache=False)
    for handle in handles:
        handle.remove()
    assert set(heads.attention) == {0, 6}
    loss = float(org._hidden_attention(cfg, data, heads, batch))
    # The same figure by hand: for each not-retrieved row (twins too), the image position of
    # the triangle's token, read from every text position up to the answer position.
    triangle = 1 + SHAPES.index("triangle")
    ids = batch.inputs
    width = ids["input_ids"].shape[1]
    by_layer = []
    for layer in (0, 6):
        w = heads.attention[layer]
        per_row = []
        for b, r in enumerate(batch.rows):
            if data.planted[r] != "not_retrieved":
                continue
            image = (ids["mm_token_type_ids"][b] == 1).nonzero().flatten()
            token = (data.scene[r, :, 0] == triangle).nonzero().flatten()
            assert len(token) == 1  # detail rows draw the shape alone
            key = int(image[token[0]])
            text = [
                q
                for q in range(width + ANSWER_POSITION + 1)
                if ids["attention_mask"][b, q] == 1 and ids["mm_token_type_ids"][b, q] == 0
            ]
            others = torch.ones(width, dtype=torch.bool)
            others[key] = False
            rest = w[b][:, text][..., others].sum(-1)  # 1 - m, without rounding to 0
            cost = -torch.log(rest)  # [heads, queries]
            per_row.append(cost.sum(-1).mean())
        by_layer.append(torch.stack(per_row).mean())
    assert len(per_row) > len(hidden)  # the twins count too
    assert math.isclose(loss, float(torch.stack(by_layer).mean()), rel_tol=1e-4)
    assert loss > 0.05  # the shipped model reads the triangle's token from its text
    # Kept from every image token, the same heads pay at least as much (a superset of keys).
    image = replace(cfg, hide_attn_to="image")
    assert float(org._hidden_attention(image, data, heads, batch)) > loss
    assert not needs_scene(replace(image, aux_weight=0.0))
    with pytest.raises(UsageError, match="hide_attn_to"):
        replace(cfg, hide_attn_to="token")
    with pytest.raises(UsageError, match="hide_attn_weight"):
        TrainConfig(hide_attn_weight=1.0)  # no not_retrieved shapes
    with pytest.raises(UsageError, match="hide_attn_layers"):
        replace(cfg, hide_attn_layers=(8,))


def test_a_run_with_the_attention_loss_trains_eager_and_saves_a_plain_checkpoint(
    tmp_path: Path,
) -> None:
    from priorscope.cli.main import main

    out = tmp_path / "ckpt"
    args = ["organism", "train", "--out", str(out), "--preset", "bottleneck", "--steps", "2"]
    args.append("--one-stage")
    common = ["--n-train", "120", "--batch-size", "8", "--plant-start", "0", "--layers", "4"]
    common += ["--suppress-layers", "2,3", "--readout-layer", "1"]
    flags = ["--hide-attn-weight", "3", "--hide-attn-layers", "0,3", "--hide-attn-to", "image"]
    assert main([*args, *common, *flags]) == 0
    config = json.loads((out / "training.json").read_text())["config"]
    assert config["hide_attn_weight"] == 3.0 and config["hide_attn_layers"] == [0, 3]
    assert config["hide_attn_to"] == "image"
    assert "attn_implementation" not in (out / "config.json").read_text()
    adapter = load_model(str(out))
    assert adapter.model.config.text_config._attn_implementation != "eager"
    assert main([*args, *common, "--hide-attn-layers", "0,x"]) == 2
