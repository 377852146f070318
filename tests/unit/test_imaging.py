"""Decoding and preprocessing: formats, hostile inputs, colour modes, exact crop/normalise."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from app.imaging import (
    ImageError,
    ImageTooLarge,
    ImageTooSmall,
    PayloadTooLarge,
    PreprocessSpec,
    UndecodableImage,
    UnsupportedFormat,
    decode,
    inspect,
    model_input,
    prepare,
    sniff_format,
    to_array,
)

try:
    from tests.unit import model_samples as s
except ImportError:  # tests/unit is not a package: pytest put its directory on sys.path
    import model_samples as s  # type: ignore[no-redef]

LITE = PreprocessSpec()


# --- format sniffing ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "params", "expected"),
    [("JPEG", {}, "jpeg"), ("PNG", {}, "png"), ("GIF", {}, "gif"), ("WEBP", {}, "webp"),
     ("BMP", {}, "bmp"), ("TIFF", {}, "tiff"), ("TIFF", {"compression": "tiff_lzw"}, "tiff")],
)
def test_sniff_and_decode_every_allowed_format(fmt: str, params: dict, expected: str) -> None:
    data = s.encode(s.photo("coffee"), fmt, **params)
    assert sniff_format(data) == expected
    img = decode(data)
    assert img.mode == "RGB" and img.size == (600, 400)


@pytest.mark.parametrize(
    "data",
    [b"hello world, this is text in a file named photo.jpg",
     b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj",
     b"SIMPLE  =                    T / FITS",  # exotic decoders are never reached
     b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00",
     b"BMnot really a bitmap header at all"],
)
def test_non_images_are_unsupported(data: bytes) -> None:
    with pytest.raises(UnsupportedFormat) as info:
        decode(data)
    assert info.value.http_status == 415 and info.value.code == "unsupported_format"


def test_format_is_judged_by_content_not_name(tmp_path) -> None:
    path = tmp_path / "cat.jpg"
    path.write_text("not an image")
    with pytest.raises(UnsupportedFormat):
        decode(path.read_bytes())
    # and a PNG is a PNG whatever it is called
    assert sniff_format(s.encode(s.photo("chelsea"), "PNG")) == "png"


def test_empty_file_is_undecodable() -> None:
    with pytest.raises(UndecodableImage) as info:
        decode(b"")
    assert info.value.http_status == 422 and info.value.code == "undecodable"


@pytest.mark.parametrize("fraction", [0.05, 0.5, 0.9])
def test_truncated_jpeg_is_undecodable(fraction: float) -> None:
    data = s.jpeg("chelsea")
    with pytest.raises(UndecodableImage):
        decode(data[: int(len(data) * fraction)], target=None)


def test_truncated_png_and_corrupt_body_are_undecodable() -> None:
    png = s.encode(s.photo("coffee"), "PNG")
    with pytest.raises(UndecodableImage):
        decode(png[: len(png) // 2])
    corrupt = bytearray(s.jpeg("coffee"))
    corrupt[600:4000] = b"\xff" * 3400
    with pytest.raises(ImageError):  # libjpeg may call it truncated or broken: still typed
        decode(bytes(corrupt), target=None)


# --- size limits ---------------------------------------------------------------------------------


def test_header_bomb_is_refused_before_decoding() -> None:
    bomb = s.png_header_only(30000, 30000)  # claims 900 Mpx (2.7 GB decoded), is 60 bytes
    before = s.peak_rss_mb()
    with pytest.raises(ImageTooLarge) as info:
        decode(bomb)
    assert info.value.code == "too_many_pixels" and info.value.http_status == 422
    assert "900000000 pixels" in info.value.message
    assert s.peak_rss_mb() - before < 100


def test_real_compressed_bomb_is_refused_cheaply() -> None:
    bomb = s.png_zero_bomb(8000)  # a valid 64 Mpx PNG of ~70 KB
    assert len(bomb) < 200_000
    before = s.peak_rss_mb()
    with pytest.raises(ImageTooLarge):
        decode(bomb)
    assert s.peak_rss_mb() - before < 100


def test_pillow_bomb_guard_still_maps_to_typed_error() -> None:
    # With our cap lifted, Pillow's own guard (2x MAX_IMAGE_PIXELS) must still be typed.
    with pytest.raises(ImageTooLarge):
        decode(s.png_header_only(30000, 30000), max_pixels=10**12)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_inspect_and_decode_leave_the_warning_filters_alone() -> None:
    """Uploads are inspected on the event loop while a decoder thread decodes. Swapping the
    process-wide warning filters around each open (``catch_warnings``) is not thread-safe, so
    neither may do it; Pillow's bomb warning is silenced once, at import."""
    import warnings
    from unittest import mock

    over_pillow = s.png_header_only(10000, 10000)  # 100 Mpx: Pillow warns, does not refuse
    photo = s.jpeg("coffee")
    swaps = mock.MagicMock(side_effect=warnings.catch_warnings)
    with mock.patch.object(warnings, "catch_warnings", swaps):
        found = inspect(over_pillow, max_pixels=2 * 10**8)
        size = decode(photo).size
    assert swaps.call_count == 0
    assert found == ("png", 10000, 10000) and size == (600, 400)


