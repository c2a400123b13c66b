"""Decode benchmark images to RGB with one documented rule, and resolve image paths safely.

Conversion rule (what :func:`decode_image` returns for each Pillow mode):

- ``RGB``: unchanged.
- ``1``, ``L``, ``P`` without transparency, ``CMYK``, ``YCbCr``, ``LAB``, ``HSV``: Pillow's own
  conversion to RGB (grey replicated into three channels; CMYK by Pillow's naive formula, no ICC
  profile is applied).
- Anything with transparency (``LA``, ``La``, ``PA``, ``RGBA``, ``RGBa``, ``P`` or ``L``/``RGB``
  with a ``transparency`` key): alpha-composited onto opaque white, ``ALPHA_BACKGROUND``. White,
  not black, because that is how a person sees a transparent PNG on a page, and dropping alpha
  (what ``.convert("RGB")`` does) can reveal arbitrary colours hidden under transparent pixels.
- 16-bit and 32-bit integer grey (``I;16``, ``I;16B``, ``I;16L``, ``I``): the 0..65535 range is
  mapped linearly onto 0..255 (values outside it are clipped first), then grey to RGB.
- 32-bit float grey (``F``): values in [0, 1] when the maximum is at most 1, otherwise in
  [0, 255]; clipped, scaled to 0..255, then grey to RGB.

EXIF orientation is not applied: models see the pixels as stored, which is what VLMEvalKit and
lmms-eval feed them too.

Decompression bombs: an image whose width x height exceeds ``max_pixels`` is refused before its
pixels are decoded. The default is :data:`DEFAULT_MAX_PIXELS`, overridable per call or through
the ``PRIORSCOPE_MAX_IMAGE_PIXELS`` environment variable. Pillow's own guard (twice
``PIL.Image.MAX_IMAGE_PIXELS``) still applies on top and is reported the same way.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from priorscope.engine.errors import ImageError

ALPHA_BACKGROUND: tuple[int, int, int] = (255, 255, 255)
DEFAULT_MAX_PIXELS = 40_000_000
MAX_PIXELS_ENV = "PRIORSCOPE_MAX_IMAGE_PIXELS"

_GREY_WIDE_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
_ALPHA_MODES = ("LA", "La", "PA", "RGBA", "RGBa")


def default_max_pixels() -> int:
    """Return the pixel limit: $PRIORSCOPE_MAX_IMAGE_PIXELS if set, else DEFAULT_MAX_PIXELS."""
    raw = os.environ.get(MAX_PIXELS_ENV)
    if raw is None or raw.strip() == "":
        return DEFAULT_MAX_PIXELS
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value <= 0:
        raise ImageError(
            f"Expected {MAX_PIXELS_ENV} to be a positive integer number of pixels. "
            f"Got {raw!r} instead. Unset it or set it to e.g. {DEFAULT_MAX_PIXELS}."
        )
    return value


def open_image(data: bytes, *, where: str, max_pixels: int | None = None) -> Image.Image:
    """Return the lazily opened PIL image (header read, pixels not decoded) after the size check."""
    limit = default_max_pixels() if max_pixels is None else max_pixels
    if not data:
        raise ImageError(f"{where}: Expected an encoded image. Got 0 bytes instead.")
    try:
        with warnings.catch_warnings():
            # Our own limit below replaces Pillow's warning; its hard error is still caught.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise _bomb_error(where, str(exc), limit) from exc
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        head = data[:12]
        raise ImageError(
            f"{where}: Expected an encoded image (PNG, JPEG, WebP, ...). Got {len(data)} bytes "
            f"starting with {head!r} that Pillow cannot identify instead. Check that the column "
            "holds base64 of the image file, or that the path points at an image."
        ) from exc
    width, height = image.size
    if width * height > limit:
        raise _bomb_error(where, f"{width}x{height} = {width * height} pixels", limit)
    return image


def _bomb_error(where: str, got: str, limit: int) -> ImageError:
    return ImageError(
        f"{where}: Expected an image of at most {limit} pixels. Got {got} instead; refusing it "
        f"as a possible decompression bomb. If the image is genuine, raise the limit with "
        f"max_pixels=... or the {MAX_PIXELS_ENV} environment variable."
    )


def decode_image(data: bytes, *, where: str, max_pixels: int | None = None) -> Image.Image:
    """Return the image in ``data`` fully decoded to an RGB PIL image (see the module rule)."""
    image = open_image(data, where=where, max_pixels=max_pixels)
    try:
        image.load()
        return to_rgb(image)
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageError(
            f"{where}: Expected a complete {image.format or 'image'} file. Got a file Pillow "
            f"cannot decode instead ({exc}). The image is probably truncated or corrupt."
        ) from exc


def to_rgb(image: Image.Image) -> Image.Image:
    """Return ``image`` converted to RGB by the module's conversion rule."""
    mode = image.mode
    if mode == "RGB" and "transparency" not in image.info:
        return image
    if mode in _GREY_WIDE_MODES:
        values = np.clip(np.asarray(image, dtype=np.float64), 0, 65535) / 257.0
        return Image.fromarray(np.rint(values).astype(np.uint8), mode="L").convert("RGB")
    if mode == "F":
        values = np.asarray(image, dtype=np.float64)
        values = np.nan_to_num(values, nan=0.0, posinf=255.0, neginf=0.0)
        scale = 255.0 if values.size and values.max() <= 1.0 else 1.0
        grey = np.rint(np.clip(values * scale, 0, 255)).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    if mode in _ALPHA_MODES or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*ALPHA_BACKGROUND, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def encode_png(image: Image.Image) -> bytes:
    """Return the PNG encoding of ``image`` (deterministic for equal pixels and Pillow version)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False, compress_level=6)
    return buffer.getvalue()


def resolve_image_path(root: str | Path, relative: str, *, where: str) -> Path:
    """Return the absolute path of image ``relative`` inside folder ``root``.

    Refuses (ImageError) a path that, after resolving ``..`` and symbolic links, lies outside
    ``root``, and a path that does not name an existing file.
    """
    if not relative or not relative.strip():
        raise ImageError(f"{where}: Expected an image path. Got an empty value instead.")
    base = Path(root).resolve()
    candidate = (base / relative).resolve()
    if not candidate.is_relative_to(base):
        raise ImageError(
            f"{where}: Expected an image path inside the image folder {str(base)!r}. Got "
            f"{relative!r}, which resolves to {str(candidate)!r} outside it, instead. Refusing "
            "it; pass --image-root to name the folder that holds the images."
        )
    if not candidate.is_file():
        raise ImageError(
            f"{where}: Expected an image file at {str(candidate)!r}. Got no such file instead. "
            "Check the path column, or pass --image-root to name the image folder."
        )
    return candidate


def read_image_file(root: str | Path, relative: str, *, where: str) -> bytes:
    """Return the bytes of image ``relative`` resolved safely inside ``root``."""
    return resolve_image_path(root, relative, where=where).read_bytes()
