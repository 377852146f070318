"""Building a model's engine files from its Keras model: fp32 and int8 TFLite.

Why a separate module, run in a separate process by servers: conversion needs TensorFlow
(about 550 MB resident), serving does not (LiteRT runs the .tflite files). The CLI
(``imagerec models convert``, run by install; ``models import``) converts in-process; a worker
or function that finds files missing runs ``python -m app.model.convert`` as a child process
(``ensure_isolated``), so TensorFlow is never loaded into a serving process.

Files beside ``model.keras``::

    model.tflite        fp32, batch 1 (the reference engine and the fallback)
    model.int8.tflite   int8 weights and activations (outlier layers float), float input/output
    model.int8.json     how the int8 file was made: recipe revision, samples, float layers

The int8 file is made with post-training quantisation calibrated on real photos preprocessed
exactly as requests are (``app.model.photos``). Revision 2 keeps a layer in float when its
int8 output error is an outlier (``FLOAT_LAYER_RATIO`` times the rounding noise of its output
scale): in EfficientNet-Lite0 the stem convolution (61x) and block 0's depthwise convolution
(95x), while every other layer stays under 4x. Floating those two took top-1 agreement with
fp32 on all 192 check images from 0.885 to 0.911 and top-5 overlap from 0.857 to 0.889, for
about 9% of int8 throughput (docs/PERFORMANCE.md). ``model.int8.json`` beside the file records
the revision and the float layers, so a file from an older recipe is rebuilt, not relabelled.

Keras 3 cannot go through ``TFLiteConverter.from_keras_model``; the model is exported as a
SavedModel and converted from there. Float input/output keeps the engine interface unchanged
(the quantise/dequantise ops at both ends cost almost nothing) and lets XNNPACK run the whole
graph.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
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
INT8_META = "model.int8.json"
# Bump when calibration (photos, count, converter options) changes: it is part of the int8
# variant's version, so results from a differently calibrated model are never mixed up.
INT8_REVISION = 2
CALIBRATION_SAMPLES = 300
# A layer whose int8 output's mean squared error exceeds this many times the rounding noise
# of its output scale (scale**2 / 12) stays float. Measured on EfficientNet-Lite0: 61x and
# 95x for the two outliers, at most 3.7x for the other 60 layers.
FLOAT_LAYER_RATIO = 10.0
DEBUG_SAMPLES = 48  # calibration samples the per-layer error is measured on


def int8_version(base_version: str, revision: int = INT8_REVISION) -> str:
    """The int8 variant's own version, derived from the model it was quantised from."""
    return f"{base_version}-int8r{revision}"


def int8_revision(model_dir: Path) -> int | None:
    """The recipe revision of ``model_dir``'s int8 file (1 for files made before the record
    existed); None when there is no int8 file."""
    if not (model_dir / INT8_NAME).exists():
        return None
    try:
        return int(json.loads((model_dir / INT8_META).read_text())["revision"])
    except (OSError, ValueError, KeyError, TypeError):
        return 1


def int8_current(model_dir: Path) -> bool:
    return int8_revision(model_dir) == INT8_REVISION


def tensorflow_loaded() -> bool:
    """Whether this process already carries TensorFlow (then converting here costs nothing)."""
    return "tensorflow" in sys.modules


def load_keras(keras_path: Path) -> Any:
    """Load a Keras model file for inference (no optimizer; safe_mode refuses lambdas)."""
    import keras

    return keras.saving.load_model(str(keras_path), compile=False)


def _once(keras_path: Path, target: Path, build: Callable[[], None],
          ready: Callable[[], bool] | None = None) -> Path:
    """Build ``target`` unless it is ready (default: exists), under the model's one
    engine-file lock, so that racing processes build it once and readers never see half a
    file."""
    ready = ready or target.exists
    if not ready():
        with file_lock(keras_path.with_name(".tflite.lock")):
            if not ready():
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


