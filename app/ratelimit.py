"""Per-key rate limits set on a key (``imagerec keys create --rate-limit N``).

The gateway's nginx limit applies the same rate to every key and runs before the key is
known (limit_req precedes auth_request). A key's own, lower limit is therefore checked in
the auth call, shared by every worker through Redis: one counter per key per second
(INCR + EXPIRE in one round trip). Only keys that have a limit pay for it. If Redis is down
the check lets requests through (the gateway's limit still holds): Redis is a cache here too.
"""

from __future__ import annotations

import time

from app import cache, names
from app.logs import get_logger

log = get_logger(__name__)


async def allow(key_name: str, per_second: int) -> bool:
    """Count this request against the key's current second; False once over the limit."""
    second = int(time.time())
    counter = names.redis_rate(key_name, second)
    try:
        pipe = cache.get_redis().pipeline(transaction=True)
        pipe.incr(counter)
        pipe.expire(counter, 2)
        count, _ = await pipe.execute()
    except Exception as exc:  # noqa: BLE001 - fail open; nginx's limit still applies
        log.warning("per-key rate limit unavailable", error=repr(exc)[:200])
        return True
    return int(count) <= per_second
