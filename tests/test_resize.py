"""Pillow's 8-bit resize and Qwen2-VL's preprocessing as tensor ops, against Pillow and the processor.

Device preprocessing is only useful if it is exact: a pixel off would make the hidden states
depend on where preprocessing ran. Every check here is bitwise.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from priorscope.engine.errors import ModelError
from priorscope.engine.models.qwen2_vl import device_pixel_values
from priorscope.engine.models.registry import load_model
from priorscope.engine.models.tiny import build_tiny
from priorscope.kernels.errors import KernelUsageError
from priorscope.kernels.resize import _two_pass, pass_order, resize_uint8

CODES = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}
# (h, w) -> (out_h, out_w): up, down, mixed, one side kept, 1-pixel sides, large reductions,
# and shapes where Pillow 13 runs the vertical pass first (height reduced far more than width).
SIZES = [
    ((37, 53), (90, 120)),
    ((200, 160), (41, 33)),
    ((64, 48), (64, 97)),
    ((64, 48), (31, 48)),
    ((1, 40), (5, 17)),
    ((40, 1), (3, 9)),
    ((300, 280), (7, 9)),
    ((200, 100), (50, 40)),
    ((253, 62), (106, 19)),
    ((120, 221), (56, 233)),
    ((83, 77), (35, 221)),
]


def pil_resize(image: np.ndarray, size: tuple[int, int], method: str) -> np.ndarray:
    return np.asarray(Image.fromarray(image).resize((size[1], size[0]), resample=CODES[method]))


@pytest.mark.parametrize("method", ["bicubic", "bilinear"])
@pytest.mark.parametrize(("src", "dst"), SIZES)
def test_resize_is_pillows_bytes(src: tuple[int, int], dst: tuple[int, int], method: str) -> None:
    rng = np.random.default_rng([*src, *dst])
    # Noise and a smooth gradient: overshoot past 0 and 255 must clip exactly as Pillow clips.
    noise = rng.integers(0, 256, size=(*src, 3), dtype=np.uint8)
    ramp = np.linspace(0, 255, src[0] * src[1] * 3).reshape(*src, 3).round().astype(np.uint8)
    for image in (noise, ramp):
        got = resize_uint8(torch.from_numpy(image).permute(2, 0, 1), dst, method)
        assert got.dtype == torch.uint8 and tuple(got.shape) == (3, *dst)
        np.testing.assert_array_equal(got.permute(1, 2, 0).numpy(), pil_resize(image, dst, method))


def test_a_batch_resizes_each_image_alone_and_a_kept_size_is_a_copy() -> None:
    rng = np.random.default_rng(3)
    batch = rng.integers(0, 256, size=(4, 3, 45, 70), dtype=np.uint8)
    got = resize_uint8(torch.from_numpy(batch), (28, 56))
    for i in range(4):
        want = pil_resize(batch[i].transpose(1, 2, 0), (28, 56), "bicubic")
        np.testing.assert_array_equal(got[i].permute(1, 2, 0).numpy(), want)
    same = torch.from_numpy(batch)
    copy = resize_uint8(same, (45, 70))
    assert torch.equal(copy, same) and copy.data_ptr() != same.data_ptr()


def test_the_pass_order_found_is_the_one_that_gives_pillows_bytes() -> None:
    # Quartering the height while shrinking the width less: Pillow 13 resamples vertically
    # first, older versions horizontally first. The two orders give different bytes here, and
    # only the one pass_order finds gives the installed Pillow's.
    src, dst = (200, 100), (50, 40)
    image = np.random.default_rng(21).integers(0, 256, size=(*src, 3), dtype=np.uint8)
    want = pil_resize(image, dst, "bicubic")
    chosen = pass_order(*src, *dst)
    x = torch.from_numpy(image).permute(2, 0, 1).to(torch.float64)
    for order in ("hv", "vh"):
        got = _two_pass(x, *src, *dst, "bicubic", order).permute(1, 2, 0).numpy()
        assert np.array_equal(got, want) == (order == chosen), order
    assert pass_order(50, 40, 50, 80) == "hv"  # one pass only: no order to choose


def test_bad_input_is_refused_with_the_reason() -> None:
    with pytest.raises(KernelUsageError, match="uint8"):
        resize_uint8(torch.zeros(3, 8, 8), (4, 4))
    with pytest.raises(KernelUsageError, match="lanczos"):
        resize_uint8(torch.zeros(3, 8, 8, dtype=torch.uint8), (4, 4), "lanczos")
    with pytest.raises(KernelUsageError, match="positive"):
        resize_uint8(torch.zeros(3, 8, 8, dtype=torch.uint8), (0, 4))


@pytest.fixture(scope="module")
def qwen_processors(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """Return the organism's image processor (every image to 84 x 84 pixels) and a tiny
    Qwen2.5-VL's (Qwen's own pixel bounds: most sizes round to multiples of 28)."""
    tiny = build_tiny("qwen2_5_vl", tmp_path_factory.mktemp("qwen") / "model")
    return {
        "organism": load_model("builtin:organism", dtype="float32").processor.image_processor,
        "qwen2_5_vl": load_model(str(tiny), dtype="float32").processor.image_processor,
    }


@pytest.mark.parametrize("which", ["organism", "qwen2_5_vl"])
@pytest.mark.parametrize("size", [(84, 84), (100, 162), (275, 41), (31, 200), (448, 448)])
def test_qwen_pixel_values_equal_the_processors(
    qwen_processors: dict[str, object], which: str, size: tuple[int, int]
) -> None:
    processor = qwen_processors[which]
    rng = np.random.default_rng([*size, len(which)])
    images = rng.integers(0, 256, size=(3, *size, 3), dtype=np.uint8)
    want = processor([Image.fromarray(i) for i in images], return_tensors="pt")  # type: ignore[operator]
    pixel_values, grid = device_pixel_values(
        processor, torch.from_numpy(images).permute(0, 3, 1, 2)
    )
    assert pixel_values.dtype == want["pixel_values"].dtype
    assert torch.equal(pixel_values, want["pixel_values"])
    assert torch.equal(grid, want["image_grid_thw"])


def test_other_processors_and_options_are_refused(
    qwen_processors: dict[str, object], tmp_path: Path
) -> None:
    llava = load_model(str(build_tiny("llava", tmp_path / "llava")), dtype="float32")
    images = torch.zeros(1, 3, 32, 32, dtype=torch.uint8)
    with pytest.raises(ModelError, match="host"):
        device_pixel_values(llava.processor.image_processor, images)
    processor = qwen_processors["organism"]
    processor.do_normalize = False  # type: ignore[attr-defined]
    try:
        with pytest.raises(ModelError, match="do_normalize"):
            device_pixel_values(processor, images)
    finally:
        processor.do_normalize = True  # type: ignore[attr-defined]
    with pytest.raises(ModelError, match="RGB"):
        device_pixel_values(processor, torch.zeros(1, 1, 32, 32, dtype=torch.uint8))


@pytest.mark.gpu
def test_cuda_gives_the_same_bytes_and_values(qwen_processors: dict[str, object]) -> None:
    rng = np.random.default_rng(11)
    images = torch.from_numpy(rng.integers(0, 256, size=(4, 3, 150, 230), dtype=np.uint8))
    on_cpu = resize_uint8(images, (61, 97))
    on_gpu = resize_uint8(images.cuda(), (61, 97))
    assert on_gpu.device.type == "cuda" and torch.equal(on_gpu.cpu(), on_cpu)
    processor = qwen_processors["qwen2_5_vl"]
    cpu_values, cpu_grid = device_pixel_values(processor, images)
    gpu_values, gpu_grid = device_pixel_values(processor, images.cuda())
    assert gpu_values.device.type == "cuda"
    assert torch.equal(gpu_values.cpu(), cpu_values) and torch.equal(gpu_grid.cpu(), cpu_grid)
