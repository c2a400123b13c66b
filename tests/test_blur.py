"""The blur ladder against scipy's float64 gaussian_filter (reflect, truncate 4) on random images."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import scipy.ndimage as ndi
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

import priorscope.kernels.blur as blur_module
from priorscope.kernels import blur_ladder, blur_ladder_images, obfuscate_total, total_image
from priorscope.kernels.dct import dct, idct
from priorscope.kernels.errors import KernelError, KernelUsageError

TOL_255 = 0.02  # grey levels on a 0-255 scale, the bound for float inputs
TIE_255 = 1e-3  # how near a .5 tie float32 round-off may round a uint8 pixel either way
SHAPES = [(1, 1), (2, 3), (5, 4), (17, 32), (33, 31), (48, 64)]


def reference(image: np.ndarray, sigma_px: float) -> np.ndarray:
    """Return scipy's float64 blur of ``image [C, H, W]`` at sigma_px (inf = channel mean)."""
    x = image.astype(np.float64)
    if math.isinf(sigma_px):
        return np.broadcast_to(x.mean(axis=(1, 2), keepdims=True), x.shape).copy()
    return np.stack([ndi.gaussian_filter(ch, sigma_px, mode="reflect", truncate=4.0) for ch in x])


def ladder_sigmas(h: int, w: int) -> list[float]:
    """Return pixel sigmas covering 0, radius 0, < 0.5 px, direct, spectral, > image, inf."""
    return [0.0, 0.1, 0.3, 0.45, 1.3, 2.9, 5.0, 9.5, 2.5 * max(h, w) + 1, math.inf]


def random_images(rng: np.random.Generator, b: int, c: int, h: int, w: int) -> np.ndarray:
    """Return fresh uniform random images ``[B, C, H, W]`` in [0, 255), never constant."""
    return rng.uniform(0.0, 255.0, size=(b, c, h, w))


