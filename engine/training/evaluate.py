"""Measure an organism (or any adapter) on a held-out synthetic set: the model card's numbers.

The answer is the greedy first token at the answer position, read from the ``logits`` site
through :func:`priorscope.engine.models.sites.hooks` (every synth answer is one organism token,
so this equals greedy generation's answer). ``total`` shows every image as its mean colour, as
the ``total`` condition does. With planted groups (the held-out set's ``planted`` column) the
result also has a ``planted`` section: each group's rates beside its planted behaviour.
"""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from priorscope.engine.errors import UsageError
from priorscope.engine.training.data import PlantSpec

# Held-out evaluation rows use this synth seed unless told otherwise (training uses 1_000_003+).
EVAL_SEED = 7
# Half-width of the chance band in binomial standard errors.
CHANCE_Z = 3.0


@dataclass(frozen=True)
class EvalConfig:
    """Which held-out set to evaluate on; ``plant`` gives its template cycle and planted groups."""

    n: int = 1000
    seed: int = EVAL_SEED
    prior_rate: float = 0.8
    batch_size: int = 64
    size: int = 112  # side of the rendered images (the synth default); the processor resizes
    plant: PlantSpec = field(default_factory=PlantSpec)

    def __post_init__(self) -> None:
        if self.n < 5 or self.batch_size < 1:
            raise UsageError(
                f"Expected n >= 5 and batch_size >= 1. Got n={self.n}, "
                f"batch_size={self.batch_size}."
            )

    def synth(self) -> Any:
        """Return the SynthConfig of this held-out set."""
        from priorscope.engine.data.synth import SynthConfig

        return SynthConfig(
            n=self.n,
            seed=self.seed,
            size=self.size,
            prior_rate=self.prior_rate,
            templates=self.plant.templates,
            suppressed=self.plant.suppressed,
            not_retrieved=self.plant.not_retrieved,
            suppressed_prior_rate=self.plant.suppressed_prior_rate,
        )


def training_config(folder: str | Path) -> dict[str, Any] | None:
    """Return the ``config`` of a checkpoint's training.json (None without one)."""
    path = Path(folder) / "training.json"
    if not path.is_file():
        return None
    config = json.loads(path.read_text()).get("config")
    return config if isinstance(config, dict) else None


def plant_of(folder: str | Path) -> PlantSpec:
    """Return the planted groups a checkpoint was trained with (none for other checkpoints)."""
    config = training_config(folder) or {}
    raw = config.get("plant") or {}
    default = PlantSpec()
    rate = raw.get("suppressed_prior_rate")
    return PlantSpec(
        templates=tuple(raw.get("templates", default.templates)),
        suppressed=tuple(raw.get("suppressed", ())),
        not_retrieved=tuple(raw.get("not_retrieved", ())),
        suppressed_prior_rate=None if rate is None else float(rate),
    )


def predict(
    adapter: Any, examples: Sequence[Any], images: Sequence[Any], batch_size: int = 64
) -> list[str]:
    """Return the greedy first answer token (decoded) of each example under the given images."""
    import torch

    from priorscope.engine.models.sites import hooks

    answers: list[str] = []
    seen: dict[str, Any] = {}

    def read(logits: Any) -> None:
        seen["last"] = logits[:, -1]

    with hooks(adapter, reads={"logits": read}, prefill_only=True) as session:
        for start in range(0, len(examples), batch_size):
            part = examples[start : start + batch_size]
            batch = adapter.encode(part, images[start : start + batch_size])
            session.arm()
            with torch.no_grad():
                adapter.model(**batch, use_cache=False)
            ids = seen.pop("last").argmax(-1).tolist()
            answers.extend(adapter.tokenizer.decode([i]).strip() for i in ids)
    return answers


def _rate(hits: list[bool]) -> float:
    return round(sum(hits) / len(hits), 4) if hits else float("nan")


def chance_band(gold: Sequence[str], z: float = CHANCE_Z) -> dict[str, Any]:
    """Return the accuracy band of an image-blind answerer on answers ``gold``.

    Any answer that ignores the image scores between the uniform rate (1 / distinct answers)
    and the majority rate in expectation; the band widens both by ``z`` binomial standard
    errors of a rate measured on ``len(gold)`` items.
    """
    counts = Counter(gold)
    n = len(gold)
    uniform = 1 / len(counts)
    majority = counts.most_common(1)[0][1] / n
    low = uniform - z * math.sqrt(uniform * (1 - uniform) / n)
    high = majority + z * math.sqrt(majority * (1 - majority) / n)
    return {
        "uniform_rate": round(uniform, 4),
        "majority_rate": round(majority, 4),
        "chance_band": [round(max(0.0, low), 4), round(min(1.0, high), 4)],
    }


def in_band(rate: float, band: dict[str, Any]) -> bool:
    """Return whether ``rate`` lies inside ``band['chance_band']``."""
    low, high = band["chance_band"]
    return bool(low <= rate <= high)


