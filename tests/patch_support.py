"""Shared pieces of the patching and lens tests: a real organism capture and float comparisons."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from priorscope.engine.capture import CaptureConfig, capture
from priorscope.engine.capture.images import condition_images
from priorscope.engine.data import synth
from priorscope.engine.data.example import Example
from priorscope.engine.models.sites import Write, hooks, site_name

SYNTH = synth.SynthConfig(n=40, seed=11, size=84)


def organism_capture(
    folder: Path, adapter: object, *, full_seq: int = 40, synth_cfg: synth.SynthConfig = SYNTH
) -> tuple[Path, list[Example]]:
    """Capture ``synth_cfg`` with the organism: clean, blur@0.04, total, none; full sequences.

    Returns the store path and the examples in dataset order (``examples/source_row`` indexes
    them), so a test can rebuild any condition's image.
    """
    rows = synth.generate(synth_cfg)
    rows = [dataclasses.replace(ex, id=f"s{i}") for i, ex in enumerate(rows)]
    data = synth.write_tsv(rows, folder / "bench.tsv")
    out = folder / "store.zarr"
    cfg = CaptureConfig(
        model="builtin:organism",
        data=str(data),
        out=str(out),
        ladder=(0.04,),
        total=True,
        none=True,
        full_seq=full_seq,
        full_seq_layers="all",
        batch_size=8,
        device="cpu",
        dtype="float32",
        hidden_dtype="float32",
        max_new_tokens=2,
        progress=False,
    )
    capture(cfg, adapter=adapter)  # type: ignore[arg-type]
    return out, rows


def assert_rows_close(actual: np.ndarray, expected: np.ndarray, rtol: float = 1e-5) -> None:
    """Assert |actual - expected| <= rtol * max|expected| along the last axis, row by row.

    A relative tolerance on each row's scale: element-wise relative error is ill-conditioned for
    the leading candidate, whose log-prob (about -1e-4) is a difference of numbers near 10.
    """
    a, b = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    scale = np.abs(b).max(axis=-1, keepdims=True)
    bad = np.abs(a - b) > rtol * scale
    assert not bad.any(), (
        f"{int(bad.sum())} of {bad.size} values differ by more than {rtol} x the row scale; "
        f"worst relative {float((np.abs(a - b) / scale).max()):.2e}"
    )


def hooked_logprobs(
    adapter: object,
    example: Example,
    condition: str,
    conditions: list,
    cand_ids: list[int],
    writes: list[Write],
) -> np.ndarray:
    """Return the candidates' log-probs of a full forward (vision tower included) with writes."""
    images = condition_images([example], conditions, adapter.device)  # type: ignore[attr-defined]
    batch = adapter.encode([example], [images[condition][0]])  # type: ignore[attr-defined]
    got: dict[str, torch.Tensor] = {}
    reads = {"logits": lambda t: got.__setitem__("logits", t[:, -1].detach().float())}
    with hooks(adapter, reads=reads, writes=writes), torch.no_grad():  # type: ignore[arg-type]
        adapter.model(**batch)  # type: ignore[attr-defined]
    return torch.log_softmax(got["logits"], dim=-1)[0, cand_ids].numpy()


def splice(layer: int, value: np.ndarray, mask: np.ndarray) -> Write:
    """Return the write hook that puts ``value`` [token, d] at ``mask`` of store layer ``layer``."""
    return Write(
        site_name(layer),
        torch.from_numpy(np.ascontiguousarray(value))[None],
        positions=torch.from_numpy(mask)[None],
    )
