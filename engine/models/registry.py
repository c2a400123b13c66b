"""The one registry of model families and built-in checkpoints, and :func:`load_model`.

A new family is one file in this folder plus one line in :data:`FAMILIES`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from priorscope.engine.errors import ModelError, UsageError, did_you_mean
from priorscope.engine.models.generic import GenericAdapter
from priorscope.engine.models.hf import HFAdapter
from priorscope.engine.models.llava import LlavaAdapter
from priorscope.engine.models.llava_next import LlavaNextAdapter
from priorscope.engine.models.qwen2_5_vl import Qwen2_5_VLAdapter
from priorscope.engine.models.qwen2_vl import Qwen2VLAdapter

# config.json model_type -> adapter class.
FAMILIES: dict[str, type[HFAdapter]] = {
    "qwen2_5_vl": Qwen2_5_VLAdapter,
    "qwen2_vl": Qwen2VLAdapter,
    "llava": LlavaAdapter,
    "llava_next": LlavaNextAdapter,
}

ORGANISM_DIR = Path(__file__).resolve().parent / "organism" / "checkpoint"
# builtin:<name> -> checkpoint folder shipped inside the package.
BUILTINS: dict[str, Path] = {"organism": ORGANISM_DIR}
BUILTINS["bottleneck"] = ORGANISM_DIR.parent / "bottleneck"  # issue 13: planted groups
BUILTIN_PREFIX = "builtin:"
ATTN_IMPLEMENTATIONS = ("auto", "sdpa", "eager", "flash_attention_2")


def resolve_attention(name: str, device: str, dtype: Any) -> str:
    """Return the attention implementation ``name`` means on ``device`` in ``dtype``.

    ``auto``: flash-attention 2 on a CUDA device of compute capability 8.0 or later (Ampere
    on) in fp16/bf16 when the flash-attn package is installed (it supports nothing else), sdpa
    otherwise.
    """
    if name != "auto":
        return name
    import importlib.util

    half = str(_parse_dtype(dtype)).replace("torch.", "") in ("bfloat16", "float16")
    if not (device.startswith("cuda") and half):
        return "sdpa"
    if importlib.util.find_spec("flash_attn") is None:
        return "sdpa"
    import torch

    index = torch.device(device).index
    major, _ = torch.cuda.get_device_capability(index if index is not None else 0)
    return "flash_attention_2" if major >= 8 else "sdpa"


def resolve_path(name_or_path: str) -> tuple[str, bool]:
    """Return (folder or hub name, local_files_only) for a builtin name, folder or cache name."""
    if name_or_path.startswith(BUILTIN_PREFIX):
        name = name_or_path[len(BUILTIN_PREFIX) :]
        if name not in BUILTINS:
            raise did_you_mean(name, tuple(BUILTINS), "built-in model")
        folder = BUILTINS[name]
        if not (folder / "config.json").is_file():
            raise ModelError(
                f"Expected the built-in checkpoint at {folder}. Got no config.json there. "
                "Reinstall priorscope, or train one with: priorscope organism train --out DIR."
            )
        return str(folder), True
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelError(
                f"Expected a checkpoint folder with config.json at {path}. Got a path without "
                "one. Point to the folder that save_pretrained wrote."
            )
        return str(path), True
    # A hub name: only the user's local cache, never a download.
    return name_or_path, True


def detect_family(folder: str, *, local_files_only: bool = True) -> str:
    """Return the model_type recorded in the checkpoint's config.json."""
    config_file = Path(folder) / "config.json"
    if config_file.is_file():
        return str(json.loads(config_file.read_text()).get("model_type", ""))
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(folder, local_files_only=local_files_only)
    except OSError as exc:
        raise ModelError(
            f"Expected a local checkpoint folder or a model in the Hugging Face cache. Got "
            f"{folder!r}, which is neither (nothing is downloaded). Download it first with "
            f"`hf download {folder}` or pass a folder. ({exc.__class__.__name__})"
        ) from None
    return str(config.model_type)


def adapter_class(model_type: str) -> type[HFAdapter]:
    """Return the adapter class for a model_type; unknown types get the generic fallback."""
    return FAMILIES.get(model_type, GenericAdapter)


def load_model(
    name_or_path: str,
    *,
    device: str = "cpu",
    dtype: Any = None,
    attn_implementation: str = "sdpa",
    trust_remote_code: bool = False,
) -> HFAdapter:
    """Return the loaded adapter for ``builtin:NAME``, a checkpoint folder or a cached hub name.

    The family comes from config.json's ``model_type``; unknown types use the generic
    fallback. Nothing is ever downloaded (``local_files_only``). ``dtype`` is a torch dtype, a
    name such as ``"bfloat16"``, or None for the checkpoint's own. ``attn_implementation``
    ``auto`` is :func:`resolve_attention`'s choice.
    """
    if attn_implementation not in ATTN_IMPLEMENTATIONS:
        raise did_you_mean(attn_implementation, ATTN_IMPLEMENTATIONS, "attention implementation")
    attn_implementation = resolve_attention(attn_implementation, device, dtype)
    if attn_implementation == "flash_attention_2":
        import importlib.util

        if importlib.util.find_spec("flash_attn") is None:
            raise UsageError(
                "Expected the flash-attn package for attn_implementation='flash_attention_2'. "
                "Got no flash_attn module. Install priorscope[gpu] or use 'sdpa'."
            )
    folder, local_only = resolve_path(name_or_path)
    family = detect_family(folder, local_files_only=local_only)
    cls = adapter_class(family)
    return cls.load(
        folder,
        device=device,
        dtype=_parse_dtype(dtype),
        attn_implementation=attn_implementation,
        trust_remote_code=trust_remote_code,
        local_files_only=local_only,
    )


def _parse_dtype(dtype: Any) -> Any:
    """Return a torch dtype (or None) from a dtype or its name."""
    if dtype is None or not isinstance(dtype, str):
        return dtype
    import torch

    names = {
        "float32": torch.float32,
        "float16": torch.float16,
        "bfloat16": torch.bfloat16,
        "fp32": torch.float32,
        "fp16": torch.float16,
        "bf16": torch.bfloat16,
    }
    if dtype not in names:
        raise did_you_mean(dtype, tuple(names), "dtype")
    return names[dtype]