@pytest.fixture(params=["direct", "spectral", "planned"])
def algorithm(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Force every finite sigma through one algorithm, or leave the planner's choice."""
    radius = {"direct": 10**9, "spectral": 0, "planned": blur_module.DIRECT_MAX_RADIUS}
    monkeypatch.setattr(blur_module, "DIRECT_MAX_RADIUS", radius[request.param])
    return str(request.param)


@pytest.mark.parametrize("shape", SHAPES)
def test_float32_matches_scipy_at_every_pixel(shape: tuple[int, int], algorithm: str) -> None:
    h, w = shape
    rng = np.random.default_rng()
    images = random_images(rng, 2, 3, h, w)
    sigmas = ladder_sigmas(h, w)
    out = blur_ladder(torch.from_numpy(images).float(), sigmas, relative=False)
    assert out.shape == (2, len(sigmas), 3, h, w) and out.dtype == torch.float32
    x32 = images.astype(np.float32)
    for b in range(2):
        for k, s in enumerate(sigmas):
            err = np.abs(out[b, k].double().numpy() - reference(x32[b], s)).max()
            assert err <= TOL_255, f"{algorithm} sigma={s} shape={shape} max error {err}"


def test_unit_range_float_images_meet_the_scaled_bound() -> None:
    rng = np.random.default_rng()
    images = rng.uniform(0.0, 1.0, size=(1, 3, 40, 56))
    sigmas = [0.01, 0.04, 0.16, 0.5]
    out = blur_ladder(torch.from_numpy(images).float(), sigmas)
    for k, s in enumerate(sigmas):
        ref = reference(images[0].astype(np.float32), s * 40)
        assert np.abs(out[0, k].double().numpy() - ref).max() <= TOL_255 / 255


def test_float64_is_exact_to_round_off(algorithm: str) -> None:
    rng = np.random.default_rng()
    images = random_images(rng, 1, 2, 23, 30)
    sigmas = ladder_sigmas(23, 30)
    out = blur_ladder(torch.from_numpy(images), sigmas, relative=False)
    assert out.dtype == torch.float64
    for k, s in enumerate(sigmas):
        assert np.abs(out[0, k].numpy() - reference(images[0], s)).max() < 1e-9


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_is_within_the_bound_plus_output_rounding(dtype: torch.dtype) -> None:
    rng = np.random.default_rng()
    images = torch.from_numpy(random_images(rng, 1, 3, 21, 26)).to(dtype)
    sigmas = [0.0, 0.6, 2.0, 7.0, math.inf]
    out = blur_ladder(images, sigmas, relative=False)
    assert out.dtype == dtype
    x = images.double().numpy()[0]
    for k, s in enumerate(sigmas):
        ref = reference(x, s)
        bound = TOL_255 + torch.finfo(dtype).eps * np.abs(ref)
        assert (np.abs(out[0, k].double().numpy() - ref) <= bound).all()


def test_uint8_is_scipy_rounded_within_one_level(algorithm: str) -> None:
    rng = np.random.default_rng()
    images = rng.integers(0, 256, size=(2, 3, 31, 44), dtype=np.uint8)
    sigmas = [0.0, 0.4, 1.5, 4.0, 12.0, 200.0, math.inf]
    out = blur_ladder(torch.from_numpy(images), sigmas, relative=False)
    assert out.dtype == torch.uint8
    for b in range(2):
        for k, s in enumerate(sigmas):
            ref = reference(images[b], s)
            diff = np.abs(out[b, k].numpy().astype(np.int64) - np.clip(np.round(ref), 0, 255))
            assert diff.max() <= 1
            # A 1-level miss only where float32 round-off straddles a .5 tie. A wide sigma gives
            # a near-constant image, so when its mean sits near a tie many pixels miss at once:
            # bound the distance from the tie, not the fraction of pixels that miss.
            from_tie = np.abs(ref - np.floor(ref) - 0.5)
            assert (from_tie[diff > 0] < TIE_255).all(), f"{algorithm} sigma={s}"


def test_uint8_rounds_half_to_even() -> None:
    # Channel means 2.5 and 3.5 are exact ties: half to even gives 2 and 4.
    image = torch.tensor([[[[2, 3], [2, 3]], [[3, 4], [4, 3]]]], dtype=torch.uint8)
    out = blur_ladder(image, [math.inf], relative=False)
    assert out[0, 0, 0].unique().tolist() == [2]
    assert out[0, 0, 1].unique().tolist() == [4]


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float16, torch.float32, torch.float64])
def test_sigma_zero_and_radius_zero_return_the_input_bit_for_bit(dtype: torch.dtype) -> None:
    rng = np.random.default_rng()
    images = torch.from_numpy(random_images(rng, 2, 3, 9, 7)).to(dtype)
    out = blur_ladder(images, [0.0, 0.1, 0.0], relative=False)  # radius int(0.4 + 0.5) == 0
    for k in range(3):
        assert torch.equal(out[:, k], images)


def test_relative_sigma_is_a_fraction_of_the_short_side() -> None:
    rng = np.random.default_rng()
    images = torch.from_numpy(random_images(rng, 1, 3, 36, 60)).float()
    rel = blur_ladder(images, [0.02, 0.1, 0.4])
    px = blur_ladder(images, [0.02 * 36, 0.1 * 36, 0.4 * 36], relative=False)
    assert torch.equal(rel, px)
    ref = reference(images[0].double().numpy(), 0.1 * 36)
    assert np.abs(rel[0, 1].double().numpy() - ref).max() <= TOL_255


