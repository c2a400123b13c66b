"""Storage dtypes of the ``hidden`` arrays, including bfloat16 kept as its raw uint16 bits.

bfloat16 is not a Zarr v3 core data type, so a bf16 capture stores the upper 16 bits of each
float32 value (exactly the bf16 bit pattern) as uint16 and marks the array with the attribute
``bf16_bits = true``. Decoding shifts the bits back into a float32, so the round trip is exact.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from priorscope.engine.errors import UsageError

HIDDEN_DTYPES = ("float16", "bfloat16", "float32")
BF16_ATTR = "bf16_bits"


def parse_hidden_dtype(name: str) -> str:
    """Return the canonical storage dtype for ``name`` (aliases bf16, fp16, fp32 accepted)."""
    alias = {"bf16": "bfloat16", "fp16": "float16", "half": "float16", "fp32": "float32"}
    canon = alias.get(name, name)
    if canon not in HIDDEN_DTYPES:
        raise UsageError(
            f"Expected a hidden-state dtype in {', '.join(HIDDEN_DTYPES)} (or bf16, fp16, fp32). "
            f"Got {name!r} instead."
        )
    return canon


def zarr_dtype(hidden_dtype: str) -> str:
    """Return the Zarr data type that holds ``hidden_dtype`` values on disk."""
    return "uint16" if hidden_dtype == "bfloat16" else hidden_dtype


def torch_dtype(hidden_dtype: str) -> Any:
    """Return the torch dtype a capture converts reductions to before the host copy."""
    import torch

    return {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}[
        hidden_dtype
    ]


def to_storage(tensor: Any) -> np.ndarray:
    """Return the numpy view of a CPU tensor as it is stored (bf16 becomes its uint16 bits)."""
    import torch

    if tensor.dtype == torch.bfloat16:
        return tensor.view(torch.int16).numpy().view(np.uint16)
    return tensor.numpy()


def bf16_bits_to_float32(bits: np.ndarray) -> np.ndarray:
    """Return float32 values [same shape] whose upper halves are the given bf16 bit patterns."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def float32_to_bf16_bits(values: np.ndarray) -> np.ndarray:
    """Return the bf16 bits [same shape] of float32 values, rounded to nearest even like torch."""
    as_int = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    rounding = ((as_int >> 16) & 1) + np.uint32(0x7FFF)
    out = ((as_int + rounding) >> 16).astype(np.uint16)
    nan = np.isnan(values)
    if nan.any():
        out[nan] = np.uint16(0x7FC0)
    return out


def decode(stored: np.ndarray, is_bf16: bool) -> np.ndarray:
    """Return stored hidden values as float32 (bf16 bits are expanded exactly)."""
    if is_bf16:
        return bf16_bits_to_float32(stored)
    return stored.astype(np.float32, copy=False)
