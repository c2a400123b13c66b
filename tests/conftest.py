"""Suite-wide settings: single-threaded torch and the `gpu` mark's skip rule."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Property tests draw the same examples on every run, so a CI result repeats; set
# HYPOTHESIS_PROFILE=explore to draw new ones (what a search for new failures wants).
from hypothesis import settings

settings.register_profile("repeatable", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "repeatable"))


def _cuda_available_now() -> bool:
    import torch

    return bool(torch.cuda.is_available())


# Without a GPU, Triton kernels run in its interpreter. Triton fixes that choice when it is first
# imported, and loading a transformers model imports it: decide before any test imports anything.
# (Dropping triton from sys.modules later to re-import it re-initialises its C extension, which
# aborts the process.)
if not _cuda_available_now():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def pytest_configure(config: pytest.Config) -> None:
    import torch

    # Two slow cores: oversubscribing threads makes the suite slower and noisier.
    torch.set_num_threads(1)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _cuda_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device (run benchmarks/gpu_check.sh on one)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