def _outlier_layers(debugger: Any) -> list[str]:
    """Tensors whose int8 error is far above their own rounding noise (``FLOAT_LAYER_RATIO``).

    Why a ratio and not the raw error: layers differ in scale by orders of magnitude; a layer
    quantised as well as int8 allows has an error close to scale**2 / 12 whatever its range.
    """
    buf = io.StringIO()
    debugger.layer_statistics_dump(buf)
    buf.seek(0)
    noisy = []
    for row in csv.DictReader(buf):
        try:
            scale = float(row["scale"])
            mse = float(row["mean_squared_error"])
        except (KeyError, TypeError, ValueError):
            continue
        if scale > 0 and mse / (scale * scale / 12) > FLOAT_LAYER_RATIO:
            noisy.append(row["tensor_name"])
    return noisy


def build_int8(keras_path: Path, spec: PreprocessSpec, samples: np.ndarray, *,
               model: Any = None) -> Path:
    """``model.int8.tflite`` beside ``keras_path``, calibrated on ``samples`` (NxHxWx3), with
    outlier layers kept in float; ``model.int8.json`` records how it was made."""
    target = keras_path.with_name(INT8_NAME)
    meta = keras_path.with_name(INT8_META)

    def build() -> None:
        import keras
        import tensorflow as tf

        loaded = model if model is not None else load_keras(keras_path)
        size = spec.input_size
        data = np.asarray(samples, dtype=np.float32)

        def representative() -> Any:
            for i in range(len(data)):
                yield [data[i : i + 1]]

        def debug_set() -> Any:
            for i in range(min(len(data), DEBUG_SAMPLES)):
                yield [data[i : i + 1]]

        with tempfile.TemporaryDirectory() as tmp:
            saved = Path(tmp) / "saved_model"
            signature = [keras.InputSpec(shape=(1, size, size, 3), dtype="float32")]
            loaded.export(str(saved), format="tf_saved_model", verbose=False,
                          input_signature=signature)

            def converter(float_fallback: bool) -> Any:
                conv = tf.lite.TFLiteConverter.from_saved_model(str(saved))
                conv.optimizations = [tf.lite.Optimize.DEFAULT]
                conv.representative_dataset = representative
                ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
                conv.target_spec.supported_ops = ops + (
                    [tf.lite.OpsSet.TFLITE_BUILTINS] if float_fallback else [])
                return conv

            debug = tf.lite.experimental.QuantizationDebugger(
                converter=converter(True), debug_dataset=debug_set)
            debug.run()
            floats = _outlier_layers(debug)
            if floats:
                options = tf.lite.experimental.QuantizationDebugOptions(denylisted_nodes=floats)
                blob = tf.lite.experimental.QuantizationDebugger(
                    converter=converter(True), debug_dataset=debug_set,
                    debug_options=options).get_nondebug_quantized_model()
            else:
                blob = converter(False).convert()
        atomic_write(target, blob)
        atomic_write(meta, json.dumps({"revision": INT8_REVISION, "samples": len(data),
                                       "float_layers": floats}, indent=1).encode())
        log.info("calibrated %s on %d samples; %d layer(s) kept in float", target.name,
                 len(data), len(floats))

    return _once(keras_path, target, build, ready=lambda: int8_current(keras_path.parent))


def ensure_files(model_dir: Path, spec: PreprocessSpec, *, int8: bool,
                 calibration: np.ndarray | None = None) -> list[Path]:
    """Build whatever engine files are missing in ``model_dir``, in this process (needs TF).

    ``int8`` with ``calibration=None`` calibrates on the shipped photos.
    """
    keras_path = model_dir / "model.keras"
    wanted = [model_dir / FP32_NAME] + ([model_dir / INT8_NAME] if int8 else [])
    if (model_dir / FP32_NAME).exists() and (not int8 or int8_current(model_dir)):
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
    if all(p.exists() for p in wanted) and (not int8 or int8_current(model_dir)):
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
