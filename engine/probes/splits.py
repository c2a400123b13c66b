"""Grouped, seeded k-fold splits shared by every cell of a probe run.

A fold holds whole examples, so every condition of an example is on the same side of a split;
and whole images: examples that share an image (a benchmark may ask several questions about
one) share a fold. With ``group_by='auto'`` the image identity is the best the store offers, in
this order:

1. an image hash column of the example metadata written at capture (:data:`IMAGE_COLUMNS`);
2. an image name or id column the benchmark file had (:data:`DATASET_IMAGE_COLUMNS`);
3. the sha256 of each example's image bytes, read back from the benchmark file the store
   records it was captured from (when that file is still there, unchanged);
4. the benchmark's own item id (``source_id``, set when a file repeats an id for several
   questions), else the example id: each example its own group, and the split says that
   examples sharing an image may then sit in different folds.

The assignment depends only on the groups and the seed, so every cell of a run (and a resumed
run) uses the same split.

Inside training fold set ``f`` the next fold, ``(f + 1) % k``, is the inner validation fold that
chooses regularisation and stops MLP training early.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from priorscope.engine.errors import PriorscopeError, UsageError
from priorscope.engine.probes.config import IMAGE_COLUMNS
from priorscope.engine.probes.controls import stable_seed


@dataclass(frozen=True)
class Split:
    """Fold of every analysed example: ``fold`` [example] int8 in 0..k-1, by ``group_by``."""

    fold: np.ndarray
    k: int
    group_by: str
    n_groups: int
    note: str = ""

    def inner(self, f: int) -> int:
        """Return the inner validation fold of outer fold ``f``."""
        return (f + 1) % self.k

    def summary(self) -> dict[str, Any]:
        return {
            "k": self.k,
            "group_by": self.group_by,
            "n_groups": self.n_groups,
            "fold_sizes": np.bincount(self.fold, minlength=self.k).tolist(),
            "note": self.note,
        }


# Metadata columns a benchmark file may name its image by (after the capture-side hashes).
DATASET_IMAGE_COLUMNS: tuple[str, ...] = (
    "imageId",
    "img_id",
    "image_name",
    "image_file",
    "image_path",
)
# Group names that are not an image identity: examples sharing an image may be split.
NOT_IMAGES: tuple[str, ...] = ("id", "source_id")
BYTES = "image_bytes_sha256"

# Returns (a key per example or None where it has no image, why not when there are no keys).
ImageKeys = Callable[[], tuple[np.ndarray | None, str]]


def group_keys(
    ids: Sequence[str],
    metadata_keys: list[str],
    column: Any,
    how: str,
    images: ImageKeys | None = None,
) -> tuple[np.ndarray, str]:
    """Return (group key per example, what grouped them): ``how`` is 'auto', 'id' or a column.

    With 'auto' the first of :data:`IMAGE_COLUMNS`, :data:`DATASET_IMAGE_COLUMNS` that the
    table has with some value (a metadata key, or a table field ``column`` knows), else the image-bytes hashes ``images()`` gives (:data:`BYTES`), else
    ``source_id`` where the metadata has it, else the example id (see the module docstring).
    """
    if how == "auto":
        for name in (*IMAGE_COLUMNS, *DATASET_IMAGE_COLUMNS):
            values = _column_if_any(column, name)
            if values is not None:
                return _own_group_when_blank(ids, values), name
        found = images() if images is not None else (None, "")
        if found[0] is not None:
            return _own_group_when_blank(ids, found[0]), BYTES
        how = "source_id" if "source_id" in metadata_keys else "id"
    if how == "id":
        return np.array(ids, dtype=object), "id"
    values = column(how)  # unknown names raise with a did-you-mean
    return _own_group_when_blank(ids, values), how


def _column_if_any(column: Any, name: str) -> Any:
    """Return column ``name`` (a metadata key or a table field) when some row has a value."""
    try:
        values = column(name)
    except UsageError:  # neither a metadata key nor a field of this store's table
        return None
    return values if any(v not in (None, "") for v in values) else None


def _own_group_when_blank(ids: Sequence[str], values: Any) -> np.ndarray:
    """Return group keys: the value, or, where it is missing, the example's own id."""
    # An example without a value is its own group, never lumped with other blanks.
    keys = [f"id:{i}" if v in (None, "") else f"v:{v}" for i, v in zip(ids, values, strict=True)]
    return np.array(keys, dtype=object)


