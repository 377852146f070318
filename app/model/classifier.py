"""The classifier a worker, function or CLI holds: one inference thread, a hot-swappable model.

Why one dedicated thread per model: engines are not thread-safe, inference must never run on
the asyncio event loop (a blocked loop stalls Kafka rebalances), and a single consumer keeps
the interpreter's caches warm. Decoding happens elsewhere, so it overlaps inference on the
second core.

Default switching without a restart: ``maybe_reload`` asks the registry what the default is;
if it changed, the new model is loaded and test-run *outside* the inference thread, then
swapped in by replacing one reference. Batches already submitted hold the model they started
with and finish on it, and every result carries the ``ModelInfo`` that actually produced it.
If the new model fails to load, the old one keeps serving and the failure is logged.

Which engine runs a model is chosen at every load by ``app.model.select`` (settings
``engine``, default ``auto``): the fastest one whose answers agree with fp32 on a check set of
real photos. A forced engine that fails that check is refused like any broken model. Results
name the model, the variant's version (fp32 and int8 have their own) and the engine.

Nothing here imports TensorFlow: engines run under LiteRT, and conversion runs in a child
process when files are missing (``app.model.convert``).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from app.imaging import ImageError, PreprocessSpec, prepare
from app.model.engine import Engine, top_k
from app.model.registry import ModelInfo, ModelRegistry, parse_ref
from app.model.select import ExtraEngines, Trial, select_engine

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedModel:
    """A model's metadata together with the engine that runs it; swapped as one unit.

    ``info`` describes the variant the engine runs (its version is what results name);
    ``requested`` is the (name, version asked for or "", version it meant, engine request)
    this was loaded for (unpinned and pinned differ: unpinned lets the engine pick a variant),
    which
    ``check_default`` compares with the registry's default; ``trials`` is the engine
    selection table.
    """

    info: ModelInfo
    engine: Engine
    requested: tuple[str, str, str, str] = ("", "", "", "")
    trials: tuple[Trial, ...] = ()

    @property
    def spec(self) -> PreprocessSpec:
        return self.info.spec

    def model_dict(self) -> dict[str, str]:
        """What every result says about the model that produced it."""
        return {"name": self.info.name, "version": self.info.version,
                "variant": self.info.variant, "engine": self.engine.name}

    def describe(self) -> dict[str, Any]:
        """``model_dict`` plus the engine selection table (for ``/v1/models``)."""
        return {**self.model_dict(), "engines": [t.to_dict() for t in self.trials]}


class Predictions(list):  # type: ignore[type-arg]
    """Probability vectors (one ``np.ndarray`` per input) plus the model that produced them.

    A list, so callers that only want the probabilities can treat it as one.
    """

    def __init__(self, probs: Sequence[np.ndarray], model: ModelInfo) -> None:
        super().__init__(probs)
        self.model = model

    def labels(self, k: int = 5, min_score: float = 0.0) -> list[list[dict[str, Any]]]:
        """``top_k`` labels for every input, with this batch's model's label names."""
        return [top_k(p, k, self.model.labels, min_score) for p in self]


@dataclass
class ImageResult:
    """The outcome for one image of ``classify_bytes``: labels, or the typed error."""

    labels: list[dict[str, Any]] | None
    model: str
    model_version: str
    error: ImageError | None = None
    engine: str = ""
    variant: str = ""

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"model": self.model, "model_version": self.model_version,
                               "variant": self.variant, "engine": self.engine}
        if self.error is not None:
            out["error"] = self.error.to_dict()
        else:
            out["labels"] = self.labels
        return out


class Classifier:
    """Owns the current model and the single thread that runs it.

    ``model``: pin ``"name[:version]"`` (the CLI's ``--model``); ``None`` follows the
    registry's default and picks up changes in ``maybe_reload``. Construction loads the
    model (converting it on first use), so build it off the event loop.
    """

    def __init__(self, registry: ModelRegistry | None = None, *, model: str | None = None,
                 engine: str | None = None, threads: int | None = None,
                 retry_failed_after_s: float = 60.0,
                 extra_engines: ExtraEngines | None = None) -> None:
        self.registry = registry or ModelRegistry()
        self._pinned = model
        self._engine_kind = engine
        self._extra_engines = dict(extra_engines or {})
        self._threads = threads
        self._retry_after = retry_failed_after_s
        self._failed: dict[tuple[str, str], float] = {}
        self._reload_lock = threading.Lock()
        engine_request = None
        if model:
            name, version = parse_ref(model)
        else:
            try:
                name, version = self.registry.default_ref()
                engine_request = self.registry.default_engine()
            except Exception as exc:  # noqa: BLE001 - store down at start: serve the configured
                # default now; check_default switches once the store answers again.
                from app.settings import get_settings

                name, version = parse_ref(get_settings().default_model)
                log.warning("cannot read the default model (%s); starting with %s", exc, name)
        self._current = self._load(name, version, engine_request)
        self._executor = ThreadPoolExecutor(max_workers=1,
                                            thread_name_prefix="inference")

    # ---- state ---------------------------------------------------------------------------

    @property
    def current(self) -> LoadedModel:
        """The model new work runs on; preprocess with its ``spec`` and pass it back."""
        return self._current

    @property
    def model(self) -> ModelInfo:
        return self._current.info

    @property
    def spec(self) -> PreprocessSpec:
        return self._current.info.spec

    # ---- inference -----------------------------------------------------------------------

    def _run(self, loaded: LoadedModel, arrays: Sequence[np.ndarray]) -> Predictions:
        if len(arrays) == 0:
            return Predictions([], loaded.info)
        probs = loaded.engine.predict_proba(np.stack(arrays).astype(np.float32, copy=False))
        return Predictions(list(probs), loaded.info)

    async def classify_arrays(self, arrays: Sequence[np.ndarray], *,
                              model: LoadedModel | None = None) -> Predictions:
        """Run normalised arrays through ``model`` (default: current) on the inference thread.

        Pass the ``LoadedModel`` whose ``spec`` preprocessed the arrays, so a default switch
        between preprocessing and inference cannot mix one model's input with another model.
        """
        loaded = model or self._current
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._run, loaded, list(arrays))

    def classify_arrays_sync(self, arrays: Sequence[np.ndarray], *,
                             model: LoadedModel | None = None) -> Predictions:
        """Blocking ``classify_arrays`` for threads that are not an event loop."""
        loaded = model or self._current
        return self._executor.submit(self._run, loaded, list(arrays)).result()

    def classify_bytes(self, items: Sequence[bytes], *, k: int = 5,
                       min_score: float = 0.0) -> list[ImageResult]:
        """Decode, preprocess and classify raw image bytes; bad images get their typed error.

        Blocking: for the CLI and synchronous functions, never call it on an event loop.
        """
        loaded = self._current
        info = loaded.info
        named = {"engine": loaded.engine.name, "variant": info.variant}
        arrays: list[np.ndarray] = []
        results: list[ImageResult] = []
        for data in items:
            try:
                arrays.append(prepare(data, info.spec)[1])
                results.append(ImageResult(None, info.name, info.version, **named))
            except ImageError as exc:
                results.append(ImageResult(None, info.name, info.version, exc, **named))
        preds = self.classify_arrays_sync(arrays, model=loaded)
        ok = iter(preds.labels(k, min_score))
        for result in results:
            if result.error is None:
                result.labels = next(ok)
        return results

    # ---- default switching ---------------------------------------------------------------

    def _engine_request(self, from_default: str | None) -> str:
        """Which engine to ask for: this classifier's own (CLI ``--engine``), else the
        default's (``set-default --engine``), else settings ``engine``."""
        from app.settings import get_settings

        return self._engine_kind or from_default or get_settings().engine

    def _load(self, name: str, version: str | None,
              engine_request: str | None = None) -> LoadedModel:
        """Materialise, choose and check the engine, prove it runs; raises on any failure."""
        info = self.registry.get(name, version)
        kind = self._engine_request(engine_request)
        requested = (info.name, version or "", info.version, kind)
        engine, trials = select_engine(info.keras_path.parent, info.spec, info.variants, kind,
                                       threads=self._threads, output=info.output,
                                       extra=self._extra_engines)
        info = info.as_variant(engine.variant)
        probe = np.zeros((1, info.input_size, info.input_size, 3), dtype=np.float32)
        out = engine.predict_proba(probe)
        if out.shape != (1, info.num_classes) or not np.all(np.isfinite(out)):
            raise ValueError(f"{info.ref}: test inference gave {out.shape}, "
                             f"expected (1, {info.num_classes}) finite values")
        log.info("model %s loaded (%s engine)", info.ref, engine.name)
        return LoadedModel(info, engine, requested, tuple(trials))

    def check_default(self) -> bool:
        """Switch to the registry's default if it changed; True if a switch happened.

        Blocking (it may convert or download a model). Never raises: a store outage or a
        broken new model is logged and the current model keeps serving. A failed model is
        retried after ``retry_failed_after_s``, so a transient store error heals itself.
        """
        if self._pinned:
            return False
        with self._reload_lock:
            try:
                name, pinned = self.registry.default_ref()
                version = self.registry.resolve_version(name, pinned)
                engine = self.registry.default_engine()
            except Exception as exc:  # noqa: BLE001 - keep serving whatever goes wrong
                log.warning("cannot read the default model, keeping %s: %s",
                            self.model.ref, exc)
                return False
            wanted = (name, pinned or "", version, self._engine_request(engine))
            if wanted == self._current.requested:
                return False
            failed_at = self._failed.get(wanted)
            if failed_at is not None and time.monotonic() - failed_at < self._retry_after:
                return False
            try:
                new = self._load(name, pinned, engine)
            except Exception as exc:  # noqa: BLE001 - a bad default must not stop serving
                self._failed[wanted] = time.monotonic()
                log.error("new default %s:%s (engine %s) failed to load, still serving %s "
                          "(%s): %s", name, version, wanted[3], self.model.ref,
                          self._current.engine.name, exc)
                return False
            self._failed.pop(wanted, None)
            old, self._current = self._current, new
            log.info("default model switched from %s (%s) to %s (%s)", old.info.ref,
                     old.engine.name, new.info.ref, new.engine.name)
            return True

    async def maybe_reload(self) -> bool:
        """``check_default`` off the event loop (not on the inference thread, which keeps
        serving the old model while the new one loads)."""
        return await asyncio.to_thread(self.check_default)

    async def watch_default(self, interval_s: float | None = None) -> None:
        """Poll the default every ``interval_s`` (settings ``model_poll_s``) until cancelled."""
        from app.settings import get_settings

        interval = interval_s or get_settings().model_poll_s
        while True:
            await asyncio.sleep(interval)
            await self.maybe_reload()

    def close(self) -> None:
        """Finish queued inference, then stop the thread."""
        self._executor.shutdown(wait=True)

    def __enter__(self) -> Classifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
