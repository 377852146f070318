"""Re-classifying stored originals with another model version, and each image's history.

A job (``imagerec reclassify``, ``POST /v1/admin/reclassify``) names a model and which
originals: uploaded since a date, and optionally only those dropped under a source-key prefix
(app.drops). Its runner lists the originals in id (= time) order and enqueues one small event
per image on ``image-reclassify`` through a token bucket (settings ``reclassify_rate``,
``reclassify_burst``): live uploads keep their latency because a job never offers the workers
more than that rate, and because its events wait on a topic of their own, never in front of
live uploads on ``image-uploads``.

Resumable. The job's id is a hash of what it asks for, so running the same command again
continues the same job. Its state lives in Redis: the position (the last id enqueued, written
at every checkpoint), counters, and the set of ids finished (exact under redelivery). A
runner holds a lease that it renews; when the process running it dies, another worker takes
the job over from its position (``resume_orphans``). If Redis lost it all, a new run starts
from the beginning and skips every image that already has this model's answer, so the cost of
a lost position is a listing, not a re-classification.

History. The newest answer stays where every reader finds it (``<id>.json`` in the results
bucket, the table, Redis); each model version's answer is also kept under
``<id>/models/<name>/<version>.json``, and the newest document lists them all in ``history``.
``GET /v1/images/{id}?model=NAME[:VERSION]`` reads another version's answer. A re-classification
that fails does not replace a ``done`` answer (it is recorded in the history). A re-classified
result carries ``reclassify_job``: its webhook is not called again and it does not re-enter
the recent list.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote

from app import names
from app import results as res
from app.broker import get_publisher
from app.ids import is_image_id
from app.logs import get_logger
from app.messages import ReclassifyEvent  # its message model, with the others
from app.reconcile import _ulid_floor
from app.settings import get_settings
from app.storage import ObjectMissing, get_store

log = get_logger(__name__)
LEASE_S = 30
CHECKPOINT_EVERY = 100  # ids, or CHECKPOINT_S seconds, whichever first
CHECKPOINT_S = 1.0
IN_FLIGHT = 64  # produce requests a runner keeps outstanding
JOB_TTL_S = 14 * 24 * 3600
STATES = ("running", "enqueued", "done", "cancelled", "failed")


class JobError(ValueError):
    """A job that cannot be created as asked (unknown model, bad date): the client's 400."""