def test_batch_members_do_not_leak_into_each_other() -> None:
    rng = np.random.default_rng()
    images = torch.from_numpy(random_images(rng, 3, 2, 20, 24)).float()
    sigmas = [0.05, 0.3, math.inf]
    together = blur_ladder(images, sigmas)
    for b in range(3):
        alone = blur_ladder(images[b : b + 1], sigmas)
        # Grey levels 0-255: relative to the value, plus a tiny atol for pixels near black.
        torch.testing.assert_close(together[b], alone[0], rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("chunk_pixels", [1, 2 * 24 * 20, 7 * 24 * 20])
def test_cpu_chunking_gives_the_same_ladder(
    chunk_pixels: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One plane per chunk, two channels per chunk, two whole images per chunk vs one chunk.
    rng = np.random.default_rng()
    images = torch.from_numpy(random_images(rng, 5, 3, 20, 24))
    sigmas = [0.0, 0.05, 0.6, math.inf]
    for dtype in (torch.uint8, torch.float32):
        whole = blur_ladder(images.to(dtype), sigmas)
        monkeypatch.setattr(blur_module, "CPU_CHUNK_PIXELS", chunk_pixels)
        chunked = blur_ladder(images.to(dtype), sigmas)
        monkeypatch.setattr(blur_module, "CPU_CHUNK_PIXELS", 1 << 30)
        if dtype == torch.uint8:  # a rounding tie may fall either way
            assert (chunked.double() - whole.double()).abs().max() <= 1
        else:
            torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-4)


def test_channels_last_views_give_the_same_ladder() -> None:
    # Capture hands over HWC pixels permuted to [B, C, H, W]: a non-contiguous view.
    rng = np.random.default_rng()
    hwc = torch.from_numpy(rng.integers(0, 256, (2, 30, 41, 3), dtype=np.uint8))
    view = hwc.permute(0, 3, 1, 2)
    sigmas = [0.0, 0.02, 0.2, math.inf]
    assert torch.equal(blur_ladder(view, sigmas), blur_ladder(view.contiguous(), sigmas))


def test_empty_batch_gives_an_empty_ladder() -> None:
    out = blur_ladder(torch.zeros(0, 3, 8, 8, dtype=torch.uint8), [0.1, math.inf])
    assert out.shape == (0, 2, 3, 8, 8) and out.dtype == torch.uint8


@settings(max_examples=40, deadline=None)
@given(
    h=st.integers(1, 40),
    w=st.integers(1, 40),
    sigma=st.one_of(st.floats(0.0, 80.0), st.just(math.inf)),
    seed=st.integers(0, 2**32 - 1),
)
def test_any_size_and_sigma_matches_scipy(h: int, w: int, sigma: float, seed: int) -> None:
    images = random_images(np.random.default_rng(seed), 1, 1, h, w)
    out = blur_ladder(torch.from_numpy(images).float(), [sigma], relative=False)
    err = np.abs(out[0, 0].double().numpy() - reference(images[0].astype(np.float32), sigma))
    assert err.max() <= TOL_255


@pytest.mark.parametrize("n", [1, 2, 3, 8, 11])
def test_dct_matches_scipy_and_inverts_exactly(n: int) -> None:
    import scipy.fft

    x = torch.from_numpy(np.random.default_rng().normal(size=(3, n, 5)))
    coeffs = dct(x, dim=1)
    expected = scipy.fft.dct(x.numpy(), type=2, axis=1) / 2  # scipy's DCT-II is twice ours
    assert np.abs(coeffs.numpy() - expected).max() < 1e-12
    assert (idct(coeffs, dim=1) - x).abs().max() < 1e-12


def test_images_helper_groups_by_size_and_keeps_input_order() -> None:
    rng = np.random.default_rng()
    rgb_a = Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8), "RGB")
    grey = Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8), "L")
    rgb_b = Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8), "RGB")
    floats = rng.uniform(0, 1, (11, 9, 3)).astype(np.float32)
    inputs = [rgb_a, grey, floats, rgb_b]
    sigmas = [0.0, 0.05, math.inf]
    outs = blur_ladder_images(inputs, sigmas)
    assert [tuple(o.shape) for o in outs] == [
        (3, 3, 20, 30),
        (3, 1, 16, 16),
        (3, 3, 11, 9),
        (3, 3, 20, 30),
    ]
    assert [o.dtype for o in outs] == [torch.uint8, torch.uint8, torch.float32, torch.uint8]
    for image, out in zip(inputs, outs, strict=True):
        chw = np.array(image)
        chw = chw[None] if chw.ndim == 2 else np.moveaxis(chw, -1, 0)
        assert torch.equal(out[0], torch.from_numpy(np.ascontiguousarray(chw)))
        alone = blur_ladder(torch.from_numpy(np.ascontiguousarray(chw))[None], sigmas)[0]
        assert torch.equal(out, alone)


