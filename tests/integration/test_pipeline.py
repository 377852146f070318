"""The product end to end on the real stack: upload, Kafka, batched inference, every store."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import uuid
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import pytest
import redis

from app import names
from app import results as res
from app.apikeys import DEV_KEY_NAME
from app.ids import new_image_id
from app.redisconn import redis_client
from app.settings import get_settings
from app.stack.layout import Layout
from app.stack.manage import ctl, rpc
from app.storage import ObjectStore, make_minio
from tests.conftest import CAT_CLASSES, ESPRESSO, jpeg_of, photo_variants
from tests.kafkatools import end_offsets, produce, read_from

T = TypeVar("T")

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def store(settings) -> ObjectStore:
    return ObjectStore(make_minio(settings))


@pytest.fixture(scope="module")
def rds(settings) -> redis.Redis:
    return redis_client(settings, asyncio=False)


def run_fresh(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` in a loop of its own, then close the loop-bound clients it opened (Redis,
    the Kafka producer), so that the next test's loop gets new ones."""
    async def main() -> T:
        from app.broker import get_publisher
        from app.cache import get_redis

        try:
            return await coro
        finally:
            await get_publisher().stop()
            await get_redis().aclose()
            get_redis.cache_clear()

    return asyncio.run(main())


def originals_since(store: ObjectStore, settings, started: float) -> set[str]:
    """Ids of the originals stored since ``started`` (epoch s): ids are ULIDs, so a listing
    of that key range finds them without reading the whole bucket."""
    from app.reconcile import _ulid_floor

    async def listed() -> set[str]:
        found: set[str] = set()
        async for keys in store.keys_between(settings.bucket_input, _ulid_floor(started),
                                             _ulid_floor(time.time() + 1)):
            found.update(keys)
        return found

    return run_fresh(listed())


def upload_all(gateway, photos: list[bytes], concurrency: int = 32) -> list[dict]:
    def one(data: bytes) -> dict:
        for _ in range(20):
            reply = gateway.upload(data)
            if reply.status in (200, 202):
                return reply.json()
            if reply.status in (429, 502, 503):  # limited or a worker restarting: retry like a
                time.sleep(float(reply.headers.get("Retry-After", "0.5")))  # client would
                continue
            raise AssertionError(f"upload answered {reply.status}: {reply.body[:300]!r}")
        raise AssertionError("upload kept failing")

    with ThreadPoolExecutor(concurrency) as pool:
        return list(pool.map(one, photos))


def wait_all(gateway, ids: list[str], timeout_s: float = 180) -> dict[str, dict]:
    with ThreadPoolExecutor(16) as pool:
        return dict(zip(ids, pool.map(lambda i: gateway.wait_done(i, timeout_s), ids),
                        strict=True))


def test_real_photos_are_classified_correctly(gateway) -> None:
    cat = gateway.upload(jpeg_of("chelsea"))
    coffee = gateway.upload(jpeg_of("coffee"))
    assert cat.status in (200, 202) and coffee.status in (200, 202)
    cat_result = gateway.wait_done(cat.json()["id"])
    coffee_result = gateway.wait_done(coffee.json()["id"])
    assert cat_result["status"] == "done"
    assert cat_result["labels"][0]["class_id"] in CAT_CLASSES
    assert coffee_result["labels"][0]["class_id"] == ESPRESSO
    assert coffee_result["labels"][0]["score"] > 0.9
    assert cat_result["model"]["name"] == "efficientnet_lite0" and cat_result["model"]["version"]


def _upload_cache_counts(settings) -> dict[str, float]:
    import re
    import urllib.request

    from app.stack.services import worker_port

    counts = {"hit": 0.0, "miss": 0.0}
    for i in range(1, settings.workers + 1):
        url = f"http://127.0.0.1:{worker_port(settings, i)}/metrics"
        text = urllib.request.urlopen(url, timeout=5).read().decode()
        for m in re.finditer(r'imagerec_upload_cache_total\{outcome="(\w+)"\} (\S+)', text):
            counts[m.group(1)] += float(m.group(2))
    return counts


