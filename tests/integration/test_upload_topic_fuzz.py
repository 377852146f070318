"""A burst of random bytes on ``image-uploads``: every message lands in the DLQ, nothing else
happens, and the agents keep serving real uploads (figures in docs/SECURITY.md)."""

from __future__ import annotations

import os
import random
import time

import pytest

from tests.conftest import photo_variants
from tests.kafkatools import end_offsets, produce, read_from

pytestmark = pytest.mark.integration

BURST = int(os.environ.get("IMAGEREC_FUZZ_BURST", "500"))


def test_random_bytes_all_go_to_the_dlq_and_the_agent_keeps_serving(gateway, settings) -> None:  # noqa: ANN001
    rng = random.Random(os.urandom(8))
    # Random lengths, including empty; a leading 0xff byte makes every one invalid UTF-8, so
    # none can be a JSON event, however unlikely that already is.
    burst = [b"" if i == 0 else b"\xff" + rng.randbytes(rng.randint(0, 4096))
             for i in range(BURST)]
    assert len(set(burst)) == BURST
    dlq_start = end_offsets(settings.kafka_bootstrap, settings.topic_dlq)
    started = time.monotonic()
    produce(settings.kafka_bootstrap, settings.topic_uploads,
            [(None if i % 2 else str(i).encode(), value) for i, value in enumerate(burst)])
    wanted = set(burst)
    records = read_from(settings.kafka_bootstrap, settings.topic_dlq, dlq_start,
                        lambda recs: wanted <= {r.value for r in recs}, timeout_s=120)
    drained = time.monotonic() - started
    dead = {r.value for r in records}
    assert wanted <= dead, f"{len(wanted - dead)} of {BURST} random messages missing in the DLQ"
    for record in records:
        headers = dict(record.headers)
        assert headers.get("source-topic") == settings.topic_uploads.encode()
        assert headers.get("error")
    print(f"{BURST} random messages: all in the DLQ after {drained:.1f}s")
    # Still serving: a real upload is classified.
    reply = gateway.upload(photo_variants(1, seed=int(time.time()))[0])
    assert reply.status == 202, reply.body[:300]
    assert gateway.wait_done(reply.json()["id"])["status"] == "done"


def test_the_fuzzed_tiff_is_a_clean_422_and_a_failed_result(gateway) -> None:  # noqa: ANN001
    """The input atheris found (tests/unit/test_imaging.py) through the real paths: the sync
    classifier answers 422, an upload ends as a failed result, nothing answers 5xx."""
    from tests.unit.test_imaging import TIFF_ASCII_STRIP_OFFSETS

    sync = gateway.post_raw("/v1/classify", TIFF_ASCII_STRIP_OFFSETS, "image/tiff")
    assert sync.status == 422 and sync.json()["error"]["code"] == "undecodable", sync.body
    fn = gateway.post_raw("/function/image-classifier", TIFF_ASCII_STRIP_OFFSETS, "image/tiff")
    assert fn.status == 422, fn.body
    up = gateway.post_raw("/v1/images", TIFF_ASCII_STRIP_OFFSETS, "image/tiff")
    assert up.status in (200, 202), up.body
    result = gateway.wait_done(up.json()["id"])
    assert result["status"] == "failed" and result["error"]["code"] == "undecodable", result
