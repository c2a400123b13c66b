"""One way for tests to capture a list of examples: write them as a TSV, capture into a store.

Defaults suit a test on one thread: float32 model and hidden states, two new tokens, no
progress bar, clean and total only; any CaptureConfig field can be overridden.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

DEFAULTS: dict[str, Any] = {
    "ladder": (),
    "total": True,
    "batch_size": 32,
    "device": "cpu",
    "dtype": "float32",
    "hidden_dtype": "float32",
    "max_new_tokens": 2,
    "progress": False,
}


def capture_examples(
    folder: Path, name: str, examples: list, model: str = "builtin:organism", **options: Any
) -> Path:
    """Return the store ``folder/name.zarr`` captured from ``examples`` (``folder/name.tsv``)."""
    from priorscope.engine.capture import CaptureConfig, capture
    from priorscope.engine.data.synth import write_tsv

    data = write_tsv(examples, folder / f"{name}.tsv")
    store = folder / f"{name}.zarr"
    config = CaptureConfig(model=model, data=str(data), out=str(store), **{**DEFAULTS, **options})
    capture(config)
    return store