# --- the token bucket -------------------------------------------------------------------------


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` saved up. ``acquire`` waits for one."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic
                 ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.rate, self.burst, self._clock = rate, float(burst), clock
        self._tokens, self._at = float(burst), clock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now

    def wait_s(self) -> float:
        """Seconds until a token is there (0 when one is); takes it when there is one."""
        self._refill()
        if self._tokens >= 1:
            self._tokens -= 1
            return 0.0
        return (1 - self._tokens) / self.rate

    async def acquire(self) -> None:
        while (wait := self.wait_s()) > 0:
            await asyncio.sleep(wait)


# --- jobs -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class JobSpec:
    """What a job re-classifies. Its hash is the job id: asking again resumes it."""

    model: str  # "name" or "name:version", checked against the registry
    since: str = ""  # ISO date or time; "" = from the first image
    prefix: str = ""  # only images dropped under this source-key prefix (app.drops)

    @property
    def job_id(self) -> str:
        body = json.dumps(asdict(self), sort_keys=True).encode()
        return hashlib.sha256(body).hexdigest()[:16]


def parse_since(value: str | None) -> float | None:
    """``2026-11-01`` or a full ISO time (UTC unless it says otherwise) as epoch seconds."""
    if not value:
        return None
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise JobError(f"--since: not an ISO date or time: {value!r}") from exc
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def check_model(ref: str) -> str:
    """``ref`` if the registry knows it and can serve it here; ``JobError`` otherwise."""
    from app.model.registry import ModelError, parse_ref
    from app.runtime import get_registry

    name, version = parse_ref(ref)
    try:
        get_registry().resolve_version(name, version)
    except ModelError as exc:
        raise JobError(str(exc)) from exc
    return f"{name}:{version}" if version else name


def _redis() -> Any:
    from app.cache import get_redis

    return get_redis()


def _decode(raw: dict[bytes, bytes]) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in raw.items()}


async def load_job(job_id: str) -> dict[str, Any] | None:
    """A job's state as clients see it, with ``finished`` (ids done) and its final state."""
    redis = _redis()
    raw = _decode(await redis.hgetall(names.redis_reclassify_job(job_id)))
    if not raw:
        return None
    finished = int(await redis.scard(names.redis_reclassify_done(job_id)))
    enqueued = int(raw.get("enqueued", 0))
    state = raw.get("state", "running")
    if state == "enqueued" and finished >= enqueued:
        state = "done"
        await redis.hset(names.redis_reclassify_job(job_id),
                         mapping={"state": "done", "finished_at": res.now_iso()})
        raw["finished_at"] = res.now_iso()
    spec = json.loads(raw.get("spec", "{}"))
    return {
        "id": job_id, "state": state, **spec,
        "total": int(raw.get("total", -1)), "enqueued": enqueued,
        "finished": min(finished, enqueued) if state != "running" else finished,
        "rate": float(raw.get("rate", 0)), "position": raw.get("position", ""),
        "created_at": raw.get("created_at"), "updated_at": raw.get("updated_at"),
        "finished_at": raw.get("finished_at"), "error": raw.get("error") or None,
        "running": bool(await redis.exists(names.redis_reclassify_lease(job_id))),
    }


async def list_jobs() -> list[dict[str, Any]]:
    ids = sorted(m.decode() for m in await _redis().smembers(names.REDIS_RECLASSIFY_JOBS))
    jobs = [await load_job(i) for i in ids]
    return sorted((j for j in jobs if j), key=lambda j: j.get("created_at") or "", reverse=True)


async def create_job(spec: JobSpec, *, rate: float | None = None, restart: bool = False
                     ) -> tuple[str, bool]:
    """Record the job (or find it); returns ``(job_id, is_new)``. ``restart`` forgets the
    position and what was finished."""
    settings = get_settings()
    check_model(spec.model)
    parse_since(spec.since)
    job_id = spec.job_id
    redis = _redis()
    key = names.redis_reclassify_job(job_id)
    exists = bool(await redis.exists(key))
    if exists and not restart:
        current = await load_job(job_id)
        if rate and current and current["state"] in ("running", "cancelled"):
            await redis.hset(key, mapping={"rate": str(rate), "state": "running"})
        elif current and current["state"] == "cancelled":
            await redis.hset(key, "state", "running")
        return job_id, False
    now = res.now_iso()
    await redis.delete(key, names.redis_reclassify_done(job_id))
    await redis.hset(key, mapping={
        "spec": json.dumps(asdict(spec)), "state": "running", "position": "",
        "enqueued": "0", "total": "-1", "rate": str(rate or settings.reclassify_rate),
        "until": _ulid_floor(time.time()), "created_at": now, "updated_at": now,
    })
    await redis.expire(key, JOB_TTL_S)
    await redis.sadd(names.REDIS_RECLASSIFY_JOBS, job_id)
    return job_id, True


async def cancel_job(job_id: str) -> bool:
    redis = _redis()
    key = names.redis_reclassify_job(job_id)
    if not await redis.exists(key):
        return False
    await redis.hset(key, mapping={"state": "cancelled", "updated_at": res.now_iso()})
    return True


# --- the runner -------------------------------------------------------------------------------


def _owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


async def _take_lease(job_id: str) -> bool:
    return bool(await _redis().set(names.redis_reclassify_lease(job_id), _owner(), nx=True,
                                   ex=LEASE_S))


async def _renew_lease(job_id: str) -> bool:
    key = names.redis_reclassify_lease(job_id)
    redis = _redis()
    if (await redis.get(key) or b"").decode() != _owner():
        return False
    await redis.expire(key, LEASE_S)
    return True


async def _release_lease(job_id: str) -> None:
    key = names.redis_reclassify_lease(job_id)
    redis = _redis()
    if (await redis.get(key) or b"").decode() == _owner():
        await redis.delete(key)


async def _selected(image_id: str, prefix: str) -> bool:
    """Whether the original was dropped under ``prefix`` (its source key in metadata)."""
    from app.ingest import ORIGINAL_SOURCE_META

    if not prefix:
        return True
    settings = get_settings()
    try:
        meta = await asyncio.to_thread(get_store().metadata, settings.bucket_input,
                                       names.original_key(image_id))
    except ObjectMissing:
        return False
    return unquote(meta.get(ORIGINAL_SOURCE_META, "")).startswith(prefix)


async def _candidates(start: str, stop: str) -> Any:
    settings = get_settings()
    async for keys in get_store().keys_between(settings.bucket_input, start, stop):
        yield [k for k in keys if is_image_id(k)]


async def _count(spec: JobSpec, start: str, stop: str, job_id: str) -> int:
    """The images the job selects (a listing; a HEAD each with ``prefix``), renewing the
    lease as it goes: a long count must not look like a dead runner."""
    total = 0
    async for ids in _candidates(start, stop):
        await _renew_lease(job_id)
        if spec.prefix:
            total += sum(await asyncio.gather(*(_selected(i, spec.prefix) for i in ids)))
        else:
            total += len(ids)
    return total


def encode_event(image_id: str, model: str, job_id: str) -> bytes:
    return ReclassifyEvent(id=image_id, model=model, job=job_id,
                           enqueued_at=res.now_iso()).to_bytes()


async def run_job(job_id: str, *, on_progress: Callable[[dict[str, Any]], None] | None = None
                  ) -> str:
    """Enqueue the job's remaining originals, from its position; returns the state it ended
    in (``enqueued``, ``cancelled``, ``failed``) or ``busy`` when another process runs it."""
    if not await _take_lease(job_id):
        return "busy"
    redis = _redis()
    key = names.redis_reclassify_job(job_id)
    try:
        raw = _decode(await redis.hgetall(key))
        if not raw or raw.get("state") != "running":
            return raw.get("state", "missing") if raw else "missing"
        spec = JobSpec(**json.loads(raw["spec"]))
        since = parse_since(spec.since)
        start = _ulid_floor(since) if since else ""
        stop = raw["until"]
        if int(raw.get("total", -1)) < 0:
            await redis.hset(key, "total", str(await _count(spec, start, stop, job_id)))
        position = raw.get("position") or ""
        enqueued = int(raw.get("enqueued", 0))
        bucket = TokenBucket(float(raw.get("rate") or get_settings().reclassify_rate),
                             get_settings().reclassify_burst)
        settings = get_settings()
        publisher = get_publisher()
        inflight: set[asyncio.Task[None]] = set()
        last_checkpoint, since_checkpoint = time.monotonic(), 0

        async def checkpoint(upto: str) -> bool:
            """Wait for what is in flight, record the position; False to stop."""
            nonlocal last_checkpoint, since_checkpoint
            if inflight:
                await asyncio.gather(*inflight)
                inflight.clear()
            await redis.hset(key, mapping={"position": upto, "enqueued": str(enqueued),
                                           "updated_at": res.now_iso()})
            last_checkpoint, since_checkpoint = time.monotonic(), 0
            if on_progress:
                on_progress({"enqueued": enqueued, "position": upto})
            state = (await redis.hget(key, "state") or b"").decode()
            return state == "running" and await _renew_lease(job_id)

        last = position
        async for ids in _candidates(max(start, position), stop):
            for image_id in ids:
                if image_id <= position or not await _selected(image_id, spec.prefix):
                    continue
                await bucket.acquire()
                task = asyncio.create_task(publisher.send(
                    settings.topic_reclassify, image_id.encode(),
                    encode_event(image_id, spec.model, job_id)))
                inflight.add(task)
                enqueued += 1
                since_checkpoint += 1
                last = image_id
                if len(inflight) >= IN_FLIGHT or since_checkpoint >= CHECKPOINT_EVERY \
                        or time.monotonic() - last_checkpoint >= CHECKPOINT_S:
                    if not await checkpoint(last):
                        return (await redis.hget(key, "state") or b"cancelled").decode()
        await checkpoint(last)
        await redis.hset(key, mapping={"state": "enqueued", "total": str(enqueued),
                                       "updated_at": res.now_iso()})
        log.info("reclassify job enqueued", job=job_id, images=enqueued, model=spec.model)
        return "enqueued"
    except Exception as exc:
        log.exception("reclassify job stopped", job=job_id)
        await redis.hset(key, mapping={"error": repr(exc)[:500], "updated_at": res.now_iso()})
        raise
    finally:
        await _release_lease(job_id)


async def resume_orphans(start: Callable[[str], Awaitable[Any]]) -> list[str]:
    """Jobs still ``running`` whose runner is gone (no lease): ``start`` each here."""
    redis = _redis()
    resumed = []
    for member in await redis.smembers(names.REDIS_RECLASSIFY_JOBS):
        job_id = member.decode()
        state = (await redis.hget(names.redis_reclassify_job(job_id), "state") or b"").decode()
        if not state:
            await redis.srem(names.REDIS_RECLASSIFY_JOBS, job_id)  # expired
        elif state == "running" and not await redis.exists(
                names.redis_reclassify_lease(job_id)):
            await start(job_id)
            resumed.append(job_id)
    return resumed


# --- the agent's side: classify with the job's model and keep the history ----------------------


_pinned: dict[str, Any] = {}
_pinned_lock: asyncio.Lock | None = None


async def pinned_classifier(ref: str) -> Any:
    """A classifier for ``ref`` (its own inference thread), loaded once per process."""
    global _pinned_lock
    if ref in _pinned:
        return _pinned[ref]
    if _pinned_lock is None:
        _pinned_lock = asyncio.Lock()
    async with _pinned_lock:
        if ref not in _pinned:
            from app.model.classifier import Classifier
            from app.runtime import get_registry

            _pinned[ref] = await asyncio.to_thread(Classifier, get_registry(), model=ref)
        return _pinned[ref]


def history_entry(result: dict[str, Any]) -> dict[str, Any]:
    model = result.get("model") or {}
    return {"name": model.get("name"), "version": model.get("version"),
            "variant": model.get("variant"), "engine": model.get("engine"),
            "status": result.get("status"), "completed_at": result.get("completed_at")}


def history_of(result: dict[str, Any]) -> list[dict[str, Any]]:
    if result.get("history"):
        return list(result["history"])
    return [history_entry(result)] if result.get("model") else []


def has_answer(result: dict[str, Any], name: str, version: str) -> bool:
    return any(h.get("name") == name and h.get("version") == version
               and h.get("status") == "done" for h in history_of(result))


def merge(prev: dict[str, Any], new: dict[str, Any], job_id: str) -> dict[str, Any]:
    """The image's newest document after ``new``: ``new`` unless it failed where ``prev`` was
    done; either way with the history of both and the record fields of the image."""
    entry = history_entry(new)
    history = [h for h in history_of(prev)
               if (h.get("name"), h.get("version")) != (entry["name"], entry["version"])]
    history.append(entry)
    if new["status"] == "done" or prev.get("status") != "done":
        current = dict(new)
        for field in ("created_at", "request_id", "callback_url", "tenant", "source_key"):
            if field in prev:
                current[field] = prev[field]
    else:
        current = dict(prev)
    current["history"] = history
    current["reclassify_job"] = job_id
    return current


def version_doc(result: dict[str, Any]) -> bytes:
    """One model version's answer as kept in the history (no history of its own)."""
    return res.encode({k: v for k, v in result.items()
                       if k not in ("history", "reclassify_job")})


async def _stored_result(image_id: str) -> dict[str, Any] | None:
    try:
        raw = await get_store().get(get_settings().bucket_results, names.result_key(image_id))
    except ObjectMissing:
        return None
    return res.decode(raw)


async def _keep(event: ReclassifyEvent, prev: dict[str, Any], new: dict[str, Any], info: Any,
                send_result: Callable[[str, bytes], Awaitable[None]]) -> None:
    """Both versions' answers first, then the newest document, then the send: a redelivery
    finds whatever was written and writes the same again."""
    settings = get_settings()
    store = get_store()
    writes = []
    if prev.get("model") and prev.get("status") == "done":
        pm = prev["model"]
        writes.append(store.put(settings.bucket_results, names.result_version_key(
            event.id, pm["name"], pm["version"]), version_doc(prev), "application/json"))
    new = {**new, "created_at": prev.get("created_at", new["created_at"])}
    writes.append(store.put(settings.bucket_results, names.result_version_key(
        event.id, info.name, info.version), version_doc(new), "application/json"))
    await asyncio.gather(*writes)
    encoded = res.encode(merge(prev, new, event.job))
    await store.put(settings.bucket_results, names.result_key(event.id), encoded,
                    "application/json")
    await send_result(event.id, encoded)


async def reclassify_batch(raws: list[bytes | None],
                           send_result: Callable[[str, bytes], Awaitable[None]],
                           to_dlq: Callable[[bytes | None, str], Awaitable[None]]) -> int:
    """Classify a batch of reclassify events; returns how many images got a new answer.

    Every write is keyed by image id and model version, so a redelivered batch is harmless;
    images with this model's answer already, or without a final result yet, are skipped."""
    from app.pipeline import classify_batch

    redis = _redis()
    events: list[ReclassifyEvent] = []
    for raw in raws:
        try:
            events.append(ReclassifyEvent.from_bytes(raw))
        except res.BadEvent as exc:
            await to_dlq(raw, str(exc))
    by_model: dict[str, list[ReclassifyEvent]] = {}
    for event in events:
        by_model.setdefault(event.model, []).append(event)
    answered = 0
    for ref, group in by_model.items():
        classifier = await pinned_classifier(ref)
        info = classifier.current.info
        todo: list[tuple[ReclassifyEvent, dict[str, Any]]] = []
        finished: list[ReclassifyEvent] = []
        stored = await asyncio.gather(*(_stored_result(e.id) for e in group))
        for event, prev in zip(group, stored, strict=True):
            if prev is None or not res.is_final(prev) or has_answer(prev, info.name,
                                                                    info.version):
                finished.append(event)
            else:
                todo.append((event, prev))
        if todo:
            uploads = [res.UploadEvent(
                id=e.id, sha256=p.get("sha256") or "", format="", size=0,
                created_at=e.enqueued_at, request_id=p.get("request_id") or "",
                tenant=p.get("tenant") or "", source_key=p.get("source_key"))
                for e, p in todo]
            batch = await classify_batch(uploads, classifier)
            await asyncio.gather(*(_keep(e, p, n, info, send_result) for (e, p), n
                                   in zip(todo, batch.results, strict=True)))
            finished += [e for e, _ in todo]
            answered += sum(n["status"] == "done" for n in batch.results)
        pipe = redis.pipeline(transaction=False)
        for event in finished:
            pipe.sadd(names.redis_reclassify_done(event.job), event.id)
            pipe.expire(names.redis_reclassify_done(event.job), JOB_TTL_S)
        await pipe.execute()
    return answered


# --- reading a model's answer -----------------------------------------------------------------


async def result_for_model(image_id: str, ref: str,
                           current: dict[str, Any] | None) -> dict[str, Any] | None:
    """The image's answer by model ``name`` (its newest version) or ``name:version``."""
    from app.model.registry import parse_ref

    name, version = parse_ref(ref)
    model = (current or {}).get("model") or {}
    if current and model.get("name") == name and version in (None, model.get("version")):
        return current
    settings = get_settings()
    store = get_store()
    if version:
        try:
            return res.decode(await store.get(settings.bucket_results,
                                              names.result_version_key(image_id, name,
                                                                       version)))
        except ObjectMissing:
            return None
    keys = await asyncio.to_thread(store.list_keys, settings.bucket_results,
                                   names.result_versions_prefix(image_id, name))
    found = [res.decode(await store.get(settings.bucket_results, k)) for k in keys]
    found.sort(key=lambda r: r.get("completed_at") or "")
    done = [r for r in found if r.get("status") == "done"]
    return (done or found or [None])[-1]
