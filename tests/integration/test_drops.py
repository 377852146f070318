"""Uploads straight to storage, on the real stack: a plain S3 client writes objects under the
drop prefix, MinIO announces them on ``image-drops``, the drops agent turns them into
uploads, and the results are found by id and by source key.
"""

from __future__ import annotations

import io
import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from app import names
from app.storage import make_minio
from tests.conftest import CAT_CLASSES, Gateway, jpeg_of, photo_variants
from tests.kafkatools import end_offsets, produce, read_from

pytestmark = pytest.mark.integration


def _drop(client: Any, bucket: str, key: str, data: bytes, content_type: str) -> None:
    client.put_object(bucket, key, io.BytesIO(data), len(data), content_type=content_type)


def _by_source(gateway: Gateway, key: str) -> list[dict[str, Any]]:
    reply = gateway.get("/v1/images", source_key=key)
    assert reply.status == 200, (reply.status, reply.body[:300])
    return reply.json()["images"]


def _wait_final_by_source(gateway: Gateway, keys: list[str], timeout_s: float
                          ) -> dict[str, dict[str, Any]]:
    """Each key's (only) image once it is done or failed."""
    deadline = time.monotonic() + timeout_s
    final: dict[str, dict[str, Any]] = {}
    while time.monotonic() < deadline and len(final) < len(keys):
        with ThreadPoolExecutor(8) as pool:
            todo = [k for k in keys if k not in final]
            for key, images in zip(todo, pool.map(lambda k: _by_source(gateway, k), todo),
                                   strict=True):
                if images and images[0]["status"] in ("done", "failed"):
                    final[key] = images[0]
        if len(final) < len(keys):
            time.sleep(1.0)
    missing = [k for k in keys if k not in final]
    assert not missing, f"{len(missing)} drops not finished after {timeout_s}s: {missing[:3]}"
    return final


def test_a_folder_copied_into_the_drop_prefix_is_classified(settings, make_tenant_key) -> None:
    """100 real photos written with a plain S3 client all end done, are retrievable by id and
    by source key, carry their source key, and their drops are removed; a text file and a
    truncated JPEG end failed with reasons; another tenant sees none of them."""
    owner = make_tenant_key("drops", tenant="drops")
    other = make_tenant_key("drops-other", tenant="other")
    client = make_minio(settings)
    folder = f"{settings.drop_prefix}{owner.tenant}/camera-{uuid.uuid4().hex[:6]}/"
    photos = photo_variants(100, seed=int(uuid.uuid4().int % 2**32))
    keys = [f"{folder}photo {i:03d}.jpg" for i in range(len(photos))]  # a space: URL-encoded
    cat = jpeg_of("chelsea")
    bad = {f"{folder}notes.txt": (b"just some text, not an image\n", "text/plain"),
           f"{folder}truncated.jpg": (cat[: len(cat) // 3], "image/jpeg")}
    started = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda kv: _drop(client, settings.bucket_input, kv[0], kv[1],
                                       "image/jpeg"), zip(keys, photos, strict=True)))
    for key, (data, ctype) in bad.items():
        _drop(client, settings.bucket_input, key, data, ctype)

    final = _wait_final_by_source(owner.gateway, keys + list(bad), timeout_s=180)
    elapsed = time.monotonic() - started
    print(f"\n100 drops + 2 bad ones: all final {elapsed:.1f} s after the first PUT")
    for key in keys:
        result = final[key]
        assert result["status"] == "done", result
        assert result["source_key"] == key and result["tenant"] == owner.tenant
        by_id = owner.gateway.get(f"/v1/images/{result['id']}")
        assert by_id.status == 200 and by_id.json()["status"] == "done"
        assert by_id.json()["source_key"] == key
    notes, truncated = final[f"{folder}notes.txt"], final[f"{folder}truncated.jpg"]
    assert notes["status"] == "failed" and notes["error"]["code"] == "unsupported_format"
    assert truncated["status"] == "failed"
    assert truncated["error"]["code"] == "undecodable", truncated["error"]
    for result in (notes, truncated):
        assert owner.gateway.get(f"/v1/images/{result['id']}").json()["status"] == "failed"
    # one id per drop, all distinct; the photos were classified for real
    assert len({r["id"] for r in final.values()}) == len(final)
    chelsea_like = [final[k] for k, p in zip(keys, range(100), strict=True) if p % 7 == 0]
    assert sum(any(lab["class_id"] in CAT_CLASSES for lab in r["labels"][:3])
               for r in chelsea_like) >= len(chelsea_like) * 0.7
    # the drop prefix is an inbox: taken-in objects are gone, originals live on by id
    assert not list(client.list_objects(settings.bucket_input, prefix=folder, recursive=True))
    stat = client.stat_object(settings.bucket_input, names.original_key(final[keys[0]]["id"]))
    assert stat.size == len(photos[0])
    # another tenant finds nothing, by key or by id
    assert _by_source(other.gateway, keys[0]) == []
    assert other.gateway.get(f"/v1/images/{final[keys[0]]['id']}").status == 404


def test_a_drop_without_a_tenant_fails_and_only_admins_see_it(settings, make_tenant_key
                                                             ) -> None:
    admin = make_tenant_key("drops-admin", scopes="admin")
    tenant = make_tenant_key("drops-t", tenant="drops-t")
    key = f"{settings.drop_prefix}no-tenant-{uuid.uuid4().hex[:8]}.jpg"  # no <tenant>/ part
    _drop(make_minio(settings), settings.bucket_input, key, jpeg_of("coffee"), "image/jpeg")
    [result] = _wait_final_by_source(admin.gateway, [key], timeout_s=60).values()
    assert result["status"] == "failed" and result["error"]["code"] == "bad_drop_key"
    assert result["tenant"] == "" and result["sha256"] == ""
    assert _by_source(tenant.gateway, key) == []
    assert tenant.gateway.get(f"/v1/images/{result['id']}").status == 404


def test_a_redelivered_notification_does_not_classify_again(settings, make_tenant_key) -> None:
    """At-least-once: the same MinIO notification delivered a second time names the same
    image id and is skipped; the image keeps its one result."""
    owner = make_tenant_key("redeliver", tenant="redeliver")
    client = make_minio(settings)
    key = f"{settings.drop_prefix}{owner.tenant}/{uuid.uuid4().hex[:8]}.jpg"
    start = end_offsets(settings.kafka_bootstrap, settings.topic_drops)
    _drop(client, settings.bucket_input, key, photo_variants(1, seed=7)[0], "image/jpeg")
    records = read_from(settings.kafka_bootstrap, settings.topic_drops, start,
                        lambda recs: any(json.loads(r.value)["Key"].endswith(key)
                                         for r in recs))
    [notice] = [r for r in records if json.loads(r.value)["Key"].endswith(key)]
    assert notice.key == f"{settings.bucket_input}/{key}".encode()  # MinIO keys by object
    [first] = _wait_final_by_source(owner.gateway, [key], timeout_s=60).values()
    assert first["status"] == "done"

    results_start = end_offsets(settings.kafka_bootstrap, settings.topic_results)
    produce(settings.kafka_bootstrap, settings.topic_drops, [(notice.key, notice.value)])
    time.sleep(5)
    again = _by_source(owner.gateway, key)
    assert [r["id"] for r in again] == [first["id"]]
    assert again[0]["completed_at"] == first["completed_at"]
    later = read_from(settings.kafka_bootstrap, settings.topic_results, results_start,
                      lambda recs: False, timeout_s=2)
    assert not [r for r in later if r.key == first["id"].encode()], "classified twice"
