"""Check a store's completeness and integrity (``store verify``) and summarise it (``store info``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from priorscope.engine.errors import StoreError
from priorscope.engine.store import backend, schema
from priorscope.engine.store.checks import structure_problems
from priorscope.engine.store.dtypes import decode
from priorscope.engine.store.groups import declared_groups
from priorscope.engine.store.handle import Store, index_runs
from priorscope.engine.store.integrity import chunk_problems, read_problems


@dataclass
class VerifyReport:
    """What ``verify`` found: ``problems`` empty means the store is complete and consistent."""

    path: str
    n_examples: int
    n_committed: int
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    # Committed examples capture skipped (--on-bad skip): "index id: reason" per example.
    skipped: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _missing_ranges(done: np.ndarray, limit: int = 5) -> str:
    """Return up to ``limit`` uncommitted index ranges as text, e.g. '0-63, 128-191'."""
    runs = index_runs(np.flatnonzero(~done))
    parts = [f"{a}-{b - 1}" if b - 1 != a else f"{a}" for a, b in runs]
    more = f" and {len(parts) - limit} more ranges" if len(parts) > limit else ""
    return ", ".join(parts[:limit]) + more


def text_only_rows(store: Store, cand: np.ndarray | None = None) -> np.ndarray:
    """Return, per example of the store, whether it was captured under 'none' only.

    Capture gives a row without an image finite log-probs under 'none' and NaN under every
    other condition (run.py marks them void); the store does not record ``has_image``, so
    the pattern itself is the mark. A row NaN under 'none' too is a lost write, not this.
    """
    if cand is None:
        cand = store.outputs("cand_logprob", include_uncommitted=True)
    names = store.condition_names
    if "none" not in names or len(names) < 2:
        return np.zeros(cand.shape[0], dtype=bool)
    none = names.index("none")
    others = [c for c in range(len(names)) if c != none]
    return np.isfinite(cand[:, none]).all(axis=-1) & np.isnan(cand[:, others]).all(axis=(1, 2))


def _hidden_problems(
    store: Store, done: np.ndarray, text: np.ndarray, skipped: np.ndarray
) -> list[str]:
    """Return shards of committed examples whose hidden states are not finite where they must be."""
    arr = store.group[schema.HIDDEN]
    # 'image_mean' of the 'none' condition is NaN by definition: there are no image tokens.
    allowed = np.zeros(arr.shape[1:4], dtype=bool)
    if "image_mean" in store.reductions:
        r = store.reductions.index("image_mean")
        for c, cond in enumerate(store.conditions):
            allowed[c, :, r] = cond.kind == "none"
    # A text-only row's image conditions are void: all-NaN there, never a mix.
    void = np.array([cond.kind != "none" for cond in store.conditions])[None, :, None, None]
    problems = []
    step = store.shard_examples
    for start in range(0, store.n_examples, step):
        stop = min(start + step, store.n_examples)
        if not done[start:stop].all():
            continue
        values = decode(v := backend.read(arr, slice(start, stop)), v.dtype == np.uint16)
        ok = np.isfinite(values).all(axis=-1) | allowed[None]
        text_void = text[start:stop, None, None, None] & void
        ok |= text_void & np.isnan(values).all(axis=(2, 3, 4))[:, :, None, None]
        ok |= skipped[start:stop, None, None, None]  # a skipped row holds no values
        if not ok.all():
            problems.append(f"hidden of examples {start}-{stop - 1} holds NaN or inf")
    return problems


def _value_problems(
    store: Store, done: np.ndarray, deep: bool, skipped: np.ndarray | None = None
) -> list[str]:
    """Return committed examples whose log-probs (and, if ``deep``, hidden states) are not finite.

    ``done`` is the commit log; ``skipped`` rows (committed without values) are not checked.
    """
    if store.answers_only:
        return []
    skipped = np.zeros(done.shape, dtype=bool) if skipped is None else skipped
    problems = []
    # Log-probs are computed for every committed (example, condition): NaN means a lost write,
    # except a text-only row's image conditions, which are NaN by design.
    cand = store.outputs("cand_logprob", include_uncommitted=True)
    text = text_only_rows(store, cand)
    bad = np.flatnonzero(done & ~skipped & ~np.isfinite(cand).all(axis=(1, 2)) & ~text)
    if bad.size:
        problems.append(
            f"{bad.size} committed examples lack candidate log-probs (first: {bad[:5].tolist()})"
        )
    if not deep:
        return problems
    return problems + _hidden_problems(store, done, text, skipped)


def _read_failure(what: str, exc: Exception) -> str:
    return f"{what} cannot be read ({type(exc).__name__}: {str(exc)[:160]})"


def integrity_problems(store: Store, *, deep: bool = False) -> list[str]:
    """Return problems of the committed data (uncommitted rows are not one)."""
    try:
        done, skipped = store.finished(), store.skipped()
    except StoreError as exc:
        return [str(exc)]
    return _value_problems(store, done, deep, skipped)


def verify(path: str | Path | Store, *, deep: bool = False) -> VerifyReport:
    """Return a report on whether the store at ``path`` is complete and internally consistent."""
    where = path.path if isinstance(path, Store) else str(path)
    group = path.group if isinstance(path, Store) else backend.open_group(path, mode="r")
    problems = structure_problems(group, dict(group.attrs))
    if problems:
        n = group[schema.COMMIT_DONE].shape[0] if schema.COMMIT_DONE in group else 0
        return VerifyReport(where, int(n), 0, problems)
    store = path if isinstance(path, Store) else Store(path)
    try:
        done, skipped = store.finished(), store.skipped()
    except Exception as exc:  # a damaged commit log is a finding, not a crash
        return VerifyReport(where, store.n_examples, 0, [_read_failure(schema.COMMIT_DONE, exc)])
    report = VerifyReport(where, store.n_examples, int(done.sum()))
    report.skipped = _skip_lines(store, skipped)
    if not backend.is_url(where):
        report.problems += chunk_problems(Path(where), store.group, done)
    report.problems += read_problems(store.group, deep=deep)
    if report.problems:
        return report
    if not done.all():
        report.problems.append(
            f"{int((~done).sum())} of {done.size} examples are not committed "
            f"({_missing_ranges(done)}); re-run the same capture command to finish them"
        )
    if not report.problems:
        try:
            report.problems += _value_problems(store, done, deep, skipped)
        except Exception as exc:  # undecodable bytes surface here at the latest
            report.problems.append(_read_failure("hidden or outputs", exc))
    if not backend.is_url(where):
        partial = sorted(Path(where).rglob("*.partial"))
        if partial:
            report.warnings.append(
                f"{len(partial)} leftover *.partial files from an interrupted write (harmless; "
                f"first: {partial[0]})"
            )
    return report


def _skip_lines(store: Store, skipped: np.ndarray) -> list[str]:
    """Return "index id: reason" for every skipped example (ids from the example table)."""
    rows = np.flatnonzero(skipped)
    if rows.size == 0:
        return []
    reasons = store.skip_reasons()
    ids = store.examples(include_uncommitted=True).ids
    return [f"store row {int(i)} (id {ids[int(i)]!r}): {reasons[int(i)]}" for i in rows]


def _groups_info(store: Store) -> tuple[dict[str, Any], dict[str, Any]]:
    """Return ({group: description, owner, present}, {array path: info}) from the declarations."""
    groups, arrays = {}, {}
    for spec in declared_groups("capture"):
        present = [p for p in spec.paths() if p in store.group]
        groups[spec.name] = {
            "owner": spec.owner,
            "description": spec.description,
            "present": bool(present),
            "arrays": present,
        }
        arrays.update({p: _array_info(store.group[p]) for p in present})
    return groups, arrays


def info(path: str | Path | Store) -> dict[str, Any]:
    """Return a JSON-able summary of what the store at ``path`` holds, group by group."""
    store = path if isinstance(path, Store) else Store(path)
    attrs = store.attrs
    done, skipped = store.finished(), store.skipped()
    groups, arrays = _groups_info(store)
    return {
        "path": store.path,
        "schema_version": attrs.get("schema_version"),
        "created": attrs.get("created"),
        "priorscope_version": attrs.get("priorscope_version"),
        "model": attrs.get("model", {}),
        "dataset": attrs.get("dataset", {}),
        "examples": store.n_examples,
        "committed": int(done.sum()),
        # Committed without values (capture --on-bad skip); analyses leave them out.
        "skipped": int(skipped.sum()),
        "skipped_examples": _skip_lines(store, skipped),
        "conditions": store.condition_names,
        "layers": store.layers,
        "reductions": store.reductions,
        "candidates": store.candidates,
        "hidden_dtype": attrs.get("hidden_dtype"),
        "shard_examples": attrs.get("layout", {}).get("shard_examples"),
        "fullseq_examples": len(store.fullseq_examples()),
        # Rows without an image: captured under 'none' only, their other conditions void.
        "text_only_examples": _text_only_count(store, done),
        "disk_bytes": backend.stored_bytes(store.path),
        "groups": groups,
        "arrays": arrays,
    }


def _text_only_count(store: Store, done: np.ndarray) -> int:
    if store.answers_only:
        return 0
    return int((text_only_rows(store) & done).sum())


def _array_info(arr: Any) -> dict[str, Any]:
    return {
        "shape": list(arr.shape),
        "dtype": str(arr.dtype),
        "chunks": list(arr.chunks),
        "shards": list(arr.shards) if arr.shards else None,
        "dims": list(arr.metadata.dimension_names or ()),
    }


def _newest_mtime(path: Path) -> float:
    """Return the newest modification time of ``path`` and everything under it."""
    times = [path.stat().st_mtime] + [p.stat().st_mtime for p in path.rglob("*")]
    return max(times)


def remove_leftovers(path: str | Path, *, min_age_s: float = 60.0) -> list[str]:
    """Remove what killed writers leave at a local store and return the paths removed.

    ``*.partial`` files (Zarr's write-then-rename temporaries) inside the store and
    ``.NAME.zarr.creating-*`` folders beside it are dead once untouched for ``min_age_s``:
    a live writer renames its temporary within milliseconds, so the age guard keeps a
    concurrent rank's write in flight safe.
    """
    import shutil
    import time

    if backend.is_url(path):
        return []
    root = Path(path)
    now, removed = time.time(), []
    partial = sorted(root.rglob("*.partial")) if root.is_dir() else []
    creating = sorted(root.parent.glob(f".{root.name}.creating-*"))
    for leftover in partial + creating:
        try:
            if now - _newest_mtime(leftover) < min_age_s:
                continue
            if leftover.is_dir():
                shutil.rmtree(leftover)
            else:
                leftover.unlink()
        except FileNotFoundError:  # another process removed it first: fine
            continue
        removed.append(str(leftover))
    return removed
