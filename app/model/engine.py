"""Inference engines: the .tflite files run under LiteRT (XNNPACK); TensorFlow only in the CLI.

Why LiteRT: it runs the same flatbuffers as ``tf.lite`` without TensorFlow (a worker holding
only LiteRT and the model is ~50-100 MB instead of ~600 MB), and XNNPACK uses the CPU's
int8 dot-product units (AVX512-VNNI, AMX) for a full-integer int8 model. It gains nothing
from batching on these CPUs, so a batch is run image by image through one batch-1
interpreter.

An engine is a runtime plus a model variant: ``litert-fp32`` runs ``model.tflite``,
``litert-int8`` runs ``model.int8.tflite`` (``app.model.convert`` builds both). Which one serves
is decided per model load by ``app.model.select`` (settings ``engine``, default ``auto``).
``tf`` (the Keras model under ``tf.function``) is the slow reference for the CLI and benches;
it is never chosen automatically.

Engines are not thread-safe; ``app.model.classifier.Classifier`` gives each model one thread.
"""

from __future__ import annotations

import logging
import os
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from app.model.convert import FP32_NAME, INT8_NAME

log = logging.getLogger(__name__)

VARIANT_FILES = {"fp32": FP32_NAME, "int8": INT8_NAME}
REFERENCE = "litert-fp32"
AUTO = "auto"
ALIASES = {"tflite": "litert-fp32", "int8": "litert-int8", "fp32": "litert-fp32"}


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
    variant: str = "fp32"

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


class LiteRTEngine(Engine):
    """A batch-1 LiteRT interpreter with XNNPACK; a batch is fed image by image."""

    def __init__(self, tflite_path: Path, *, variant: str = "fp32", threads: int | None = None,
                 output: str = "logits") -> None:
        from ai_edge_litert.interpreter import Interpreter

        super().__init__(output)
        self.variant = variant
        self.name = f"litert-{variant}"
        self.path = Path(tflite_path)
        self.threads = threads or default_threads()
        self._interpreter = Interpreter(model_path=str(tflite_path), num_threads=self.threads)
        self._interpreter.allocate_tensors()
        inp = self._interpreter.get_input_details()
        out = self._interpreter.get_output_details()
        if len(inp) != 1 or len(out) != 1:
            raise ValueError(f"{tflite_path}: expected one input and one output")
        if inp[0]["dtype"] != np.float32 or out[0]["dtype"] != np.float32:
            raise ValueError(f"{tflite_path}: expected float input and output")
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


TFLiteEngine = LiteRTEngine  # the name older callers know


class TFEngine(Engine):
    """The Keras model under ``tf.function``: the reference for benches; imports TensorFlow."""

    name = "tf"

    def __init__(self, model: Any, *, output: str = "logits") -> None:
        import tensorflow as tf

        super().__init__(output)
        self.model = model
        self._fn = tf.function(lambda x: model(x, training=False), reduce_retracing=True)

    @classmethod
    def from_path(cls, keras_path: Path, *, output: str = "logits") -> TFEngine:
        from app.model.convert import load_keras

        return cls(load_keras(keras_path), output=output)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        batch = np.asarray(batch, dtype=np.float32)
        if batch.ndim == 3:
            batch = batch[None]
        return np.asarray(self._fn(batch), dtype=np.float32)


# ---- the catalogue --------------------------------------------------------------------------

EngineFactory = Callable[[], Engine]


@dataclass(frozen=True)
class EngineKind:
    """One entry of the catalogue: how to tell whether it can run here and how to make it."""

    name: str
    variant: str
    runtime: str  # the importable module it needs

    def file(self, model_dir: Path) -> Path:
        return model_dir / VARIANT_FILES[self.variant]

    def available(self, model_dir: Path) -> bool:
        import importlib.util

        return (self.file(model_dir).is_file()
                and importlib.util.find_spec(self.runtime) is not None)

    def create(self, model_dir: Path, *, threads: int | None, output: str) -> Engine:
        if self.runtime == "ai_edge_litert":
            return LiteRTEngine(self.file(model_dir), variant=self.variant, threads=threads,
                                output=output)
        raise ValueError(f"no runtime {self.runtime!r}")  # pragma: no cover


CATALOGUE: dict[str, EngineKind] = {
    kind.name: kind for kind in (
        EngineKind("litert-fp32", "fp32", "ai_edge_litert"),
        EngineKind("litert-int8", "int8", "ai_edge_litert"),
    )
}
ENGINES = (AUTO, *CATALOGUE)


def canonical(name: str) -> str:
    """``name`` with aliases resolved (``tflite`` -> ``litert-fp32``); raises if unknown."""
    name = ALIASES.get(name.strip().lower(), name.strip().lower())
    if name != AUTO and name not in CATALOGUE:
        raise ValueError(f"unknown engine {name!r}: choose one of {', '.join(ENGINES)}")
    return name


def available_engines(model_dir: Path, variants: Sequence[str]) -> list[str]:
    """Catalogue engines that can run one of ``variants`` of the model in ``model_dir``."""
    return [k.name for k in CATALOGUE.values()
            if k.variant in variants and k.available(model_dir)]


def engines_for_variant(variant: str) -> list[str]:
    return [k.name for k in CATALOGUE.values() if k.variant == variant]
