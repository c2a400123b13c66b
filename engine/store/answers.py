"""Write an answers-only store: the outputs of an evaluation run elsewhere, in priorscope's layout.

Decay and export need only answers and scores, not hidden states. This writer lets a user who ran
the blur ladder with another harness (or a test that needs a store where every number is known)
produce a store the analyses read exactly like one written by capture. It writes the declared
``examples``, ``outputs`` and ``commit`` groups and marks the store ``answers_only`` (no
``activations`` group).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from priorscope.engine.conditions import Condition
from priorscope.engine.errors import UsageError
from priorscope.engine.store import backend, schema
from priorscope.engine.store.integrity import FINGERPRINT_ATTR, fingerprint
from priorscope.engine.store.layout import new_array, write_example_table


def _check_shape(name: str, arr: np.ndarray, shape: tuple[int, ...]) -> None:
    """Raise UsageError when ``arr`` does not have ``shape``."""
    if arr.shape != shape:
        raise UsageError(f"Expected {name} of shape {shape}. Got {arr.shape} instead.")


def _per_example(value: Sequence[str] | str | None, default: str, n: int) -> list[str]:
    """Return ``n`` strings: ``value`` repeated when it is one string, else checked per example."""
    if value is None or isinstance(value, str):
        return [default if value is None else value] * n
    if len(value) != n:
        raise UsageError(f"Expected {n} per-example values. Got {len(value)} instead.")
    return [str(v) for v in value]


def write_answer_store(
    path: str | Path,
    *,
    conditions: Sequence[Condition],
    ids: Sequence[str],
    gold: Sequence[Sequence[str]],
    answer: np.ndarray,
    score: np.ndarray,
    extracted: np.ndarray | None = None,
    options: Sequence[Sequence[str]] | None = None,
    benchmark: Sequence[str] | str = "bench",
    category: Sequence[str] | str = "",
    question: Sequence[str] | None = None,
    metadata: Sequence[Mapping[str, Any]] | None = None,
    source_row: Sequence[int] | None = None,
    done: Sequence[bool] | None = None,
    chunk_rows: int = 1024,
    attrs: Mapping[str, Any] | None = None,
) -> Path:
    """Return ``path`` after writing a store holding these answers [n, C] and example tables [n].

    ``done`` [n] is the commit log (every row committed when None); analyses skip the others.
    """
    n, c = len(ids), len(conditions)
    answer = np.asarray(answer, dtype=str)
    score = np.asarray(score, dtype=np.float32)
    extracted = answer != "" if extracted is None else np.asarray(extracted, dtype=bool)
    for name, arr in (("answer", answer), ("score", score), ("extracted", extracted)):
        _check_shape(name, arr, (n, c))
    done_arr = np.ones(n, dtype=bool) if done is None else np.asarray(done, dtype=bool)
    _check_shape("done", done_arr, (n,))

    group = backend.open_group(path, mode="w")
    full = _default_attrs(conditions, n) | dict(attrs or {})
    full[FINGERPRINT_ATTR] = fingerprint(json.loads(json.dumps(full, default=str)))
    group.attrs.update(full)
    chunk = max(1, min(chunk_rows, n))
    columns = {
        "id": [str(i) for i in ids],
        "benchmark": _per_example(benchmark, "bench", n),
        "category": _per_example(category, "", n),
        "question": _per_example(question, "", n),
        "gold": [json.dumps(list(g)) for g in gold],
        "options": [json.dumps(list(o)) for o in (options or [()] * n)],
        "metadata": [json.dumps(dict(m)) for m in (metadata or [{}] * n)],
        "source_row": list(range(n)) if source_row is None else list(source_row),
    }
    write_example_table(group, columns, n, chunk)
    for name, values in (
        (schema.OUT_RAW, answer),
        (schema.OUT_ANSWER, answer),
        (schema.OUT_EXTRACTED, extracted),
        (schema.OUT_SCORE, score),
        (schema.COMMIT_DONE, done_arr),
    ):
        # Strings use zarr's variable-length string type, as capture writes them.
        dtype: Any = str if values.dtype.kind in "UO" else values.dtype
        arr = new_array(
            group, name, values.shape, dtype, (chunk, *values.shape[1:]), schema.DIMS[name]
        )
        arr[...] = values
    return Path(path)


def _default_attrs(conditions: Sequence[Condition], n: int) -> dict[str, Any]:
    """Return the group attributes of an answers-only store."""
    from importlib.metadata import version

    return {
        "schema_version": schema.SCHEMA_VERSION,
        "priorscope_version": version("priorscope"),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": {"path": "(answers only)", "family": "unknown"},
        "conditions": [c.to_json() for c in conditions],
        "dataset": {"files": [], "sha256": [], "count": n, "format": ""},
        "answers_only": True,
    }
