"""Check a store's completeness and integrity (``store verify``) and summarise it (``store info``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from priorscope.engine.store import schema
from priorscope.engine.store.dtypes import decode
from priorscope.engine.store.layout import array
from priorscope.engine.store.reader import CaptureStore, open_store

REQUIRED = (
    schema.OUT_RAW,
    schema.OUT_ANSWER,
    schema.OUT_EXTRACTED,
    schema.OUT_SCORE,
    schema.OUT_CAND_LOGPROB,
    schema.HIDDEN,
    schema.UNEMBED,
    schema.FINAL_NORM_WEIGHT,
    schema.COMMIT_DONE,
)


@dataclass
class VerifyReport:
    """What ``verify`` found: ``problems`` empty means the store is complete and consistent."""

    path: str
    n_examples: int
    n_committed: int
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _check_arrays(store: CaptureStore, report: VerifyReport) -> None:
    """Record missing arrays, wrong dimension names and shapes that disagree with the attrs."""
    n = store.n_examples
    for name in REQUIRED:
        if name not in store.group:
            report.problems.append(f"array {name} is missing")
            continue
        dims = tuple(store.group[name].metadata.dimension_names or ())
        if dims != schema.DIMS[name]:
            report.problems.append(
                f"array {name} has dimensions {dims}, expected {schema.DIMS[name]}"
            )
    if schema.HIDDEN in store.group:
        want = (n, len(store.conditions), len(store.layers), len(store.reductions))
        got = array(store.group, schema.HIDDEN).shape[:4]
        if got != want:
            report.problems.append(f"hidden has shape {got}, expected {want} from the attributes")


def _missing_ranges(done: np.ndarray, limit: int = 5) -> str:
    """Return up to ``limit`` uncommitted index ranges as text, e.g. '0-63, 128-191'."""
    idx = np.flatnonzero(~done)
    if idx.size == 0:
        return ""
    breaks = np.flatnonzero(np.diff(idx) > 1)
    starts = np.concatenate([[idx[0]], idx[breaks + 1]])
    stops = np.concatenate([idx[breaks], [idx[-1]]])
    parts = [f"{a}-{b}" if a != b else f"{a}" for a, b in zip(starts, stops, strict=True)]
    more = f" and {len(parts) - limit} more ranges" if len(parts) > limit else ""
    return ", ".join(parts[:limit]) + more


def _check_values(store: CaptureStore, done: np.ndarray, report: VerifyReport, deep: bool) -> None:
    """Record committed examples whose log-probs (and, if ``deep``, hidden states) are not finite."""
    # Log-probs are computed for every committed (example, condition): NaN means a lost write.
    cand = np.asarray(array(store.group, schema.OUT_CAND_LOGPROB)[:])
    bad = np.flatnonzero(done & ~np.isfinite(cand).all(axis=(1, 2)))
    if bad.size:
        report.problems.append(
            f"{bad.size} committed examples lack candidate log-probs (first: {bad[:5].tolist()})"
        )
    if not deep:
        return
    arr = array(store.group, schema.HIDDEN)
    # 'image_mean' of the 'none' condition is NaN by definition: there are no image tokens.
    allowed = np.zeros(arr.shape[1:4], dtype=bool)
    if "image_mean" in store.reductions:
        r = store.reductions.index("image_mean")
        for c, cond in enumerate(store.conditions):
            allowed[c, :, r] = cond.kind == "none"
    step = int(store.attrs["layout"]["shard_examples"])
    for start in range(0, store.n_examples, step):
        stop = min(start + step, store.n_examples)
        if not done[start:stop].all():
            continue
        values = np.asarray(arr[start:stop])
        finite = np.isfinite(decode(values, values.dtype == np.uint16))
        ok = finite.all(axis=-1) | allowed[None]
        if not ok.all():
            report.problems.append(f"hidden of examples {start}-{stop - 1} holds NaN or inf")


def verify(path: str | Path, *, deep: bool = False) -> VerifyReport:
    """Return a report on whether the store at ``path`` is complete and internally consistent."""
    store = open_store(path)
    done = store.committed()
    report = VerifyReport(str(path), store.n_examples, int(done.sum()))
    _check_arrays(store, report)
    if not done.all():
        report.problems.append(
            f"{int((~done).sum())} of {done.size} examples are not committed "
            f"({_missing_ranges(done)}); re-run the same capture command to finish them"
        )
    if not report.problems:
        _check_values(store, done, report, deep)
    partial = sorted(Path(path).rglob("*.partial"))
    if partial:
        report.warnings.append(
            f"{len(partial)} leftover *.partial files from an interrupted write (harmless; "
            f"first: {partial[0]})"
        )
    return report


def _disk_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def info(path: str | Path) -> dict[str, Any]:
    """Return a JSON-able summary of what the store at ``path`` holds."""
    store = open_store(path)
    attrs = store.attrs
    done = store.committed()
    arrays = {}
    for name, arr in store.group.arrays():
        arrays[name] = _array_info(arr)
    for gname, group in store.group.groups():
        for name, arr in group.arrays():
            arrays[f"{gname}/{name}"] = _array_info(arr)
    return {
        "path": str(path),
        "schema_version": attrs.get("schema_version"),
        "created": attrs.get("created"),
        "priorscope_version": attrs.get("priorscope_version"),
        "model": attrs.get("model", {}),
        "dataset": attrs.get("dataset", {}),
        "examples": store.n_examples,
        "committed": int(done.sum()),
        "conditions": store.condition_names,
        "layers": store.layers,
        "reductions": store.reductions,
        "candidates": store.candidates,
        "hidden_dtype": attrs.get("hidden_dtype"),
        "shard_examples": attrs.get("layout", {}).get("shard_examples"),
        "fullseq_examples": len(store.fullseq_examples()),
        "disk_bytes": _disk_bytes(Path(path)),
        "arrays": arrays,
    }


def _array_info(arr: Any) -> dict[str, Any]:
    return {
        "shape": list(arr.shape),
        "dtype": str(arr.dtype),
        "chunks": list(arr.chunks),
        "shards": list(arr.shards) if arr.shards else None,
        "dims": list(arr.metadata.dimension_names or ()),
    }
