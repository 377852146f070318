"""Image decoding and model preprocessing: the one place the worker, functions and CLI share.

Why one module: the held-back accuracy check and the live service must see exactly the same
pixels, so validation (magic bytes, allow-list, pixel caps), orientation, colour conversion,
crop, resize and normalisation live here and nowhere else.

Order of checks matters for safety: the format is sniffed from magic bytes, then Pillow reads
only the header (size, mode) and the pixel cap is enforced *before* any pixel data is decoded,
so a 30000x30000 PNG of a few KB costs nothing.
"""

from __future__ import annotations

import io
import math
import warnings
from dataclasses import asdict, dataclass
from struct import error as struct_error  # raised by a few Pillow plugins on short data
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from app.settings import get_settings

# Our own pixel cap decides (app.settings.max_pixels, below Pillow's own); Pillow's warning
# is noise. Set once for the process: ``warnings.catch_warnings`` around each open is not
# thread-safe, and uploads are inspected on the event loop while a decoder thread decodes.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)

__all__ = [
    "ALLOWED_FORMATS",
    "ImageError",
    "ImageTooLarge",
    "ImageTooSmall",
    "PayloadTooLarge",
    "PreprocessSpec",
    "UndecodableImage",
    "UnsupportedFormat",
    "decode",
    "inspect",
    "model_input",
    "prepare",
    "sniff_format",
    "to_array",
]


# --------------------------------------------------------------------------------------------
# Errors: each carries the stable API error code and the HTTP status the gateway answers with.
# --------------------------------------------------------------------------------------------


class ImageError(Exception):
    """A client-side problem with an image; ``code``/``http_status`` map it onto the API."""

    code: str = "bad_image"
    http_status: int = 422

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_dict(self) -> dict[str, str]:
        """The body of the API's ``{"error": {...}}`` envelope."""
        return {"code": self.code, "message": self.message}


class UnsupportedFormat(ImageError):
    """Not an image, or a format outside the allow-list (checked by magic bytes only)."""

    code = "unsupported_format"
    http_status = 415


class UndecodableImage(ImageError):
    """Empty, truncated or corrupt data in an allowed format."""

    code = "undecodable"
    http_status = 422


class ImageTooLarge(ImageError):
    """More pixels than ``settings.max_pixels`` (decompression-bomb guard), seen in the header."""

    code = "too_many_pixels"
    http_status = 422


class ImageTooSmall(ImageError):
    """A side shorter than ``settings.min_side_px``: nothing meaningful to classify."""

    code = "too_small"
    http_status = 422


class PayloadTooLarge(ImageError):
    """More bytes than ``settings.max_upload_bytes``; checked before any parsing."""

    code = "too_large"
    http_status = 413


# --------------------------------------------------------------------------------------------
# Format sniffing
# --------------------------------------------------------------------------------------------

# our format name -> Pillow plugin ids allowed to open it (Pillow's JPEG plugin itself hands
# multi-picture phone JPEGs to its MPO reader).
ALLOWED_FORMATS: dict[str, tuple[str, ...]] = {
    "jpeg": ("JPEG",),
    "png": ("PNG",),
    "webp": ("WEBP",),
    "gif": ("GIF",),
    "bmp": ("BMP",),
    "tiff": ("TIFF",),
}

_BMP_DIB_HEADER_SIZES = {12, 16, 40, 52, 56, 64, 108, 124}


def sniff_format(data: bytes) -> str:
    """Return the allowed format of ``data`` from its magic bytes, never from a file name.

    Raises ``UndecodableImage`` for empty data and ``UnsupportedFormat`` for anything else
    that is not one of ``ALLOWED_FORMATS``.
    """
    if not data:
        raise UndecodableImage("empty file (0 bytes)")
    head = bytes(data[:32])
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    if head[:2] == b"BM" and len(head) >= 18:
        if int.from_bytes(head[14:18], "little") in _BMP_DIB_HEADER_SIZES:
            return "bmp"
    raise UnsupportedFormat(
        "not an image in an allowed format (JPEG, PNG, WEBP, GIF, BMP, TIFF)"
    )


# --------------------------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------------------------


def inspect(
    data: bytes,
    *,
    max_pixels: int | None = None,
    min_side: int | None = None,
    max_bytes: int | None = None,
) -> tuple[str, int, int]:
    """Validate ``data`` from its magic bytes and header only: ``(format, width, height)``.

    Cheap enough for the upload path (no pixel is decoded), and it applies every limit
    ``decode`` applies before decoding: bytes, allow-list, pixel count, minimum side.
    A body that is corrupt past the header is only found by ``decode``.
    """
    fmt, img = _validated_header(data, max_pixels, min_side, max_bytes)
    width, height = img.size
    img.close()
    return fmt, width, height


