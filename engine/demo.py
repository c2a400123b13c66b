"""The main job: a held-out synthetic benchmark, the built-in organism captured on it, its decay
metrics, the report, and sentences a reader checks against the planted ground truth.

The synthetic set is generated with a seed the organism never trained on (training uses seeds
from 1_000_003 up, the model card's evaluation seed 7) and, by default, with a prior rate the
organism was not trained with, so the findings test what the diagnostics recover rather than
what the training data said.
"""

from __future__ import annotations

import json
import math
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from priorscope.engine.analysis.decay import DecayConfig
from priorscope.engine.conditions import DEFAULT_LADDER
from priorscope.engine.errors import ConfigMismatchError, UsageError
from priorscope.engine.store import Store, find_results, open_store, results_path

VISUAL_TEMPLATES = ("color", "count", "presence")
ORGANISM = "builtin:organism"


@dataclass(frozen=True)
class DemoConfig:
    """What the demo generates and captures (validated on construction)."""

    out: Path = Path("priorscope_demo")
    n: int = 1000
    seed: int = 20261128
    prior_rate: float = 0.6
    size: int = 112
    ladder: tuple[float, ...] = DEFAULT_LADDER
    batch_size: int = 32
    n_boot: int = 1000
    model: str = ORGANISM
    layers: str = "all"
    # The analyses that read hidden states: probes on every example, the logit lens, and layer
    # replacement on the first ``patch_examples`` (captured with full sequences; 0: none).
    probes: bool = True
    patch_examples: int = 48

    def __post_init__(self) -> None:
        if not 10 <= self.n <= 100_000:
            raise UsageError(f"Expected n (--n) between 10 and 100000. Got {self.n} instead.")
        if not 0 <= self.patch_examples <= self.n:
            raise UsageError(
                f"Expected patch_examples (--patch-examples) between 0 and n ({self.n}). Got "
                f"{self.patch_examples} instead."
            )
        if not 0.0 <= self.prior_rate <= 1.0:
            raise UsageError(
                f"Expected prior_rate (--prior-rate) in [0, 1]. Got {self.prior_rate} instead."
            )
        if 1_000_003 <= self.seed < 1_000_003 + 1000 or self.seed == 7:
            raise UsageError(
                f"Expected a held-out seed. Got {self.seed}, which the organism's training or "
                "model card uses. Pick another --seed."
            )
        object.__setattr__(self, "out", Path(self.out))


@dataclass(frozen=True)
class DemoResult:
    """Paths the demo wrote, the report, the planted-truth numbers and sentences."""

    dataset: Path
    store: Path
    grounded: Path
    report: Any  # priorscope.engine.report.ReportResult
    truth: dict[str, Any]
    sentences: tuple[str, ...]
    seconds: float
    timings: dict[str, float] = field(default_factory=dict)


def _trained_size(model: str, default: int) -> int:
    """Return the image side the model's processor expects (its pixel budget), else default.

    The organism was trained at one image size; synthetic images of that size keep the demo
    on the distribution it knows, and processors of other models resize anyway.
    """
    folder = _folder(model)
    for name in ("processor_config.json", "preprocessor_config.json"):
        try:
            doc = json.loads((folder / name).read_text())
        except (OSError, ValueError):
            continue
        size = doc.get("image_processor", doc).get("size", {})
        if isinstance(size, dict) and "longest_edge" in size:
            return round(math.sqrt(float(size["longest_edge"])))
    return default


