"""The priorscope store: a versioned Zarr v3 group that capture writes and analyses read.

Readers open a store only through :func:`open_store` (one handle, one commit policy); writers
create and reopen it only through this package (``create_store``, ``open_for_capture``,
``write_answer_store``, ``open_results``). No other module opens a store's Zarr group.
"""

from __future__ import annotations

from priorscope.engine.store import schema
from priorscope.engine.store.answers import write_answer_store
from priorscope.engine.store.chunks import HiddenChunk, read_hidden_chunk
from priorscope.engine.store.groups import (
    ArraySpec,
    GroupSpec,
    declared_group,
    declared_groups,
    register_group,
)
from priorscope.engine.store.handle import FinalNorm, FullSeq, Store, open_store, site_name
from priorscope.engine.store.layout import (
    FullSeqLayout,
    StoreLayout,
    choose_shard_examples,
    commit_mask,
    create_store,
    open_for_capture,
    rank_shards,
)
from priorscope.engine.store.results import (
    ResultStore,
    find_results,
    open_results,
    results_info,
    results_path,
)
from priorscope.engine.store.tables import ExampleTable
from priorscope.engine.store.verify import VerifyReport, info, verify
from priorscope.engine.store.writer import BatchRows, FullSeqRows, ShardWriter

__all__ = [
    "ArraySpec",
    "BatchRows",
    "ExampleTable",
    "FinalNorm",
    "FullSeq",
    "FullSeqLayout",
    "FullSeqRows",
    "GroupSpec",
    "HiddenChunk",
    "ResultStore",
    "ShardWriter",
    "Store",
    "StoreLayout",
    "VerifyReport",
    "choose_shard_examples",
    "commit_mask",
    "create_store",
    "declared_group",
    "declared_groups",
    "find_results",
    "info",
    "open_for_capture",
    "open_results",
    "open_store",
    "rank_shards",
    "read_hidden_chunk",
    "register_group",
    "results_info",
    "results_path",
    "schema",
    "site_name",
    "verify",
    "write_answer_store",
]