def test_images_helper_rejects_what_it_cannot_blur() -> None:
    with pytest.raises(KernelError, match="image 1"):
        blur_ladder_images([np.zeros((4, 4), np.uint8), "cat.png"], [0.1])
    with pytest.raises(KernelError, match="dtype uint8 or float"):
        blur_ladder_images([np.zeros((4, 4), np.int32)], [0.1])
    with pytest.raises(KernelError, match=r"\[H, W\]"):
        blur_ladder_images([np.zeros((1, 4, 4, 3), np.uint8)], [0.1])


@pytest.mark.parametrize(
    ("images", "message"),
    [
        (np.zeros((1, 3, 4, 4)), "torch.Tensor"),
        (torch.zeros(3, 4, 4), "4 dims"),
        (torch.zeros(1, 3, 4, 4, dtype=torch.bool), "dtype"),
        (torch.zeros(1, 3, 4, 4, dtype=torch.int32), "dtype"),
        (torch.zeros(1, 3, 0, 4), "at least one"),
    ],
)
def test_bad_images_raise_kernel_error(images: object, message: str) -> None:
    with pytest.raises(KernelError, match=message):
        blur_ladder(images, [0.1])


@pytest.mark.parametrize(
    ("sigmas", "message"),
    [
        ([], "at least one"),
        ([0.1, -0.2], "sigma 1 to be >= 0"),
        ([float("nan")], ">= 0"),
        ("0.1", "sequence"),
        (0.1, "sequence"),
        ([True], "real number"),
        (["0.1"], "real number"),
        ([1e6], "Use inf"),
    ],
)
def test_bad_sigmas_raise_usage_error(sigmas: object, message: str) -> None:
    with pytest.raises(KernelUsageError, match=message):
        blur_ladder(torch.zeros(1, 1, 4, 4), sigmas)


def test_relative_must_be_a_bool() -> None:
    with pytest.raises(KernelUsageError, match="relative"):
        blur_ladder(torch.zeros(1, 1, 4, 4), [0.1], relative="yes")