def run_demo(config: DemoConfig, *, console: Any = None) -> DemoResult:
    """Return the demo's outputs after generating, capturing, analysing and reporting.

    Everything is written under ``config.out``; the demo's store there is resumed when the
    settings are unchanged and rewritten when they differ.
    """
    from priorscope.engine.analysis.export import export_grounded
    from priorscope.engine.capture import CaptureConfig, capture
    from priorscope.engine.data.synth import SynthConfig, generate, write_tsv
    from priorscope.engine.report import ReportConfig, write_report

    start = time.perf_counter()
    timings: dict[str, float] = {}
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    size = _trained_size(config.model, config.size)
    plant = planted_groups(config.model)
    examples = generate(
        SynthConfig(
            n=config.n,
            seed=config.seed,
            size=size,
            prior_rate=config.prior_rate,
            # A model with planted groups: the item mix it was trained on, the suppressed
            # objects drawn in a uniform colour (so a probe of the drawn colour is balanced).
            **(
                {
                    "templates": plant.templates,
                    "suppressed": plant.suppressed,
                    "not_retrieved": plant.not_retrieved,
                    "suppressed_prior_rate": 1 / 8 if plant.suppressed else None,
                }
                if plant is not None
                else {}
            ),
        )
    )
    dataset = write_tsv(examples, out / "heldout_synth.tsv")
    timings["generate"] = time.perf_counter() - start

    store = out / "organism.zarr"
    t = time.perf_counter()
    capture_cfg = CaptureConfig(
        model=config.model,
        data=str(dataset),
        out=str(store),
        ladder=config.ladder,
        total=True,
        none=True,
        layers=config.layers,
        batch_size=config.batch_size,
        device="cpu",
        max_new_tokens=4,
        full_seq=config.patch_examples,
        full_seq_layers="all",
        progress=console is not None,
    )
    try:
        capture(capture_cfg)  # an unchanged rerun resumes: committed examples are skipped
    except ConfigMismatchError:
        # The store is the demo's own, written by an earlier demo with other settings; so are
        # the analyses' results beside it.
        shutil.rmtree(store)
        for kind in ("probes", "patch", "lens"):
            shutil.rmtree(results_path(store, kind), ignore_errors=True)
        capture(capture_cfg)
    timings["capture"] = time.perf_counter() - t

    opened = open_store(store)
    timings.update(_hidden_state_analyses(opened, config))

    t = time.perf_counter()
    truth = planted_truth(opened, config.prior_rate)
    truth["diagnostics"] = diagnostics_truth(opened, config.model)
    sentences = truth_sentences(truth) + diagnostics_sentences(truth["diagnostics"])
    if plant is not None:
        t2 = time.perf_counter()
        truth["planted"] = planted_truth_groups(opened, config)
        timings["planted probes"] = time.perf_counter() - t2
        t2 = time.perf_counter()
        suppressed = [ex for ex in examples if ex.metadata.get("planted") == "suppressed"]
        injection = planted_injection(suppressed, out, config)
        if injection is not None:
            truth["planted"]["suppressed"]["injection"] = injection
        sentences += planted_sentences(truth["planted"])
        timings["planted replacement"] = time.perf_counter() - t2
    grounded = export_grounded(opened, out / "grounded_subset.tsv").out
    report = write_report(
        opened,
        out / "report.html",
        ReportConfig(
            decay=DecayConfig(by="category", n_boot=config.n_boot),
            title="priorscope demo: the built-in organism on a held-out synthetic benchmark",
            findings=sentences,
        ),
    )
    timings["analyse"] = time.perf_counter() - t
    (out / "demo_truth.json").write_text(json.dumps(truth, indent=1, allow_nan=False))
    return DemoResult(
        dataset, store, grounded, report, truth, sentences, time.perf_counter() - start, timings
    )