def test_pixel_cap_follows_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from app.settings import get_settings

    data = s.jpeg("coffee")  # 600x400 = 240000 px
    monkeypatch.setenv("IMAGEREC_MAX_PIXELS", "200000")
    get_settings.cache_clear()
    try:
        with pytest.raises(ImageTooLarge):
            decode(data)
    finally:
        monkeypatch.delenv("IMAGEREC_MAX_PIXELS")
        get_settings.cache_clear()
    assert decode(data).size == (600, 400)


@pytest.mark.parametrize("size", [(1, 1), (15, 300), (300, 8)])
def test_tiny_images_are_too_small(size: tuple[int, int]) -> None:
    with pytest.raises(ImageTooSmall) as info:
        decode(s.encode(Image.new("RGB", size, (200, 10, 10)), "PNG"))
    assert info.value.code == "too_small" and info.value.http_status == 422


def test_payload_byte_limit() -> None:
    with pytest.raises(PayloadTooLarge) as info:
        decode(s.jpeg("coffee"), max_bytes=1000)
    assert info.value.http_status == 413


# --- colour modes, orientation, frames -----------------------------------------------------------


def _mean_abs_diff(a: Image.Image | np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(np.asarray(a, dtype=np.float32) - b.astype(np.float32)).mean())


def test_exif_orientation_is_applied() -> None:
    img = decode(s.exif_rotated_jpeg("chelsea"), target=None)
    assert img.size == (451, 300)  # stored as 300x451
    assert _mean_abs_diff(img, s.photo("chelsea")) < 4


def test_cmyk_jpeg_becomes_rgb_with_right_colours() -> None:
    img = decode(s.cmyk_jpeg("coffee"), target=None)
    assert img.mode == "RGB"
    assert _mean_abs_diff(img, s.photo("coffee")) < 6


def test_16bit_rgb_png_scales_to_8bit() -> None:
    img = decode(s.png16_rgb(s.photo("coffee")))
    assert img.mode == "RGB"
    assert _mean_abs_diff(img, s.photo("coffee")) < 0.6


def test_16bit_gray_png_is_scaled_not_clipped() -> None:
    gray8 = np.asarray(Image.fromarray(s.photo("chelsea")).convert("L"))
    img = decode(s.png16_gray(gray8))
    arr = np.asarray(img)
    assert img.mode == "RGB" and arr.shape == (300, 451, 3)
    assert np.abs(arr[..., 0].astype(int) - gray8).max() <= 1  # clipping would give all 255
    assert (arr[..., 0] == arr[..., 2]).all()


def test_alpha_is_composited_on_white() -> None:
    rgba = np.zeros((64, 64, 4), dtype=np.uint8)
    rgba[..., :3] = (10, 20, 30)
    rgba[:, 32:, 3] = 255  # right half opaque, left half transparent (black underneath)
    img = decode(s.encode(rgba, "PNG"))
    arr = np.asarray(img)
    assert tuple(arr[5, 5]) == (255, 255, 255)
    assert tuple(arr[5, 50]) == (10, 20, 30)


def test_palette_with_transparency_and_grayscale() -> None:
    pal = Image.new("P", (40, 40), 0)
    pal.putpalette([0, 0, 0, 250, 0, 0] + [0] * 762)
    pal.paste(1, (20, 0, 40, 40))
    data = s.encode(pal, "PNG", transparency=0)
    arr = np.asarray(decode(data))
    assert tuple(arr[0, 0]) == (255, 255, 255) and tuple(arr[0, 30]) == (250, 0, 0)
    gray = decode(s.encode(Image.new("L", (40, 40), 77), "PNG"))
    assert gray.mode == "RGB" and tuple(np.asarray(gray)[0, 0]) == (77, 77, 77)


def test_animated_gif_uses_first_frame() -> None:
    img = decode(s.animated_gif("chelsea", "coffee"))
    assert img.size == (451, 300)
    assert _mean_abs_diff(img, s.photo("chelsea")) < 25  # palette quantisation, not coffee


def test_jpeg_draft_keeps_crop_resolution() -> None:
    big = s.encode(Image.fromarray(s.photo("coffee")).resize((2400, 1600)), "JPEG")
    full = decode(big, target=None)
    reduced = decode(big, target=256)
    assert full.size == (2400, 1600)
    assert reduced.size == (600, 400)  # 1/4 scale: the largest keeping both sides >= 256


