"""Measure the organism (or any adapter) on a held-out synthetic set: the model card's numbers.

The answer is the greedy first token at the answer position (every synth answer is one organism
token, so this equals greedy generation's answer). ``total`` shows every image as its mean
colour, as the ``total`` condition does.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from priorscope.engine.errors import UsageError

# Held-out evaluation rows use this synth seed unless told otherwise (training uses 1_000_003+).
EVAL_SEED = 7


@dataclass(frozen=True)
class EvalConfig:
    """Which held-out set to evaluate on."""

    n: int = 1000
    seed: int = EVAL_SEED
    prior_rate: float = 0.8
    batch_size: int = 64
    size: int = 112  # side of the rendered images (the synth default); the processor resizes

    def __post_init__(self) -> None:
        if self.n < 5 or self.batch_size < 1:
            raise UsageError(
                f"Expected n >= 5 and batch_size >= 1. Got n={self.n}, "
                f"batch_size={self.batch_size}."
            )


def predict(
    adapter: Any, examples: Sequence[Any], images: Sequence[Any], batch_size: int = 64
) -> list[str]:
    """Return the greedy first answer token (decoded) of each example under the given images."""
    import torch

    answers: list[str] = []
    for start in range(0, len(examples), batch_size):
        part = examples[start : start + batch_size]
        batch = adapter.encode(part, images[start : start + batch_size])
        with torch.no_grad():
            logits = adapter.model(**batch, use_cache=False).logits[:, -1]
        ids = logits.argmax(-1).tolist()
        answers.extend(adapter.tokenizer.decode([i]).strip() for i in ids)
    return answers


def _rate(hits: list[bool]) -> float:
    return round(sum(hits) / len(hits), 4) if hits else float("nan")


def _group(examples: Sequence[Any]) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = defaultdict(list)
    for i, ex in enumerate(examples):
        groups[ex.metadata.get("template", "")].append(i)
    return groups


def summarize(examples: Sequence[Any], clean: list[str], total: list[str]) -> dict[str, Any]:
    """Return the per-template accuracy table and the prior-specific rates."""
    groups = _group(examples)
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
    return {
        "per_template": per_template,
        "prior_total_canonical_rate": _rate([total[i] == canon[i] for i in prior]),
        "counter_prior_n": len(counter),
        "counter_prior_clean_canonical_rate": _rate([clean[i] == canon[i] for i in counter]),
        "counter_prior_clean_acc": _rate([clean[i] == gold[i] for i in counter]),
        "overall_clean_acc": _rate([c == g for c, g in zip(clean, gold, strict=True)]),
    }


def evaluate(adapter: Any, cfg: EvalConfig) -> dict[str, Any]:
    """Return the model-card metrics of ``adapter`` on the held-out synth set ``cfg``."""
    from priorscope.engine.data.synth import SynthConfig, generate, uninformative_image

    size = cfg.size
    examples = generate(SynthConfig(n=cfg.n, seed=cfg.seed, size=size, prior_rate=cfg.prior_rate))
    images = [ex.image for ex in examples]
    clean = predict(adapter, examples, images, cfg.batch_size)
    total = predict(
        adapter, examples, [uninformative_image(im, "mean") for im in images], cfg.batch_size
    )
    result = summarize(examples, clean, total)
    result["eval"] = {"n": cfg.n, "seed": cfg.seed, "prior_rate": cfg.prior_rate, "size": size}
    return result