def _hidden_state_analyses(store: Store, config: DemoConfig) -> dict[str, float]:
    """Run probes, the logit lens and layer replacement into their default results paths.

    Returns their timings. Probes resume finished cells; lens and patching are recomputed.
    """
    from priorscope.engine.patch import PatchConfig, lens, patch
    from priorscope.engine.probes import ProbeConfig, fit_probes

    timings = {}
    if config.probes:
        t = time.perf_counter()
        probe_cfg = ProbeConfig(
            targets=("gold", "prior"),
            kinds=("logistic",),
            sites=tuple(s for s in ("last", "text_mean") if s in store.reductions) or None,
            train=("clean",),
            test=("all",),
        )
        try:
            fit_probes(store, probe_cfg, results_path(store.path, "probes"))
        except ConfigMismatchError:
            shutil.rmtree(results_path(store.path, "probes"))
            fit_probes(store, probe_cfg, results_path(store.path, "probes"))
        timings["probes"] = time.perf_counter() - t
    t = time.perf_counter()
    lens(store, out=results_path(store.path, "lens"))
    timings["lens"] = time.perf_counter() - t
    if config.patch_examples:
        t = time.perf_counter()
        out = results_path(store.path, "patch")
        shutil.rmtree(out, ignore_errors=True)  # exact replay is cheap; never mix two runs
        patch(store, PatchConfig(examples=config.patch_examples, out=out))
        timings["patch"] = time.perf_counter() - t
    return timings


def _folder(model: str) -> Path:
    """Return the checkpoint folder of a built-in name (``builtin:NAME``) or a path."""
    from priorscope.engine.models.registry import BUILTIN_PREFIX, BUILTINS

    if model.startswith(BUILTIN_PREFIX) and model[len(BUILTIN_PREFIX) :] in BUILTINS:
        return BUILTINS[model[len(BUILTIN_PREFIX) :]]
    return Path(model)


def _card(model: str) -> dict[str, Any]:
    """Return the model card's figures (``metrics.json`` beside the weights), else {}."""
    try:
        return json.loads((_folder(model) / "metrics.json").read_text())
    except (OSError, ValueError):
        return {}


def _first_layer(acc: Any, layers: list[int], level: float) -> int | None:
    """Return the first layer whose accuracy reaches ``level`` (None if none does)."""
    for layer, a in zip(layers, acc, strict=True):
        if np.isfinite(a) and a >= level:
            return int(layer)
    return None


def diagnostics_truth(store: Store, model: str) -> dict[str, Any]:
    """Return what probes and layer replacement measured on the colour items, with the card's.

    Probes (logistic, trained on clean, gold target): held-out accuracy by layer at the last
    position and the text tokens, clean and total, and the first layer reaching 0.95.
    Layer replacement (noising total -> clean, state mode): mean normalised effect of each
    position group at each layer over the patched colour items. The card's figures ride along
    so a reader compares them directly.
    """
    from priorscope.engine.patch.read import read_patch
    from priorscope.engine.probes.results import ProbeResult

    card = _card(model)
    out: dict[str, Any] = {}
    found = {k: v["path"] for k, v in find_results(store.path).items()}
    ds = None
    if "probes" in found:
        ds = ProbeResult(found["probes"]).to_xarray()[["accuracy", "chance"]].load()
    if ds is not None and "gold" in ds["target"].values:
        layers = [int(v) for v in ds["layer"].values]
        cell = ds.sel(target="gold", kind=str(ds["kind"].values[0]), train="clean")
        sites = {}
        for red in (str(r) for r in ds["reduction"].values):
            c = cell.sel(reduction=red)
            clean = c["accuracy"].sel(test="clean").values
            total = (
                c["accuracy"].sel(test="total").values
                if "total" in c["test"].values
                else np.full(len(layers), np.nan)
            )
            sites[red] = {
                "layers": layers,
                "clean": [float(x) for x in clean],
                "total": [float(x) for x in total],
                "first_layer_095": _first_layer(clean, layers, 0.95),
                "chance": float(np.nanmax(c["chance"].values)),
            }
        out["probes"] = {"sites": sites, "card": card.get("probe_profile")}
    result = read_patch(found["patch"]) if "patch" in found else None
    if result is not None and result.exact:
        table = store.examples()
        at = np.searchsorted(table.rows, result.rows)
        template = np.array([table.metadata[i].get("template", "") for i in at])
        colour = template == "color"
        d = result.direction_names.index(f"{result.config.source}->{result.config.target}")
        m = list(result.modes).index("state") if "state" in result.modes else 0
        effect = result.exact["effect"][d][colour][..., m]  # [example, layer, group]
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            mean = np.nanmean(effect, axis=0) if effect.size else None
        if mean is not None:
            out["patch"] = {
                "n": int(colour.sum()),
                "layers": ["embed" if v == -1 else str(v) for v in result.layers],
                "effect": {
                    g: [float(x) for x in mean[:, gi]] for gi, g in enumerate(result.groups)
                },
                "card": card.get("layer_profile"),
            }
    return out


