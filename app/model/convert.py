"""Building a model's engine files from its Keras model: fp32 and full-integer int8 TFLite.

Why a separate module, run in a separate process by servers: conversion needs TensorFlow
(about 550 MB resident), serving does not (LiteRT runs the .tflite files). The CLI
(``imagerec models convert``, run by install; ``models import``) converts in-process; a worker
or function that finds files missing runs ``python -m app.model.convert`` as a child process
(``ensure_isolated``), so TensorFlow is never loaded into a serving process.

Files beside ``model.keras``::

    model.tflite        fp32, batch 1 (the reference engine and the fallback)
    model.int8.tflite   full-integer int8 weights and activations, float input/output

The int8 file is made with post-training quantisation calibrated on real photos preprocessed
exactly as requests are (``app.model.photos``). Keras 3 cannot go through
``TFLiteConverter.from_keras_model``; the model is exported as a SavedModel and converted from
there. Float input/output keeps the engine interface unchanged (the quantise/dequantise ops at
both ends cost almost nothing) and lets XNNPACK run the whole graph.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from app.imaging import PreprocessSpec
from app.model.files import atomic_save, atomic_write, file_lock

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

log = logging.getLogger(__name__)

FP32_NAME = "model.tflite"
INT8_NAME = "model.int8.tflite"
# Bump when calibration (photos, count, converter options) changes: it is part of the int8
# variant's version, so results from a differently calibrated model are never mixed up.
INT8_REVISION = 1
CALIBRATION_SAMPLES = 300


def int8_version(base_version: str) -> str:
    """The int8 variant's own version, derived from the model it was quantised from."""
    return f"{base_version}-int8r{INT8_REVISION}"


def tensorflow_loaded() -> bool:
    """Whether this process already carries TensorFlow (then converting here costs nothing)."""
    return "tensorflow" in sys.modules


def load_keras(keras_path: Path) -> Any:
    """Load a Keras model file for inference (no optimizer; safe_mode refuses lambdas)."""
    import keras

    return keras.saving.load_model(str(keras_path), compile=False)


def _once(keras_path: Path, target: Path, build: Callable[[], None]) -> Path:
    """Build ``target`` unless it exists, under the model's one engine-file lock, so that
    racing processes build it once and readers never see half a file."""
    if not target.exists():
        with file_lock(keras_path.with_name(".tflite.lock")):
            if not target.exists():
                build()
                log.info("built %s", target)
    return target


def build_fp32(keras_path: Path, input_size: int, *, model: Any = None) -> Path:
    """``model.tflite`` beside ``keras_path``."""
    target = keras_path.with_name(FP32_NAME)

    def build() -> None:
        import keras

        loaded = model if model is not None else load_keras(keras_path)
        signature = [keras.InputSpec(shape=(1, input_size, input_size, 3), dtype="float32")]
        atomic_save(target, lambda tmp: loaded.export(tmp, format="litert", verbose=False,
                                                      input_signature=signature), ".tflite")

    return _once(keras_path, target, build)


def build_int8(keras_path: Path, spec: PreprocessSpec, samples: np.ndarray, *,
               model: Any = None) -> Path:
    """``model.int8.tflite`` beside ``keras_path``, calibrated on ``samples`` (NxHxWx3)."""
    target = keras_path.with_name(INT8_NAME)

    def build() -> None:
        import keras
        import tensorflow as tf

        loaded = model if model is not None else load_keras(keras_path)
        size = spec.input_size
        with tempfile.TemporaryDirectory() as tmp:
            saved = Path(tmp) / "saved_model"
            signature = [keras.InputSpec(shape=(1, size, size, 3), dtype="float32")]
            loaded.export(str(saved), format="tf_saved_model", verbose=False,
                          input_signature=signature)
            converter = tf.lite.TFLiteConverter.from_saved_model(str(saved))
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            data = np.asarray(samples, dtype=np.float32)

            def representative() -> Any:
                for i in range(len(data)):
                    yield [data[i : i + 1]]

            converter.representative_dataset = representative
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            blob = converter.convert()
        atomic_write(target, blob)
        log.info("calibrated %s on %d samples", target.name, len(samples))

    return _once(keras_path, target, build)


