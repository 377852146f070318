"""Re-classification on the real stack: ``imagerec reclassify --model M`` over stored images
completes, every image then has both models' answers (the newest served by default, the
other with ``?model=``), and running the same command again resumes a finished job without
classifying anything twice."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from app.model import efficientnet_lite0
from app.model.convert import int8_version
from tests.conftest import photo_variants

pytestmark = pytest.mark.integration
COUNT = int(os.environ.get("IMAGEREC_TEST_RECLASSIFY_COUNT", "60"))
NAME = efficientnet_lite0.NAME
VERSIONS = (efficientnet_lite0.VERSION, int8_version(efficientnet_lite0.VERSION))


def _cli(settings, key: str, *args: str) -> subprocess.CompletedProcess:  # noqa: ANN001
    env = {**os.environ, "IMAGEREC_API_KEY": key, "IMAGEREC_GATEWAY_URL": settings.gateway_url}
    cli = str(Path(sys.executable).parent / "imagerec")
    return subprocess.run([cli, "reclassify", *args, "--json"],
                          capture_output=True, text=True, env=env, timeout=600, check=False)


def test_reclassify_keeps_both_models_answers(settings, make_tenant_key) -> None:
    owner = make_tenant_key("reclass", tenant="reclass")
    admin = make_tenant_key("reclass-admin", scopes="admin")
    since = (datetime.now(UTC) - timedelta(seconds=1)).isoformat(timespec="milliseconds")
    photos = photo_variants(COUNT, seed=int(time.time()))
    with ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(owner.gateway.upload, photos))
    assert all(r.status == 202 for r in replies), [r.status for r in replies]
    ids = [r.json()["id"] for r in replies]
    with ThreadPoolExecutor(8) as pool:
        first = dict(zip(ids, pool.map(owner.gateway.wait_done, ids), strict=True))
    assert all(r["status"] == "done" for r in first.values())
    served = {r["model"]["version"] for r in first.values()}
    assert len(served) == 1 and served <= set(VERSIONS), served
    [old] = served
    [new] = [v for v in VERSIONS if v != old]

    started = time.monotonic()
    proc = _cli(settings, admin.key, "--model", f"{NAME}:{new}", "--since", since,
                "--rate", "100")
    assert proc.returncode == 0, proc.stderr[-2000:]
    job = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"\nreclassify of {COUNT} images: {time.monotonic() - started:.1f} s, job {job}")
    assert job["state"] == "done" and job["enqueued"] == COUNT == job["finished"]

    for image_id in ids:
        now = owner.gateway.get(f"/v1/images/{image_id}").json()
        assert now["status"] == "done" and now["model"]["version"] == new, now
        assert [(h["version"], h["status"]) for h in now["history"]] == \
            [(old, "done"), (new, "done")]
        assert now["reclassify_job"] == job["id"]
        assert now["created_at"] == first[image_id]["created_at"]
        before = owner.gateway.get(f"/v1/images/{image_id}", model=f"{NAME}:{old}")
        assert before.status == 200, before.body[:300]
        assert before.json()["model"]["version"] == old
        assert before.json()["labels"] == first[image_id]["labels"]
        assert owner.gateway.get(f"/v1/images/{image_id}",
                                 model="mobilenet_v2").status == 404
    # the models agree on most photos' top label (int8 against fp32 of one network)
    agree = sum(owner.gateway.get(f"/v1/images/{i}").json()["labels"][0]["class_id"]
                == first[i]["labels"][0]["class_id"] for i in ids)
    assert agree >= 0.8 * COUNT, agree

    # the same command again resumes the finished job: nothing is classified twice
    again = _cli(settings, admin.key, "--model", f"{NAME}:{new}", "--since", since)
    assert again.returncode == 0, again.stderr[-2000:]
    resumed = json.loads(again.stdout.strip().splitlines()[-1])
    assert resumed["id"] == job["id"] and resumed["finished"] == COUNT
    after = owner.gateway.get(f"/v1/images/{ids[0]}").json()
    assert after["completed_at"] == owner.gateway.get(f"/v1/images/{ids[0]}").json()[
        "completed_at"]
    # only admins may start jobs
    denied = _cli(settings, owner.key, "--model", f"{NAME}:{new}")
    assert denied.returncode == 4, denied.stderr


def test_reclassify_a_drop_prefix_only(settings, make_tenant_key) -> None:
    """``--prefix``: only the images dropped under that source-key prefix (app.drops)."""
    import io
    import uuid

    from app.storage import make_minio
    from tests.integration.test_drops import _wait_final_by_source

    owner = make_tenant_key("reclass-prefix", tenant="reclass-prefix")
    admin = make_tenant_key("reclass-prefix-admin", scopes="admin")
    since = datetime.now(UTC).isoformat(timespec="milliseconds")
    client = make_minio(settings)
    base = f"{settings.drop_prefix}{owner.tenant}/{uuid.uuid4().hex[:6]}"
    keys = [f"{base}/cam-a/{i}.jpg" for i in range(5)] + [f"{base}/cam-b/{i}.jpg"
                                                         for i in range(3)]
    for key, data in zip(keys, photo_variants(len(keys), seed=int(time.time()) + 3),
                         strict=True):
        client.put_object(settings.bucket_input, key, io.BytesIO(data), len(data),
                          content_type="image/jpeg")
    final = _wait_final_by_source(owner.gateway, keys, timeout_s=120)
    [old] = {r["model"]["version"] for r in final.values()}
    [new] = [v for v in VERSIONS if v != old]
    proc = _cli(settings, admin.key, "--model", f"{NAME}:{new}", "--since", since,
                "--prefix", f"{base}/cam-a/", "--rate", "100")
    assert proc.returncode == 0, proc.stderr[-2000:]
    job = json.loads(proc.stdout.strip().splitlines()[-1])
    assert (job["state"], job["total"], job["finished"]) == ("done", 5, 5), job
    for key, result in final.items():
        now = owner.gateway.get(f"/v1/images/{result['id']}").json()
        versions = [h["version"] for h in now.get("history", [])]
        assert versions == ([old, new] if "/cam-a/" in key else []), (key, now)


def test_a_job_whose_runner_died_is_resumed_from_its_position(settings, make_tenant_key
                                                              ) -> None:
    """A runner that died after enqueuing half of a job (its position recorded, its lease
    gone) is taken over by a worker, which enqueues only the rest."""
    import asyncio

    from app import reclassify
    from app.cache import get_redis
    from app.names import redis_reclassify_job
    from tests.kafkatools import produce

    owner = make_tenant_key("reclass-resume", tenant="reclass-resume")
    since = datetime.now(UTC).isoformat(timespec="milliseconds")
    replies = [owner.gateway.upload(p) for p in photo_variants(10, seed=int(time.time()) + 5)]
    ids = sorted(r.json()["id"] for r in replies)
    first = {i: owner.gateway.wait_done(i) for i in ids}
    [old] = {r["model"]["version"] for r in first.values()}
    [new] = [v for v in VERSIONS if v != old]
    model = f"{NAME}:{new}"

    async def died_halfway() -> str:
        job_id, _ = await reclassify.create_job(reclassify.JobSpec(model, since), rate=100,
                                                restart=True)
        # what the dead runner had done: sent five events and checkpointed after them
        await asyncio.to_thread(produce, settings.kafka_bootstrap, settings.topic_reclassify,
                                [(i.encode(), reclassify.encode_event(i, model, job_id))
                                 for i in ids[:5]])
        await get_redis().hset(redis_reclassify_job(job_id),
                               mapping={"position": ids[4], "enqueued": "5", "total": "10"})
        return job_id

    job_id = asyncio.run(died_halfway())
    get_redis.cache_clear()  # its connections belong to the loop that just closed

    async def wait_done() -> dict:
        deadline = time.monotonic() + 90  # the takeover check runs every 15 s
        while time.monotonic() < deadline:
            job = await reclassify.load_job(job_id)
            if job and job["state"] == "done":
                return job
            await asyncio.sleep(1)
        raise AssertionError(f"job not resumed: {await reclassify.load_job(job_id)}")

    job = asyncio.run(wait_done())
    get_redis.cache_clear()
    assert (job["enqueued"], job["finished"], job["total"]) == (10, 10, 10), job
    for image_id in ids:
        now = owner.gateway.get(f"/v1/images/{image_id}").json()
        assert [h["version"] for h in now["history"]] == [old, new], now
