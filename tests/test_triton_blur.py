"""The fused Triton blur kernel against the torch path and scipy's float64 gaussian_filter.

Without a GPU the kernel runs in Triton's interpreter (``TRITON_INTERPRET=1``, numpy on CPU
tensors), set by a module fixture before the kernel module is first imported and restored after.
The interpreter is slow: images stay small, and block sizes of 16 make several tiles (and a
partial last tile) per plane. The ``gpu`` tests run the compiled kernel through ``blur_ladder``.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import subprocess
import sys
import warnings
from collections.abc import Iterator
from types import ModuleType

import numpy as np
import pytest
import scipy.ndimage as ndi
import torch

import priorscope.kernels.blur as blur_module
from priorscope.kernels import blur_ladder
from priorscope.kernels.errors import KernelError

SMALL_BLOCKS = (16, 16, 16)


@pytest.fixture(scope="module")
def fused() -> Iterator[ModuleType]:
    """Return priorscope.kernels.triton_blur, interpreted on CPU when there is no CUDA device.

    triton is in the dev extras (pip install -e .[dev]); without it this fixture errors.
    """
    interpret = not torch.cuda.is_available()
    before = os.environ.get("TRITON_INTERPRET")
    if interpret and before != "1":
        os.environ["TRITON_INTERPRET"] = "1"
        # triton decides at import whether its own helpers (tl.zeros, ...) are interpreted: drop
        # a copy imported without the interpreter (nothing on the CPU path imports it).
        # Its C extension stays loaded: importing that twice aborts the process.
        for name in [
            m for m in sys.modules if m.split(".")[0] == "triton" and not m.startswith("triton._C")
        ]:
            del sys.modules[name]
        sys.modules.pop("priorscope.kernels.triton_blur", None)
    try:
        yield importlib.import_module("priorscope.kernels.triton_blur")
    finally:
        if interpret and before is None:
            os.environ.pop("TRITON_INTERPRET", None)
        elif interpret and before != "1":
            os.environ["TRITON_INTERPRET"] = before


def device() -> str:
    """Return where the kernel runs: cuda when there is one, else CPU (interpreted)."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def scipy_blur(image: np.ndarray, sigma_px: float) -> np.ndarray:
    """Return scipy's float64 blur of ``image [C, H, W]`` per channel (reflect, truncate 4)."""
    x = image.astype(np.float64)
    return np.stack([ndi.gaussian_filter(ch, sigma_px, mode="reflect", truncate=4.0) for ch in x])


def run_fused(
    fused: ModuleType, images: torch.Tensor, sigmas: list[float], **kwargs: object
) -> torch.Tensor:
    """Return ``[B, K, C, H, W]`` from the fused kernel alone, every level a blur level."""
    b, c, h, w = images.shape
    out = torch.zeros((b, len(sigmas), c, h, w), dtype=images.dtype, device=images.device)
    kwargs.setdefault("blocks", SMALL_BLOCKS)
    fused.blur_levels_fused(images, sigmas, out, list(range(len(sigmas))), **kwargs)
    return out


@pytest.mark.parametrize(
    ("n", "sigma"), [(1, 0.6), (2, 3.0), (7, 1.3), (16, 2.2), (31, 7.9), (20, 30.0), (9, 500.0)]
)
def test_blur_matrix_is_scipys_reflect_filter(fused: ModuleType, n: int, sigma: float) -> None:
    rng = np.random.default_rng()
    x = rng.uniform(0.0, 255.0, size=(n, 5))
    a = fused.reflect_blur_matrix(n, sigma)
    want = ndi.gaussian_filter1d(x, sigma, axis=0, mode="reflect", truncate=4.0)
    np.testing.assert_allclose(a @ x, want, rtol=1e-12, atol=1e-12 * 255)
    np.testing.assert_allclose(a.sum(axis=1), np.ones(n), rtol=1e-12)


# (batch, channels, height, width): odd sizes, sizes below, at and off a multiple of the block.
SHAPES = [(1, 1, 16, 16), (2, 3, 37, 45), (1, 4, 17, 33), (3, 2, 50, 9)]


@pytest.mark.parametrize("shape", SHAPES)
def test_float32_matches_scipy_and_the_torch_path(
    fused: ModuleType, shape: tuple[int, int, int, int]
) -> None:
    b, _, h, w = shape
    rng = np.random.default_rng()
    images = rng.uniform(0.0, 255.0, size=shape)
    # radius 1, the direct/spectral cut (8 px), a band wider than a block, beyond the image.
    sigmas = [0.3, 1.3, 2.0, 5.0, 2.5 * max(h, w) + 1]
    x = torch.from_numpy(images).float()
    out = run_fused(fused, x.to(device()), sigmas).cpu()
    torch_path = blur_ladder(x, sigmas, relative=False)
    torch.testing.assert_close(out, torch_path, rtol=1e-5, atol=1e-4)
    x32 = images.astype(np.float32)
    for i in range(b):
        for k, s in enumerate(sigmas):
            np.testing.assert_allclose(
                out[i, k].double().numpy(), scipy_blur(x32[i], s), rtol=1e-5, atol=1e-4
            )


