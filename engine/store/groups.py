"""Declarations of the array groups that subsystems write into stores.

Each subsystem that writes arrays (capture today; probes, patching and the lens next) declares
them here as a :class:`GroupSpec`: array names, dimension names, dtype and whether required.
``open_store``, ``store verify``, ``store info`` and the report discover groups from these
declarations instead of keeping fixed lists of their own (zarr-python's codec registry: one
interface, one implementation per declaring module, registered in one place).

A declaring module calls :func:`register_group` at import time and is listed in
``DECLARING_MODULES`` so that :func:`declared_groups` sees it without the caller importing it.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from priorscope.engine.errors import UsageError, did_you_mean

STORE_KINDS = ("capture", "probes", "patch", "lens")

# Modules whose import registers groups, with the store kinds they declare. A new writer is
# one module plus one line here; only the modules of the kinds asked for are imported.
DECLARING_MODULES: dict[str, tuple[str, ...]] = {
    "priorscope.engine.store.schema": ("capture",),
    "priorscope.engine.probes.results": ("probes",),
    "priorscope.engine.patch.schema": ("patch", "lens"),
}

# 'str' is Zarr's variable-length UTF-8 string type; alternatives are separated by '|'.
TEXT = "str"


@dataclass(frozen=True)
class ArraySpec:
    """One declared array: its name inside the group, dimension names and storage dtype."""

    name: str
    dims: tuple[str, ...]
    dtype: str
    required: bool = True

    def __post_init__(self) -> None:
        if not self.name or self.name.startswith("/") or self.name.endswith("/"):
            raise UsageError(
                f"Expected an array name like 'score' or 'final_norm/weight'. Got {self.name!r}."
            )
        if not isinstance(self.dims, tuple) or not all(isinstance(d, str) for d in self.dims):
            raise UsageError(
                f"Expected the dims of array {self.name!r} as a tuple of names. Got {self.dims!r}."
            )
        if not self.dtype:
            raise UsageError(f"Expected a dtype for array {self.name!r}. Got an empty string.")

    @property
    def dtypes(self) -> tuple[str, ...]:
        """Return the accepted dtype names (one unless the spec lists alternatives)."""
        return tuple(self.dtype.split("|"))

    def accepts(self, dtype: Any) -> bool:
        """Return whether an array's dtype (numpy or zarr) is one this spec accepts."""
        name = str(dtype)
        if name.startswith("StringDType") or name in ("object", "<U0", "|O"):
            name = TEXT
        return name in self.dtypes

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "dims": list(self.dims),
            "dtype": self.dtype,
            "required": self.required,
        }

    @staticmethod
    def from_json(doc: dict[str, Any]) -> ArraySpec:
        return ArraySpec(doc["name"], tuple(doc["dims"]), doc["dtype"], bool(doc["required"]))


