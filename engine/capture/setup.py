"""Everything before the model loop: load the model and data, then create or reopen the store."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import importlib.metadata as md
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from priorscope.engine.capture.config import IDENTITY_FIELDS, CaptureConfig, optional_identity
from priorscope.engine.capture.hooks import Recorder, recording
from priorscope.engine.capture.images import clean_input
from priorscope.engine.capture.plan import Plan, example_table, file_sha256, make_plan
from priorscope.engine.conditions import parse_layers
from priorscope.engine.errors import ConfigMismatchError, DataError, StoreError, UsageError
from priorscope.engine.models.base import VLMAdapter
from priorscope.engine.store import backend, schema
from priorscope.engine.store.backend import children
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
    skip_report: str = ""  # the sidecar report of the skipped rows ("" when none)


def resolve_device(name: str) -> str:
    """Return this rank's device for ``auto`` (cuda:LOCAL_RANK under torchrun, else cpu)."""
    if name == "auto":
        if not torch.cuda.is_available():
            return "cpu"
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0')) % torch.cuda.device_count()}"
    try:
        kind = torch.device(name).type
    except RuntimeError:
        kind = ""
    if kind not in ("cpu", "cuda", "mps"):
        raise UsageError(
            f"Expected --device auto, cpu, cuda, cuda:N or mps. Got {name!r} instead. "
            "Pass one of those."
        )
    if kind == "cuda" and not torch.cuda.is_available():
        raise UsageError(
            f"Expected a CUDA-capable torch for --device {name}. Got torch "
            f"{torch.__version__} without CUDA instead. Pass --device cpu, or install a CUDA "
            "build of torch."
        )
    return name


def resolve_dtype(name: str, device: str) -> str:
    """Return the compute dtype: bf16 on CUDA and fp32 on CPU for ``auto``."""
    if name == "auto":
        return "bfloat16" if device.startswith("cuda") else "float32"
    return parse_hidden_dtype(name)


def load_examples(
    cfg: CaptureConfig, adapter: VLMAdapter | None = None
) -> tuple[list[Any], int, str]:
    """Return (examples, skipped row count, report path) of ``cfg.data``, cut to ``cfg.limit``.

    With ``adapter``, rows with more images than its family takes are refused with a
    ModelError naming the row and the family, before anything is written; under
    ``on_bad="skip"`` (a data option) they are skipped instead, counted with the loader's
    skipped rows and added to its sidecar report.
    """
    from priorscope.engine.data import load

    result = load(cfg.data, **cfg.data_options)
    examples: list[Any] = []
    refused: list[Any] = []
    for ex in result.examples:
        if cfg.limit and len(examples) >= cfg.limit:
            break
        if adapter is not None and not _fits(adapter, ex):
            if cfg.data_options.get("on_bad", "error") != "skip":
                adapter.check_image_count(ex, len(ex.images))  # raises, naming the row
            refused.append(ex)
            continue
        examples.append(ex)
    if refused:
        assert adapter is not None
        result = _report_refused(result, refused, adapter, cfg.data_options.get("report_path"))
    if not examples:
        raise DataError(
            f"Expected at least one usable example in {cfg.data}. Got none "
            f"({len(result.skipped)} rows skipped). Run 'priorscope data check' on the file."
        )
    report = str(result.report_path) if result.report_path is not None else ""
    return examples, len(result.skipped), report


def _fits(adapter: VLMAdapter, example: Any) -> bool:
    """Return whether the adapter's family takes as many images as ``example`` has."""
    most = adapter.max_images
    return most is None or len(example.images) <= most


def _report_refused(result: Any, refused: list[Any], adapter: VLMAdapter, report: Any) -> Any:
    """Return the load result with the refused rows added to its skipped rows and report."""
    from priorscope.engine.data.loading import add_skipped
    from priorscope.engine.data.problems import RowProblem

    problems = [
        RowProblem(
            path=ex.source.path if ex.source is not None else str(result.path),
            row=ex.source.row if ex.source is not None else -1,
            column="image",
            reason=(
                f"Expected at most {adapter.max_images} image(s) per prompt for model family "
                f"{adapter.family!r}. Got {len(ex.images)} images in example {ex.id!r} "
                "instead. Capture it with a family that takes several images (qwen2_5_vl, "
                "qwen2_vl, llava_next)."
            ),
        )
        for ex in refused
    ]
    return add_skipped(result, problems, report)


def check_text_only(cfg: CaptureConfig, examples: list[Any]) -> None:
    """Refuse text-only rows when the capture has no 'none' condition to hold their answers.

    A row without an image is captured under ``none`` only (its image conditions are void);
    without ``none`` it would hold nothing at all.
    """
    text_only = [ex.id for ex in examples if not ex.has_image]
    if text_only and not cfg.none:
        raise UsageError(
            f"Expected the 'none' condition when {cfg.data} has rows without an image. Got "
            f"{len(text_only)} text-only rows (first: {text_only[0]!r}) and no --none. "
            "Text-only rows are captured under 'none' only: pass --none "
            "(CaptureConfig(none=True)), or leave those rows out of the file."
        )