def test_uint8_rounds_like_the_torch_path(fused: ModuleType) -> None:
    rng = np.random.default_rng()
    images = torch.from_numpy(rng.integers(0, 256, size=(2, 3, 29, 35), dtype=np.uint8))
    sigmas = [0.7, 2.4, 6.0, 90.0]
    out = run_fused(fused, images.to(device()), sigmas).cpu()
    assert out.dtype == torch.uint8
    torch_path = blur_ladder(images, sigmas, relative=False)
    diff = (out.long() - torch_path.long()).abs()
    assert diff.max() <= 1  # a rounding tie may fall either way after float32 round-off
    # Misses only at ties: a wide sigma's near-constant image may put many pixels near one.
    exact = blur_ladder(images.double(), sigmas, relative=False)
    from_tie = (exact - exact.floor() - 0.5).abs()
    assert (from_tie[diff > 0] < 1e-3).all()
    for k, s in enumerate(sigmas):
        want = np.round(scipy_blur(images[0].numpy(), s))
        assert np.abs(out[0, k].numpy().astype(np.int64) - want).max() <= 1


@pytest.mark.parametrize(("dtype", "rtol"), [(torch.float16, 1e-3), (torch.bfloat16, 8e-3)])
def test_half_precision_inputs_round_once_to_their_dtype(
    fused: ModuleType, dtype: torch.dtype, rtol: float
) -> None:
    rng = np.random.default_rng()
    images = torch.from_numpy(rng.uniform(0.0, 255.0, size=(1, 3, 21, 18))).to(dtype)
    sigmas = [1.1, 4.5]
    out = run_fused(fused, images.to(device()), sigmas).cpu()
    assert out.dtype == dtype
    torch_path = blur_ladder(images, sigmas, relative=False)
    # Both compute in float32 and round once: at most one unit in the last place apart.
    torch.testing.assert_close(out.float(), torch_path.float(), rtol=rtol, atol=0.0)


def test_strided_views_and_chosen_slots(fused: ModuleType) -> None:
    # A channels-last view (capture hands HWC pixels permuted) and a ladder whose blur levels
    # sit between levels the kernel must leave alone.
    rng = np.random.default_rng()
    hwc = torch.from_numpy(rng.integers(0, 256, (2, 23, 30, 3), dtype=np.uint8)).to(device())
    view = hwc.permute(0, 3, 1, 2)
    out = torch.full((2, 4, 3, 23, 30), 7, dtype=torch.uint8, device=device())
    fused.blur_levels_fused(view, [1.5, 12.0], out, [1, 3], blocks=SMALL_BLOCKS)
    dense = run_fused(fused, view.contiguous(), [1.5, 12.0])
    assert torch.equal(out[:, [1, 3]], dense)
    assert (out[:, [0, 2]] == 7).all()


def test_default_blocks_and_precision_match_the_torch_path(fused: ModuleType) -> None:
    rng = np.random.default_rng()
    images = torch.from_numpy(rng.uniform(0.0, 255.0, size=(1, 1, 40, 150))).float()
    sigmas = [2.0, 30.0]
    out = run_fused(fused, images.to(device()), sigmas, blocks=None).cpu()
    torch.testing.assert_close(
        out, blur_ladder(images, sigmas, relative=False), rtol=1e-5, atol=1e-4
    )