def diagnostics_sentences(diag: dict[str, Any]) -> tuple[str, ...]:
    """Return sentences that put the probe and patching findings next to the card's."""
    lines = []
    probes = diag.get("probes")
    if probes:
        card = probes.get("card") or {}
        parts = []
        for red, v in probes["sites"].items():
            first = v["first_layer_095"]
            best = int(np.nanargmax(v["clean"])) if np.isfinite(v["clean"]).any() else None
            where = "at no layer" if first is None else f"from layer {first}"
            planted = card.get(red, {}).get("from_layer")
            planted_text = "" if planted is None else f" (card: from layer {planted})"
            total = v["total"][best] if best is not None else float("nan")
            parts.append(
                f"at `{red}` the gold answer reaches 95% {where}{planted_text}, and under total "
                f"obfuscation the same layer's probe reads {_pct(total)} (chance {_pct(v['chance'])})"
            )
        lines.append("Probes (logistic, trained on clean): " + "; ".join(parts) + ".")
    patch = diag.get("patch")
    if patch and patch["n"]:
        card = patch.get("card") or {}
        effects, card_layers = card.get("effect", {}), card.get("layers", [])
        parts = []
        for g, values in patch["effect"].items():
            shown = ", ".join(
                f"{lay} {x:.2f}"
                + (
                    f" (card {effects[g][card_layers.index(lay)]:.2f})"
                    if g in effects and lay in card_layers
                    else ""
                )
                for lay, x in zip(patch["layers"], values, strict=True)
            )
            parts.append(f"{g} tokens: {shown}")
        lines.append(
            f"Layer replacement (noising: total-obfuscation states into the clean run, colour "
            f"items, n={patch['n']}), mean normalised effect by layer; " + "; ".join(parts) + "."
        )
    return tuple(lines)


def planted_groups(model: str) -> Any:
    """Return the planted groups (training's ``PlantSpec``) ``model`` was trained with, or None
    for a model without any (its ``training.json`` names none, or it has none)."""
    from priorscope.engine.training.evaluate import plant_of

    folder = _folder(model)
    if not (folder / "training.json").is_file():
        return None
    plant = plant_of(folder)
    return plant if plant.active else None


PLANTED_PROBE_SITES = ("last", "image_mean")


