"""Real dependency checks for ``/readyz`` and for the stack scripts.

Each check opens a fresh, short-lived connection with a tight timeout, so a dependency that
went down and came back is seen as up again without restarting the worker.
"""

from __future__ import annotations

import asyncio
from typing import Any

from app.settings import Settings

CHECK_TIMEOUT_S = 3.0


async def check_kafka(settings: Settings, *, require_topics: bool = True) -> dict[str, Any]:
    """Fetch cluster metadata and, optionally, confirm our topics exist."""
    from aiokafka import AIOKafkaClient

    client = AIOKafkaClient(bootstrap_servers=settings.kafka_servers,
                            request_timeout_ms=int(CHECK_TIMEOUT_S * 1000),
                            metadata_max_age_ms=1000)
    try:
        await asyncio.wait_for(client.bootstrap(), CHECK_TIMEOUT_S)
        meta = await asyncio.wait_for(client.fetch_all_metadata(), CHECK_TIMEOUT_S)
        if not meta.brokers():
            return {"ok": False, "detail": "no brokers in metadata"}
        if require_topics:
            missing = [t for t in settings.topics if t not in meta.topics()]
            if missing:
                return {"ok": False, "detail": f"missing topics: {', '.join(missing)}"}
        return {"ok": True, "detail": f"{len(meta.brokers())} broker(s)",
                "brokers": len(meta.brokers())}
    except Exception as exc:  # noqa: BLE001 - the reason is reported, not raised
        return {"ok": False, "detail": f"{type(exc).__name__}: {exc}"[:200]}
    finally:
        try:
            await client.close()
        except Exception:  # noqa: BLE001
            pass


def _check_s3_sync(settings: Settings) -> dict[str, Any]:
    from app.storage import make_minio

    client = make_minio(settings, timeout_s=CHECK_TIMEOUT_S)
    missing = [b for b in settings.buckets if not client.bucket_exists(b)]
    if missing:
        return {"ok": False, "detail": f"missing buckets: {', '.join(missing)}"}
    return {"ok": True, "detail": f"{len(settings.buckets)} buckets"}


async def check_s3(settings: Settings) -> dict[str, Any]:
    try:
        return await asyncio.wait_for(asyncio.to_thread(_check_s3_sync, settings),
                                      CHECK_TIMEOUT_S * 3)
    except Exception as exc:  # noqa: BLE001
        return {"ok": False, "detail": f"{type(exc).__name__}: {exc}"[:200]}


async def check_redis(settings: Settings) -> dict[str, Any]:
    from app.redisconn import redis_client

    client = redis_client(settings, socket_timeout=CHECK_TIMEOUT_S,
                          socket_connect_timeout=CHECK_TIMEOUT_S)
    try:
        await client.ping()
        return {"ok": True, "detail": "PONG"}
    except Exception as exc:  # noqa: BLE001
        return {"ok": False, "detail": f"{type(exc).__name__}: {exc}"[:200]}
    finally:
        await client.aclose()


def rss_mb(pid: int | str = "self") -> float | None:
    """Resident memory of a process in MB (Linux ``/proc``); None if it is gone."""
    from pathlib import Path

    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        return None
    return None


async def readiness(settings: Settings) -> dict[str, Any]:
    """All checks concurrently; ``ready`` only when every dependency is up."""
    kafka, s3, redis_ = await asyncio.gather(
        check_kafka(settings), check_s3(settings), check_redis(settings)
    )
    deps = {"kafka": kafka, "minio": s3, "redis": redis_}
    down = [name for name, result in deps.items() if not result["ok"]]
    return {"ready": not down, "down": down, "dependencies": deps}
