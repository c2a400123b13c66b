"""Read a priorscope store: committed examples, decoded hidden states, outputs, full sequences.

Readers only ever see committed examples unless they ask otherwise: a capture may still be
writing, and an uncommitted shard can hold anything from zeros to a half-written file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from priorscope.engine.conditions import Condition
from priorscope.engine.errors import StoreError, did_you_mean
from priorscope.engine.store import schema
from priorscope.engine.store.dtypes import BF16_ATTR, decode
from priorscope.engine.store.layout import array


@dataclass(frozen=True)
class FullSeq:
    """Full-sequence rows of one example: values [token, fs_condition, fs_layer, d_model] float32."""

    values: np.ndarray
    kind: np.ndarray
    input_ids: np.ndarray
    position_ids: np.ndarray  # [rope, token]
    attention_mask: np.ndarray
    layers: tuple[int, ...]
    conditions: tuple[str, ...]


class CaptureStore:
    """A read-only view of a capture store at ``path``.

    Safe to use while a capture writes: read :meth:`committed` first, then values; rows whose
    commit flag was set when the mask was read are final.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not (self.path / "zarr.json").exists():
            raise StoreError(
                f"Expected a priorscope store (a Zarr v3 group) at {self.path}. Got no zarr.json "
                "there. Pass the --out folder of a finished or running capture."
            )
        self.group = zarr.open_group(str(self.path), mode="r")
        self.attrs: dict[str, Any] = dict(self.group.attrs)
        if self.attrs.get("schema_version") != schema.SCHEMA_VERSION:
            raise StoreError(
                f"Expected store schema version {schema.SCHEMA_VERSION}. Got "
                f"{self.attrs.get('schema_version')!r} in {self.path}. Re-run the capture with this "
                "priorscope version."
            )

    @property
    def conditions(self) -> list[Condition]:
        return [Condition.from_json(c) for c in self.attrs["conditions"]]

    @property
    def condition_names(self) -> list[str]:
        return [c.name for c in self.conditions]

    @property
    def layers(self) -> list[int]:
        return list(self.attrs["layers"])

    @property
    def reductions(self) -> list[str]:
        return list(self.attrs["reductions"])

    @property
    def candidates(self) -> list[str]:
        return list(self.attrs["candidates"])

    @property
    def n_examples(self) -> int:
        return int(array(self.group, schema.COMMIT_DONE).shape[0])

    def committed(self) -> np.ndarray:
        """Return the commit mask [example] bool (True where every array is written)."""
        return np.asarray(array(self.group, schema.COMMIT_DONE)[:], dtype=bool)

    def is_complete(self) -> bool:
        return bool(self.committed().all())

    def _index(self, kind: str, value: Any, known: list[Any]) -> int:
        if value in known:
            return known.index(value)
        if kind == "layer" and value == "embed" and -1 in known:
            return known.index(-1)
        raise did_you_mean(str(value), [str(k) for k in known], kind)

    def hidden(
        self,
        *,
        layer: int | str | None = None,
        condition: str | None = None,
        reduction: str | None = None,
        committed_only: bool = True,
    ) -> np.ndarray:
        """Return decoded hidden states as float32.

        Shape [example, condition, layer, reduction, d_model] with the axes given as arguments
        dropped; with ``committed_only`` only committed examples (in store order) are returned.
        """
        key: list[Any] = [slice(None)]
        key.append(
            slice(None)
            if condition is None
            else self._index("condition", condition, self.condition_names)
        )
        key.append(slice(None) if layer is None else self._index("layer", layer, self.layers))
        key.append(
            slice(None)
            if reduction is None
            else self._index("reduction", reduction, self.reductions)
        )
        arr = array(self.group, schema.HIDDEN)
        # The mask is read before the values: a shard committed in between is then merely
        # left out, never returned half-written.
        done = self.committed() if committed_only else None
        values = decode(np.asarray(arr[tuple(key)]), bool(arr.attrs.get(BF16_ATTR, False)))
        return values if done is None else values[done]

    def hidden_dask(self) -> Any:
        """Return ``hidden`` as a lazy float32 dask array chunked like the store's inner chunks."""
        import dask.array as da

        arr = array(self.group, schema.HIDDEN)
        is_bf16 = bool(arr.attrs.get(BF16_ATTR, False))
        lazy = da.from_zarr(arr, chunks=arr.chunks)
        return lazy.map_blocks(decode, is_bf16, dtype=np.float32)

    def outputs(self, name: str, *, committed_only: bool = True) -> np.ndarray:
        """Return an outputs array ('raw', 'answer', 'extracted', 'score', 'cand_logprob')."""
        path = f"outputs/{name}"
        if path not in {
            schema.OUT_RAW,
            schema.OUT_ANSWER,
            schema.OUT_EXTRACTED,
            schema.OUT_SCORE,
            schema.OUT_CAND_LOGPROB,
        }:
            raise did_you_mean(
                name, ["raw", "answer", "extracted", "score", "cand_logprob"], "output"
            )
        done = self.committed() if committed_only else None
        values = np.asarray(array(self.group, path)[:])
        return values if done is None else values[done]

    def examples(self, field: str, *, committed_only: bool = True) -> np.ndarray:
        """Return one column of the example table [example]."""
        done = self.committed() if committed_only else None
        values = np.asarray(array(self.group, f"{schema.EX}/{field}")[:])
        return values if done is None else values[done]

    def fullseq_examples(self) -> list[int]:
        """Return the store indices that have full-sequence residuals."""
        if schema.FULLSEQ_EXAMPLE not in self.group:
            return []
        return [int(i) for i in array(self.group, schema.FULLSEQ_EXAMPLE)[:]]

    def fullseq(self, example: int) -> FullSeq:
        """Return the full-sequence rows of store index ``example``."""
        known = self.fullseq_examples()
        if example not in known:
            raise StoreError(
                f"Expected an example with full-sequence residuals ({known[:10]}...). Got {example}. "
                "Capture with --full-seq N to record them."
            )
        if not self.committed()[example]:
            raise StoreError(
                f"Expected a committed example. Example {example} is not committed yet."
            )
        i = known.index(example)
        start = int(array(self.group, schema.FULLSEQ_OFFSETS)[i])
        stop = start + int(array(self.group, schema.FULLSEQ_LENGTH)[i])
        arr = array(self.group, schema.FULLSEQ_VALUES)
        attrs: dict[str, Any] = dict(self.group[schema.FULLSEQ].attrs)
        return FullSeq(
            values=decode(np.asarray(arr[start:stop]), bool(arr.attrs.get(BF16_ATTR, False))),
            kind=np.asarray(array(self.group, schema.FULLSEQ_KIND)[start:stop]),
            input_ids=np.asarray(array(self.group, schema.FULLSEQ_INPUT_IDS)[start:stop]),
            position_ids=np.asarray(array(self.group, schema.FULLSEQ_POSITION_IDS)[:, start:stop]),
            attention_mask=np.asarray(array(self.group, schema.FULLSEQ_ATTENTION_MASK)[start:stop]),
            layers=tuple(attrs["layers"]),
            conditions=tuple(attrs["conditions"]),
        )


def open_store(path: str | Path) -> CaptureStore:
    """Return a read-only view of the capture store at ``path``."""
    return CaptureStore(path)