# --- preprocessing -----------------------------------------------------------------------------


def test_model_input_is_the_centre_crop_resized_bicubic() -> None:
    rng = np.random.default_rng(1)
    arr = rng.integers(0, 256, (512, 768, 3), dtype=np.uint8)
    img = Image.fromarray(arr)
    out = model_input(img, LITE)
    assert out.size == (224, 224) and out.mode == "RGB"
    # short side 512 -> crop 448, centred: (160, 32, 608, 480), then bicubic to 224
    expected = img.crop((160, 32, 608, 480)).resize((224, 224), Image.Resampling.BICUBIC)
    assert np.array_equal(np.asarray(out), np.asarray(expected))


def test_model_input_crop_is_centred_in_portrait() -> None:
    arr = np.zeros((1024, 256, 3), dtype=np.uint8)
    arr[400:624, 16:240] = 255  # exactly the 224x224 centre crop of 1024x256
    out = np.asarray(model_input(Image.fromarray(arr), LITE))
    assert out.min() == 255


def test_normalisations() -> None:
    img = Image.fromarray(np.array([[[0, 127, 255]]] * 224 * 224, dtype=np.uint8)
                          .reshape(224, 224, 3))
    lite = to_array(img, LITE)
    assert lite.dtype == np.float32 and lite.shape == (224, 224, 3)
    np.testing.assert_allclose(lite[0, 0], [-127 / 128, 0.0, 1.0])
    tf_mode = to_array(img, PreprocessSpec(normalisation="tf"))
    np.testing.assert_allclose(tf_mode[0, 0], [-1.0, 127 / 127.5 - 1, 1.0], atol=1e-6)
    caffe = to_array(img, PreprocessSpec(normalisation="caffe"))
    np.testing.assert_allclose(caffe[0, 0], [255 - 103.939, 127 - 116.779, 0 - 123.68],
                               atol=1e-4)


def test_to_array_refuses_unprocessed_images() -> None:
    with pytest.raises(ValueError, match="model_input"):
        to_array(Image.new("RGB", (300, 200)), LITE)


def test_spec_validation_and_round_trip() -> None:
    with pytest.raises(ValueError):
        PreprocessSpec(normalisation="imagenet-ish")
    with pytest.raises(ValueError):
        PreprocessSpec(crop_fraction=1.5)
    assert PreprocessSpec.from_dict(LITE.to_dict()) == LITE
    assert LITE.decode_target == 256


def test_prepare_matches_reference_pipeline() -> None:
    """prepare == the DESIGN.md reference: RGB, crop short*224/256, bicubic 224, (x-127)/128."""
    data = s.encode(s.photo("chelsea"), "PNG")
    processed, arr = prepare(data, LITE)
    ref_img = Image.open(io.BytesIO(data)).convert("RGB")
    assert ref_img.size == (451, 300)  # short side 300 -> crop int(262.5) = 262 at (95, 19)
    ref = np.asarray(ref_img.crop((95, 19, 357, 281)).resize((224, 224), Image.BICUBIC),
                     dtype=np.float32)
    np.testing.assert_allclose(arr, (ref - 127) / 128, atol=1e-6)
    assert processed.size == (224, 224)


def test_inspect_reads_only_the_header() -> None:
    from app.imaging import inspect

    assert inspect(s.jpeg("coffee")) == ("jpeg", 600, 400)
    with pytest.raises(ImageTooLarge):
        inspect(s.png_header_only(30000, 30000))
    with pytest.raises(ImageTooSmall):
        inspect(s.encode(Image.new("RGB", (1, 1)), "PNG"))
    with pytest.raises(UnsupportedFormat):
        inspect(b"plain text")
    chelsea = s.jpeg("chelsea")
    assert inspect(chelsea[: len(chelsea) // 2])[0] == "jpeg"  # body damage: decode's job


# Found by fuzz/harness_image.py (docs/SECURITY.md): a 58-byte TIFF whose StripOffsets tag is
# ASCII. Its header is valid, so inspect() accepts it; decoding made Pillow seek to a str and
# a TypeError escaped decode(), which /v1/classify answered with a 500.
TIFF_ASCII_STRIP_OFFSETS = bytes.fromhex(
    "49492a00080000000a0000010400010000002000000001010400010000001800000002010300010000000200"
    "001011010200010000000001e0bf")


def test_a_tiff_with_ascii_strip_offsets_is_undecodable_not_a_crash() -> None:
    assert inspect(TIFF_ASCII_STRIP_OFFSETS)[0] == "tiff"
    with pytest.raises(UndecodableImage):
        decode(TIFF_ASCII_STRIP_OFFSETS)
    with pytest.raises(UndecodableImage):
        prepare(TIFF_ASCII_STRIP_OFFSETS, PreprocessSpec())
