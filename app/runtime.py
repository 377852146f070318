"""The process's classifier and model registry, created once and shared by every caller
(agents, views, functions), so a process holds one model and one inference thread."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from app.model.classifier import Classifier
from app.model.convert import int8_version
from app.model.registry import ModelRegistry
from app.storage import get_store

_classifier: Classifier | None = None
_lock: asyncio.Lock | None = None
_ref_cache: tuple[float, tuple[str, str] | None] = (0.0, None)
REF_TTL_S = 10.0


def get_registry() -> ModelRegistry:
    return ModelRegistry(store=get_store())


def preload_classifier() -> None:
    """Load the default model now, blocking. The worker calls it before it joins the consumer
    group (app.worker); ``get_classifier`` calls it in a thread otherwise."""
    global _classifier
    if _classifier is None:
        _classifier = Classifier(get_registry())


async def get_classifier() -> Classifier:
    """Loads the default model on first use (converting it if needed), off the event loop."""
    global _lock
    if _classifier is not None:
        return _classifier
    if _lock is None:
        _lock = asyncio.Lock()
    async with _lock:
        await asyncio.to_thread(preload_classifier)
    return _classifier


def loaded_classifier() -> Classifier | None:
    return _classifier


def _resolve_default() -> tuple[str, str]:
    registry = get_registry()
    name, version = registry.default_ref()
    return name, registry.resolve_version(name, version)


async def current_model_ref() -> list[tuple[str, str]] | None:
    """(name, version) pairs a result for new images may carry, for de-duplication.

    One per variant (fp32, int8: each has its own version, and which one a worker serves is
    its own engine choice), the one this process serves first.
    """
    global _ref_cache
    if _classifier is not None:
        current = _classifier.current
        name, version = current.requested[0], current.requested[2]
        served = (current.info.name, current.info.version)
        return [served] + [r for r in _variant_refs(name, version) if r != served]
    stamp, ref = _ref_cache
    if time.monotonic() - stamp < REF_TTL_S:
        return _variant_refs(*ref) if ref else None
    try:
        ref = await asyncio.to_thread(_resolve_default)
    except Exception:  # noqa: BLE001 - no dedup this time; the upload still succeeds
        ref = None
    _ref_cache = (time.monotonic(), ref)
    return _variant_refs(*ref) if ref else None


def _variant_refs(name: str, version: str) -> list[tuple[str, str]]:
    return [(name, version), (name, int8_version(version))]


async def list_models() -> dict[str, Any]:
    entries = await asyncio.to_thread(lambda: [e.to_dict() for e in get_registry().list_models()])
    default = next((e for e in entries if e.get("default")), None)
    serving = None
    if _classifier is not None:
        serving = _classifier.current.describe()
    return {"default": default["name"] if default else None, "serving": serving,
            "models": entries}