def _validated_header(
    data: bytes, max_pixels: int | None, min_side: int | None, max_bytes: int | None
) -> tuple[str, Image.Image]:
    settings = get_settings()
    max_pixels = settings.max_pixels if max_pixels is None else max_pixels
    min_side = settings.min_side_px if min_side is None else min_side
    max_bytes = settings.max_upload_bytes if max_bytes is None else max_bytes

    if len(data) > max_bytes:
        raise PayloadTooLarge(f"{len(data)} bytes is over the limit of {max_bytes} bytes")
    fmt = sniff_format(data)
    img = _open_header(data, fmt, max_pixels)
    width, height = img.size
    if width * height > max_pixels:
        raise ImageTooLarge(
            f"{width}x{height} = {width * height} pixels is over the limit of {max_pixels}"
        )
    if min(width, height) < min_side:
        raise ImageTooSmall(f"{width}x{height} is smaller than {min_side} px on a side")
    return fmt, img


def decode(
    data: bytes,
    *,
    target: int | None = 256,
    max_pixels: int | None = None,
    min_side: int | None = None,
    max_bytes: int | None = None,
) -> Image.Image:
    """Validate and decode ``data`` into an upright 8-bit RGB image (first frame only).

    ``target``: for JPEG, let libjpeg decode at a reduced DCT scale as long as both sides stay
    >= ``target`` (256 keeps the 224 centre crop at full detail); ``None`` decodes full size.
    Limits default to the settings (``max_pixels``, ``min_side_px``, ``max_upload_bytes``).
    Raises a subclass of ``ImageError``; any other exception would be a bug.
    """
    fmt, img = _validated_header(data, max_pixels, min_side, max_bytes)
    if fmt == "jpeg" and target is not None:
        img.draft(img.mode, (target, target))
    try:
        img.load()
    except Image.DecompressionBombError as exc:  # a frame bigger than the header said
        raise ImageTooLarge(str(exc)) from exc
    # TypeError: a TIFF whose StripOffsets tag is ASCII makes Pillow seek to a str (found by
    # fuzz/harness_image.py; tests/unit/test_imaging.py keeps the input).
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError,
            struct_error) as exc:
        raise UndecodableImage(f"cannot decode {fmt}: {exc}") from exc
    except MemoryError as exc:
        raise ImageTooLarge(f"{fmt} needs too much memory to decode") from exc

    try:
        img = ImageOps.exif_transpose(img) or img
    except Exception:  # noqa: BLE001 - a broken EXIF block must not lose an otherwise fine image
        pass
    return _to_rgb(img)


def _open_header(data: bytes, fmt: str, max_pixels: int) -> Image.Image:
    """Parse only the header with the plugins allowed for ``fmt``; no pixel data is read."""
    try:
        img = Image.open(io.BytesIO(data), formats=list(ALLOWED_FORMATS[fmt]))
    except Image.DecompressionBombError as exc:  # over Pillow's own (higher) guard
        raise ImageTooLarge(f"over the limit of {max_pixels} pixels: {exc}") from exc
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError,
            struct_error) as exc:
        raise UndecodableImage(f"cannot read {fmt} header: {exc}") from exc
    return img


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any decoded mode to 8-bit RGB; transparency is composited onto white.

    White, because transparent regions of product shots and logos are meant to be seen on a
    light page; the colour stored under alpha=0 is arbitrary (often black).
    """
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("1", "L", "CMYK", "YCbCr"):
        return img.convert("RGB")
    if mode == "P":
        if "transparency" in img.info:
            return _composite_on_white(img.convert("RGBA"))
        return img.convert("RGB")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        return _composite_on_white(img.convert("RGBA"))
    if mode.startswith(("I", "F")):  # 16/32-bit grayscale and float (PNG, TIFF)
        return _high_depth_gray_to_rgb(img)
    try:
        return img.convert("RGB")
    except (ValueError, OSError) as exc:
        raise UndecodableImage(f"unsupported colour mode {mode}") from exc


def _composite_on_white(rgba: Image.Image) -> Image.Image:
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _high_depth_gray_to_rgb(img: Image.Image) -> Image.Image:
    """Scale 16-bit (or float) gray to 8 bits; Pillow's own convert clips instead of scaling."""
    arr = np.asarray(img)
    if arr.dtype.kind == "f":
        finite = np.nan_to_num(arr.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        peak = float(finite.max(initial=0.0))
        scale = 255.0 if peak <= 1.0 else (255.0 / 65535.0 if peak > 255.0 else 1.0)
        gray = np.clip(finite * scale, 0, 255)
    else:
        wide = arr.astype(np.int64)
        gray = np.clip(wide, 0, 65535) / 257.0 if wide.max(initial=0) > 255 else wide
    gray8 = np.rint(gray).astype(np.uint8)
    return Image.fromarray(np.stack([gray8] * 3, axis=-1), "RGB")


# --------------------------------------------------------------------------------------------
# Preprocessing
# --------------------------------------------------------------------------------------------

_RESAMPLE = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "lanczos": Image.Resampling.LANCZOS,
    "nearest": Image.Resampling.NEAREST,
}

_CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68], dtype=np.float32)
_TORCH_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32) * 255.0
_TORCH_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32) * 255.0

NORMALISATIONS = ("lite", "tf", "torch", "caffe", "unit", "none")


@dataclass(frozen=True)
class PreprocessSpec:
    """How a model wants its input: square centre crop, resize, normalisation.

    ``normalisation``:
      - ``lite``: (x - 127) / 128 (EfficientNet-Lite; the published weights' reference)
      - ``tf``: x / 127.5 - 1 (Keras MobileNet/MobileNetV2/Inception)
      - ``torch``: ImageNet mean/std on x / 255
      - ``caffe``: BGR with the ImageNet mean subtracted (Keras ResNet50/VGG)
      - ``unit``: x / 255
      - ``none``: raw 0..255 floats (models with their own Rescaling layer)
    """

    input_size: int = 224
    crop_fraction: float = 224 / 256
    resample: str = "bicubic"
    normalisation: str = "lite"

    def __post_init__(self) -> None:
        if self.resample not in _RESAMPLE:
            raise ValueError(f"resample must be one of {sorted(_RESAMPLE)}, not {self.resample!r}")
        if self.normalisation not in NORMALISATIONS:
            raise ValueError(
                f"normalisation must be one of {NORMALISATIONS}, not {self.normalisation!r}"
            )
        if not (0 < self.crop_fraction <= 1) or self.input_size < 1:
            raise ValueError("crop_fraction must be in (0, 1] and input_size positive")

    @property
    def decode_target(self) -> int:
        """Smallest short side worth decoding: the crop then still needs no upscaling."""
        return math.ceil(self.input_size / self.crop_fraction)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PreprocessSpec:
        known = {k: data[k] for k in ("input_size", "crop_fraction", "resample", "normalisation")
                 if k in data}
        return cls(**known)


def model_input(img: Image.Image, spec: PreprocessSpec) -> Image.Image:
    """Centre-crop a square of side ``short_side * crop_fraction`` and resize it to the input.

    Integer arithmetic as in the EfficientNet reference (``_decode_and_center_crop``): side
    ``int(fraction * short_side)``, offsets ``(excess + 1) // 2``. The crop is materialised
    before resizing on purpose: ``resize(box=...)`` would let the bicubic filter read pixels
    outside the crop and shift the border pixels away from the reference.
    """
    if img.mode != "RGB":
        img = _to_rgb(img)
    width, height = img.size
    side = max(1, int(spec.crop_fraction * min(width, height)))
    left = (width - side + 1) // 2
    top = (height - side + 1) // 2
    cropped = img.crop((left, top, left + side, top + side))
    return cropped.resize((spec.input_size, spec.input_size), _RESAMPLE[spec.resample])


def to_array(img: Image.Image, spec: PreprocessSpec) -> np.ndarray:
    """Normalise a ``model_input`` image into a float32 HxWx3 array for the model."""
    expected = (spec.input_size, spec.input_size)
    if img.size != expected or img.mode != "RGB":
        raise ValueError(
            f"to_array wants the {expected} RGB model input, got {img.size} {img.mode}; "
            "call model_input first"
        )
    x = np.asarray(img, dtype=np.float32)
    mode = spec.normalisation
    if mode == "lite":
        return (x - 127.0) / 128.0
    if mode == "tf":
        return x / 127.5 - 1.0
    if mode == "torch":
        return (x - _TORCH_MEAN) / _TORCH_STD
    if mode == "caffe":
        return x[..., ::-1] - _CAFFE_MEAN_BGR
    if mode == "unit":
        return x / 255.0
    return x


def prepare(data: bytes, spec: PreprocessSpec) -> tuple[Image.Image, np.ndarray]:
    """Decode ``data`` and return ``(model input image, normalised array)``.

    Large JPEGs are decoded at a reduced DCT scale (settings ``jpeg_draft``), never below the
    side the crop needs; on the test photos this leaves top-1 unchanged and it makes big
    photos several times cheaper to decode.
    """
    target = spec.decode_target if get_settings().jpeg_draft else None
    img = decode(data, target=target)
    processed = model_input(img, spec)
    return processed, to_array(processed, spec)