def test_workers_classify_their_own_uploads_from_memory(gateway, settings, store) -> None:
    """Ids are drawn into the accepting worker's partitions, so the classify agent skips the
    object-store read; the stored original and the result are unchanged by that."""
    before = _upload_cache_counts(settings)
    photos = photo_variants(40, seed=7000 + int(time.time()))
    ids = [a["id"] for a in upload_all(gateway, photos)]
    results = wait_all(gateway, ids)
    assert all(r["status"] == "done" for r in results.values())
    after = _upload_cache_counts(settings)
    hits, misses = after["hit"] - before["hit"], after["miss"] - before["miss"]
    # Random ids would hit about half the time (each worker consumes half the partitions).
    assert hits + misses >= len(ids) and hits >= 0.9 * len(ids), (hits, misses)
    for image_id, data in zip(ids[:5], photos[:5], strict=True):
        assert store.get_bytes(settings.bucket_input, names.original_key(image_id)) == data


def test_200_concurrent_uploads_end_done_everywhere(gateway, settings, store, rds) -> None:
    starts = {t: end_offsets(settings.kafka_bootstrap, t)
              for t in (settings.topic_uploads, settings.topic_results)}
    photos = photo_variants(200, seed=int(time.time()))
    accepted = upload_all(gateway, photos)
    ids = [a["id"] for a in accepted]
    assert len(set(ids)) == 200
    results = wait_all(gateway, ids)
    assert all(r["status"] == "done" for r in results.values()), [
        r for r in results.values() if r["status"] != "done"][:3]

    # "done" may come from the classification-results bucket before the results agent has
    # written Redis (it follows image-results, and can be a few seconds behind under load);
    # the cache copy must still come, with its TTL.
    deadline = time.monotonic() + 30
    while True:
        ttls = {i: rds.ttl(names.redis_result(i)) for i in ids}
        missing = [i for i, ttl in ttls.items() if ttl == -2]
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    for image_id in ids:
        ttl = ttls[image_id]
        assert 0 < ttl <= settings.result_ttl_s, (image_id, ttl)
        stored = json.loads(store.get_bytes(settings.bucket_results, names.result_key(image_id)))
        assert stored["labels"] == results[image_id]["labels"][: len(stored["labels"])] or \
            stored["labels"][:5] == results[image_id]["labels"]
        from app.pipeline import image_size

        assert image_size(store.get_bytes(settings.bucket_processed,
                                        names.processed_key(image_id))) == (224, 224)

    for topic, start in starts.items():
        records = read_from(settings.kafka_bootstrap, topic, start,
                            lambda recs: {r.key.decode() for r in recs if r.key} >= set(ids),
                            timeout_s=30)
        seen = {r.key.decode() for r in records if r.key}
        assert set(ids) <= seen, f"{topic} lacks {len(set(ids) - seen)} ids"


def test_after_redis_flush_results_come_from_table_or_storage(gateway, rds) -> None:
    photos = photo_variants(20, seed=12345 + int(time.time()))
    ids = [a["id"] for a in upload_all(gateway, photos)]
    before = wait_all(gateway, ids)
    for image_id in ids:  # wait until the results agent has cached them
        deadline = time.monotonic() + 10
        while gateway.get(f"/v1/images/{image_id}").json().get("source") != "redis":
            assert time.monotonic() < deadline
            time.sleep(0.2)
    rds.flushdb()
    tiers = set()
    for image_id in ids:
        reply = gateway.get(f"/v1/images/{image_id}")
        assert reply.status == 200
        after = reply.json()
        tiers.add(after.pop("source"))
        expected = dict(before[image_id])
        expected.pop("source")
        assert after == expected
    assert tiers <= {"table", "storage"} and tiers, tiers
    assert "table" in tiers, "the table tier never answered"


def test_same_image_twice_is_classified_once(gateway) -> None:
    data = photo_variants(1, seed=int(time.time() * 1000) % 100000)[0]
    first = gateway.upload(data)
    assert first.status == 202
    done = gateway.wait_done(first.json()["id"])
    time.sleep(0.5)  # the results agent writes the dedup key right after the result
    second = gateway.upload(data)
    assert second.status == 200, second.body
    body = second.json()
    assert body["status"] == "done"
    assert body["id"] == done["id"] and body["labels"] == done["labels"]


