"""Progressive visual decay metrics: every definition lives in this module, one function each.

Vocabulary used by every docstring below:

* **level**: an image condition on the decay ladder, in order ``clean``, each ``blur@S`` by
  ascending S, then ``total``. ``none`` (no image at all) is captured apart from the ladder and is
  only used by the MMStar-style metrics.
* **severe**: the most severe blur level captured (largest S); ``total`` when no blur was captured.
* **correct**: ``score >= correct_at`` (default 0.5), so that soft VQA scores (0.3 per matching
  annotator) count as correct only when at least two annotators agree. Accuracy itself is the mean
  of the raw scores, so soft accuracy is reported as the benchmark defines it.
* **answer**: the extracted answer string ("" when none could be extracted; two failed
  extractions therefore count as the same answer).
* **chance** of an example: the accuracy of a uniform guess among its candidate answers:
  ``1 / number of options`` for multiple choice, ``1 / number of distinct gold answers`` of the
  group being reported (benchmark, or category within it) for open-ended items. The same word
  means the same number in the demo, the organism's evaluation and the report.
* **majority rate** of an example: 1 when the most frequent gold answer of its group is among
  its gold answers, else 0; its mean is the accuracy of always giving that one answer (the best
  image-free constant guess, e.g. always "yes" on presence questions).

Every metric functions accepts leading batch axes (``...``) before the example axis, so the same
code gives the point estimate (no batch axis) and the bootstrap replicates (``[B, ...]``).
Confidence intervals are percentile intervals over replicates that resample the examples of a
group with replacement, with a generator seeded by (seed, group).
"""

from __future__ import annotations

import warnings
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from priorscope.engine.analysis.decay_json import finite_or_none
from priorscope.engine.analysis.decay_result import DecayResult, Estimate, GroupResult, ci_cell
from priorscope.engine.conditions import Condition
from priorscope.engine.errors import StoreError, UsageError
from priorscope.engine.store import ExampleTable, Store, open_store

NEVER = 0  # flip position of an example whose answer never changes on the ladder


# --------------------------------------------------------------------------------------------
# Levels


@dataclass(frozen=True)
class Levels:
    """Where each role sits on the condition axis of the store.

    ``ladder`` holds the axis indices of clean, the blur levels by ascending sigma, then total.
    """

    names: tuple[str, ...]
    ladder: tuple[int, ...]
    clean: int
    severe: int | None
    total: int | None
    none: int | None

    @property
    def ladder_names(self) -> tuple[str, ...]:
        return tuple(self.names[i] for i in self.ladder)


def resolve_levels(conditions: Sequence[Condition], severe: str | None = None) -> Levels:
    """Return the Levels of a store's conditions; ``severe`` overrides the most severe blur."""
    names = tuple(c.name for c in conditions)
    by_kind: dict[str, list[int]] = {}
    for i, c in enumerate(conditions):
        by_kind.setdefault(c.kind, []).append(i)
    if "clean" not in by_kind:
        raise StoreError(
            f"Expected a 'clean' condition in the store. Got conditions {list(names)} instead. "
            "Capture with the clean image (it is the reference for every decay metric)."
        )
    blurs = sorted(by_kind.get("blur", []), key=lambda i: conditions[i].sigma)
    total = by_kind.get("total", [None])[0]
    ladder = (by_kind["clean"][0], *blurs, *([total] if total is not None else []))
    if severe is None:
        severe_idx = blurs[-1] if blurs else total
    else:
        if severe not in names or conditions[names.index(severe)].kind not in ("blur", "total"):
            choices = [names[i] for i in ladder[1:]]
            raise UsageError(
                f"Expected --severe to name a captured blur or total condition. Got {severe!r} "
                f"instead. Expected one of: {', '.join(choices) or '(none captured)'}."
            )
        severe_idx = names.index(severe)
    return Levels(
        names=names,
        ladder=ladder,
        clean=by_kind["clean"][0],
        severe=severe_idx,
        total=total,
        none=by_kind.get("none", [None])[0],
    )


# --------------------------------------------------------------------------------------------
# Metric definitions


def accuracy(score: np.ndarray) -> np.ndarray:
    """Return the accuracy at each condition: the mean score over examples. [..., n, C] -> [..., C]."""
    return score.mean(axis=-2)