def _group(examples: Sequence[Any], key: str) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = defaultdict(list)
    for i, ex in enumerate(examples):
        groups[ex.metadata.get(key, "")].append(i)
    return groups


def summarize(examples: Sequence[Any], clean: list[str], total: list[str]) -> dict[str, Any]:
    """Return the per-template accuracy table and the prior-specific rates."""
    groups = _group(examples, "template")
    gold = [ex.answers[0] for ex in examples]
    per_template: dict[str, Any] = {}
    for template, idx in sorted(groups.items()):
        counts = Counter(gold[i] for i in idx)
        per_template[template] = {
            "n": len(idx),
            "clean_acc": _rate([clean[i] == gold[i] for i in idx]),
            "total_acc": _rate([total[i] == gold[i] for i in idx]),
            "majority_rate": round(counts.most_common(1)[0][1] / len(idx), 4),
            "chance_rate": round(1 / len(counts), 4),
        }
    prior = groups.get("prior", [])
    canon = {i: examples[i].metadata.get("canonical", "") for i in prior}
    counter = [i for i in prior if examples[i].metadata.get("counter_prior") == "1"]
    result = {
        "per_template": per_template,
        "prior_total_canonical_rate": _rate([total[i] == canon[i] for i in prior]),
        "counter_prior_n": len(counter),
        "counter_prior_clean_canonical_rate": _rate([clean[i] == canon[i] for i in counter]),
        "counter_prior_clean_acc": _rate([clean[i] == gold[i] for i in counter]),
        "overall_clean_acc": _rate([c == g for c, g in zip(clean, gold, strict=True)]),
    }
    if any("planted" in ex.metadata for ex in examples):
        result["planted"] = planted_summary(examples, clean, total)
    return result


def planted_summary(examples: Sequence[Any], clean: list[str], total: list[str]) -> dict[str, Any]:
    """Return each planted group's answer rates beside the behaviour planted in it."""
    groups = _group(examples, "planted")
    gold = [ex.answers[0] for ex in examples]
    canon = [ex.metadata.get("canonical", "") for ex in examples]
    out: dict[str, Any] = {}
    used: dict[str, Any] = {}
    for template, idx in sorted(
        _group([examples[i] for i in groups.get("used", [])], "template").items()
    ):
        rows = [groups["used"][j] for j in idx]
        band = chance_band([gold[i] for i in rows])
        total_acc = _rate([total[i] == gold[i] for i in rows])
        used[template] = {
            "n": len(rows),
            "clean_acc": _rate([clean[i] == gold[i] for i in rows]),
            "total_acc": total_acc,
            **band,
            "total_in_chance_band": in_band(total_acc, band),
        }
    out["used"] = used
    for name in ("prior", "suppressed"):
        rows = groups.get(name, [])
        counter = [i for i in rows if examples[i].metadata.get("counter_prior") == "1"]
        out[name] = {
            "n": len(rows),
            "clean_acc": _rate([clean[i] == gold[i] for i in rows]),
            "total_canonical_rate": _rate([total[i] == canon[i] for i in rows]),
            "counter_n": len(counter),
            "counter_clean_canonical_rate": _rate([clean[i] == canon[i] for i in counter]),
            "clean_equals_total_rate": _rate([clean[i] == total[i] for i in rows]),
        }
    rows = groups.get("not_retrieved", [])
    if rows:
        band = chance_band([gold[i] for i in rows])
        acc = _rate([clean[i] == gold[i] for i in rows])
        out["not_retrieved"] = {
            "n": len(rows),
            "clean_acc": acc,
            **band,
            "in_chance_band": in_band(acc, band),
        }
    rows = groups.get("control", [])
    out["control"] = {"n": len(rows), "clean_acc": _rate([clean[i] == gold[i] for i in rows])}
    return out


def evaluate(adapter: Any, cfg: EvalConfig) -> dict[str, Any]:
    """Return the model-card metrics of ``adapter`` on the held-out synth set ``cfg``."""
    from priorscope.engine.data.synth import generate, uninformative_image

    examples = generate(cfg.synth())
    images = [ex.image for ex in examples]
    clean = predict(adapter, examples, images, cfg.batch_size)
    total = predict(
        adapter, examples, [uninformative_image(im, "mean") for im in images], cfg.batch_size
    )
    result = summarize(examples, clean, total)
    result["eval"] = {"n": cfg.n, "seed": cfg.seed, "prior_rate": cfg.prior_rate, "size": cfg.size}
    if cfg.plant.active:
        result["eval"]["plant"] = {
            "templates": list(cfg.plant.templates),
            "suppressed": list(cfg.plant.suppressed),
            "not_retrieved": list(cfg.plant.not_retrieved),
            "suppressed_prior_rate": cfg.plant.suppressed_prior_rate,
        }
    return result