def _worker_pid(name: str) -> int:
    layout = Layout.from_settings(get_settings())
    return next(p["pid"] for p in rpc(layout).supervisor.getAllProcessInfo()
                if p["name"] == name)


def test_worker_killed_mid_run_loses_nothing(gateway, settings) -> None:
    start = end_offsets(settings.kafka_bootstrap, settings.topic_results)
    photos = photo_variants(500, seed=777 + int(time.time()))
    with ThreadPoolExecutor(1) as side:
        uploading = side.submit(upload_all, gateway, photos, 16)
        time.sleep(2.0)
        victim = _worker_pid("worker-2")
        os.kill(victim, signal.SIGKILL)  # supervisord restarts it
        accepted = uploading.result(timeout=600)
    ids = [a["id"] for a in accepted]
    assert len(set(ids)) == 500
    # Done before any of them is old enough for the reconciler: Kafka redelivered what the
    # dead worker had not finished, because no batch is acked before its results are sent.
    # The reconciler may finish some of them: faust-streaming acks the messages a stream
    # skips during a rebalance, so a restart that lands between two rebalances can commit
    # past events nobody processed (docs/OPERATIONS.md, "Known issues").
    results = wait_all(gateway, ids, timeout_s=300)
    assert all(r["status"] == "done" for r in results.values())
    assert _worker_pid("worker-2") != victim

    records = read_from(settings.kafka_bootstrap, settings.topic_results, start,
                        lambda recs: {r.key.decode() for r in recs if r.key} >= set(ids),
                        timeout_s=60)
    by_id: dict[str, set[str]] = {}
    for rec in records:
        result = res.decode(rec.value)
        if result["id"] in results:
            by_id.setdefault(result["id"], set()).add(
                json.dumps([(lab["class_id"], lab["score"]) for lab in result["labels"]]))
    assert set(by_id) == set(ids)
    assert all(len(v) == 1 for v in by_id.values()), "an image got two different results"


def test_garbage_and_missing_objects_do_not_stop_the_agent(gateway, settings) -> None:
    dlq_start = end_offsets(settings.kafka_bootstrap, settings.topic_dlq)
    garbage = b"\x00\xffnot json at all " + uuid.uuid4().bytes
    missing = res.UploadEvent(id=new_image_id(), sha256="0" * 64, format="jpeg", size=10,
                              created_at=res.now_iso(), tenant=DEV_KEY_NAME)
    produce(settings.kafka_bootstrap, settings.topic_uploads,
            [(b"garbage", garbage), (missing.id.encode(), missing.to_bytes())])
    after = gateway.upload(photo_variants(1, seed=int(time.time()) % 9999 + 5)[0])
    assert after.status == 202
    assert gateway.wait_done(after.json()["id"])["status"] == "done"

    failed = gateway.wait_done(missing.id)  # the result exists though no original ever did
    assert failed["status"] == "failed" and failed["error"]["code"] == "missing_original"
    records = read_from(settings.kafka_bootstrap, settings.topic_dlq, dlq_start,
                        lambda recs: any(r.value == garbage for r in recs), timeout_s=30)
    dead = [r for r in records if r.value == garbage]
    assert dead and dict(dead[0].headers).get("error", b"").startswith(b"not JSON")