def split_note(group_by: str, why: str = "") -> str:
    """Return what a reader of the results should know about how the folds were grouped."""
    if group_by not in NOT_IMAGES:
        return ""
    reason = f" ({why})" if why else ""
    return (
        f"Folds are grouped by {group_by!r}: the store records no image identity{reason}, so "
        "examples that share an image may sit in different folds. Re-capture with a "
        "priorscope that records image_sha256, keep the benchmark file where the store "
        "says it is, or pass --group-by COLUMN."
    )


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def dataset_image_keys(
    attrs: Mapping[str, Any], ids: Sequence[str]
) -> tuple[np.ndarray | None, str]:
    """Return (sha256 of each example's image bytes, '') or (None, why not).

    The images are read back from the benchmark file a capture store records (its ``config``
    attribute: ``data.path``, ``data.sha256`` and the ``data_options`` it was loaded with),
    matched to the store's examples by id. Refused, with the reason, when the file is gone or
    its sha256 differs from the recorded one (the rows might not be the captured ones).
    """
    config = attrs.get("config") or {}
    data = config.get("data") if isinstance(config, Mapping) else None
    if not isinstance(data, Mapping) or not data.get("path"):
        return None, "the store names no benchmark file"
    path = Path(str(data["path"]))
    if not path.is_file():
        return None, f"its benchmark file {str(path)!r} is not there"
    recorded = data.get("sha256")
    if recorded and _file_digest(path) != recorded:
        return None, f"its benchmark file {str(path)!r} changed since the capture"
    from priorscope.engine.data.loading import load

    options = dict(config.get("data_options") or {})
    for key in ("on_bad", "report_path"):
        options.pop(key, None)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            result = load(path, **options, on_bad="skip", report_path=Path(tmp) / "skipped.jsonl")
        except (PriorscopeError, TypeError, ValueError, OSError) as exc:
            return None, f"reading its benchmark file {str(path)!r} failed: {exc}"
    digests = {ex.id: ex.images_sha256 for ex in result.examples if ex.has_image}
    keys = np.array([digests.get(i) for i in ids], dtype=object)
    if not any(k is not None for k in keys):
        return None, f"no example of the store has an image in {str(path)!r}"
    return keys, ""


def assign_folds(
    keys: np.ndarray, k: int, seed: int, group_by: str = "id", note: str = ""
) -> Split:
    """Return a Split putting every group in one fold, folds as equal in size as groups allow.

    Groups are shuffled with ``seed``, then placed largest first (stable order) in the fold with
    fewest examples so far, the lowest fold index on ties.
    """
    uniq, inverse, sizes = np.unique(keys.astype(str), return_inverse=True, return_counts=True)
    if len(uniq) < k:
        raise UsageError(
            f"Expected at least {k} groups of examples for {k}-fold splits. Got {len(uniq)} "
            f"(grouped by {group_by!r}). Use fewer --folds or a store with more examples."
        )
    rng = np.random.default_rng(stable_seed(seed, "folds"))
    order = rng.permutation(len(uniq))
    order = order[np.argsort(-sizes[order], kind="stable")]
    fill = np.zeros(k, dtype=np.int64)
    group_fold = np.empty(len(uniq), dtype=np.int8)
    for g in order:
        f = int(np.argmin(fill))
        group_fold[g] = f
        fill[f] += sizes[g]
    return Split(group_fold[inverse].astype(np.int8), k, group_by, len(uniq), note)
