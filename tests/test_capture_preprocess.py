"""``capture --preprocess device``: condition images preprocessed on the model's device.

The blurred images stay on the device and are resized, normalised and cut into patches there
(Qwen2-VL family), instead of going to the host as PIL images for the image processor. The
store must not know the difference: every array bitwise equal to the host path's. Run here on
the CPU, which is the same code the GPU runs; ``auto`` keeps the host path on a CPU.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from capture_support import capture_examples
from store_support import store_arrays

from priorscope.engine.capture import run as run_module
from priorscope.engine.data import synth
from priorscope.engine.errors import UsageError
from priorscope.engine.models.tiny import build_tiny

LADDER = (0.01, 0.04, 0.16)


@pytest.mark.parametrize(
    ("model", "size", "answer_from"),
    [
        ("builtin:organism", 96, "generate"),
        ("builtin:organism", 96, "candidates"),
        ("qwen2_5_vl", 100, "generate"),
        ("qwen2_5_vl", 70, "generate"),
        ("qwen2_vl", 100, "generate"),
    ],
)
def test_device_preprocessing_writes_the_host_paths_store(
    tmp_path: Path, model: str, size: int, answer_from: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Sizes off the patch grid: every image is resized (the organism's processor to 84 px, the
    # tiny Qwen2.5-VL's to the nearest multiple of 28), the step that must match Pillow exactly.
    if model != "builtin:organism":
        model = str(build_tiny(model, tmp_path / "model"))
    rows = synth.generate(synth.SynthConfig(n=10, seed=5, size=size))
    options = dict(ladder=LADDER, none=True, batch_size=4, full_seq=3, answer_from=answer_from)
    calls: list[int] = []
    encode = run_module._encode_on_device

    def counted(job, examples, images):  # type: ignore[no-untyped-def]
        calls.append(len(images))
        return encode(job, examples, images)

    monkeypatch.setattr(run_module, "_encode_on_device", counted)
    host = capture_examples(tmp_path, "host", rows, model, preprocess="host", **options)
    assert calls == []
    device = capture_examples(tmp_path, "device", rows, model, preprocess="device", **options)
    assert calls == [len(LADDER) + 2] * 3  # 3 batches, each condition with an image on the device
    # Every array bitwise (the attributes differ only in the two runs' file names).
    left, right = store_arrays(host), store_arrays(device)
    assert sorted(left) == sorted(right)
    for name, x in left.items():
        y = right[name]
        assert x.dtype == y.dtype and x.shape == y.shape, name
        bits = (
            (x.view(f"u{x.itemsize}"), y.view(f"u{y.itemsize}")) if x.dtype.kind == "f" else (x, y)
        )
        assert np.array_equal(*bits), name


def test_device_preprocessing_is_refused_where_it_cannot_be_exact(tmp_path: Path) -> None:
    from priorscope.engine.models.registry import load_model

    llava = load_model(str(build_tiny("llava", tmp_path / "llava")), dtype="float32")
    organism = load_model("builtin:organism", dtype="float32")
    assert organism.device.type == "cpu"
    with pytest.raises(UsageError, match="--preprocess host"):
        run_module.device_preprocessing("device", llava)
    # auto: the host path for a model it cannot reproduce, and on any CPU.
    assert not run_module.device_preprocessing("auto", llava)
    assert not run_module.device_preprocessing("auto", organism)
    assert run_module.device_preprocessing("device", organism)
    assert not run_module.device_preprocessing("host", organism)
    rows = synth.generate(synth.SynthConfig(n=2, seed=6, size=64))
    with pytest.raises(UsageError, match="--preprocess"):
        capture_examples(tmp_path, "bad", rows, preprocess="gpu")
