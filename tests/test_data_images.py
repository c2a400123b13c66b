"""Image decoding: the RGB conversion rule per mode, bomb rejection, safe path resolution."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from priorscope.engine.data.images import (
    ALPHA_BACKGROUND,
    MAX_PIXELS_ENV,
    decode_image,
    default_max_pixels,
    encode_png,
    resolve_image_path,
)
from priorscope.engine.errors import ImageError

RNG = np.random.default_rng(7)


def _encode(image: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def _rgb(data: bytes) -> np.ndarray:
    image = decode_image(data, where="test")
    assert image.mode == "RGB"
    return np.asarray(image).astype(np.int64)


def test_grey_is_replicated_into_three_channels():
    grey = RNG.integers(0, 256, (9, 7), dtype=np.uint8)
    out = _rgb(_encode(Image.fromarray(grey, mode="L")))
    assert out.shape == (9, 7, 3)
    for channel in range(3):
        assert np.array_equal(out[..., channel], grey)


def test_alpha_is_composited_on_white():
    rgba = RNG.integers(0, 256, (6, 5, 4), dtype=np.uint8)
    out = _rgb(_encode(Image.fromarray(rgba, mode="RGBA")))
    alpha = rgba[..., 3:4] / 255.0
    reference = rgba[..., :3] * alpha + np.array(ALPHA_BACKGROUND) * (1 - alpha)
    assert np.abs(out - reference).max() <= 1
    la = np.stack([rgba[..., 0], rgba[..., 3]], axis=-1)
    out_la = _rgb(_encode(Image.fromarray(la, mode="LA")))
    ref_la = la[..., 0] * (la[..., 1] / 255.0) + 255 * (1 - la[..., 1] / 255.0)
    assert np.abs(out_la[..., 0] - ref_la).max() <= 1


def test_palette_transparency_becomes_white_and_opaque_entries_keep_colour():
    indices = RNG.integers(0, 3, (8, 8), dtype=np.uint8)
    image = Image.fromarray(indices, mode="P")
    image.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (253 * 3))
    out = _rgb(_encode(image, transparency=1))  # index 1 (green) is transparent
    colours = {0: (255, 0, 0), 1: ALPHA_BACKGROUND, 2: (0, 0, 255)}
    for index, colour in colours.items():
        assert np.all(out[indices == index] == colour)


def test_sixteen_bit_grey_maps_full_range_onto_eight_bits():
    values = RNG.integers(0, 65536, (5, 6)).astype(np.uint16)
    image = Image.fromarray(values)
    assert image.mode.startswith("I")
    out = _rgb(_encode(image))
    assert np.array_equal(out[..., 1], np.rint(values / 257.0))


def test_float_grey_in_unit_range_is_scaled():
    values = RNG.random((4, 4)).astype(np.float32)
    out = _rgb(_encode(Image.fromarray(values, mode="F"), fmt="TIFF"))
    assert np.array_equal(out[..., 0], np.rint(values.astype(np.float64) * 255))


def test_cmyk_follows_pillows_conversion():
    cmyk = Image.fromarray(RNG.integers(0, 256, (4, 4, 4), dtype=np.uint8), mode="CMYK")
    data = _encode(cmyk, fmt="JPEG", quality=95)
    expected = np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(np.int64)
    assert np.array_equal(_rgb(data), expected)


def test_exif_orientation_is_not_applied():
    pixels = RNG.integers(0, 256, (4, 8, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees" in EXIF terms
    data = _encode(Image.fromarray(pixels), fmt="PNG", exif=exif)
    assert _rgb(data).shape == (4, 8, 3)


def test_bombs_are_refused_before_decoding(monkeypatch):
    data = encode_png(Image.new("RGB", (300, 200)))
    assert decode_image(data, where="x", max_pixels=60_000).size == (300, 200)
    with pytest.raises(ImageError, match=r"at most 59999 pixels\. Got 300x200 = 60000 pixels"):
        decode_image(data, where="x", max_pixels=59_999)
    monkeypatch.setenv(MAX_PIXELS_ENV, "1000")
    assert default_max_pixels() == 1000
    with pytest.raises(ImageError, match=MAX_PIXELS_ENV):
        decode_image(data, where="x")
    monkeypatch.setenv(MAX_PIXELS_ENV, "lots")
    with pytest.raises(ImageError, match="positive integer"):
        default_max_pixels()


def test_non_images_and_truncated_images_are_named():
    with pytest.raises(ImageError, match=r"row 4: Expected an encoded image.*cannot identify"):
        decode_image(b"hello, not an image", where="row 4")
    with pytest.raises(ImageError, match="Got 0 bytes"):
        decode_image(b"", where="row 4")
    data = encode_png(Image.fromarray(RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8)))
    with pytest.raises(ImageError, match="truncated or corrupt"):
        decode_image(data[: len(data) // 2], where="row 4")


def test_paths_outside_the_image_folder_are_refused(tmp_path):
    root = tmp_path / "images"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "a.png").write_bytes(b"x")
    (tmp_path / "secret.png").write_bytes(b"x")
    (root / "link.png").symlink_to(tmp_path / "secret.png")
    assert (
        resolve_image_path(root, "sub/../sub/a.png", where="w")
        == (root / "sub" / "a.png").resolve()
    )
    for bad in ("../secret.png", str(tmp_path / "secret.png"), "link.png", "sub/../../secret.png"):
        with pytest.raises(ImageError, match="outside it"):
            resolve_image_path(root, bad, where="w")
    with pytest.raises(ImageError, match="no such file"):
        resolve_image_path(root, "sub/missing.png", where="w")
