"""Everything before the model loop: load the model and data, then create or reopen the store."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import importlib.metadata as md
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from priorscope.engine.capture.config import IDENTITY_FIELDS, CaptureConfig
from priorscope.engine.capture.hooks import Recorder, recording
from priorscope.engine.capture.plan import Plan, example_table, file_sha256, make_plan
from priorscope.engine.conditions import parse_layers
from priorscope.engine.errors import DataError, StoreError
from priorscope.engine.models.base import VLMAdapter
from priorscope.engine.store.backend import exists as store_exists
from priorscope.engine.store.dtypes import parse_hidden_dtype
from priorscope.engine.store.layout import (
    FullSeqLayout,
    StoreLayout,
    check_resume,
    choose_shard_examples,
    create_store,
    layout_from_attrs,
    open_for_capture,
    wait_for_store,
)

if TYPE_CHECKING:
    import zarr

PACKAGES = ("priorscope", "torch", "transformers", "zarr", "numpy", "dask", "pillow")


@dataclass(frozen=True)
class Prepared:
    """The loaded model, the plan and the resolved layer lists."""

    adapter: VLMAdapter
    plan: Plan
    layers: list[int]
    fullseq_layers: list[int]
    skipped: int


def resolve_device(name: str) -> str:
    """Return ``cuda`` or ``cpu`` for ``auto``; otherwise ``name`` unchanged."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def resolve_dtype(name: str, device: str) -> str:
    """Return the compute dtype: bf16 on CUDA and fp32 on CPU for ``auto``."""
    if name == "auto":
        return "bfloat16" if device.startswith("cuda") else "float32"
    return parse_hidden_dtype(name)


def load_examples(cfg: CaptureConfig) -> tuple[list[Any], int]:
    """Return (examples, number of skipped rows) of ``cfg.data``, cut to ``cfg.limit``."""
    from priorscope.engine.data import load

    result = load(cfg.data, **cfg.data_options)
    examples = list(result.examples)[: cfg.limit] if cfg.limit else list(result.examples)
    if not examples:
        raise DataError(
            f"Expected at least one usable example in {cfg.data}. Got none "
            f"({len(result.skipped)} rows skipped). Run 'priorscope data check' on the file."
        )
    return examples, len(result.skipped)


def prepare(cfg: CaptureConfig, adapter: VLMAdapter | None) -> tuple[VLMAdapter, Plan, Prepared]:
    """Return the adapter, the plan, and the prepared record of both."""
    if adapter is None:
        from priorscope.engine.models.registry import load_model

        device = resolve_device(cfg.device)
        adapter = load_model(cfg.model, device=device, dtype=resolve_dtype(cfg.dtype, device))
    examples, skipped = load_examples(cfg)
    plan = make_plan(examples, cfg.full_seq)
    layers = parse_layers(cfg.layers, adapter.num_layers)
    fs_layers = parse_layers(cfg.full_seq_layers, adapter.num_layers) if cfg.full_seq else []
    return adapter, plan, Prepared(adapter, plan, layers, fs_layers, skipped)


def identity(cfg: CaptureConfig, adapter: VLMAdapter, data_sha: str) -> dict[str, Any]:
    """Return the configuration a resume must match (recorded as group attribute ``config``)."""
    full = cfg.to_json()
    out = {key: full[key] for key in IDENTITY_FIELDS}
    out["model"] = str(adapter.name_or_path)
    out["data"] = {"path": str(Path(cfg.data).resolve()), "sha256": data_sha}
    out["dtype"] = str(adapter.dtype).replace("torch.", "")
    # Spellings differ (bf16, bfloat16, auto); the resolved storage dtype is what matters.
    out["hidden_dtype"] = resolve_hidden_dtype(cfg, adapter)
    return out


def resolve_hidden_dtype(cfg: CaptureConfig, adapter: VLMAdapter) -> str:
    """Return the canonical storage dtype of hidden states (``auto`` = the model's dtype)."""
    if cfg.hidden_dtype == "auto":
        return str(adapter.dtype).replace("torch.", "")
    return parse_hidden_dtype(cfg.hidden_dtype)


def open_capture_store(
    cfg: CaptureConfig, adapter: VLMAdapter, plan: Plan, prep: Prepared
) -> tuple[zarr.Group, StoreLayout]:
    """Return the writable store group and its layout, creating it on rank 0 when absent."""
    path = Path(cfg.out)
    data_sha = file_sha256(cfg.data) if Path(cfg.data).is_file() else ""
    wanted = identity(cfg, adapter, data_sha)
    if not store_exists(path):
        if path.exists() and any(path.iterdir()):
            raise StoreError(
                f"Expected --out to be a new folder or a priorscope store. Got a non-empty folder "
                f"without zarr.json: {path}. Choose another --out."
            )
        if cfg.shard[0] == 0:
            layout = _new_layout(cfg, adapter, plan, prep)
            wanted["shard_examples"] = layout.shard_examples  # record the resolved size
            attrs = _attributes(cfg, adapter, plan, prep, wanted, data_sha)
            create_store(
                path,
                layout,
                attrs,
                example_table(plan.examples, plan.order),
                _unembed(adapter, layout),
                _final_norm(adapter),
            )
        else:
            wait_for_store(path, cfg.wait_for_store_s)
    group = open_for_capture(path)
    recorded: Any = group.attrs.get("config") or {}
    if cfg.shard_examples == 0 and "shard_examples" in recorded:
        wanted["shard_examples"] = recorded["shard_examples"]  # "automatic" accepts any size
    check_resume(group, wanted, path)
    return group, layout_from_attrs(dict(group.attrs))


