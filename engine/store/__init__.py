"""The priorscope store: a versioned Zarr v3 group that capture writes and analyses read."""

from __future__ import annotations

from priorscope.engine.store.layout import (
    FullSeqLayout,
    StoreLayout,
    choose_shard_examples,
    create_store,
    rank_shards,
)
from priorscope.engine.store.reader import CaptureStore, FullSeq, open_store
from priorscope.engine.store.verify import VerifyReport, info, verify
from priorscope.engine.store.writer import BatchRows, FullSeqRows, ShardWriter

__all__ = [
    "BatchRows",
    "CaptureStore",
    "FullSeq",
    "FullSeqLayout",
    "FullSeqRows",
    "ShardWriter",
    "StoreLayout",
    "VerifyReport",
    "choose_shard_examples",
    "create_store",
    "info",
    "open_store",
    "rank_shards",
    "verify",
]
