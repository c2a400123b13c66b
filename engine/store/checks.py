"""Cheap integrity checks of a capture store, from metadata only (no chunk is read).

``open_store`` runs them on every open and ``store verify`` reports them: an analysis never
trusts a store that verify rejects. What is checked comes from the declared groups.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import zarr

from priorscope.engine.conditions import Condition
from priorscope.engine.store import schema
from priorscope.engine.store.groups import GroupSpec, declared_groups
from priorscope.engine.store.integrity import attribute_problems

# 1: chunks without checksums (still read; verify cannot prove their bytes). 2: crc32c everywhere.
READABLE_SCHEMA_VERSIONS = (1, schema.SCHEMA_VERSION)


def parse_conditions(attrs: Mapping[str, Any]) -> tuple[list[Condition], list[str]]:
    """Return (the conditions recorded in ``attrs``, problems found reading them)."""
    raw = attrs.get("conditions")
    if not isinstance(raw, list) or not raw:
        return [], ["group attribute 'conditions' is missing or empty"]
    try:
        return [Condition.from_json(c) for c in raw], []
    except (KeyError, TypeError, ValueError) as exc:
        return [], [f"group attribute 'conditions' is malformed ({exc})"]


def _node(group: zarr.Group, path: str) -> Any:
    """Return the node at ``path`` or None when absent or unreadable."""
    try:
        return group.get(path)
    except Exception:  # unreadable metadata reads as absent; the problem line says so
        return None


def group_problems(group: zarr.Group, spec: GroupSpec, attrs: Mapping[str, Any]) -> list[str]:
    """Return one line per missing required array, wrong dims or wrong dtype of ``spec``."""
    found = {path: _node(group, path) for path in spec.paths()}
    present = any(node is not None for node in found.values())
    excused = bool(spec.absent_when and attrs.get(spec.absent_when))
    if not present and (not spec.required or excused):
        return []
    problems = []
    for path, arr_spec in spec.paths().items():
        node = found[path]
        if node is None:
            if arr_spec.required:
                problems.append(f"array {path} is missing (group {spec.name!r})")
            continue
        if not isinstance(node, zarr.Array):
            problems.append(f"{path} is a group, expected an array")
            continue
        dims = tuple(getattr(node.metadata, "dimension_names", None) or ())
        if dims != arr_spec.dims:
            problems.append(f"array {path} has dimensions {dims}, expected {arr_spec.dims}")
        if not arr_spec.accepts(node.dtype):
            problems.append(f"array {path} has dtype {node.dtype}, expected {arr_spec.dtype}")
    return problems


def _shape(group: zarr.Group, path: str) -> tuple[int, ...] | None:
    node = _node(group, path)
    return tuple(node.shape) if isinstance(node, zarr.Array) else None


def shape_problems(group: zarr.Group, attrs: Mapping[str, Any], n_conditions: int) -> list[str]:
    """Return one line per array whose shape disagrees with the commit log or the attributes."""
    done = _shape(group, schema.COMMIT_DONE)
    if done is None:
        return []
    n = done[0]
    want: dict[str, tuple[int, ...]] = {f"{schema.EX}/{f}": (n,) for f in schema.EXAMPLE_FIELDS}
    want[schema.COMMIT_SKIPPED] = (n,)  # optional; checked when present
    for path in (schema.OUT_RAW, schema.OUT_ANSWER, schema.OUT_EXTRACTED, schema.OUT_SCORE):
        want[path] = (n, n_conditions)
    if not attrs.get("answers_only"):
        layers, reductions = attrs.get("layers", []), attrs.get("reductions", [])
        n_cand = max(len(attrs.get("candidates", [])), 1)
        want[schema.OUT_CAND_LOGPROB] = (n, n_conditions, n_cand)
        want[schema.HIDDEN] = (n, n_conditions, len(layers), len(reductions))
        want[schema.UNEMBED] = (n_cand,)
    problems = []
    for path, expected in want.items():
        got = _shape(group, path)
        if got is not None and got[: len(expected)] != expected:
            problems.append(
                f"{path} has shape {got}, expected {expected} from the commit log and the "
                "group attributes"
            )
    return problems


def structure_problems(group: zarr.Group, attrs: Mapping[str, Any]) -> list[str]:
    """Return every problem the cheap checks find (empty: the store's structure is sound)."""
    problems = []
    if attrs.get("schema_version") not in READABLE_SCHEMA_VERSIONS:
        problems.append(
            f"schema_version is {attrs.get('schema_version')!r}, expected one of "
            f"{list(READABLE_SCHEMA_VERSIONS)} (re-capture with this priorscope version)"
        )
    conditions, bad = parse_conditions(attrs)
    problems += bad
    for spec in declared_groups("capture"):
        problems += group_problems(group, spec, attrs)
    if conditions:
        problems += shape_problems(group, attrs, len(conditions))
    # Attributes against each other (fingerprint, d_model, layers): metadata only, so cheap.
    problems += attribute_problems(group, attrs)
    return problems
