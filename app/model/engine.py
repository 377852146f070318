"""Inference engines: the Keras model is the source of truth, TFLite (XNNPACK) runs it.

Why TFLite: on this class of CPU the TFLite interpreter with XNNPACK runs the same float32
model 2-3x faster than ``tf.function`` (see docs/PERFORMANCE.md), with logits equal to about
1e-5. It gains nothing from batching, so a batch is run image by image through one batch-1
interpreter. The flatbuffer is built from the Keras model once and cached next to it.

Engines are not thread-safe; ``app.model.classifier.Classifier`` gives each model one thread.
"""

from __future__ import annotations

import logging
import os
import threading
import warnings
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from app.model.files import atomic_save, file_lock

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TF's C++ start-up chatter is not ours

log = logging.getLogger(__name__)

ENGINES = ("tflite", "tf")
TFLITE_NAME = "model.tflite"


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax, stable for large logits."""
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def top_k(
    probs: np.ndarray,
    k: int,
    labels: Sequence[str],
    min_score: float = 0.0,
) -> list[dict[str, Any]]:
    """The ``k`` best classes as ``[{label, class_id, score}]``, best first, score >= min_score.

    ``class_id`` is always there because display names are not unique in ImageNet
    ("crane" the bird and the machine).
    """
    probs = np.asarray(probs).reshape(-1)
    k = max(0, min(int(k), probs.size))
    if k == 0:
        return []
    idx = np.argpartition(-probs, k - 1)[:k]
    idx = idx[np.argsort(-probs[idx], kind="stable")]
    return [
        {"label": labels[i], "class_id": int(i), "score": round(float(probs[i]), 6)}
        for i in idx
        if probs[i] >= min_score
    ]


def default_threads() -> int:
    """Settings' ``inference_threads``, 0 meaning one per core available to this process."""
    from app.settings import get_settings

    n = get_settings().inference_threads
    if n > 0:
        return n
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


class Engine(ABC):
    """Runs one model; ``predict`` returns the model's raw outputs, one row per image."""

    name: str = "engine"

    def __init__(self, output: str = "logits") -> None:
        if output not in ("logits", "probs"):
            raise ValueError(f"output must be 'logits' or 'probs', not {output!r}")
        self.output = output

    @abstractmethod
    def predict(self, batch: np.ndarray) -> np.ndarray:
        """``batch``: float32 NxHxWx3, already normalised; returns NxC raw outputs."""

    def predict_proba(self, batch: np.ndarray) -> np.ndarray:
        """Class probabilities: softmax applied only where the model outputs logits."""
        out = self.predict(batch)
        return softmax(out) if self.output == "logits" else out


class TFLiteEngine(Engine):
    """A batch-1 TFLite interpreter with XNNPACK; a batch is fed image by image."""

    name = "tflite"

    def __init__(self, tflite_path: Path, *, threads: int | None = None,
                 output: str = "logits") -> None:
        super().__init__(output)
        interpreter_cls = _interpreter_class()
        self.threads = threads or default_threads()
        self._interpreter = interpreter_cls(model_path=str(tflite_path),
                                            num_threads=self.threads)
        self._interpreter.allocate_tensors()
        inp = self._interpreter.get_input_details()
        out = self._interpreter.get_output_details()
        if len(inp) != 1 or len(out) != 1:
            raise ValueError(f"{tflite_path}: expected one input and one output")
        self._in = inp[0]["index"]
        self._out = out[0]["index"]
        self.input_shape = tuple(int(d) for d in inp[0]["shape"])
        self.num_classes = int(out[0]["shape"][-1])
        self._lock = threading.Lock()

    def predict(self, batch: np.ndarray) -> np.ndarray:
        batch = np.asarray(batch, dtype=np.float32)
        if batch.ndim == 3:
            batch = batch[None]
        if batch.shape[1:] != self.input_shape[1:]:
            raise ValueError(f"batch shape {batch.shape[1:]} != model {self.input_shape[1:]}")
        out = np.empty((batch.shape[0], self.num_classes), dtype=np.float32)
        with self._lock:
            for i in range(batch.shape[0]):
                self._interpreter.set_tensor(self._in, batch[i : i + 1])
                self._interpreter.invoke()
                out[i] = self._interpreter.get_tensor(self._out)[0]
        return out


class TFEngine(Engine):
    """The Keras model under ``tf.function``: the reference, and the fallback engine."""

    name = "tf"

    def __init__(self, model: Any, *, output: str = "logits") -> None:
        import tensorflow as tf

        super().__init__(output)
        self.model = model
        self._fn = tf.function(lambda x: model(x, training=False), reduce_retracing=True)

    @classmethod
    def from_path(cls, keras_path: Path, *, output: str = "logits") -> TFEngine:
        return cls(load_keras(keras_path), output=output)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        batch = np.asarray(batch, dtype=np.float32)
        if batch.ndim == 3:
            batch = batch[None]
        return np.asarray(self._fn(batch), dtype=np.float32)


def _interpreter_class() -> Any:
    """``ai_edge_litert``'s interpreter when installed, else the one inside TensorFlow."""
    try:
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter
    except ImportError:
        pass
    import tensorflow as tf

    def make(**kwargs: Any) -> Any:
        with warnings.catch_warnings():
            # TF 2.21 still ships it and it works; the deprecation notice is for us, not users.
            warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated.*")
            return tf.lite.Interpreter(**kwargs)

    return make


def load_keras(keras_path: Path) -> Any:
    """Load a Keras model file for inference (no optimizer; safe_mode refuses lambdas)."""
    import keras

    return keras.saving.load_model(str(keras_path), compile=False)


def build_tflite(keras_path: Path, input_size: int, *, model: Any = None) -> Path:
    """Convert ``keras_path`` to ``model.tflite`` beside it, once; atomic for racing workers."""
    tflite_path = keras_path.with_name(TFLITE_NAME)
    if tflite_path.exists():
        return tflite_path
    import keras

    with file_lock(keras_path.with_name(".tflite.lock")):
        if tflite_path.exists():  # built by another process while we waited
            return tflite_path
        model = model if model is not None else load_keras(keras_path)
        signature = [keras.InputSpec(shape=(1, input_size, input_size, 3), dtype="float32")]
        atomic_save(tflite_path, lambda tmp: model.export(tmp, format="litert", verbose=False,
                                                          input_signature=signature), ".tflite")
    log.info("built %s", tflite_path)
    return tflite_path


def create_engine(keras_path: Path, *, input_size: int, output: str = "logits",
                  kind: str | None = None, threads: int | None = None) -> Engine:
    """The configured engine for a model directory; falls back to TF if TFLite cannot run it."""
    from app.settings import get_settings

    kind = kind or get_settings().inference_engine
    if kind not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, not {kind!r}")
    if kind == "tflite":
        try:
            return TFLiteEngine(build_tflite(keras_path, input_size), threads=threads,
                                output=output)
        except Exception as exc:  # noqa: BLE001 - an op TFLite lacks must not stop serving
            log.warning("TFLite unavailable for %s (%s); using tf.function", keras_path, exc)
    return TFEngine.from_path(keras_path, output=output)