def test_minio_down_answers_503_and_queued_events_complete_later(gateway, settings, store) -> None:
    # Originals stored and events queued just before the outage (as the upload path does).
    started = time.time()
    photos = photo_variants(5, seed=4242 + int(time.time()))
    events = []
    for data in photos:
        import hashlib

        event = res.UploadEvent(id=new_image_id(), sha256=hashlib.sha256(data).hexdigest(),
                                format="jpeg", size=len(data), created_at=res.now_iso(),
                                tenant=DEV_KEY_NAME)  # the development key's tenant
        store.put_bytes(settings.bucket_input, names.original_key(event.id), data,
                        "image/jpeg")
        events.append(event)
    ctl("stop", "minio")
    try:
        produce(settings.kafka_bootstrap, settings.topic_uploads,
                [(e.id.encode(), e.to_bytes()) for e in events])
        reply = gateway.upload(photo_variants(1, seed=99 + int(time.time()))[0])
        assert reply.status == 503, reply.body
        assert reply.headers.get("Retry-After")
        assert reply.json()["error"]["code"] == "dependency_unavailable"
        time.sleep(3)
        for e in events:  # nothing can finish while the store is down
            status = gateway.get(f"/v1/images/{e.id}").status
            assert status in (404, 503), status
    finally:
        ctl("start", "minio")
    results = wait_all(gateway, [e.id for e in events], timeout_s=120)
    assert all(r["status"] == "done" for r in results.values()), results
    # Nothing stored half-way: the refused upload left no original beside the five.
    assert originals_since(store, settings, started) == {e.id for e in events}


def test_kafka_down_answers_503_and_leaves_no_original(gateway, settings, store) -> None:
    """The event cannot be produced: the client gets 503 with Retry-After (a retry is safe),
    and the original stored a moment before is removed again."""
    started = time.time()
    ctl("stop", "kafka")
    try:
        reply = gateway.upload(photo_variants(1, seed=77 + int(time.time()))[0])
        assert reply.status == 503, reply.body
        assert reply.headers.get("Retry-After")
        assert reply.json()["error"]["code"] == "dependency_unavailable"
        assert originals_since(store, settings, started) == set()
    finally:
        ctl("start", "kafka")
    deadline = time.monotonic() + 120
    while gateway.get("/readyz", key=False).status != 200:
        assert time.monotonic() < deadline, "the stack did not recover from the Kafka stop"
        time.sleep(0.5)


def test_bad_uploads_get_clear_errors(gateway) -> None:
    text = gateway.upload(b"hello, I am text", filename="x.jpg")
    assert text.status == 415 and text.json()["error"]["code"] == "unsupported_format"
    empty = gateway.upload(b"", filename="empty.jpg")
    assert empty.status == 422 and empty.json()["error"]["code"] == "undecodable"
    truncated = gateway.upload(jpeg_of("chelsea")[:200])
    assert truncated.status in (202, 422)
    if truncated.status == 202:  # the header was fine; decoding fails in the worker
        result = gateway.wait_done(truncated.json()["id"])
        assert result["status"] == "failed" and result["error"]["code"] == "undecodable"
    unknown = gateway.get(f"/v1/images/{new_image_id()}")
    assert unknown.status == 404 and unknown.json()["error"]["code"] == "not_found"
    assert gateway.get("/v1/images/not-an-id").status == 404


def test_many_files_in_one_request_and_sync_classify(gateway) -> None:
    import urllib3

    photos = photo_variants(3, seed=31337 + int(time.time()))
    fields = [("file", (f"p{i}.jpg", p, "image/jpeg")) for i, p in enumerate(photos)]
    fields.append(("file", ("bad.jpg", b"not an image", "image/jpeg")))
    body, ctype = urllib3.encode_multipart_formdata(fields)
    reply = gateway.post_raw("/v1/images", body, ctype)
    assert reply.status == 202
    items = reply.json()
    assert len(items) == 4 and all("id" in it for it in items[:3])
    assert items[3]["error"]["code"] == "unsupported_format"

    sync = gateway.post_raw("/v1/classify", jpeg_of("coffee"), "image/jpeg")
    assert sync.status == 200
    assert sync.json()["labels"][0]["class_id"] == ESPRESSO


def test_models_and_metrics(gateway, settings) -> None:
    models = gateway.get("/v1/models").json()
    assert models["default"] == "efficientnet_lite0"
    import urllib.request

    port = settings.web_port  # /metrics is not on the public listener; read a worker directly
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    for metric in ("imagerec_images_received_total", "imagerec_images_classified_total",
                   "imagerec_batch_size_bucket", "imagerec_inference_seconds_bucket",
                   "imagerec_end_to_end_seconds_bucket", "imagerec_retrievals_total",
                   "imagerec_consumer_lag"):
        assert metric in text, metric


