"""Test images for the imaging and model tests: real photos and hand-built hostile files.

Everything is generated in memory from scikit-image's bundled photos, so the tests need no
network and no binary fixtures in git. The decompression bombs are built without ever holding
their pixels: the PNG encoder below streams zlib-compressed rows.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CAT_CLASSES = {281, 282, 285}  # tabby, tiger cat, Egyptian cat
ESPRESSO = 967


@cache
def photo(name: str) -> np.ndarray:
    """An RGB uint8 photo from scikit-image (chelsea, coffee, rocket, astronaut)."""
    import skimage.data

    arr = getattr(skimage.data, name)()
    return arr[..., :3] if arr.ndim == 3 else np.stack([arr] * 3, axis=-1)


def encode(img: Image.Image | np.ndarray, fmt: str = "JPEG", **params: object) -> bytes:
    if isinstance(img, np.ndarray):
        img = Image.fromarray(img)
    buf = io.BytesIO()
    img.save(buf, fmt, **params)
    return buf.getvalue()


def jpeg(name: str, quality: int = 92) -> bytes:
    return encode(photo(name), "JPEG", quality=quality)


# --- raw PNG writing ---------------------------------------------------------------------------


def _chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def png_from_rows(width: int, height: int, bit_depth: int, color_type: int,
                  rows: Iterator[bytes]) -> bytes:
    """A valid PNG whose (unfiltered) rows come from an iterator: no full image in memory."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    comp = zlib.compressobj(9)
    idat = bytearray()
    for row in rows:
        idat += comp.compress(b"\x00" + row)
    idat += comp.flush()
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", bytes(idat))
            + _chunk(b"IEND", b""))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that *claims* width x height RGB but holds one byte of data: a pure header bomb."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr)
            + _chunk(b"IDAT", zlib.compress(b"\x00")) + _chunk(b"IEND", b""))


def png_zero_bomb(side: int) -> bytes:
    """A real, fully valid side x side grayscale PNG of zeros (~1000:1 compression)."""
    row = bytes(side)
    return png_from_rows(side, side, 8, 0, (row for _ in range(side)))


def png16_rgb(arr8: np.ndarray) -> bytes:
    """A 16-bit-per-channel RGB PNG (Pillow cannot write one) with value v*257 per pixel."""
    wide = arr8.astype(">u2") * 257
    height, width, _ = wide.shape
    return png_from_rows(width, height, 16, 2, (wide[y].tobytes() for y in range(height)))


def png16_gray(arr8: np.ndarray) -> bytes:
    """A 16-bit grayscale PNG with value v*257 per pixel."""
    wide = arr8.astype(">u2") * 257
    height, width = wide.shape
    return png_from_rows(width, height, 16, 0, (wide[y].tobytes() for y in range(height)))


def exif_rotated_jpeg(name: str) -> bytes:
    """The photo stored rotated 90 degrees CCW, with EXIF Orientation=6 to display it upright."""
    stored = Image.fromarray(photo(name)).transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(stored, "JPEG", quality=92, exif=exif.tobytes())


def animated_gif(first: str, second: str) -> bytes:
    frames = [Image.fromarray(photo(first)).convert("P"),
              Image.fromarray(photo(second)).resize(Image.fromarray(photo(first)).size)
              .convert("P")]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buf.getvalue()


def cmyk_jpeg(name: str) -> bytes:
    return encode(Image.fromarray(photo(name)).convert("CMYK"), "JPEG", quality=95)


def peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One converted-model cache per test run, shared by every module that asks for it."""
    path = tmp_path_factory.getbasetemp() / "model-cache"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture(scope="session")
def registry(model_cache: Path):  # noqa: ANN201 - lazily imported type
    from app.model.registry import LocalStore, ModelRegistry

    return ModelRegistry(LocalStore(model_cache / "store"), cache_dir=model_cache)


@pytest.fixture(scope="session")
def classifier(registry):  # noqa: ANN001, ANN201
    """The default model (converted once per run) on the TFLite engine."""
    from app.model.classifier import Classifier

    with Classifier(registry, model="efficientnet_lite0", engine="tflite") as clf:
        yield clf