def prepare(cfg: CaptureConfig, adapter: VLMAdapter | None) -> tuple[VLMAdapter, Plan, Prepared]:
    """Return the adapter, the plan, and the prepared record of both."""
    if adapter is None:
        from priorscope.engine.models.registry import load_model

        device = resolve_device(cfg.device)
        adapter = load_model(
            cfg.model,
            device=device,
            dtype=resolve_dtype(cfg.dtype, device),
            attn_implementation=cfg.attn,  # auto: flash-attention 2 where it runs, else sdpa
        )
    examples, skipped, report = load_examples(cfg, adapter)
    check_text_only(cfg, examples)
    plan = make_plan(examples, cfg.full_seq)
    layers = parse_layers(cfg.layers, adapter.num_layers)
    fs_layers = parse_layers(cfg.full_seq_layers, adapter.num_layers) if cfg.full_seq else []
    return adapter, plan, Prepared(adapter, plan, layers, fs_layers, skipped, report)


def identity(cfg: CaptureConfig, adapter: VLMAdapter, data_sha: str) -> dict[str, Any]:
    """Return the configuration a resume must match (recorded as group attribute ``config``)."""
    full = cfg.to_json()
    out = {key: full[key] for key in IDENTITY_FIELDS}
    # builtin:NAME stays as given: the checkout's absolute path would differ per machine.
    builtin = cfg.model.startswith("builtin:")
    out["model"] = cfg.model if builtin else str(adapter.name_or_path)
    out["data"] = {"path": str(Path(cfg.data).resolve()), "sha256": data_sha}
    out["dtype"] = str(adapter.dtype).replace("torch.", "")
    # Spellings differ (bf16, bfloat16, auto); the resolved storage dtype is what matters.
    out["hidden_dtype"] = resolve_hidden_dtype(cfg, adapter)
    # --on-bad never changes a committed row (a bad example is refused or marked skipped), so
    # it is no identity: a capture stopped at a bad image goes on with --on-bad skip.
    out["data_options"] = {k: v for k, v in cfg.data_options.items() if k != "on_bad"}
    out.update(optional_identity(cfg))
    # Another attention kernel changes the states in the last bits: a resume or a rank with
    # or without flash-attn must not mix them (sdpa, the default, is not recorded).
    model_config = getattr(getattr(adapter, "model", None), "config", None)
    attn = getattr(model_config, "_attn_implementation", None) or "sdpa"
    if attn != "sdpa":
        out["attn_implementation"] = attn
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
    path = cfg.out  # a local folder or a URL: never through Path (it would mangle s3://)
    data_sha = file_sha256(cfg.data) if Path(cfg.data).is_file() else ""
    wanted = identity(cfg, adapter, data_sha)
    created = False
    if not store_exists(path):
        # What an interrupted creation on object storage leaves (no root zarr.json yet) is
        # simply overwritten; anything else is someone's data.
        members = {name.split("/")[0] for name in schema.DIMS}
        foreign = [c for c in children(path) if c not in members]
        if foreign:
            raise StoreError(
                f"Expected --out to be a new folder or a priorscope store. Got a non-empty folder "
                f"without zarr.json: {path} (holds {foreign[:3]}). Choose another --out."
            )
        if cfg.shard[0] == 0:
            created = True
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
    else:
        from priorscope.engine.store.verify import remove_leftovers

        remove_leftovers(path)  # a resume: clear what killed writers left behind
    group = open_for_capture(path)
    _refuse_damaged(group, path)
    recorded: Any = group.attrs.get("config") or {}
    if cfg.shard_examples == 0 and "shard_examples" in recorded:
        wanted["shard_examples"] = recorded["shard_examples"]  # "automatic" accepts any size
    was = (recorded.get("data_options") or {}).get("on_bad")  # stores that recorded it
    if was:
        wanted["data_options"] = {**wanted["data_options"], "on_bad": was}
    check_resume(group, wanted, path)
    check_weights(group, adapter, path)
    if not created:  # a store this call wrote its table into holds this plan's order
        check_order(group, plan, path)
    return group, layout_from_attrs(dict(group.attrs))


def check_order(group: zarr.Group, plan: Plan, path: str) -> None:
    """Refuse a resume whose example order differs from the one the store was written in.

    A resume recomputes the plan from the data; the same data and configuration give the same
    order, but changed data (a folder of files has no data hash in the identity) or a priorscope
    that orders examples differently would write rows into another example's place. The store's
    ``examples/id`` and ``examples/source_row`` say what is where.
    """
    want = example_table(plan.examples, plan.order, columns=("id", "source_row"))
    for name in ("id", "source_row"):
        have = [str(v) for v in backend.read(backend.node(group, f"{schema.EX}/{name}")).tolist()]
        mine = [str(v) for v in want[name]]
        if have == mine:
            continue
        row = next((i for i, (a, b) in enumerate(zip(have, mine, strict=False)) if a != b), -1)
        where = (
            f"examples/{name}[{row}] is {have[row]!r} in the store, this run puts {mine[row]!r} there"
            if row >= 0
            else f"the store holds {len(have)} examples, this run plans {len(mine)}"
        )
        raise ConfigMismatchError(
            f"Expected the examples in {path} in the order this capture plans them. Got another "
            f"order: {where}. Either the data (or its images) changed since the store was "
            "written, or a priorscope that orders examples differently wrote it: capture into "
            "another --out, or finish the store with the data and version that started it."
        )


