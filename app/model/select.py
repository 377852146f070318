"""Choosing the serving engine at model load: fast, but only if it answers like fp32.

Why at every load and on this machine: which engine is fastest depends on the CPU (VNNI, AMX,
bf16 units) and on the model, and a quantised model can regress on a given model; measuring
here, against the fp32 reference on a fixed check set of real photos, is the only way to know.

Rules (settings ``engine``):
- ``auto``: every available engine is checked and timed; those whose top-1 agrees with fp32 on
  at least ``TOP1_MIN`` of the check set and whose top-5 sets overlap by at least ``TOP5_MIN``
  are eligible; the fastest eligible one serves. fp32 itself is always eligible, so auto can
  never end up with nothing.
- a name: that engine only; if it fails the check the load is refused (``EngineRefused``), and
  a running classifier keeps serving its previous model.

Which check images count: those on which the fp32 reference is confident (top-1 probability
at least ``CONFIDENT``). Many crops of the shipped photos show nothing ImageNet has a class for
(grass, gravel, a retina); there fp32's own top-1 is a near-tie that flips under any numeric
change (measured: a correct int8 model agrees on 88% of all 192 check images but on 100% of
the 79 confident ones, and logits perturbed by noise of 0.5 standard deviations still agree on
91% of the confident ones, well under the bar). So the bar separates a broken engine from an
honest one instead of measuring how ambiguous the photos are.

The table of measurements is logged and kept on the loaded model (``/v1/models`` shows it).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from app.imaging import PreprocessSpec
from app.model.engine import (
    AUTO,
    CATALOGUE,
    REFERENCE,
    Engine,
    available_engines,
    canonical,
    softmax,
)
from app.model.files import atomic_write

log = logging.getLogger(__name__)

TOP1_MIN = 0.97
TOP5_MIN = 0.90
CONFIDENT = 0.4  # fp32 top-1 probability for a check image to count
MIN_CHECKED = 40  # fewer confident images than this: nothing can be proven, only fp32 serves
CHECK_REVISION = 1  # bump when app.model.photos.check_images changes (cached references)
TIMING_BATCH = 8
TIMING_ROUNDS = 5

# A test double or an extra runtime: name -> (variant it runs, factory).
ExtraEngines = Mapping[str, tuple[str, Callable[[], Engine]]]


class EngineRefused(ValueError):
    """The requested engine cannot serve this model: unavailable, or its answers differ."""


@dataclass(frozen=True)
class Trial:
    """One row of the selection table."""

    engine: str
    variant: str
    img_s: float
    top1: float
    top5: float
    eligible: bool
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"engine": self.engine, "variant": self.variant,
                "img_s": round(self.img_s, 1), "top1_agreement": round(self.top1, 4),
                "top5_overlap": round(self.top5, 4), "eligible": self.eligible,
                "note": self.note}


def agreement(reference: np.ndarray, out: np.ndarray) -> tuple[float, float]:
    """(top-1 agreement, mean top-5 overlap) of ``out`` against ``reference`` (NxC each)."""
    if reference.shape != out.shape:
        raise ValueError(f"output shape {out.shape} != reference {reference.shape}")
    if not np.all(np.isfinite(out)):
        return 0.0, 0.0
    top1 = float(np.mean(reference.argmax(axis=1) == out.argmax(axis=1)))
    k = min(5, reference.shape[1])  # a custom model may have fewer than five classes
    ref5 = np.argsort(-reference, axis=1, kind="stable")[:, :k]
    out5 = np.argsort(-out, axis=1, kind="stable")[:, :k]
    overlap = [len(set(a) & set(b)) / k for a, b in zip(ref5, out5, strict=True)]
    return top1, float(np.mean(overlap))


def interleaved_rates(engines: Mapping[str, Engine], batch: np.ndarray,
                      rounds: int = TIMING_ROUNDS) -> dict[str, float]:
    """Best images/second of each engine over ``rounds`` interleaved rounds, so that a burst
    of other load on the machine hits every engine alike rather than whichever ran then."""
    best = dict.fromkeys(engines, 0.0)
    for engine in engines.values():
        engine.predict(batch)  # warm-up: first runs allocate and pack weights
    for _ in range(rounds):
        for name, engine in engines.items():
            start = time.perf_counter()
            engine.predict(batch)
            best[name] = max(best[name], len(batch) / max(time.perf_counter() - start, 1e-9))
    return best


def check_set(spec: PreprocessSpec) -> np.ndarray:
    """The fixed check set, preprocessed for ``spec``.

    Not memoised on purpose: 192 float images are 116 MB, which a worker would otherwise
    carry for its whole life to save 1-2 s per model load.
    """
    from app.model.photos import check_arrays

    return check_arrays(spec)


def reference_outputs(model_dir: Path, check: np.ndarray, make_reference: Callable[[], Engine]
                      ) -> np.ndarray:
    """fp32 outputs on the check set, cached beside the model (keyed by the fp32 file)."""
    fp32 = CATALOGUE[REFERENCE].file(model_dir)
    stat = fp32.stat()
    cache = model_dir / f".check-r{CHECK_REVISION}-{stat.st_size}-{stat.st_mtime_ns}.npy"
    if cache.is_file():
        try:
            out = np.load(cache)
            if out.shape[0] == len(check):
                return out
        except (OSError, ValueError):
            pass
    out = make_reference().predict(check)
    try:
        import io

        buf = io.BytesIO()
        np.save(buf, out)
        atomic_write(cache, buf.getvalue())
    except OSError:  # a read-only cache only costs the recomputation next time
        pass
    return out


def select_engine(model_dir: Path, spec: PreprocessSpec, variants: Sequence[str],
                  requested: str, *, threads: int | None = None, output: str = "logits",
                  extra: ExtraEngines | None = None) -> tuple[Engine, list[Trial]]:
    """The engine that should serve the model in ``model_dir``, and the measurements.

    ``variants``: the model variants allowed (a pinned int8 version allows only ``int8``).
    Raises ``EngineRefused`` when a requested engine is unavailable or fails the check.
    """
    extra = dict(extra or {})
    requested = requested if requested in extra else canonical(requested)

    def factory(name: str) -> Callable[[], Engine]:
        if name in extra:
            return extra[name][1]
        return lambda: CATALOGUE[name].create(model_dir, threads=threads, output=output)

    def variant_of(name: str) -> str:
        return extra[name][0] if name in extra else CATALOGUE[name].variant

    names = available_engines(model_dir, variants)
    names += [n for n, (v, _) in extra.items() if v in variants and n not in names]
    if requested != AUTO:
        if requested not in names:
            raise EngineRefused(
                f"engine {requested} cannot run {model_dir.name} here (available: "
                f"{', '.join(names) or 'none'}; variants {', '.join(variants)})")
        names = [requested]
    if not names:
        raise EngineRefused(f"no engine can run {model_dir} (variants {', '.join(variants)})")
    if names == [REFERENCE]:  # the reference itself: nothing to compare or choose
        return factory(REFERENCE)(), [Trial(REFERENCE, "fp32", 0.0, 1.0, 1.0, True,
                                            "reference")]

    check = check_set(spec)
    reference = reference_outputs(model_dir, check, factory(REFERENCE))
    confident = (softmax(reference) if output == "logits" else reference).max(axis=1) >= CONFIDENT
    timing = check[:TIMING_BATCH]
    check, reference = check[confident], reference[confident]
    trials: list[Trial] = []
    engines: dict[str, Engine] = {}
    for name in names:
        try:
            engine = factory(name)()
            if name == REFERENCE:
                top1, top5 = 1.0, 1.0
            elif len(check) < MIN_CHECKED:
                top1, top5 = 0.0, 0.0  # not provable on this model: not eligible
            else:
                top1, top5 = agreement(reference, engine.predict(check))
        except Exception as exc:  # noqa: BLE001 - an engine that breaks is just not eligible
            trials.append(Trial(name, variant_of(name), 0.0, 0.0, 0.0, False, f"error: {exc}"))
            continue
        eligible = top1 >= TOP1_MIN and top5 >= TOP5_MIN
        note = "" if eligible else (f"answers differ from fp32 (top-1 {top1:.3f} < {TOP1_MIN} "
                                    f"or top-5 {top5:.3f} < {TOP5_MIN})")
        if not eligible and len(check) < MIN_CHECKED:
            note = f"only {len(check)} confident check photos (< {MIN_CHECKED}): unprovable"
        trials.append(Trial(name, variant_of(name), 0.0, top1, top5, eligible, note))
        if eligible:
            engines[name] = engine

    if len(engines) > 1:  # only a choice needs timing
        speeds = interleaved_rates(engines, timing)
        trials = [replace(t, img_s=speeds.get(t.engine, 0.0)) for t in trials]
    _log_table(model_dir, trials, len(check))
    if not engines:
        failed = trials[0]
        raise EngineRefused(f"engine {failed.engine} refused for {model_dir.name}: "
                            f"{failed.note or 'not eligible'}")
    best = max((t for t in trials if t.eligible), key=lambda t: t.img_s)
    chosen = engines.pop(best.engine)
    engines.clear()
    del check, reference, timing
    _return_freed_memory()
    return chosen, trials


def _return_freed_memory() -> None:
    """Give the check set's and the losing engines' freed heap back to the OS (glibc keeps
    it otherwise: about 30 MB per worker, measured)."""
    import ctypes
    import ctypes.util

    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass


def _log_table(model_dir: Path, trials: Sequence[Trial], checked: int) -> None:
    lines = [f"engines for {model_dir.parent.name}/{model_dir.name} "
             f"(checked against fp32 on {checked} photos):",
             f"  {'engine':<16}{'variant':<8}{'img/s':>8}{'top-1':>8}{'top-5':>8}  eligible"]
    for t in trials:
        lines.append(f"  {t.engine:<16}{t.variant:<8}{t.img_s:>8.1f}{t.top1:>8.3f}"
                     f"{t.top5:>8.3f}  {'yes' if t.eligible else 'no: ' + t.note}")
    log.info("\n".join(lines))