def test_model_input_is_served_as_a_keyed_jpeg(gateway) -> None:
    """``links.input`` is what the page's gallery shows for images it did not upload."""
    import io

    from PIL import Image

    reply = gateway.upload(jpeg_of("chelsea"), filename="chelsea.jpg")
    assert reply.status in (200, 202), reply.body[:300]  # 200: already classified earlier
    image_id = reply.json()["id"]
    result = gateway.wait_done(image_id)
    assert result["status"] == "done"
    link = result["links"]["input"]
    assert link == f"/v1/images/{image_id}/input"

    thumb = gateway.get(link)
    assert thumb.status == 200, thumb.body[:300]
    assert thumb.headers["Content-Type"] == "image/jpeg"
    assert thumb.headers["Cache-Control"] == "private, max-age=86400"
    assert "nosniff" in thumb.headers["X-Content-Type-Options"]
    with Image.open(io.BytesIO(thumb.body)) as img:
        assert img.format == "JPEG" and img.size == (224, 224) and img.mode == "RGB"

    unknown = gateway.get(f"/v1/images/{new_image_id()}/input")
    assert unknown.status == 404 and unknown.json()["error"]["code"] == "not_found"
    assert gateway.get("/v1/images/not-an-id/input").status == 404
    anonymous = gateway.get(link, key=False)
    assert anonymous.status == 401 and anonymous.json()["error"]["code"] == "unauthorized"


def test_reconciler_enqueues_an_original_that_never_got_an_event(gateway, settings,
                                                                 store) -> None:
    """The gap between the two upload writes: an original stored, its event never sent."""
    import hashlib

    from ulid import ULID

    from app.reconcile import find_orphans, reconcile_once

    data = photo_variants(1, seed=5150 + int(time.time()))[0]
    old = str(ULID.from_timestamp(time.time() - settings.reconcile_grace_s - 60))
    store.put_bytes(settings.bucket_input, names.original_key(old), data, "image/jpeg",
                    {"sha256": hashlib.sha256(data).hexdigest(), "created-at": res.now_iso(),
                     "tenant": DEV_KEY_NAME})
    assert gateway.get(f"/v1/images/{old}").json()["status"] == "queued"

    until = time.time() - settings.reconcile_grace_s
    since = until - 3600
    assert run_fresh(reconcile_once(store, settings, since, until)) >= 1
    result = gateway.wait_done(old)
    assert result["status"] == "done" and result["labels"]
    assert result["tenant"] == DEV_KEY_NAME  # the reconciler keeps the uploader's tenant
    assert old not in run_fresh(find_orphans(store, settings, since, until))


def test_reconciler_pass_lists_only_its_range(settings, store) -> None:
    """A pass sees the originals named inside [since, until) and nothing before or after."""
    from ulid import ULID

    from app.reconcile import find_orphans

    until = time.time() - settings.reconcile_grace_s
    # Behind the running leader's mark (it passes every interval), or far ahead of it, so that
    # only this test's calls see these fake originals.
    inside = str(ULID.from_timestamp(until - settings.reconcile_interval_s - 30))
    before = str(ULID.from_timestamp(until - 3000))
    after = str(ULID.from_timestamp(until + 300))
    for image_id in (inside, before, after):
        store.put_bytes(settings.bucket_input, names.original_key(image_id), b"\xff\xd8\xff",
                        "image/jpeg", {"sha256": "0" * 64, "created-at": res.now_iso()})
    try:
        since = until - settings.reconcile_interval_s - 60
        found = set(run_fresh(find_orphans(store, settings, since, until)))
        assert inside in found and before not in found and after not in found
        wide = set(run_fresh(find_orphans(store, settings, until - 3600, until)))
        assert {inside, before} <= wide and after not in wide
    finally:
        for image_id in (inside, before, after):
            store.delete(settings.bucket_input, names.original_key(image_id))