def ensure_files(model_dir: Path, spec: PreprocessSpec, *, int8: bool,
                 calibration: np.ndarray | None = None) -> list[Path]:
    """Build whatever engine files are missing in ``model_dir``, in this process (needs TF).

    ``int8`` with ``calibration=None`` calibrates on the shipped photos.
    """
    keras_path = model_dir / "model.keras"
    wanted = [model_dir / FP32_NAME] + ([model_dir / INT8_NAME] if int8 else [])
    if all(p.exists() for p in wanted):
        return wanted
    model = load_keras(keras_path)
    build_fp32(keras_path, spec.input_size, model=model)
    if int8:
        if calibration is None:
            from app.model.photos import calibration_arrays

            calibration = calibration_arrays(spec, CALIBRATION_SAMPLES)
        build_int8(keras_path, spec, calibration, model=model)
    return wanted


def build_mobilenet_v2(model_dir: Path, weights: Path) -> None:
    """Keras' MobileNetV2 with local ImageNet weights, saved as ``model.keras`` (needs TF)."""
    target = model_dir / "model.keras"
    if target.exists():
        return
    import keras

    model = keras.applications.MobileNetV2(weights=str(weights), include_top=True, classes=1000)
    atomic_save(target, model.save, ".keras")


def ensure_isolated(model_dir: Path, spec: PreprocessSpec, *, int8: bool,
                    efficientnet_lite0: bool = False,
                    mobilenet_v2_weights: Path | None = None) -> None:
    """``ensure_files``, in a child process unless TensorFlow is already loaded here.

    Why: a worker that starts on an empty cache must not take TensorFlow's memory for the
    rest of its life just to convert once.
    """
    wanted = [model_dir / "model.keras", model_dir / FP32_NAME]
    wanted += [model_dir / INT8_NAME] if int8 else []
    if all(p.exists() for p in wanted):
        return
    if tensorflow_loaded():
        if efficientnet_lite0:
            from app.model import efficientnet_lite0 as eff

            eff.ensure_converted(model_dir.parent.parent)
        if mobilenet_v2_weights is not None:
            build_mobilenet_v2(model_dir, mobilenet_v2_weights)
        ensure_files(model_dir, spec, int8=int8)
        return
    cmd = [sys.executable, "-m", "app.model.convert", str(model_dir),
           "--input-size", str(spec.input_size), "--crop-fraction", repr(spec.crop_fraction),
           "--resample", spec.resample, "--normalisation", spec.normalisation]
    if int8:
        cmd.append("--int8")
    if efficientnet_lite0:
        cmd.append("--efficientnet-lite0")
    if mobilenet_v2_weights is not None:
        cmd += ["--mobilenet-v2-weights", str(mobilenet_v2_weights)]
    log.info("converting %s in a child process", model_dir)
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
        raise RuntimeError(f"conversion of {model_dir} failed: {' | '.join(tail)}")


def main(argv: list[str] | None = None) -> None:
    """``python -m app.model.convert DIR ...``: the child-process side of ``ensure_isolated``."""
    parser = argparse.ArgumentParser(description="Build TFLite engine files for a model dir.")
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--input-size", type=int, required=True)
    parser.add_argument("--crop-fraction", type=float, default=224 / 256)
    parser.add_argument("--resample", default="bicubic")
    parser.add_argument("--normalisation", default="lite")
    parser.add_argument("--int8", action="store_true")
    parser.add_argument("--efficientnet-lite0", action="store_true",
                        help="convert the built-in weights into DIR/model.keras first")
    parser.add_argument("--mobilenet-v2-weights", type=Path, default=None,
                        help="build DIR/model.keras from these MobileNetV2 weights first")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    spec = PreprocessSpec(args.input_size, args.crop_fraction, args.resample, args.normalisation)
    if args.efficientnet_lite0:
        from app.model import efficientnet_lite0

        efficientnet_lite0.ensure_converted(args.model_dir.parent.parent)
    if args.mobilenet_v2_weights is not None:
        build_mobilenet_v2(args.model_dir, args.mobilenet_v2_weights)
    ensure_files(args.model_dir, spec, int8=args.int8)


if __name__ == "__main__":
    main()