def test_blur_ladder_dispatch_writes_every_level(
    fused: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Force the dispatch on CPU tensors: identity and total stay on the torch path, the blur
    # levels come from the kernel, and the ladder equals the torch-only ladder.
    monkeypatch.setattr(blur_module, "_fused_kernel_applies", lambda images, levels: True)
    monkeypatch.setattr(fused, "DEFAULT_BLOCKS", SMALL_BLOCKS)
    calls = []
    real = fused.blur_levels_fused

    def counted(*args: object, **kwargs: object) -> None:
        calls.append(args[1])
        real(*args, **kwargs)

    monkeypatch.setattr(fused, "blur_levels_fused", counted)
    rng = np.random.default_rng()
    images = torch.from_numpy(rng.uniform(0.0, 255.0, size=(2, 3, 24, 20))).float()
    sigmas = [0.0, 0.05, 0.4, math.inf]
    out = blur_ladder(images, sigmas)
    assert len(calls) == 1 and len(calls[0]) == 2  # both blur levels in one launch
    monkeypatch.undo()
    torch.testing.assert_close(out, blur_ladder(images, sigmas), rtol=1e-5, atol=1e-4)
    assert torch.equal(out[:, 0], images)


def test_a_kernel_that_cannot_be_built_falls_back_to_the_torch_path(
    fused: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(blur_module, "FUSED_KERNEL", True)
    monkeypatch.setattr(blur_module, "_fused_kernel_applies", lambda images, levels: True)

    def cannot_build(*args: object, **kwargs: object) -> None:
        raise fused.BUILD_ERRORS[-1](232448, 166912, "shared memory")

    monkeypatch.setattr(fused, "blur_levels_fused", cannot_build)
    images = torch.from_numpy(np.random.default_rng().uniform(0, 255, (1, 3, 20, 24))).float()
    sigmas = [0.0, 0.1, math.inf]
    with pytest.warns(RuntimeWarning, match="OutOfResources.*torch path instead"):
        out = blur_ladder(images, sigmas)
    assert blur_module.FUSED_KERNEL is False  # later calls skip the attempt
    monkeypatch.undo()
    assert torch.equal(out, blur_ladder(images, sigmas))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"blocks": (8, 16, 16)}, "power of two >= 16"),
        ({"blocks": (16, 48, 16)}, "power of two"),
        ({"precision": "fp64"}, "precision"),
    ],
)
def test_bad_parameters_raise_kernel_error(
    fused: ModuleType, kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(KernelError, match=message):
        run_fused(fused, torch.zeros(1, 1, 16, 16), [1.0], **kwargs)


def test_float64_stays_on_the_torch_path(fused: ModuleType) -> None:
    with pytest.raises(KernelError, match="float64 runs on the torch path"):
        run_fused(fused, torch.zeros(1, 1, 16, 16, dtype=torch.float64), [1.0])
    assert not blur_module._fused_kernel_applies(
        torch.zeros(1, 1, 4, 4, dtype=torch.float64), blur_module.plan_ladder([1.0])
    )


COMPILE_FOR_HOPPER = """
import json, sys
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, compile
import priorscope.kernels.triton_blur as tb
fn, out = tb._ladder_kernel, {}
for ptr in sys.argv[1:]:
    sig = {"x_ptr": ptr, "out_ptr": ptr, "ah_ptr": "*fp32", "awt_ptr": "*fp32"}
    sig.update({"radius_ptr": "*i32", "slot_ptr": "*i32"})
    sig.update({n: "i32" for n in fn.arg_names[6:18]})
    bm, bn, bk = tb.DEFAULT_BLOCKS
    const = dict(BM=bm, BN=bn, BK=bk, ROUND_U8=ptr == "*u8", PRECISION=tb.DEFAULT_PRECISION)
    sig.update({k: "constexpr" for k in const})
    src = ASTSource(fn, sig, constexprs={(fn.arg_names.index(k),): v for k, v in const.items()})
    kernel = compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})
    out[ptr] = {"wgmma": kernel.asm["ptx"].count("wgmma"), "cubin": len(kernel.asm["cubin"])}
print(json.dumps(out))
"""


def test_kernel_compiles_for_hopper_with_warpgroup_mma() -> None:
    # The interpreter accepts code the compiler rejects: compile the real kernel to an sm_90
    # binary (triton's bundled ptxas; no GPU needed), in a process without TRITON_INTERPRET.
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    proc = subprocess.run(
        [sys.executable, "-c", COMPILE_FOR_HOPPER, "*u8", "*fp32", "*bf16"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    built = json.loads(proc.stdout.strip().splitlines()[-1])
    for ptr in ("*u8", "*fp32", "*bf16"):
        assert built[ptr]["cubin"] > 0 and built[ptr]["wgmma"] > 0


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_cuda_ladder_uses_the_kernel_and_matches_scipy(
    fused: ModuleType, dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = np.random.default_rng()
    images = torch.from_numpy(rng.uniform(0.0, 255.0, size=(4, 3, 45, 64))).to(dtype)
    sigmas = [0.0, 0.005, 0.02, 0.08, 0.16, 2.0, math.inf]
    assert blur_module._fused_kernel_applies(images.cuda(), blur_module.plan_ladder([1.0]))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a fallback to torch fails the test
        out = blur_ladder(images.cuda(), sigmas).cpu()
    assert blur_module.FUSED_KERNEL
    monkeypatch.setattr(blur_module, "FUSED_KERNEL", False)
    torch_path = blur_ladder(images.cuda(), sigmas).cpu()
    if dtype == torch.uint8:
        assert (out.long() - torch_path.long()).abs().max() <= 1
    else:
        torch.testing.assert_close(out, torch_path, rtol=1e-5, atol=1e-4)
    x = images.double().numpy()
    for k, s in enumerate(sigmas[1:-1], start=1):
        want = scipy_blur(x[0], s * 45)
        got = out[0, k].double().numpy()
        if dtype == torch.uint8:
            assert np.abs(got - np.round(want)).max() <= 1
        else:
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