def _refuse_damaged(group: zarr.Group, path: str) -> None:
    """Refuse to write into a store whose metadata verify would reject (same cheap checks)."""
    from priorscope.engine.store.checks import structure_problems

    problems = structure_problems(group, dict(group.attrs))
    if problems:
        raise StoreError(
            f"Expected a sound store at {path} to resume into. Got: "
            + "; ".join(problems)
            + ". Run 'priorscope store verify' on it, or capture into another --out."
        )


# Below this many bytes of safetensors the hash is cheap enough to compute on every resume.
SMALL_WEIGHTS_BYTES = 256 * 2**20


def weights_stats(adapter: VLMAdapter) -> dict[str, list[int]]:
    """Return {file: [size, mtime_ns]} of the checkpoint's safetensors ({} for in-code models)."""
    folder = Path(str(adapter.name_or_path))
    if not folder.is_dir():
        return {}
    return {
        f.name: [f.stat().st_size, f.stat().st_mtime_ns]
        for f in sorted(folder.glob("*.safetensors"))
    }


def check_weights(group: zarr.Group, adapter: VLMAdapter, path: str) -> None:
    """Refuse a resume whose model weights differ from the ones the store was written with.

    Size and mtime of the safetensors files are compared first; the sha256 is computed when
    they differ, when none were recorded, or always for small checkpoints (cheap then).
    """
    model: Any = group.attrs.get("model") or {}
    recorded = model.get("weights_sha256")
    if not recorded:
        return  # an older store without the hash: nothing to compare against
    stats = weights_stats(adapter)
    small = sum(size for size, _ in stats.values()) < SMALL_WEIGHTS_BYTES
    if stats and model.get("weights_files") == stats and not small:
        return
    current = adapter.weights_sha256()
    if current != recorded:
        raise ConfigMismatchError(
            f"Expected the model weights {path} was written with (sha256 {recorded}) to resume "
            f"into it. Got weights with sha256 {current} at {adapter.name_or_path}. Restore the "
            "original checkpoint, or capture the new weights into another --out."
        )


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
    shard = cfg.shard_examples or choose_shard_examples(sized.bytes_per_example(), n, cfg.shard[1])
    fullseq = FullSeqLayout()
    if plan.fullseq_examples and prep.fullseq_layers:
        skip = cfg.data_options.get("on_bad") == "skip"
        lengths, rope_rows = _measure_fullseq(adapter, plan, skip)
        fullseq = FullSeqLayout(
            examples=tuple(plan.fullseq_examples),
            lengths=tuple(lengths),
            layers=tuple(prep.fullseq_layers),
            conditions=tuple(c.name for c in conditions if c.kind != "none"),
            rope_rows=rope_rows,
        )
    return dataclasses.replace(sized, shard_examples=shard, fullseq=fullseq)


def _measure_fullseq(adapter: VLMAdapter, plan: Plan, skip: bool = False) -> tuple[list[int], int]:
    """Return the unpadded token count of each full-sequence example and the rope row count.

    An example whose image fails here fails in capture too: with ``skip`` (--on-bad skip) it
    gets one placeholder row (capture marks it skipped and nothing reads it), else the error.
    """
    lengths, batch = [], None
    for idx in plan.fullseq_examples:
        ex = plan.example_at(idx)
        try:
            got = adapter.encode([ex], [clean_input(ex)])
        except (DataError, ValueError) as exc:
            if not skip:
                raise DataError(
                    f"{exc} Pass --on-bad skip to record such examples as skipped and go on."
                ) from exc
            lengths.append(1)
            continue
        batch = got
        lengths.append(int(batch["input_ids"].shape[1]))
    if batch is None:
        raise DataError(
            "Expected at least one --full-seq example whose image decodes. Got none. Pass a "
            "larger --full-seq N, or check the images with 'priorscope data check FILE' (it decodes "
            "every image)."
        )
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
    if cfg.model.startswith("builtin:"):
        described["path"] = cfg.model  # portable across checkouts, like identity()
    described["weights_files"] = weights_stats(adapter)  # the cheap first check on resume
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
            **({"skip_report": prep.skip_report} if prep.skip_report else {}),
        },
        "seeds": {"torch": 0, "generation": "greedy"},
        "packages": _packages(),
        "config": wanted,
        "capture_options": cfg.to_json(),
    }
