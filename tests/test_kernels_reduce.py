"""Site reductions (kernels.reduce) against their float64 reference on fresh random inputs."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from priorscope.engine.models import TOKEN_IMAGE, TOKEN_PAD, TOKEN_SPECIAL, TOKEN_TEXT
from priorscope.kernels.errors import KernelError, KernelUsageError
from priorscope.kernels.reduce import REDUCTIONS, reduce_sites, reduce_sites_reference

KINDS = dict(image_kind=TOKEN_IMAGE, text_kind=TOKEN_TEXT)
RTOL = 1e-5


def random_batch(rng: np.random.Generator, b: int, s: int, d: int) -> tuple[np.ndarray, np.ndarray]:
    """Return hidden [b, s, d] (heavy-tailed, offset) and kinds [b, s] with left padding.

    Row 0 has no image tokens (its image_mean is NaN), the last row no padding; the rest have a
    random amount of padding, then image, text and template tokens in random order.
    """
    hidden = rng.standard_t(df=3, size=(b, s, d)) * 4.0 + rng.normal(size=d)
    kinds = np.full((b, s), TOKEN_PAD, dtype=np.int8)
    for row in range(b):
        n_pad = 0 if row == b - 1 else int(rng.integers(0, s // 2))
        body = rng.choice([TOKEN_IMAGE, TOKEN_TEXT, TOKEN_SPECIAL], size=s - n_pad)
        body[0], body[-1] = TOKEN_TEXT, TOKEN_SPECIAL  # at least one text token; answer last
        if row == 0:
            body[body == TOKEN_IMAGE] = TOKEN_SPECIAL
        else:
            body[1] = TOKEN_IMAGE
        kinds[row, n_pad:] = body
    return hidden.astype(np.float32), kinds


def assert_matches_reference(got: np.ndarray, want: np.ndarray, scale: float) -> None:
    # A float32 sum of S terms carries round-off of the terms' size: the atol scales with them.
    assert np.array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=RTOL * scale, equal_nan=True)


@pytest.mark.parametrize(("b", "s", "d"), [(1, 1, 1), (3, 7, 5), (5, 64, 48), (2, 300, 16)])
def test_reduce_sites_equals_the_float64_reference(b: int, s: int, d: int) -> None:
    rng = np.random.default_rng()
    hidden, kinds = random_batch(rng, b, s, d)
    if s == 1:
        kinds[:] = TOKEN_SPECIAL  # one position, no text or image: both means are NaN
    got = reduce_sites(torch.from_numpy(hidden), torch.from_numpy(kinds), REDUCTIONS, **KINDS)
    want = reduce_sites_reference(hidden, kinds, REDUCTIONS, **KINDS)
    assert got.shape == (b, 3, d) and got.dtype == torch.float32
    assert_matches_reference(got.numpy(), want, float(np.abs(hidden).max()))
    assert np.isnan(want[0, 1]).all()  # row 0: no image tokens
    assert np.array_equal(got[:, 0].numpy(), hidden[:, -1])  # last: exact, a copy


def test_reference_is_the_plain_definition() -> None:
    hidden = np.arange(2 * 4 * 2, dtype=np.float64).reshape(2, 4, 2)
    kinds = np.array([[TOKEN_PAD, TOKEN_IMAGE, TOKEN_TEXT, TOKEN_SPECIAL], [2, 2, 1, 3]])
    out = reduce_sites_reference(hidden, kinds, ["text_mean", "last", "image_mean"], **KINDS)
    np.testing.assert_array_equal(out[0], [[4, 5], [6, 7], [2, 3]])
    np.testing.assert_array_equal(out[1], [[9, 10], [14, 15], [12, 13]])


def test_reduce_sites_keeps_order_dtype_and_device_rules() -> None:
    rng = np.random.default_rng()
    hidden, kinds = random_batch(rng, 3, 20, 8)
    h16 = torch.from_numpy(hidden).to(torch.bfloat16)
    got = reduce_sites(h16, torch.from_numpy(kinds), ["image_mean", "last"], **KINDS)
    want = reduce_sites_reference(h16.float().numpy(), kinds, ["image_mean", "last"], **KINDS)
    assert got.dtype == torch.float32  # reduced in float32 whatever the model's dtype
    assert_matches_reference(got.numpy(), want, float(h16.float().abs().max()))


def test_reduce_sites_errors() -> None:
    hidden, kinds = torch.zeros(2, 3, 4), torch.zeros(2, 3, dtype=torch.int8)
    with pytest.raises(KernelUsageError, match="Expected site reductions among last"):
        reduce_sites(hidden, kinds, ["mean"], **KINDS)
    with pytest.raises(KernelUsageError, match="Got none"):
        reduce_sites(hidden, kinds, [], **KINDS)
    with pytest.raises(KernelError, match=r"kinds \[batch, seq\]"):
        reduce_sites(hidden, kinds[:, :2], ["last"], **KINDS)
    with pytest.raises(KernelError, match="seq = 0"):
        reduce_sites_reference(np.zeros((1, 0, 2)), np.zeros((1, 0)), ["last"], **KINDS)


def test_kernels_import_nothing_from_the_engine() -> None:
    code = (
        "import sys, priorscope.kernels as k\n"
        "from priorscope.kernels import blur, dct, errors, images, reduce\n"
        "bad = sorted(m for m in sys.modules if m.startswith('priorscope.engine'))\n"
        "assert not bad, bad\n"
        "import priorscope.engine.errors as e\n"
        "assert issubclass(e.KernelError, errors.KernelError)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