def normalised_auc(acc: np.ndarray, ladder: Sequence[int]) -> np.ndarray:
    """Return the area under accuracy-vs-level divided by clean accuracy. [..., C] -> [...].

    Levels sit at equal spacing 0..K (clean at 0, total at K) because blur sigmas are a design
    choice, not a natural scale; the trapezoid area is divided by ``K * clean accuracy`` so a
    model whose accuracy never drops scores 1 and one that drops to 0 right after clean scores
    ``1 / (2K)``. nan when the ladder has one level or clean accuracy is 0.
    """
    y = acc[..., list(ladder)]
    k = y.shape[-1] - 1
    if k < 1:
        return np.full(y.shape[:-1], np.nan)
    area = ((y[..., 1:] + y[..., :-1]) / 2).sum(axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = area / (k * y[..., 0])
    return np.where(y[..., 0] > 0, out, np.nan)


def invariant_answers(answer: np.ndarray, clean: int) -> np.ndarray:
    """Return whether each answer equals the clean answer of its example. [n, C] -> [n, C] bool."""
    return answer == answer[:, clean : clean + 1]


def invariance(invariant: np.ndarray) -> np.ndarray:
    """Return the share of examples whose answer equals their clean answer. [..., n, C] -> [..., C]."""
    return invariant.mean(axis=-2)


def strict_invariant(invariant: np.ndarray, ladder: Sequence[int]) -> np.ndarray:
    """Return whether an example's answer is unchanged at every ladder level. [..., n, C] -> [..., n]."""
    return np.asarray(invariant[..., list(ladder)].all(axis=-1))


def flip_position(invariant: np.ndarray, ladder: Sequence[int]) -> np.ndarray:
    """Return each example's first ladder position whose answer differs from clean. [n, C] -> [n].

    Positions count from 1 (the first blur level) to K (total); ``NEVER`` (0) when the answer is
    the clean one at every level. Later levels may return to the clean answer: the first change
    is what marks where the visual evidence stopped being used.
    """
    changed = ~invariant[..., list(ladder)]
    first = changed.argmax(axis=-1)
    return np.where(changed.any(axis=-1), first, NEVER)


def flip_distribution(flip: np.ndarray, k: int) -> np.ndarray:
    """Return the share of examples whose first flip is at each position 0..K. [..., n] -> [..., K+1].

    Position 0 is the share that never flips.
    """
    return np.stack([(flip == p).mean(axis=-1) for p in range(k + 1)], axis=-1)


def correct_at_threshold(score: np.ndarray, correct_at: float) -> np.ndarray:
    """Return whether each score counts as correct (``score >= correct_at``). Same shape as score."""
    return np.asarray(score >= correct_at)


def blind_answerable(correct: np.ndarray, severe: int | None, total: int | None) -> np.ndarray:
    """Return whether each example is correct under the severe blur and under total. [n, C] -> [n].

    When only one of the two was captured, that one decides; when neither was, no example is
    blind-answerable here and :func:`group_statistics` reports the rates as nan (not computed).
    """
    cols = sorted({c for c in (severe, total) if c is not None})
    if not cols:
        return np.zeros(correct.shape[:-1], dtype=bool)
    return np.asarray(correct[..., cols].all(axis=-1))


def _first_golds(gold: Sequence[Sequence[str]]) -> list[str | None]:
    """Return each example's first gold answer, case-folded and stripped (None when none)."""
    return [g[0].strip().casefold() if g else None for g in gold]


def chance_rates(
    gold: Sequence[Sequence[str]], options: Sequence[Sequence[str]], groups: np.ndarray
) -> np.ndarray:
    """Return each example's chance: the accuracy of a uniform guess. [n] float.

    Multiple choice: 1 / number of options. Open-ended: 1 / number of distinct gold answers
    among the open-ended examples of its group (``groups`` [n] labels), compared case-folded.
    """
    first = _first_golds(gold)
    out = np.zeros(len(first), dtype=np.float64)
    for label in np.unique(groups):
        members = [int(i) for i in np.flatnonzero(groups == label)]
        distinct = {first[i] for i in members if not options[i] and first[i] is not None}
        for i in members:
            if options[i]:
                out[i] = 1.0 / len(options[i])
            elif distinct:
                out[i] = 1.0 / len(distinct)
    return out


def majority_rates(gold: Sequence[Sequence[str]], groups: np.ndarray) -> np.ndarray:
    """Return whether the group's most frequent gold answer is among each example's. [n] float.

    The mean over a group is the accuracy of always giving that answer; ties are broken
    alphabetically and answers compared case-folded and stripped.
    """
    first = _first_golds(gold)
    norm = [{a.strip().casefold() for a in g} for g in gold]
    out = np.zeros(len(first), dtype=np.float64)
    for label in np.unique(groups):
        members = [int(i) for i in np.flatnonzero(groups == label)]
        counts = Counter(first[i] for i in members if first[i] is not None)
        if not counts:
            continue
        majority = min(counts, key=lambda a: (-counts[a], a))
        for i in members:
            out[i] = float(majority in norm[i])
    return out


def became_correct(correct: np.ndarray, clean: int) -> np.ndarray:
    """Return the share of examples wrong on clean but correct at each condition. [..., n, C] -> [..., C]."""
    return (~correct[..., clean : clean + 1] & correct).mean(axis=-2)


def extraction_failure(extracted: np.ndarray) -> np.ndarray:
    """Return the share of examples with no extractable answer at each condition. [..., n, C] -> [..., C]."""
    return 1.0 - extracted.mean(axis=-2)


def grounded_accuracy(clean_score: np.ndarray, blind: np.ndarray) -> np.ndarray:
    """Return clean accuracy on the examples that are not blind-answerable. [..., n] -> [...].

    nan when every example is blind-answerable.
    """
    keep = ~blind
    count = keep.sum(axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(count > 0, (clean_score * keep).sum(axis=-1) / count, np.nan)


def mmstar_gain_and_leakage(
    acc_clean: np.ndarray, acc_none: np.ndarray, text_baseline: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Return MMStar's multi-modal gain and leakage. Each [...] -> [...].

    Multi-modal gain = accuracy with the image minus accuracy with no image (MMStar's
    ``S_v - S_wv``). Leakage = ``max(0, S_wv - S_t)`` where MMStar's ``S_t`` is the score of the
    VLM's base LLM given the text alone. The store holds no base-LLM run, so ``S_t`` is replaced
    by the chance rate of the items: leakage here is an upper bound on MMStar's, counting as
    leaked everything the image-free run answers beyond chance.
    """
    gain = acc_clean - acc_none
    leakage = np.maximum(0.0, acc_none - text_baseline)
    return gain, leakage


# --------------------------------------------------------------------------------------------
# Per-group statistics and the bootstrap


@dataclass(frozen=True)
class PerExample:
    """Per-example arrays of one group of examples (n examples, C conditions)."""

    score: np.ndarray  # [n, C] float64
    correct: np.ndarray  # [n, C] bool
    invariant: np.ndarray  # [n, C] bool
    extracted: np.ndarray  # [n, C] bool
    chance: np.ndarray  # [n] float64
    majority: np.ndarray  # [n] float64
    blind: np.ndarray  # [n] bool
    flip: np.ndarray  # [n] int
    strict: np.ndarray  # [n] bool

    def take(self, idx: np.ndarray) -> PerExample:
        """Return the arrays at example indices ``idx`` (any shape [..., m])."""
        return PerExample(**{k: getattr(self, k)[idx] for k in self.__dataclass_fields__})


def group_statistics(ex: PerExample, levels: Levels) -> dict[str, np.ndarray]:
    """Return every metric of one group; scalars have shape [...], per-level ones [..., C]."""
    acc = accuracy(ex.score)
    k = len(levels.ladder) - 1
    mean_chance = ex.chance.mean(axis=-1)
    blind_rate = ex.blind.mean(axis=-1)
    acc_clean = acc[..., levels.clean]
    grounded = grounded_accuracy(ex.score[..., levels.clean], ex.blind)
    stats: dict[str, np.ndarray] = {
        "accuracy": acc,
        "invariance": invariance(ex.invariant),
        "became_correct": became_correct(ex.correct, levels.clean),
        "extraction_failure": extraction_failure(ex.extracted),
        "normalised_auc": normalised_auc(acc, levels.ladder),
        "strict_invariance": ex.strict.mean(axis=-1),
        "flip_distribution": flip_distribution(ex.flip, k),
        "became_correct_any_blur": _became_correct_any(ex.correct, levels),
        "chance": mean_chance,
        "majority_rate": ex.majority.mean(axis=-1),
        "blind_answerable": blind_rate,
        "blind_answerable_adjusted": blind_rate - mean_chance,
        "accuracy_all": acc_clean,
        "accuracy_not_blind": grounded,
        "inflation": acc_clean - grounded,
    }
    if levels.severe is None and levels.total is None:
        for name in (
            "blind_answerable",
            "blind_answerable_adjusted",
            "accuracy_not_blind",
            "inflation",
        ):
            stats[name] = np.full(np.shape(acc_clean), np.nan)
    if levels.total is not None:
        stats["visual_gain"] = acc_clean - acc[..., levels.total]
    if levels.none is not None:
        gain, leak = mmstar_gain_and_leakage(acc_clean, acc[..., levels.none], mean_chance)
        stats["multimodal_gain"] = gain
        stats["leakage"] = leak
    return stats


def _became_correct_any(correct: np.ndarray, levels: Levels) -> np.ndarray:
    """Return the share of examples wrong on clean and correct at any blur level. [..., n, C] -> [...]."""
    blur_cols = [i for i in levels.ladder[1:] if i != levels.total]
    if not blur_cols:
        return np.zeros(correct.shape[:-2])
    hit = correct[..., blur_cols].any(axis=-1) & ~correct[..., levels.clean]
    return hit.mean(axis=-1)


def _group_seed(seed: int, key: str) -> np.random.Generator:
    """Return the bootstrap generator of one group: stable across runs and group orders."""
    return np.random.default_rng([seed, zlib.crc32(key.encode())])


def bootstrap_intervals(
    ex: PerExample, levels: Levels, *, n_boot: int, seed: int, key: str, ci: float
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Return (low, high) percentile bounds of every statistic over ``n_boot`` resamples."""
    n = ex.score.shape[0]
    rng = _group_seed(seed, key)
    idx = rng.integers(0, n, size=(n_boot, n))
    # Replicates are processed in blocks so memory stays ~tens of MB whatever n is.
    per_rep = max(1, n * ex.score.shape[1] * 12)
    block = max(1, 50_000_000 // per_rep)
    parts: dict[str, list[np.ndarray]] = {}
    for start in range(0, n_boot, block):
        stats = group_statistics(ex.take(idx[start : start + block]), levels)
        for name, val in stats.items():
            parts.setdefault(name, []).append(val)
    alpha = (1.0 - ci) / 2 * 100
    out = {}
    for name, vals in parts.items():
        reps = np.concatenate(vals, axis=0)
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            # An all-nan metric (e.g. AUC with clean accuracy 0) simply has no interval.
            warnings.simplefilter("ignore", RuntimeWarning)
            lo = np.nanpercentile(reps, alpha, axis=0)
            hi = np.nanpercentile(reps, 100 - alpha, axis=0)
        out[name] = (lo, hi)
    return out


# --------------------------------------------------------------------------------------------
# The whole computation


GROUPINGS = ("benchmark", "category")


@dataclass(frozen=True)
class DecayConfig:
    """How to compute decay metrics: grouping, what counts as correct, and the bootstrap.

    ``by`` 'category' reports each benchmark and every category within it. Validated on
    construction, so a config built in Python is checked exactly like one built by the CLI.
    """

    by: str = "benchmark"
    correct_at: float = 0.5
    severe: str | None = None
    n_boot: int = 1000
    ci: float = 0.95
    seed: int = 0
    chunk_rows: int | None = None  # dask chunking along examples; None keeps the store's
    scheduler: str | None = "threads"  # a dask scheduler name or a distributed Client address
    by_category: bool | None = None  # the older spelling of by="category"; set from ``by``

    def __post_init__(self) -> None:
        if self.by_category is not None and self.by_category != (self.by == "category"):
            if self.by != "benchmark":
                raise UsageError(
                    f"Expected by={self.by!r} or by_category={self.by_category}, not both "
                    "disagreeing. Pass by='benchmark' or by='category' only."
                )
            object.__setattr__(self, "by", "category" if self.by_category else "benchmark")
        if self.by not in GROUPINGS:
            raise UsageError(
                f"Expected by (--by) 'benchmark' or 'category'. Got {self.by!r} instead."
            )
        if not 0.0 < self.correct_at <= 1.0:
            raise UsageError(
                f"Expected correct_at (--correct-at) in (0, 1]. Got {self.correct_at} instead."
            )
        if self.n_boot < 10:
            raise UsageError(
                f"Expected n_boot (--n-boot) of at least 10. Got {self.n_boot} instead."
            )
        if not 0.5 <= self.ci < 1.0:
            raise UsageError(f"Expected ci (--ci) in [0.5, 1), e.g. 0.95. Got {self.ci} instead.")
        if self.chunk_rows is not None and self.chunk_rows < 1:
            raise UsageError(
                f"Expected a positive chunk_rows (--chunk-rows). Got {self.chunk_rows} instead."
            )
        object.__setattr__(self, "by_category", self.by == "category")

    def to_json(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def derive_per_example(
    gold: Sequence[Sequence[str]],
    options: Sequence[Sequence[str]],
    score: np.ndarray,
    invariant: np.ndarray,
    extracted: np.ndarray,
    levels: Levels,
    config: DecayConfig,
) -> PerExample:
    """Return the per-example arrays of one group; chance is relative to this group's answers."""
    correct = correct_at_threshold(score, config.correct_at)
    one_group = np.zeros(len(gold), dtype=np.int64)
    return PerExample(
        score=score.astype(np.float64),
        correct=correct,
        invariant=invariant,
        extracted=extracted.astype(bool),
        chance=chance_rates(gold, options, one_group),
        majority=majority_rates(gold, one_group),
        blind=blind_answerable(correct, levels.severe, levels.total),
        flip=flip_position(invariant, levels.ladder),
        strict=strict_invariant(invariant, levels.ladder),
    )


def _read_compact(
    store: Store, levels: Levels, config: DecayConfig, in_memory: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (score float32, invariant bool, extracted bool), each [n, C], for committed rows.

    Through dask the string answers are compared with the clean answer block by block, so only
    these one-byte-per-cell results (and the float scores) are ever held for all examples.
    """
    if in_memory:
        score = store.outputs("score").astype(np.float32)
        invariant = invariant_answers(store.outputs("answer"), levels.clean)
        return score, invariant, store.outputs("extracted").astype(bool)
    import dask

    def lazy(name: str) -> Any:
        return store.outputs_dask(name, chunk_rows=config.chunk_rows)

    inv = lazy("answer").map_blocks(
        invariant_answers, levels.clean, dtype=bool, meta=np.empty((0, 0), dtype=bool)
    )
    parts = (lazy("score").astype(np.float32), inv, lazy("extracted").astype(bool))
    address = config.scheduler or ""
    if "://" in address:
        # An existing dask.distributed cluster (e.g. tcp://host:8786): run the graph there.
        from distributed import Client

        with Client(address) as client:
            score, inv_np, ext = dask.compute(*parts, scheduler=client)
    else:
        score, inv_np, ext = dask.compute(*parts, scheduler=config.scheduler)
    return np.asarray(score), np.asarray(inv_np), np.asarray(ext)


def compute_decay(
    store: Store | str | Path, config: DecayConfig | None = None, *, in_memory: bool = False
) -> DecayResult:
    """Return the decay metrics of every benchmark (and category) of a store, with CIs.

    ``store`` is a Store or a path (opened once here). ``in_memory`` reads whole arrays
    instead of through dask; both give equal numbers.
    """
    config = config or DecayConfig()
    # One snapshot of the commit log: the table and the outputs then see the same rows.
    snap = open_store(store).snapshot()
    tables = snap.examples()
    levels = resolve_levels(tables.conditions, config.severe)
    if tables.n == 0:
        raise StoreError(
            f"Expected committed examples in store {snap.path!r}. Got none "
            f"({tables.n_uncommitted} uncommitted). Let the capture finish or resume it."
        )
    score, inv, extracted = _read_compact(snap, levels, config, in_memory)
    _check_scores(score, snap.path)
    results = []
    for benchmark, category in _group_labels(tables, config.by == "category"):
        mask = np.array([b == benchmark for b in tables.benchmark])
        if category is not None:
            mask &= np.array([c == category for c in tables.category])
        results.append(
            _one_group(tables, score, inv, extracted, mask, levels, config, benchmark, category)
        )
    per_example = _per_example_table(tables, score, inv, extracted, levels, config)
    return DecayResult(snap.path, config, levels, tuple(results), per_example, tables.n_uncommitted)


def _check_scores(score: np.ndarray, path: str) -> None:
    """Raise StoreError when a score lies outside [0, 1] or is nan."""
    bad = ~((score >= 0) & (score <= 1))
    if bad.any():
        row, col = (int(v) for v in np.argwhere(bad)[0])
        raise StoreError(
            f"Expected outputs/score values in [0, 1] in store {path!r}. Got "
            f"{score[row, col]} at committed example {row}, condition {col}. "
            "Run 'priorscope store verify'."
        )


def _group_labels(tables: ExampleTable, by_category: bool) -> list[tuple[str, str | None]]:
    """Return the (benchmark, category) groups to report, benchmarks first, sorted."""
    out: list[tuple[str, str | None]] = [(b, None) for b in sorted(set(tables.benchmark))]
    if by_category:
        pairs = sorted(set(zip(tables.benchmark, tables.category, strict=True)))
        out += [(b, c) for b, c in pairs]
    return out


def _one_group(
    tables: ExampleTable,
    score: np.ndarray,
    inv: np.ndarray,
    extracted: np.ndarray,
    mask: np.ndarray,
    levels: Levels,
    config: DecayConfig,
    benchmark: str,
    category: str | None,
) -> GroupResult:
    """Return the GroupResult of the examples selected by ``mask`` [n]."""
    idx = np.flatnonzero(mask)
    # Chance and majority rate are those of this group's own answers: always "yes" is worth
    # more on presence questions than on the benchmark as a whole.
    ex = derive_per_example(
        [tables.gold[i] for i in idx],
        [tables.options[i] for i in idx],
        score[idx],
        inv[idx],
        extracted[idx],
        levels,
        config,
    )
    values = group_statistics(ex, levels)
    key = benchmark if category is None else f"{benchmark}/{category}"
    bounds = bootstrap_intervals(
        ex, levels, n_boot=config.n_boot, seed=config.seed, key=key, ci=config.ci
    )
    return GroupResult(
        benchmark=benchmark,
        category=category,
        n=len(idx),
        values=values,
        low={k: v[0] for k, v in bounds.items()},
        high={k: v[1] for k, v in bounds.items()},
    )


def _per_example_table(
    tables: ExampleTable,
    score: np.ndarray,
    inv: np.ndarray,
    extracted: np.ndarray,
    levels: Levels,
    config: DecayConfig,
) -> dict[str, np.ndarray]:
    """Return per-example columns: id, benchmark, category, flip level, blind, strict, clean."""
    correct = correct_at_threshold(score, config.correct_at)
    flip = flip_position(inv, levels.ladder)
    names = np.array(["", *levels.ladder_names[1:]], dtype=object)
    blur_cols = [i for i in levels.ladder[1:] if i != levels.total]
    any_blur = correct[:, blur_cols].any(axis=1) if blur_cols else np.zeros(len(flip), bool)
    return {
        "row": tables.rows,
        "id": np.array(tables.ids, dtype=object),
        "benchmark": np.array(tables.benchmark, dtype=object),
        "category": np.array(tables.category, dtype=object),
        "flip_level": np.where(flip == NEVER, None, names[flip]),
        "blind_answerable": blind_answerable(correct, levels.severe, levels.total),
        "strict_invariant": strict_invariant(inv, levels.ladder),
        "correct_clean": correct[:, levels.clean],
        "became_correct_under_blur": any_blur & ~correct[:, levels.clean],
        "extracted_clean": extracted[:, levels.clean],
    }


__all__ = [
    "NEVER",
    "DecayConfig",
    "DecayResult",
    "Estimate",
    "GroupResult",
    "Levels",
    "PerExample",
    "accuracy",
    "became_correct",
    "blind_answerable",
    "bootstrap_intervals",
    "chance_rates",
    "ci_cell",
    "compute_decay",
    "correct_at_threshold",
    "extraction_failure",
    "finite_or_none",
    "flip_distribution",
    "flip_position",
    "grounded_accuracy",
    "group_statistics",
    "invariance",
    "invariant_answers",
    "majority_rates",
    "mmstar_gain_and_leakage",
    "normalised_auc",
    "resolve_levels",
    "strict_invariant",
]
