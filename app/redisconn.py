"""One way to reach Redis for every process: directly, or through Sentinel.

With ``IMAGEREC_REDIS_SENTINELS`` set, clients ask the Sentinels for the current primary each
time they open a connection, so after a failover the next command goes to the promoted
replica without a restart; without it, ``redis_url`` is used as it is.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from app.settings import Settings


def _db(settings: Settings) -> int:
    path = urlsplit(settings.redis_url).path.strip("/")
    return int(path) if path.isdigit() else 0


def redis_client(settings: Settings, *, asyncio: bool = True, **options: Any) -> Any:
    """A Redis client (``redis.asyncio.Redis`` or, with ``asyncio=False``, ``redis.Redis``).

    ``options`` are connection options (timeouts, pool size); they apply to the primary's
    connections and, for their timeouts, to the Sentinel queries too, so a dead Sentinel
    costs no more than a dead primary."""
    if asyncio:
        import redis.asyncio as mod
        from redis.asyncio.sentinel import Sentinel
    else:
        import redis as mod
        from redis.sentinel import Sentinel
    if not settings.sentinels:
        return mod.Redis.from_url(settings.redis_url, **options)
    timeouts = {k: v for k, v in options.items()
                if k in ("socket_timeout", "socket_connect_timeout")}
    sentinel = Sentinel(settings.sentinels, sentinel_kwargs=timeouts)
    return sentinel.master_for(settings.redis_sentinel_master, db=_db(settings), **options)


def primary_address(settings: Settings, timeout_s: float = 2.0) -> tuple[str, int] | None:
    """Where the Sentinels say the primary is now (None without Sentinels)."""
    if not settings.sentinels:
        return None
    from redis.sentinel import Sentinel

    sentinel = Sentinel(settings.sentinels, sentinel_kwargs={"socket_timeout": timeout_s})
    return sentinel.discover_master(settings.redis_sentinel_master)
