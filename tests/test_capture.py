"""Capture against plain transformers on every tiny family: states, answers, log-probs, fullseq."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from priorscope.engine.capture import CaptureConfig, capture
from priorscope.engine.data import synth
from priorscope.engine.models.base import TOKEN_IMAGE, TOKEN_TEXT
from priorscope.engine.models.registry import load_model
from priorscope.engine.models.tiny import build_tiny
from priorscope.engine.store import open_store, verify

# The tiny random families, and the shipped model organism (a trained Qwen2.5-VL).
FAMILIES = ("qwen2_5_vl", "qwen2_vl", "llava", "llava_next", "organism")


def write_bench(path: Path) -> Path:
    """Write 8 synthetic rows in two image sizes, multiple choice and open-ended mixed."""
    small = synth.generate(synth.SynthConfig(n=5, size=56, mc=True))
    large = synth.generate(synth.SynthConfig(n=3, seed=1, size=84))
    # Interleave sizes so that store order (grouped by size) differs from dataset order.
    rows = [small[0], large[0], small[1], small[2], large[1], small[3], large[2], small[4]]
    rows = [dataclasses.replace(ex, id=f"r{i}") for i, ex in enumerate(rows)]
    return synth.write_tsv(rows, path)


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_bench(tmp_path_factory.mktemp("bench") / "bench.tsv")


@pytest.fixture(scope="module", params=FAMILIES)
def captured(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, bench: Path):
    if request.param == "organism":
        folder: Path | str = "builtin:organism"
    else:
        folder = build_tiny(request.param, tmp_path_factory.mktemp(request.param) / "model")
    adapter = load_model(str(folder), device="cpu", dtype="float32")
    out = tmp_path_factory.mktemp("store") / "s.zarr"
    cfg = CaptureConfig(
        model=str(folder),
        data=str(bench),
        out=str(out),
        ladder=(0.04,),
        total=True,
        none=True,
        full_seq=2,
        full_seq_layers="embed,1",
        batch_size=3,
        device="cpu",
        dtype="float32",
        hidden_dtype="float32",
        max_new_tokens=3,
        shard_examples=2,
        progress=False,
    )
    capture(cfg, adapter=adapter)
    return adapter, open_store(out)


RTOL = 1e-5  # float32 results of another batch layout (left padding changes the arithmetic)


def assert_close(actual: np.ndarray, desired: np.ndarray, scale: float | None = None) -> None:
    """Assert float32 ``actual`` equals ``desired`` within RTOL, on any x86 CPU (NaN == NaN).

    Near-zero components of a dot product carry round-off of the size of its terms, not of its
    result, so the absolute part is RTOL times ``scale`` (default: the largest magnitude of
    ``desired``). Measured on the dev machine: at most 5e-7 of that scale.
    """
    desired = np.asarray(desired, dtype=np.float64)
    if scale is None:
        finite = np.abs(desired[np.isfinite(desired)])
        scale = float(finite.max()) if finite.size else 0.0
    np.testing.assert_allclose(actual, desired, rtol=RTOL, atol=RTOL * scale, equal_nan=True)


def total_image(image: Image.Image) -> Image.Image:
    """Return the image with every pixel set to its channel mean (rounded half to even)."""
    pixels = np.asarray(image, dtype=np.float64)
    mean = np.round(pixels.mean(axis=(0, 1)))
    return Image.fromarray(np.broadcast_to(mean, pixels.shape).astype(np.uint8))


def reference_reductions(hidden: torch.Tensor, kinds: torch.Tensor) -> np.ndarray:
    """Return [last, image_mean, text_mean] [3, d] of one unpadded row [seq, d] in float64."""
    h = hidden.double().numpy()
    k = kinds.numpy()
    img = (
        h[k == TOKEN_IMAGE].mean(axis=0)
        if (k == TOKEN_IMAGE).any()
        else np.full(h.shape[1], np.nan)
    )
    return np.stack([h[-1], img, h[k == TOKEN_TEXT].mean(axis=0)])


def test_store_is_complete_and_ordered_by_image_size(captured) -> None:
    _, store = captured
    assert verify(store.path, deep=True).ok
    ids = list(store.examples().ids)
    assert sorted(ids) == [f"r{i}" for i in range(8)]
    assert ids[:5] == ["r0", "r2", "r3", "r5", "r7"]  # 56 px rows first, in dataset order
    assert list(store.examples().column("source_row")) == [0, 2, 3, 5, 7, 1, 4, 6]
    assert store.condition_names == ["clean", "blur@0.04", "total", "none"]
    assert "A" in store.candidates and "yes" not in store.candidates[:4]


def test_hidden_logprobs_and_answers_equal_plain_transformers(captured) -> None:
    adapter, store = captured
    hidden = store.hidden()  # [example, condition, layer, reduction, d]
    cand = store.outputs("cand_logprob")
    raw = store.outputs("raw")
    cand_ids = adapter.candidate_token_ids(store.candidates)
    last = store.layers.index(adapter.num_layers - 1)
    for i in (0, 5):  # one row of each image size
        ex = _example(store, i, adapter)
        for c, image in ((0, ex.image), (2, total_image(ex.image)), (3, None)):
            batch = adapter.encode([ex], [image])
            out, pre_norm = _forward_with_pre_norm(adapter, batch)
            kinds = adapter.token_kinds(batch)[0]
            states = out.hidden_states
            assert len(states) == adapter.num_layers + 1
            for slot, layer in enumerate(store.layers):
                want = reference_reductions(states[layer + 1][0], kinds)
                if layer == adapter.num_layers - 1:
                    # transformers' last entry is after the final norm; the store keeps pre-norm.
                    with torch.no_grad():
                        normed = adapter.final_norm()(torch.from_numpy(hidden[i, c, slot, 0]))
                    assert_close(normed.numpy(), want[0])
                    want = reference_reductions(pre_norm[0], kinds)
                assert_close(hidden[i, c, slot], want)
            assert np.isnan(hidden[i, c, last, 1]).all() == (image is None)
            logprob = torch.log_softmax(out.logits[0, -1].double(), -1)[cand_ids].numpy()
            assert_close(cand[i, c], logprob)
            assert raw[i, c] == adapter.generate(batch, max_new_tokens=3)[0]


def _forward_with_pre_norm(adapter, batch):
    """Return the plain forward with hidden states, and the last layer's output before the norm.

    The second forward swaps the final norm for an identity, so that transformers' own last
    hidden-state entry is the pre-norm residual (no hooks involved).
    """
    lm = adapter.language_model()
    with torch.no_grad():
        out = adapter.model(**batch, output_hidden_states=True)
        norm = lm.norm
        lm.norm = torch.nn.Identity()
        try:
            pre = adapter.model(**batch, output_hidden_states=True).hidden_states[-1]
        finally:
            lm.norm = norm
    return out, pre


def _example(store, i: int, adapter):
    from priorscope.engine.data import load

    examples = {ex.id: ex for ex in load(store.attrs["dataset"]["files"][0]).examples}
    return examples[str(store.examples().ids[i])]


def test_fullseq_rows_equal_plain_forward(captured) -> None:
    adapter, store = captured
    fs_examples = store.fullseq_examples()
    ids = store.examples().ids
    assert sorted(str(ids[i]) for i in fs_examples) == ["r0", "r1"]  # first two in dataset order
    for i in fs_examples:
        rows = store.fullseq(i)
        assert rows.conditions == ("clean", "blur@0.04", "total") and rows.layers == (-1, 1)
        ex = _example(store, i, adapter)
        batch = adapter.encode([ex], [total_image(ex.image)])
        with torch.no_grad():
            out = adapter.model(**batch, output_hidden_states=True)
        np.testing.assert_array_equal(rows.input_ids, batch["input_ids"][0].numpy())
        np.testing.assert_array_equal(rows.kind, adapter.token_kinds(batch)[0].numpy())
        assert_close(rows.values[:, 2, 0], out.hidden_states[0][0].numpy())
        layer1 = rows.values[:, 2, 1]
        if adapter.num_layers == 2:  # transformers' last entry is post-norm
            with torch.no_grad():
                layer1 = adapter.final_norm()(torch.from_numpy(layer1)).numpy()
        assert_close(layer1, out.hidden_states[2][0].numpy())
        qwen = adapter.family.startswith("qwen")
        assert rows.position_ids.shape == (3 if qwen else 1, len(rows.input_ids))
        if qwen:  # M-RoPE: image tokens share a temporal position, text positions count up
            image = rows.kind == TOKEN_IMAGE
            assert len(set(rows.position_ids[0, image])) == 1
            assert rows.position_ids[0, -1] < len(rows.input_ids) - 1


def hook_snapshot(adapter) -> dict[str, tuple[list[int], list[int]]]:
    """Return the ids of every forward (pre-)hook on the model (transformers keeps its own)."""
    return {
        name: (sorted(m._forward_hooks), sorted(m._forward_pre_hooks))
        for name, m in adapter.model.named_modules()
    }


def test_hooks_are_removed_after_capture(captured, tmp_path: Path) -> None:
    adapter, store = captured
    before = hook_snapshot(adapter)
    cfg = CaptureConfig(
        model="unused",
        data=store.attrs["dataset"]["files"][0],
        out=str(tmp_path / "s.zarr"),
        ladder=(0.04,),
        limit=2,
        max_new_tokens=1,
        progress=False,
        hidden_dtype="float16",
    )
    capture(cfg, adapter=adapter)
    assert hook_snapshot(adapter) == before
    assert verify(tmp_path / "s.zarr").ok
    assert open_store(tmp_path / "s.zarr").group["hidden"].dtype == np.float16


def test_hooks_are_removed_when_the_forward_fails(captured) -> None:
    from priorscope.engine.capture.hooks import Recorder, recording

    adapter, _ = captured
    before = hook_snapshot(adapter)
    recorder = Recorder(adapter, [-1, 0], ["last"])
    with pytest.raises(RuntimeError, match="boom"), recording(recorder):
        assert hook_snapshot(adapter) != before
        raise RuntimeError("boom")
    assert hook_snapshot(adapter) == before


@pytest.mark.parametrize(
    ("text", "env", "want"),
    [
        ("2/4", {}, (2, 4)),
        (None, {"RANK": "1", "WORLD_SIZE": "3"}, (1, 3)),
        (None, {}, (0, 1)),
        (" 0 / 1 ", {"RANK": "5", "WORLD_SIZE": "8"}, (0, 1)),  # the flag wins over torchrun
    ],
)
def test_parse_shard(text, env, want) -> None:
    from priorscope.engine.capture import parse_shard

    assert parse_shard(text, env) == want


@pytest.mark.parametrize("text", ["4/4", "1", "a/b", "-1/2"])
def test_parse_shard_rejects_bad_specs(text) -> None:
    from priorscope.engine.capture import parse_shard
    from priorscope.engine.errors import UsageError

    with pytest.raises(UsageError, match="Expected"):
        parse_shard(text, {})


def test_validate_names_the_bad_option(bench: Path) -> None:
    from priorscope.engine.capture import validate
    from priorscope.engine.errors import UsageError

    base = CaptureConfig(model="m", data=str(bench), out="o")
    for change, needle in (
        ({"batch_size": 0}, "--batch-size"),
        ({"max_new_tokens": 0}, "--max-new-tokens"),
        ({"shard_examples": 12}, "--shard-examples"),
        ({"hidden_dtype": "int8"}, "hidden-state dtype"),
        ({"data": str(bench) + ".missing"}, "--data"),
        ({"ladder": (-0.1,)}, "ladder"),
    ):
        with pytest.raises(UsageError, match=needle):
            validate(dataclasses.replace(base, **change))


@pytest.mark.gpu
def test_gpu_capture_matches_cpu(bench: Path, tmp_path: Path) -> None:
    """On CUDA: the pinned-buffer copy path, device blur and bf16 bits agree with the CPU run."""
    folder = build_tiny("qwen2_5_vl", tmp_path / "model")
    stores = {}
    for device, dtype in (("cpu", "float32"), ("cuda", "float32"), ("cuda", "bfloat16")):
        adapter = load_model(str(folder), device=device, dtype=dtype)
        out = tmp_path / f"{device}-{dtype}.zarr"
        cfg = CaptureConfig(
            model=str(folder),
            data=str(bench),
            out=str(out),
            ladder=(0.04,),
            none=True,
            batch_size=3,
            device=device,
            dtype=dtype,
            max_new_tokens=3,
            shard_examples=2,
            full_seq=1,
            progress=False,
        )
        capture(cfg, adapter=adapter)
        assert verify(out, deep=True).ok
        stores[(device, dtype)] = open_store(out).hidden()
    cpu, gpu, bf16 = stores.values()
    clean_and_none = [0, 3]  # blurred images may differ by one grey level at rounding ties
    np.testing.assert_allclose(
        gpu[:, clean_and_none], cpu[:, clean_and_none], atol=1e-4, equal_nan=True
    )
    np.testing.assert_allclose(gpu, cpu, atol=5e-2, equal_nan=True)
    np.testing.assert_allclose(
        bf16[:, clean_and_none], cpu[:, clean_and_none], atol=0.1, rtol=0.05, equal_nan=True
    )


def test_logit_lens_from_the_store_alone(captured) -> None:
    """unembed and final_norm reproduce the candidates' logit differences without the model."""
    adapter, store = captured
    norm = store.final_norm()
    assert norm.kind == "rmsnorm"
    weight, eps = norm.weight.astype(np.float64), norm.eps
    unembed = store.unembed().astype(np.float64)
    last = store.hidden(layer=adapter.num_layers - 1, reduction="last").astype(np.float64)
    normed = last / np.sqrt((last**2).mean(-1, keepdims=True) + eps) * weight
    logits = normed @ unembed.T  # [example, condition, candidate]
    lp = store.outputs("cand_logprob").astype(np.float64)
    # log-softmax differs from the logits by a per-row constant.
    # log_softmax's round-off scales with the log-probs themselves, not with their differences.
    assert_close(lp - lp[..., :1], logits - logits[..., :1], scale=float(np.abs(lp).max()))