def test_leader_records_where_its_reconciler_pass_stopped(settings, rds) -> None:
    """The mark a new leader catches up from: set by every pass, at now - grace."""
    # One tick, plus the pass itself: the flush above lost the mark, so the next pass looks
    # back a day, 25 s on a dev stack holding 300k images per bucket.
    slack = settings.reconcile_interval_s + 60
    deadline = time.time() + slack
    mark = None
    while time.time() < deadline:
        raw = rds.get(names.REDIS_RECONCILED_UNTIL)
        mark = float(raw) if raw else None
        if mark and mark > time.time() - settings.reconcile_grace_s - slack:
            break
        time.sleep(1)
    assert mark is not None, "no reconciler pass recorded its mark"
    assert time.time() - settings.reconcile_grace_s - slack < mark
    assert mark <= time.time() - settings.reconcile_grace_s + 1


def test_callback_url_receives_the_signed_result(gateway, settings, receiver) -> None:  # noqa: ANN001
    import hashlib
    import hmac

    import urllib3

    fields = {"file": ("p.jpg", photo_variants(1, seed=8080 + int(time.time()))[0],
                       "image/jpeg"), "callback_url": receiver.url}
    body, ctype = urllib3.encode_multipart_formdata(fields)
    reply = gateway.post_raw("/v1/images", body, ctype)
    assert reply.status == 202, reply.body
    image_id = reply.json()["id"]
    headers, payload = receiver.received.get(timeout=60)
    result = json.loads(payload)
    assert result["id"] == image_id and result["status"] == "done"
    assert "callback_url" not in result
    expected = "sha256=" + hmac.new(settings.callback_secret.encode(), payload,
                                    hashlib.sha256).hexdigest()
    assert headers["X-Imagerec-Signature"] == expected


def test_event_stream_replays_what_a_reconnecting_client_missed(gateway) -> None:
    import urllib3

    first, second, third = photo_variants(3, seed=2718 + int(time.time()))
    a = gateway.wait_done(gateway.upload(first).json()["id"])["id"]
    b = gateway.wait_done(gateway.upload(second).json()["id"])["id"]
    c = gateway.wait_done(gateway.upload(third).json()["id"])["id"]
    time.sleep(0.5)  # the results agent has pushed them to the recent list
    own = urllib3.PoolManager(retries=False)  # an endless stream must not return to a shared pool
    resp = own.request(
        "GET", f"{gateway.base}/v1/events", preload_content=False,
        headers={"Authorization": f"Bearer {gateway.api_key}", "Last-Event-ID": a},
        timeout=urllib3.Timeout(connect=5, read=10))
    seen: list[str] = []
    try:
        assert resp.status == 200
        buffer = b""
        deadline = time.monotonic() + 10
        while not {b, c} <= set(seen) and time.monotonic() < deadline:
            buffer += resp.read1(65536) if hasattr(resp, "read1") else resp.read(1024)
            *lines, buffer = buffer.split(b"\n")
            seen += [line[4:].decode().strip() for line in lines if line.startswith(b"id: ")]
    finally:
        resp.close()
        own.clear()
    assert {b, c} <= set(seen), seen
    assert a not in seen
    assert seen.index(b) < seen.index(c)  # oldest first


def test_event_stream_subscription_is_in_place_when_subscribe_returns() -> None:
    """A worker's first stream subscriber must not get its stream before Redis has the
    subscription: the web page reads the recent list once the stream opens, and a result
    published in between would be in neither."""
    from app.cache import get_redis
    from web.hub import Hub

    channel = f"{names.REDIS_CHANNEL}:test:{uuid.uuid4().hex}"
    sent = res.queued(res.UploadEvent(id=new_image_id(), sha256="0" * 64, format="jpeg",
                                      size=1, created_at=res.now_iso()))

    async def first_message() -> dict:
        hub = Hub(channel)
        queue = await hub.subscribe()
        try:
            await get_redis().publish(channel, res.encode(sent))  # at once, as a result may be
            async with asyncio.timeout(5):
                return await queue.get()
        finally:
            hub.unsubscribe(queue)
            hub._task.cancel()

    assert run_fresh(first_message()) == sent