def _group_probe(store: Store, group: str, config: DemoConfig) -> dict[str, Any] | None:
    """Return the gold-answer probe curves of one planted group (trained and tested on clean)."""
    from priorscope.engine.probes import ProbeConfig, fit_probes

    sub = store.where("planted", group)
    n = int(sub.rows().size)
    if n < 20:
        return None
    cfg = ProbeConfig(
        targets=("gold",),
        kinds=("logistic",),
        sites=tuple(s for s in PLANTED_PROBE_SITES if s in store.reductions) or None,
        train=("clean",),
        test=("clean",),
        min_class=max(2, n // 40),
    )
    out = results_path(store.path, f"probes_{group}")
    shutil.rmtree(out, ignore_errors=True)  # a few seconds; never resume another subset's run
    ds = fit_probes(sub, cfg, out).to_xarray()[["accuracy", "chance", "majority"]].load()
    cell = ds.sel(target="gold", kind="logistic", train="clean", test="clean")
    layers = [int(v) for v in ds["layer"].values]
    curves = {
        str(r): [float(x) for x in cell["accuracy"].sel(reduction=r).values]
        for r in ds["reduction"].values
    }
    return {
        "n": n,
        "layers": ["embed" if v == -1 else f"resid.{v}" for v in layers],
        "accuracy": curves,
        "chance": float(np.nanmax(cell["chance"].values)),
        "majority": float(np.nanmax(cell["majority"].values)),
    }


def planted_truth_groups(store: Store, config: DemoConfig) -> dict[str, Any]:
    """Return, per planted group, what the model answers and where probes find the answer,
    next to the figures of the model's card (its ``metrics.json``)."""
    from priorscope.engine.analysis.decay import resolve_levels

    card = _card(config.model)
    table = store.examples()
    lv = resolve_levels(table.conditions)
    score = store.outputs("score").astype(np.float64)
    answer = store.outputs("answer")
    planted = np.array([m.get("planted", "") for m in table.metadata])
    canonical = np.array([m.get("canonical", "") for m in table.metadata])
    counter = np.array([m.get("counter_prior") == "1" for m in table.metadata])
    out: dict[str, Any] = {}
    for group in ("used", "suppressed", "not_retrieved"):
        idx = np.flatnonzero(planted == group)
        if idx.size == 0:
            continue
        golds = [table.gold[i][0] if table.gold[i] else "" for i in idx]
        counts = {g: golds.count(g) for g in set(golds)}
        entry: dict[str, Any] = {
            "n": int(idx.size),
            "clean_acc": float(score[idx, lv.clean].mean()),
            "chance": 1.0 / max(1, len(counts)),
            "majority_rate": max(counts.values()) / idx.size,
        }
        if lv.total is not None:
            entry["total_acc"] = float(score[idx, lv.total].mean())
        if group == "suppressed":
            c = idx[counter[idx]]
            entry["counter_prior_n"] = int(c.size)
            entry["counter_clean_canonical_rate"] = _rate(answer[c, lv.clean] == canonical[c])
        entry["probe"] = _group_probe(store, group, config)
        entry["card_probe"] = (card.get("probes") or {}).get(group, {}).get("probe")
        out[group] = entry
    return out


def planted_injection(examples: list[Any], out: Path, config: DemoConfig) -> dict[str, Any] | None:
    """Return where layer replacement finds the suppression of the planted suppressed items.

    The clean run's answer-position state at each layer is put into the run without the image
    and the drawn colour read at every later layer (:mod:`priorscope.engine.patch.readout`);
    ``falls_at`` is the layer where the read-out put in at the training read-out layer falls.
    None with fewer than 40 such items or for a model without that read-out layer.
    """
    from priorscope.engine.capture import CaptureConfig, capture
    from priorscope.engine.data.synth import write_tsv
    from priorscope.engine.patch import patch, readout
    from priorscope.engine.patch.readout import localise_config
    from priorscope.engine.training.evaluate import training_config

    trained = training_config(_folder(config.model)) or {}
    mid = trained.get("readout_layer")
    if len(examples) < 40 or mid is None:
        return None
    store = out / "suppressed.zarr"
    shutil.rmtree(store, ignore_errors=True)  # seconds; always this demo's own items
    capture(
        CaptureConfig(
            model=config.model,
            data=str(write_tsv(examples, out / "suppressed.tsv")),
            out=str(store),
            ladder=(),
            total=True,
            batch_size=config.batch_size,
            device="cpu",
            max_new_tokens=2,
            full_seq=len(examples),
            full_seq_layers="all",
            progress=False,
        )
    )
    cfg = localise_config(out=str(results_path(store, "patch")))
    opened = open_store(store)
    ro = readout(opened, patch(opened, cfg), "gold", folds=4)
    if mid not in ro.layers:
        return None
    curve = ro.curve("clean->total", "last", "state", mid)
    return {
        "n": ro.n,
        "from_layer": mid,
        "curve": {("embed" if v == -1 else f"resid.{v}"): a for v, a in curve.items()},
        "falls_at": ro.loss_layer("clean->total", "last", "state", mid),
        "planted_layers": list(trained.get("suppress_layers", [])),
        "majority": ro.majority,
    }


def _curve_text(curve: list[float], layers: list[str]) -> str:
    best = int(np.nanargmax(curve))
    return f"{_pct(curve[best])} at {layers[best]}, {_pct(curve[-1])} at {layers[-1]}"


def planted_sentences(planted: dict[str, Any]) -> tuple[str, ...]:
    """Return one sentence per planted group: what was planted, what the diagnostics found."""
    lines = []
    s = planted.get("suppressed")
    if s:
        probe, card = s.get("probe"), (s.get("card_probe") or {}).get("last", {})
        found = (
            ""
            if probe is None
            else " A linear probe reads the drawn colour from `last` at "
            + _curve_text(probe["accuracy"]["last"], probe["layers"])
            + (
                f" (card: {_pct(max(card.values()))} at best, {_pct(card.get('resid.7'))} at "
                "resid.7)"
                if card
                else ""
            )
            + ": decodable in the middle layers, then suppressed."
        )
        lines.append(
            f"planted suppressed items (n={s['n']}, the answer is always the canonical colour): "
            f"{_pct(s['counter_clean_canonical_rate'])} of the counter-prior ones answered "
            f"canonical on the clean image (planted: all).{found}"
        )
        inj = s.get("injection")
        if inj and inj["falls_at"] is not None:
            curve = list(inj["curve"].items())
            fall = inj["falls_at"]
            before = next((a for k, a in curve if k == f"resid.{fall - 1}"), None)
            lines.append(
                f"layer replacement on the suppressed items (n={inj['n']}): the clean answer-"
                f"position state put into the run without the image at resid.{inj['from_layer']} "
                f"keeps the drawn colour readable ({_pct(curve[0][1])} there, {_pct(before)} at "
                f"resid.{fall - 1}) until resid.{fall}, where it falls to "
                f"{_pct(inj['curve'][f'resid.{fall}'])} (majority class {_pct(inj['majority'])}; "
                f"planted suppression layers: "
                f"{', '.join(str(v) for v in inj['planted_layers'])})."
            )
    nr = planted.get("not_retrieved")
    if nr:
        probe, card = nr.get("probe"), nr.get("card_probe") or {}
        found = ""
        if probe is not None:
            last, image = probe["accuracy"].get("last"), probe["accuracy"].get("image_mean")
            found = (
                f" Probes: `last` at most {_pct(float(np.nanmax(last)))} over layers (chance "
                f"{_pct(probe['chance'])}, majority {_pct(probe['majority'])}"
                + (
                    f"; card: at most {_pct(max(card['last'].values()))}"
                    if card.get("last")
                    else ""
                )
                + ")"
                + (
                    f", `image_mean` {_pct(float(np.nanmax(image)))} at best: in the image "
                    "tokens, never moved to the answer."
                    if image is not None
                    else "."
                )
            )
        lines.append(
            f"planted not-retrieved items (n={nr['n']}, colour of a lone small shape): "
            f"{_pct(nr['clean_acc'])} right on the clean image (planted: chance, "
            f"{_pct(nr['chance'])}).{found}"
        )
    u = planted.get("used")
    if u:
        lines.append(
            f"planted used items (n={u['n']}): {_pct(u['clean_acc'])} right on the clean image, "
            f"{_pct(u.get('total_acc'))} under total obfuscation (planted: the image decides)."
        )
    return tuple(lines)


def _rate(mask: np.ndarray) -> float | None:
    """Return the mean of a boolean mask, None when it is empty."""
    return float(mask.mean()) if mask.size else None


def planted_truth(store: Store | str | Path, prior_rate: float) -> dict[str, Any]:
    """Return per-template measured rates next to what was planted in the synthetic set.

    For each template: n, accuracy at every condition, the chance (1 / distinct gold answers,
    decay's definition for open-ended items) and majority rate of its golds, and the
    blind-answerable rate (right under the most severe blur and total). For the prior template
    also the share of canonical answers under total, and clean/total accuracy on the
    counter-prior items.
    """
    from priorscope.engine.analysis.decay import blind_answerable, resolve_levels

    snap = open_store(store).snapshot()
    tables = snap.examples()
    answer = snap.outputs("answer")
    score = snap.outputs("score").astype(np.float64)
    lv = resolve_levels(tables.conditions)
    correct = score >= 0.5
    blind = blind_answerable(correct, lv.severe, lv.total)
    template = np.array([m.get("template", "") for m in tables.metadata])
    out: dict[str, Any] = {"prior_rate": prior_rate, "conditions": list(lv.names), "templates": {}}
    for name in sorted(set(template.tolist())):
        idx = np.flatnonzero(template == name)
        golds = [tables.gold[i][0] if tables.gold[i] else "" for i in idx]
        counts = {g: golds.count(g) for g in set(golds)}
        out["templates"][name] = {
            "n": len(idx),
            "accuracy": {c: float(score[idx, k].mean()) for k, c in enumerate(lv.names)},
            "chance": 1.0 / max(1, len(counts)),
            "majority_rate": max(counts.values()) / len(idx),
            "blind_answerable": _rate(blind[idx]),
        }
    prior = np.flatnonzero(template == "prior")
    if prior.size and lv.total is not None:
        canon = np.array([tables.metadata[i].get("canonical", "") for i in prior])
        counter = np.array([tables.metadata[i].get("counter_prior") == "1" for i in prior])
        total_ans = answer[prior, lv.total]
        out["prior"] = {
            "n": int(prior.size),
            "measured_canonical_share": float(np.mean(~counter)),
            "total_canonical_rate": float(np.mean(total_ans == canon)),
            "counter_prior_n": int(counter.sum()),
            "counter_prior_clean_acc": _rate(correct[prior[counter], lv.clean]),
            "counter_prior_total_acc": _rate(correct[prior[counter], lv.total]),
        }
    return out


def _pct(x: float | None) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{100 * x:.0f}%"


def truth_sentences(truth: dict[str, Any]) -> tuple[str, ...]:
    """Return plain sentences that put each measured rate next to the planted truth."""
    t = truth["templates"]
    names = truth["conditions"]
    total = "total" if "total" in names else names[-1]
    lines = []
    if "prior" in t and "prior" in truth:
        p, pt = truth["prior"], t["prior"]
        lines.append(
            f"prior template: {_pct(pt['accuracy'][total])} answerable under total obfuscation "
            f"({_pct(pt['blind_answerable'])} blind-answerable); planted prior rate "
            f"{truth['prior_rate']:g} ({_pct(p['measured_canonical_share'])} of these items "
            f"drawn in their canonical colour). Under total the organism names the canonical "
            f"colour on {_pct(p['total_canonical_rate'])} of prior items."
        )
        lines.append(
            f"counter-prior items ({p['counter_prior_n']}, drawn in an unusual colour): "
            f"{_pct(p['counter_prior_clean_acc'])} right on the clean image, "
            f"{_pct(p['counter_prior_total_acc'])} under total obfuscation."
        )
    for name in VISUAL_TEMPLATES:
        if name in t:
            v = t[name]
            lines.append(
                f"{name} template (needs the image): clean {_pct(v['accuracy']['clean'])}, "
                f"total obfuscation {_pct(v['accuracy'][total])}; planted chance "
                f"{_pct(v['chance'])}, majority answer {_pct(v['majority_rate'])}."
            )
    if "control" in t:
        accs = [t["control"]["accuracy"][c] for c in names]
        span = (
            _pct(min(accs))
            if _pct(min(accs)) == _pct(max(accs))
            else f"between {_pct(min(accs))} and {_pct(max(accs))}"
        )
        lines.append(
            f"control template (planted to be answerable from the text alone): accuracy "
            f"{span} at every level, total obfuscation and no image included."
        )
    return tuple(lines)