def _new_layout(cfg: CaptureConfig, adapter: VLMAdapter, plan: Plan, prep: Prepared) -> StoreLayout:
    """Return the layout of a new store (measures full-sequence token counts first)."""
    conditions = cfg.conditions()
    hidden_dtype = resolve_hidden_dtype(cfg, adapter)
    n = len(plan.examples)
    # Only the per-example size matters for choosing the shard size; one example per shard.
    sized = StoreLayout(
        n,
        tuple(c.name for c in conditions),
        tuple(prep.layers),
        tuple(cfg.reductions),
        adapter.d_model,
        tuple(plan.candidates),
        hidden_dtype,
        1,
    )
    shard = cfg.shard_examples or choose_shard_examples(sized.bytes_per_example(), n)
    fullseq = FullSeqLayout()
    if plan.fullseq_examples and prep.fullseq_layers:
        lengths, rope_rows = _measure_fullseq(adapter, plan)
        fullseq = FullSeqLayout(
            examples=tuple(plan.fullseq_examples),
            lengths=tuple(lengths),
            layers=tuple(prep.fullseq_layers),
            conditions=tuple(c.name for c in conditions if c.kind != "none"),
            rope_rows=rope_rows,
        )
    return dataclasses.replace(sized, shard_examples=shard, fullseq=fullseq)


def _measure_fullseq(adapter: VLMAdapter, plan: Plan) -> tuple[list[int], int]:
    """Return the unpadded token count of each full-sequence example and the rope row count."""
    lengths = []
    for idx in plan.fullseq_examples:
        ex = plan.example_at(idx)
        image = ex.image if ex.image_bytes is not None else None
        batch = adapter.encode([ex], [image])
        lengths.append(int(batch["input_ids"].shape[1]))
    # One forward tells how many rows of rotary positions the language model uses (3 for M-RoPE).
    recorder = Recorder(adapter, [], ["last"])
    with recording(recorder), torch.no_grad():
        recorder.arm(adapter.token_kinds(batch).to(adapter.device))
        adapter.model(**batch)
        rows = recorder.position_ids.shape[0] if recorder.position_ids is not None else 1
    return lengths, int(rows)


def _unembed(adapter: VLMAdapter, layout: StoreLayout) -> np.ndarray:
    """Return the candidates' LM-head rows [candidate, d_model] as float32."""
    if not layout.candidates:
        return np.zeros((1, layout.d_model), dtype=np.float32)
    return adapter.unembed_rows(list(layout.candidates)).float().cpu().numpy()


def _final_norm(adapter: VLMAdapter) -> dict[str, Any]:
    """Return the final norm's kind, eps, weight and bias (bias only for LayerNorm)."""
    norm = adapter.final_norm()
    eps = getattr(norm, "variance_epsilon", getattr(norm, "eps", 1e-6))
    bias = getattr(norm, "bias", None)
    return {
        "kind": "layernorm" if isinstance(norm, torch.nn.LayerNorm) else "rmsnorm",
        "eps": float(eps),
        "weight": norm.weight.detach().float().cpu().numpy(),
        "bias": None if bias is None else bias.detach().float().cpu().numpy(),
    }


def _packages() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = "not installed"
    return out


def _attributes(
    cfg: CaptureConfig,
    adapter: VLMAdapter,
    plan: Plan,
    prep: Prepared,
    wanted: dict[str, Any],
    data_sha: str,
) -> dict[str, Any]:
    """Return the group attributes: full provenance plus the resume identity."""
    described = adapter.describe()
    return {
        "priorscope_version": _packages()["priorscope"],
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "model": described,
        "processor": described.get("processor", {}),
        "prompt_template": described.get("prompt_template", ""),
        "conditions": [c.to_json() for c in cfg.conditions()],
        "dataset": {
            "files": [str(Path(cfg.data).resolve())],
            "sha256": data_sha,
            "count": len(plan.examples),
            "skipped": prep.skipped,
            "format": getattr(plan.examples[0].source, "format", ""),
        },
        "seeds": {"torch": 0, "generation": "greedy"},
        "packages": _packages(),
        "config": wanted,
        "capture_options": cfg.to_json(),
    }
