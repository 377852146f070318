"""Webhooks: POST the finished result to the client's ``callback_url``, signed, retried, durable.

The body is the public result JSON; ``X-Imagerec-Signature: sha256=<hex>`` is the HMAC-SHA256
of the body with ``IMAGEREC_CALLBACK_SECRET`` so receivers can check it came from us. The body
of one image is the same on every attempt, and so is its signature.

Durability. The results agent produces each result that has a ``callback_url`` to the
``image-callbacks`` topic; the callbacks agent (``agents/callbacks.py``) delivers it and acks
the message only once delivery ended (delivered, refused, or given up). A worker killed
during a backoff therefore leaves the message uncommitted, and whichever worker owns the
partition next delivers it, resuming the attempt count from the delivery state.

One deliverer at a time: a partition can move while a delivery is in its backoff (a worker
restarts, the group rebalances) and then two workers hold the same message. Each delivery
first claims a lease in Redis (renewed while it runs, expiring ``LEASE_S`` after its holder
died); the other one waits until the delivery ended, or until the lease expired and it can
take over, and only then acks its copy. If Redis is down the delivery goes ahead anyway:
at least once beats not at all.

Delivery state (attempts, last status, outcome) is kept in Redis next to the result, with
the same TTL, and shown by ``GET /v1/images/{id}`` as ``delivery``. Before each attempt the
target is vetted again (``app.netguard``: DNS answers can change), the connection goes only
to the vetted addresses, and redirects are never followed.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import uuid
from typing import Any

import aiohttp

from app import cache, metrics, names, netguard
from app import results as res
from app.logs import get_logger
from app.settings import get_settings

log = get_logger(__name__)

FINAL_STATES = ("delivered", "refused", "blocked", "gave_up")
MAX_BACKOFF_S = 300.0
LEASE_S = 15  # a dead deliverer's lease expires after this; a live one renews it
_CLAIM = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2]) then return 1 end
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('EXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def sign(body: bytes, secret: str) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def body_of(result: dict[str, Any]) -> bytes:
    """The webhook body: the public view of the result with every stored label."""
    return res.encode(res.view(result, top_k=res.STORED_LABELS))


def backoff_s(attempts_done: int, base_s: float) -> float:
    """Wait before the next attempt after ``attempts_done`` failed ones: base, 2x, 4x ..."""
    if attempts_done <= 0:
        return 0.0
    return min(MAX_BACKOFF_S, base_s * 2 ** (attempts_done - 1))


# ---- delivery state ---------------------------------------------------------------------------

async def load_state(image_id: str) -> dict[str, Any]:
    raw = await cache.get_redis().get(names.redis_callback(image_id))
    return json.loads(raw) if raw else {}


async def save_state(image_id: str, state: dict[str, Any]) -> None:
    await cache.get_redis().set(names.redis_callback(image_id),
                                json.dumps(state, separators=(",", ":")),
                                ex=get_settings().result_ttl_s)


async def _save_quietly(image_id: str, state: dict[str, Any]) -> None:
    """Redis down must not stop a delivery; the state is a view of it, not its source."""
    try:
        await save_state(image_id, state)
    except Exception as exc:  # noqa: BLE001
        log.warning("callback state not saved", image_id=image_id, error=repr(exc)[:200])


async def claim(image_id: str, token: str) -> bool:
    """Take or renew the delivery lease; True if ours (or if Redis cannot say)."""
    try:
        return bool(await cache.get_redis().eval(_CLAIM, 1, names.redis_callback_lease(image_id),
                                                 token, LEASE_S))
    except Exception as exc:  # noqa: BLE001 - fail open: a duplicate beats a lost webhook
        log.warning("callback lease unavailable", image_id=image_id, error=repr(exc)[:200])
        return True


async def release(image_id: str, token: str) -> None:
    try:
        await cache.get_redis().eval(_RELEASE, 1, names.redis_callback_lease(image_id), token)
    except Exception:  # noqa: BLE001 - it expires by itself
        pass


async def _load_quietly(image_id: str) -> dict[str, Any] | None:
    try:
        return await load_state(image_id)
    except Exception as exc:  # noqa: BLE001 - unknown history
        log.warning("callback state unreadable", image_id=image_id, error=repr(exc)[:200])
        return None


async def _sleep_holding(image_id: str, token: str, seconds: float) -> bool:
    """Sleep, renewing the lease; False if it was lost meanwhile (another took over)."""
    loop = asyncio.get_running_loop()
    until = loop.time() + seconds
    while (left := until - loop.time()) > 0:
        await asyncio.sleep(min(left, LEASE_S / 3))
        if not await claim(image_id, token):
            return False
    return True


def public_state(state: dict[str, Any]) -> dict[str, Any]:
    """What ``GET /v1/images/{id}`` shows as ``delivery``."""
    keys = ("state", "attempts", "last_status", "last_error", "last_attempt_at",
            "next_attempt_at", "signature")
    return {k: state.get(k) for k in keys if k in state}


# ---- one attempt ------------------------------------------------------------------------------

class _Outcome:
    def __init__(self, status: int | None, error: str | None, final: str | None) -> None:
        self.status, self.error, self.final = status, error, final


async def _attempt(url: str, body: bytes, headers: dict[str, str], allow_nets: str,
                   timeout_s: float) -> _Outcome:
    try:
        target = await netguard.vet(url, allow_nets)
    except netguard.CallbackRefused as exc:
        return _Outcome(None, str(exc)[:300], "blocked")
    connector = aiohttp.TCPConnector(resolver=netguard.PinnedResolver(target),
                                     use_dns_cache=False, force_close=True)
    try:
        async with aiohttp.ClientSession(connector=connector, trust_env=False,
                                         timeout=aiohttp.ClientTimeout(total=timeout_s)) as s:
            async with s.post(url, data=body, headers=headers, allow_redirects=False) as resp:
                if resp.status < 300:
                    return _Outcome(resp.status, None, "delivered")
                if 300 <= resp.status < 400:
                    return _Outcome(resp.status, "redirects are not followed", "refused")
                if 400 <= resp.status < 500 and resp.status not in (408, 429):
                    return _Outcome(resp.status, None, "refused")
                return _Outcome(resp.status, None, None)
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        return _Outcome(None, repr(exc)[:200], None)


async def deliver(result: dict[str, Any], *, base_delay_s: float | None = None,
                  wait_s: float = 1.0) -> str:
    """Deliver one result's webhook; returns the final state.

    Resumes from the stored state: attempts already made count, a delivered or refused
    webhook is not sent again. Waits while another worker holds the delivery lease."""
    token = uuid.uuid4().hex
    while not await claim(result["id"], token):
        state = await _load_quietly(result["id"])
        if state and state.get("state") in FINAL_STATES:
            return str(state["state"])
        await asyncio.sleep(wait_s)  # another worker delivers it: wait for it to end or die
    try:
        # Read with the lease held: a deliverer that just finished saved its outcome first.
        state = await _load_quietly(result["id"])
        if state and state.get("state") in FINAL_STATES:
            return str(state["state"])
        outcome = await _deliver_holding(result, token, state or {}, base_delay_s)
    finally:
        await release(result["id"], token)
    if outcome is None:  # the lease was lost: whoever holds it now goes on; wait for it
        return await deliver(result, base_delay_s=base_delay_s, wait_s=wait_s)
    return outcome


async def _deliver_holding(result: dict[str, Any], token: str, state: dict[str, Any],
                           base_delay_s: float | None) -> str | None:
    """The attempts, with the lease held; None if the lease was lost during a backoff."""
    settings = get_settings()
    base = settings.callback_backoff_s if base_delay_s is None else base_delay_s
    image_id, url = result["id"], result["callback_url"]
    body = body_of(result)
    signature = sign(body, settings.callback_secret)
    headers = {"Content-Type": "application/json", "X-Imagerec-Signature": signature,
               "X-Imagerec-Image-Id": image_id}
    state.update(state="pending", signature=signature)
    state.setdefault("attempts", 0)
    while state["attempts"] < settings.callback_attempts:
        wait = backoff_s(state["attempts"], base)
        if wait:
            state["next_attempt_at"] = res.iso_in(wait)
            await _save_quietly(image_id, state)
            if not await _sleep_holding(image_id, token, wait):
                return None
        outcome = await _attempt(url, body, headers, settings.callback_allow_nets,
                                 settings.callback_timeout_s)
        state.update(attempts=state["attempts"] + 1, last_status=outcome.status,
                     last_error=outcome.error, last_attempt_at=res.now_iso(),
                     next_attempt_at=None)
        if outcome.final is not None:
            state["state"] = outcome.final
            await _save_quietly(image_id, state)
            metrics.CALLBACKS.labels(outcome=outcome.final).inc()
            if outcome.final != "delivered":
                log.warning("callback not delivered", image_id=image_id, outcome=outcome.final,
                            status=outcome.status, error=outcome.error)
            return outcome.final
        log.info("callback attempt failed", image_id=image_id, attempt=state["attempts"],
                 status=outcome.status, error=outcome.error)
        await _save_quietly(image_id, state)
    state["state"] = "gave_up"
    await _save_quietly(image_id, state)
    metrics.CALLBACKS.labels(outcome="gave_up").inc()
    log.warning("callback gave up", image_id=image_id, attempts=state["attempts"])
    return "gave_up"
