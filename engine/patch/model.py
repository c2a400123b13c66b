"""Find the model a store was captured with, and refuse one whose weights differ.

Replay needs the decoder weights of the capture. The store records the model as ``builtin:NAME``
for built-ins (older stores: the absolute path of the checkout they ran from, which breaks when
the store or the repository moves) and as a path plus the weights' sha256 otherwise. ``--model
PATH`` overrides the path; it is refused, naming both hashes, when its weights differ.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from priorscope.engine.errors import ModelError

if TYPE_CHECKING:
    from priorscope.engine.models.hf import HFAdapter
    from priorscope.engine.store import Store


def _load(name: str, device: str, dtype: Any) -> HFAdapter:
    from priorscope.engine.models import load_model

    # Replay builds its own attention masks for sdpa or eager; flash attention takes none.
    return load_model(name, device=device, dtype=dtype, attn_implementation="sdpa")


def _builtin_matching(sha: str, device: str, dtype: Any) -> HFAdapter | None:
    """Return the built-in model whose weights hash to ``sha``, or None."""
    from priorscope.engine.models import BUILTINS

    for name in BUILTINS:
        adapter = _load(f"builtin:{name}", device, dtype)
        if adapter.weights_sha256() == sha:
            return adapter
    return None


def load_store_model(
    store: Store, model: str | None = None, *, device: str = "cpu", dtype: Any = "auto"
) -> HFAdapter:
    """Return the adapter of the model ``store`` was captured with (``model`` overrides the path).

    ``dtype`` 'auto' uses the capture's compute dtype. Raises ModelError when the weights of the
    loaded model do not hash to the recorded ``weights_sha256``, or when no model is found.
    """
    ref = store.model_ref
    recorded, sha = str(ref.get("path", "")), str(ref.get("weights_sha256", ""))
    if dtype == "auto":
        dtype = ref.get("dtype") or None
    if model is not None:
        adapter = _load(model, device, dtype)
        got = adapter.weights_sha256()
        if sha and got != sha:
            raise ModelError(
                f"Expected --model {model} to hold the weights the store was captured with "
                f"(sha256 {sha}). Got weights with sha256 {got} instead. Pass the checkpoint of "
                f"the capture ({recorded or 'unrecorded path'})."
            )
        return adapter
    usable = recorded.startswith("builtin:") or (bool(recorded) and Path(recorded).exists())
    adapter = _load(recorded, device, dtype) if usable else None
    if adapter is None and sha:
        adapter = _builtin_matching(sha, device, dtype)
    if adapter is None:
        raise ModelError(
            f"Expected the model recorded in {store.path} ({recorded or 'no path'}) to exist. "
            "Got no checkpoint there and no built-in with its weights. Pass --model PATH to "
            "the checkpoint the store was captured with."
        )
    got = adapter.weights_sha256()
    if sha and got != sha:
        raise ModelError(
            f"Expected the model at {recorded} to hold the weights the store was captured with "
            f"(sha256 {sha}). Got sha256 {got}: the checkpoint changed since the capture. Pass "
            "--model PATH to the original checkpoint."
        )
    return adapter


__all__ = ["load_store_model"]