@dataclass(frozen=True)
class GroupSpec:
    """A group of arrays one subsystem (``owner``) writes into stores of ``store_kind``.

    ``prefix`` is where the arrays live in the store: None puts them under a Zarr group called
    ``name``; ``""`` puts them at the root (their names may then hold a path, e.g.
    ``final_norm/weight``). A group with ``required`` False may be absent; when present, every
    required array of it must be. ``absent_when`` names a store attribute that, when true,
    excuses the group's absence (an answers-only store has no activations).
    """

    name: str
    owner: str
    arrays: tuple[ArraySpec, ...]
    description: str
    store_kind: str
    required: bool = True
    prefix: str | None = None
    absent_when: str | None = None

    def __post_init__(self) -> None:
        if self.store_kind not in STORE_KINDS:
            raise did_you_mean(self.store_kind, STORE_KINDS, "store kind")
        if not self.name or "/" in self.name:
            raise UsageError(f"Expected a group name without '/'. Got {self.name!r}.")
        names = [a.name for a in self.arrays]
        if len(set(names)) != len(names) or not names:
            raise UsageError(
                f"Expected distinct array names in group {self.name!r}. Got {names} instead."
            )

    @property
    def location(self) -> str:
        """Return the path inside the store under which the arrays live ('' for the root)."""
        return self.name if self.prefix is None else self.prefix

    def path(self, array: str) -> str:
        """Return the store path of the declared array ``array``."""
        self.array(array)
        return f"{self.location}/{array}" if self.location else array

    def array(self, name: str) -> ArraySpec:
        """Return the spec of array ``name``; raise UnknownNameError naming the declared ones."""
        for spec in self.arrays:
            if spec.name == name:
                return spec
        raise did_you_mean(name, [a.name for a in self.arrays], f"array of group {self.name!r}")

    def paths(self) -> dict[str, ArraySpec]:
        """Return {store path: spec} of every declared array."""
        return {self.path(a.name): a for a in self.arrays}

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "owner": self.owner,
            "arrays": [a.to_json() for a in self.arrays],
            "description": self.description,
            "store_kind": self.store_kind,
            "required": self.required,
            "prefix": self.prefix,
            "absent_when": self.absent_when,
        }

    @staticmethod
    def from_json(doc: dict[str, Any]) -> GroupSpec:
        return GroupSpec(
            name=doc["name"],
            owner=doc["owner"],
            arrays=tuple(ArraySpec.from_json(a) for a in doc["arrays"]),
            description=doc.get("description", ""),
            store_kind=doc["store_kind"],
            required=bool(doc.get("required", True)),
            prefix=doc.get("prefix"),
            absent_when=doc.get("absent_when"),
        )


_REGISTRY: dict[str, GroupSpec] = {}


def register_group(spec: GroupSpec) -> GroupSpec:
    """Return ``spec`` after registering it; an equal re-registration is a no-op.

    Two different declarations under one name would make stores ambiguous, so that is refused.
    """
    known = _REGISTRY.get(spec.name)
    if known is not None and known != spec:
        raise UsageError(
            f"Expected one declaration of store group {spec.name!r}. Got a second, different "
            f"one from {spec.owner!r} (first from {known.owner!r}). Pick another group name."
        )
    _REGISTRY[spec.name] = spec
    return spec


def _import_declaring_modules(kinds: Iterable[str] = STORE_KINDS) -> None:
    wanted = set(kinds)
    for module, declared in DECLARING_MODULES.items():
        if wanted & set(declared):
            importlib.import_module(module)


def declared_groups(store_kind: str | Iterable[str] | None = None) -> tuple[GroupSpec, ...]:
    """Return the declared groups (of ``store_kind`` when given), in registration order."""
    if store_kind is None:
        kinds = set(STORE_KINDS)
    else:
        kinds = {store_kind} if isinstance(store_kind, str) else set(store_kind)
    for kind in kinds:
        if kind not in STORE_KINDS:
            raise did_you_mean(kind, STORE_KINDS, "store kind")
    _import_declaring_modules(kinds)
    return tuple(g for g in _REGISTRY.values() if g.store_kind in kinds)


def declared_group(name: str) -> GroupSpec:
    """Return the declared group called ``name``; raise UnknownNameError otherwise."""
    _import_declaring_modules()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise did_you_mean(name, list(_REGISTRY), "store group") from None


def array_spec(path: str, store_kind: str = "capture") -> ArraySpec:
    """Return the declared spec of the array at store path ``path`` in a ``store_kind`` store."""
    for group in declared_groups(store_kind):
        spec = group.paths().get(path)
        if spec is not None:
            return spec
    known = [p for g in declared_groups(store_kind) for p in g.paths()]
    raise did_you_mean(path, known, f"{store_kind} store array")


def dims(path: str, store_kind: str = "capture") -> tuple[str, ...]:
    """Return the declared dimension names of the array at ``path``."""
    return array_spec(path, store_kind).dims