def test_cpu_path_imports_neither_cupy_nor_triton() -> None:
    code = (
        "import sys, torch\n"
        "from priorscope.kernels import blur_ladder, blur_ladder_images\n"
        "import numpy as np\n"
        "blur_ladder(torch.rand(2, 3, 40, 30), [0.005, 0.02, 0.16, float('inf')])\n"
        "blur_ladder_images([np.zeros((8, 8, 3), np.uint8)], [0.1])\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('cupy', 'triton')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_cuda_matches_scipy_and_stays_on_the_device(dtype: torch.dtype) -> None:
    rng = np.random.default_rng()
    images = torch.from_numpy(random_images(rng, 4, 3, 45, 64)).to(dtype)
    sigmas = [0.0, 0.005, 0.02, 0.08, 0.16, 2.0, math.inf]
    out = blur_ladder(images.cuda(), sigmas)
    assert out.device.type == "cuda" and out.dtype == dtype
    host = out.cpu().double().numpy()
    x = images.double().numpy()
    for b in range(4):
        for k, s in enumerate(sigmas):
            ref = reference(x[b], s * 45)
            if dtype == torch.uint8:
                assert np.abs(host[b, k] - np.round(ref)).max() <= 1
            else:
                assert np.abs(host[b, k] - ref).max() <= TOL_255


@pytest.mark.gpu
def test_cuda_agrees_with_cpu_and_helper_runs_on_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng()
    images = torch.from_numpy(random_images(rng, 8, 3, 64, 48)).float()
    sigmas = [0.005, 0.01, 0.02, 0.04, 0.08, 0.16, math.inf]
    on_cpu = blur_ladder(images, sigmas)
    torch.testing.assert_close(blur_ladder(images.cuda(), sigmas).cpu(), on_cpu, rtol=0, atol=5e-3)
    monkeypatch.setattr(blur_module, "DEVICE_CHUNK_PIXELS", 2 * 64 * 48)  # chunked on the GPU
    torch.testing.assert_close(blur_ladder(images.cuda(), sigmas).cpu(), on_cpu, rtol=0, atol=5e-3)
    pictures = [rng.integers(0, 256, (h, 40, 3), dtype=np.uint8) for h in (30, 50, 30)]
    outs = blur_ladder_images(pictures, sigmas, device="cuda")
    assert [o.device.type for o in outs] == ["cuda"] * 3
    assert [o.shape[2] for o in outs] == [30, 50, 30]


def test_engine_errors_subclass_the_kernel_errors() -> None:
    from priorscope.engine import errors

    assert issubclass(errors.KernelError, KernelError)
    assert issubclass(errors.KernelError, errors.PriorscopeError)
    assert KernelUsageError.exit_code == 2 and KernelError.exit_code == 1


def test_condition_images_turn_kernel_errors_into_engine_errors() -> None:
    from priorscope.engine.conditions import kernel_errors
    from priorscope.engine.errors import KernelError as EngineKernelError
    from priorscope.engine.errors import UsageError

    with pytest.raises(UsageError, match="Use inf"), kernel_errors():
        blur_ladder(torch.zeros(1, 1, 4, 4), [1e6])
    with pytest.raises(EngineKernelError, match="4 dims"), kernel_errors():
        blur_ladder(torch.zeros(1, 4, 4), [0.1])


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32, torch.float64])
def test_obfuscate_total_is_the_ladder_total_level(dtype: torch.dtype) -> None:
    rng = np.random.default_rng()
    images = torch.from_numpy(random_images(rng, 2, 3, 13, 17)).to(dtype)
    total = obfuscate_total(images)
    assert total.dtype == dtype and total.shape == images.shape
    assert torch.equal(total, blur_ladder(images, [0.1, math.inf])[:, 1])
    want = reference(images[0].double().numpy(), math.inf)
    if dtype == torch.uint8:
        want = np.round(want)  # half to even, like np.round
    np.testing.assert_allclose(total[0].double().numpy(), want, rtol=1e-6, atol=1e-6 * 255)


@pytest.mark.parametrize("size", [(56, 56), (112, 112), (84, 60)])
def test_total_image_equals_the_rounded_channel_mean(size: tuple[int, int]) -> None:
    rng = np.random.default_rng()
    pixels = rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    blank = total_image(image)
    assert blank.mode == "RGB" and blank.size == image.size
    mean = np.round(pixels.astype(np.float64).mean(axis=(0, 1)))  # exact mean, half to even
    assert (np.asarray(blank) == mean.astype(np.uint8)).all()
    grey = total_image(pixels[..., 0])
    assert grey.shape == size and grey.dtype == np.uint8
    assert (grey == np.round(pixels[..., 0].astype(np.float64).mean())).all()


def test_total_image_agrees_with_the_synth_uninformative_image() -> None:
    # One definition of a fully obfuscated image: the synthetic set's "mean" blank is the same.
    from priorscope.engine.data.synth import SynthConfig, generate, uninformative_image

    for ex in generate(SynthConfig(n=6, seed=3)):
        want = np.asarray(uninformative_image(ex.image, "mean"))
        assert np.array_equal(np.asarray(total_image(ex.image.convert("RGB"))), want)
