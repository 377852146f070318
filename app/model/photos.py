"""Real photos for calibrating and checking engines: the ones scikit-image ships, and variants.

Why these: an int8 model is only as good as its calibration set, which must look like what the
service will see (the calibrator keeps each tensor's min/max), and nothing may be downloaded at
install or run time. scikit-image's wheel carries a handful of real photographs; crops, flips
and scales of them give a few hundred distinct, natural-looking inputs.

Two disjoint uses, two generators:
- ``calibration_arrays``: random (seeded) crops/flips/scales, for the int8 converter;
- ``check_arrays``: a fixed grid of variants, for comparing an engine with the fp32 reference
  at every load (``app.model.select``). Same photos, different crops, so the check does not
  simply replay the calibration inputs.

Both go through ``app.imaging.model_input``/``to_array``, exactly as a request does. The files
are read with Pillow from the package directory without importing ``skimage`` (which would
pull SciPy into every worker).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from app.imaging import PreprocessSpec, model_input, to_array

# Natural photographs (colour first). Synthetic images (colorwheel, logo, text, chessboards)
# are left out: nobody sends them and they would stretch the calibrated ranges.
PHOTO_FILES = (
    "chelsea.png", "coffee.png", "rocket.jpg", "astronaut.png", "motorcycle_left.png",
    "motorcycle_right.png", "hubble_deep_field.jpg", "retina.jpg", "ihc.png", "camera.png",
    "moon.png", "coins.png", "grass.png", "gravel.png", "brick.png", "clock_motion.png",
)


class PhotosUnavailable(RuntimeError):
    """scikit-image (and so its photos) is not installed here."""


def photo_dir() -> Path:
    """``skimage/data`` inside the installed wheel, located without importing skimage."""
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise PhotosUnavailable("scikit-image is not installed: no photos to calibrate with")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


@lru_cache(maxsize=1)
def photos() -> tuple[Image.Image, ...]:
    """The shipped photos as RGB images (greyscale ones converted, as requests are)."""
    base = photo_dir()
    out = []
    for name in PHOTO_FILES:
        path = base / name
        if path.is_file():
            with Image.open(path) as img:
                out.append(img.convert("RGB"))
    if len(out) < 4:
        raise PhotosUnavailable(f"only {len(out)} of the expected photos are in {base}")
    return tuple(out)


def _variant(img: Image.Image, left: float, top: float, side: float, flip: bool,
             scale: float) -> Image.Image:
    """A square crop (``side``: fraction of the short side; ``left``/``top``: where, 0..1),
    optionally mirrored and rescaled (so JPEG-sized and thumbnail-sized inputs both occur)."""
    w, h = img.size
    s = max(32, int(side * min(w, h)))
    x = int(left * (w - s))
    y = int(top * (h - s))
    out = img.crop((x, y, x + s, y + s))
    if flip:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if scale != 1.0:
        size = (max(32, int(out.width * scale)), max(32, int(out.height * scale)))
        out = out.resize(size, Image.Resampling.BILINEAR)
    return out


def calibration_images(count: int = 300, seed: int = 20261202) -> Iterator[Image.Image]:
    """``count`` random variants (whole photos included) for int8 calibration."""
    rng = np.random.default_rng(seed)
    base = photos()
    for i in range(count):
        img = base[i % len(base)]
        if i < len(base):
            yield img
            continue
        yield _variant(img, float(rng.uniform()), float(rng.uniform()),
                       float(rng.uniform(0.35, 1.0)), bool(rng.integers(2)),
                       float(rng.choice([0.5, 0.75, 1.0, 1.5])))


def check_images() -> Iterator[Image.Image]:
    """The fixed check set: each photo whole and in 11 deterministic variants (192 images)."""
    grid = [(0.0, 0.0, 0.6), (1.0, 0.0, 0.6), (0.0, 1.0, 0.6), (1.0, 1.0, 0.6),
            (0.5, 0.5, 0.5), (0.5, 0.5, 0.8), (0.25, 0.75, 0.7), (0.75, 0.25, 0.7)]
    for img in photos():
        yield img
        yield img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        for j, (left, top, side) in enumerate(grid):
            yield _variant(img, left, top, side, flip=j % 2 == 1, scale=1.0)
        yield _variant(img, 0.5, 0.5, 0.9, flip=False, scale=0.6)
        yield _variant(img, 0.5, 0.5, 1.0, flip=True, scale=1.7)


def arrays(images: Iterator[Image.Image], spec: PreprocessSpec) -> np.ndarray:
    """Preprocess images exactly as requests are (``app.imaging``): NxHxWx3 float32."""
    return np.stack([to_array(model_input(img, spec), spec) for img in images])


def file_arrays(paths: list[Path], spec: PreprocessSpec) -> np.ndarray:
    """A user's calibration images (custom models), decoded and preprocessed as requests are;
    files that are not images are skipped."""
    from app.imaging import ImageError, prepare

    out = []
    for path in paths:
        try:
            out.append(prepare(Path(path).read_bytes(), spec)[1])
        except (ImageError, OSError):
            continue
    if not out:
        raise ValueError("no usable calibration images")
    return np.stack(out)


def calibration_arrays(spec: PreprocessSpec, count: int = 300) -> np.ndarray:
    return arrays(calibration_images(count), spec)


def check_arrays(spec: PreprocessSpec) -> np.ndarray:
    return arrays(check_images(), spec)
