"""The operator console (``/console`` and ``/v1/admin/console/``) on the real stack.

- only admin keys get its data (403 for the others, through the gateway and on the page);
- after a burst of uploads its throughput and latency charts, drawn from Prometheus, are not
  empty (a screenshot of it goes to docs/images/console.png for the README);
- a garbage message produced to ``image-uploads`` shows up in the dead-letter view with its
  error, and replaying it, edited into a valid event whose original the test stores, ends
  as a ``done`` result.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from app.trace import STAGE_NAMES
from tests.conftest import REPO, photo_variants
from tests.integration.test_web_page import CHROMIUM, CHROMIUM_ARGS, _wait_until_ready
from tests.kafkatools import produce

pytestmark = [pytest.mark.integration]

CONSOLE_GETS = ("alerts", "charts", "charts/throughput", "stream",
                "topics/image-uploads/messages", "dlq", "storage", "workers")
ARTIFACTS = REPO / "test-artifacts"


@pytest.fixture(scope="module")
def admin(settings, keystore):  # noqa: ANN001, ANN201
    """An admin key for the whole module (the page is driven with it)."""
    from app.apikeys import MISS_REFRESH_S
    from tests.conftest import Gateway, TenantKey

    name = f"test-console-{uuid.uuid4().hex[:8]}"
    key = keystore.create(name, tenant=name, scopes="admin")
    time.sleep(MISS_REFRESH_S + 0.1)
    yield TenantKey(name, name, key, Gateway(settings.gateway_url, key))
    keystore.delete(name)


def test_console_api_needs_an_admin_key(gateway, admin) -> None:  # noqa: ANN001
    """The dev key can upload and read, but the console's API answers it 403; an admin key
    gets the data; no key gets 401."""
    for path in CONSOLE_GETS:
        reply = gateway.get(f"/v1/admin/console/{path}")
        assert reply.status == 403, (path, reply.status, reply.body[:200])
        assert reply.json()["error"]["code"] == "forbidden"
        assert gateway.get(f"/v1/admin/console/{path}", key=False).status == 401
    replay = gateway.post_raw("/v1/admin/console/dlq/replay",
                              json.dumps({"partition": 0, "offset": 0}).encode(),
                              "application/json")
    assert replay.status == 403
    for path in ("stream", "workers", "storage"):
        reply = admin.gateway.get(f"/v1/admin/console/{path}")
        assert reply.status == 200, (path, reply.body[:300])
    stream = admin.gateway.get("/v1/admin/console/stream").json()
    uploads = next(t for t in stream["topics"] if t["topic"] == "image-uploads")
    assert all(p["leader"] is not None for p in uploads["partitions"])
    workers = admin.gateway.get("/v1/admin/console/workers").json()["workers"]
    assert workers and all(w["ok"] for w in workers)
    owned = sorted(p for w in workers for p in w["partitions"].get("image-uploads", []))
    assert owned == list(range(len(uploads["partitions"])))
    # A fixed set of charts: no way to send Prometheus a query of one's own.
    assert admin.gateway.get("/v1/admin/console/charts/up").status == 404
    assert admin.gateway.get("/v1/admin/console/topics/__consumer_offsets/messages").status == 404


# --------------------------------------------------------------------------------------------
# in the browser

if not __import__("pathlib").Path(CHROMIUM).exists():
    pytestmark.append(pytest.mark.skip(reason=f"{CHROMIUM} is absent"))


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    _wait_until_ready()
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def _console(browser, settings, key: str):  # noqa: ANN001, ANN202
    from playwright.sync_api import expect

    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(settings.gateway_url + "/console")
    expect(page.locator("html")).to_have_attribute("data-ready", "true")
    page.get_by_role("textbox", name="Admin API key").fill(key)
    page.get_by_role("button", name="Save key").click()
    return context, page, errors


def test_console_page_refuses_a_non_admin_key(browser, settings, api_key) -> None:  # noqa: ANN001
    from playwright.sync_api import expect

    context, page, errors = _console(browser, settings, api_key)
    for section in ("workers", "stream", "dlq", "storage", "charts"):
        expect(page.locator(f"#{section}")).to_have_attribute("data-state", "forbidden")
    expect(page.locator("#key-message")).to_contain_text("not an admin key")
    assert page.locator("#workers-body tr").count() == 0
    context.close()
    assert not errors, errors


def test_console_charts_after_a_burst(browser, settings, admin) -> None:  # noqa: ANN001
    from playwright.sync_api import expect

    # A worker's counters start again when it restarts; Prometheus sees an increase only
    # between two of its scrapes, so a burst into workers it has not scraped yet can vanish.
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        workers = admin.gateway.get("/v1/admin/console/workers").json()["workers"]
        if min(w.get("uptime_s", 0) for w in workers) > 2 * settings.prometheus_scrape_interval_s:
            break
        time.sleep(2)
    photos = photo_variants(60, seed=int(time.time()))
    burst_started = time.time()
    with ThreadPoolExecutor(8) as pool:
        ids = [r.json()["id"] for r in pool.map(admin.gateway.upload, photos)]
    for image_id in ids[-3:]:
        assert admin.gateway.wait_done(image_id, timeout_s=60)["status"] == "done"

    context, page, errors = _console(browser, settings, admin.key)
    expect(page.locator("#workers")).to_have_attribute("data-state", "loaded")
    expect(page.locator("#workers-body tr")).to_have_count(settings.workers)
    expect(page.locator("#stream-body tr[data-topic='image-uploads']")).to_have_count(
        settings.topic_partitions)
    expect(page.locator("#storage-body tr[data-bucket='input-images']")).to_have_count(1)
    # Prometheus scrapes every 15 s and evaluates its rules as often: the rates need two
    # scrapes after the burst, so allow a few rounds (the page redraws every 15 s). Not
    # just points: a value above zero (a flat zero line is no evidence of the burst).
    # A value above zero after the burst began (a flat zero line is no evidence of it,
    # and an earlier test's uploads may still be in the window).
    for chart in ("throughput", "latency"):
        box = page.locator(f"[data-chart='{chart}']")
        page.wait_for_function(
            "([sel, since]) => Number(document.querySelector(sel)?.dataset.lastNonzero || 0)"
            " >= since", arg=[f"[data-chart='{chart}']", burst_started], timeout=120_000)
        expect(box.locator("canvas").first).to_be_visible()
    expect(page.locator("#alerts")).to_have_attribute("data-state", "loaded")
    # One image's journey, drawn from ?trace=1: every stage, gateway to cache.
    page.get_by_role("textbox", name="Image id").fill(ids[-1])
    page.get_by_role("button", name="Trace").click()
    expect(page.locator("#trace-out .waterfall-row")).to_have_count(len(STAGE_NAMES))
    expect(page.locator("#trace-out .waterfall-row").last).to_have_attribute("data-stage",
                                                                             "cached")
    page.wait_for_timeout(500)
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "console.png"
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=str(shot))  # the top: alerts, charts, workers
    (REPO / "docs" / "images").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(shot, REPO / "docs" / "images" / "console.png")
    context.close()
    assert not errors, errors


def test_dead_letter_shows_up_and_replays_to_done(browser, settings, admin) -> None:  # noqa: ANN001
    from playwright.sync_api import expect

    from app import names
    from app.ids import new_image_id
    from app.results import now_iso
    from app.storage import get_store
    from app.tenancy import ORIGINAL_TENANT_META

    nonce = uuid.uuid4().hex
    garbage = json.dumps({"id": f"not-an-id-{nonce}", "note": "console test"}).encode()
    with ThreadPoolExecutor(1) as pool:  # Playwright's sync API holds this thread's loop
        pool.submit(produce, settings.kafka_bootstrap, settings.topic_uploads,
                    [(None, garbage)]).result()

    context, page, errors = _console(browser, settings, admin.key)
    letter = page.locator("#dlq-list li.dead-letter").filter(has_text=nonce)
    expect(letter).to_have_count(1, timeout=30_000)       # the view refreshes every 10 s
    expect(letter.locator(".error-reason")).to_contain_text("missing fields")
    where = {"partition": int(letter.get_attribute("data-partition") or -1),
             "offset": int(letter.get_attribute("data-offset") or -1)}

    # As it is, it would fail again: refused, nothing produced.
    letter.get_by_role("button", name="Replay", exact=True).click()
    expect(letter.locator(".replay-status")).to_have_attribute("data-outcome", "refused")

    # Make it valid: a real image stored as the original, and the event edited to name it.
    data = photo_variants(1, seed=int(time.time()) + 11)[0]
    image_id = new_image_id()
    get_store().put_bytes(settings.bucket_input, names.original_key(image_id), data,
                          "image/jpeg", {"sha256": hashlib.sha256(data).hexdigest(),
                                         ORIGINAL_TENANT_META: "console-test"})
    event = {"id": image_id, "sha256": hashlib.sha256(data).hexdigest(), "format": "jpeg",
             "size": len(data), "created_at": now_iso(), "tenant": "console-test",
             "request_id": f"replay-{nonce}"}
    letter.locator("textarea").fill(json.dumps(event))
    letter.get_by_role("button", name="Replay edited").click()
    status = letter.locator(".replay-status")
    expect(status).to_have_attribute("data-outcome", "replayed")
    expect(status).to_have_attribute("data-image-id", image_id)
    result = admin.gateway.wait_done(image_id, timeout_s=60)
    assert result["status"] == "done", result
    assert result["labels"]
    context.close()
    assert not errors, errors
    # Once replayed, a second replay needs "again": two operators cannot send it twice.
    twice = admin.gateway.post_raw("/v1/admin/console/dlq/replay", json.dumps(where).encode(),
                                   "application/json")
    assert twice.status == 409 and twice.json()["error"]["code"] == "already_replayed"
    listed = admin.gateway.get("/v1/admin/console/dlq").json()["messages"]
    mark = next(m for m in listed if m["partition"] == where["partition"]
                and m["offset"] == where["offset"])["replayed"]
    assert mark["by"] == admin.name and mark["image_id"] == image_id and mark["edited"]
    # The replay is in the log, with who did it.
    from app.logtrail import lines_about
    from app.stack.layout import Layout

    lines = lines_about(image_id, Layout.from_settings(settings).logs)
    audit = [line.fields for line in lines if line.fields.get("event") == "dead letter replayed"]
    assert audit and audit[0]["by"] == admin.name, audit


def _stored_event(settings, tenant: str, seed: int) -> tuple[str, bytes]:  # noqa: ANN001
    """A valid upload event whose original is in the store, as the uploader would write it."""
    from app import names
    from app.ids import new_image_id
    from app.results import now_iso
    from app.storage import get_store
    from app.tenancy import ORIGINAL_TENANT_META

    data = photo_variants(1, seed=seed)[0]
    image_id = new_image_id()
    sha = hashlib.sha256(data).hexdigest()
    get_store().put_bytes(settings.bucket_input, names.original_key(image_id), data,
                          "image/jpeg", {"sha256": sha, ORIGINAL_TENANT_META: tenant})
    event = {"id": image_id, "sha256": sha, "format": "jpeg", "size": len(data),
             "created_at": now_iso(), "tenant": tenant}
    return image_id, json.dumps(event).encode()


def test_replay_all_sends_each_good_dead_letter_once(settings, admin) -> None:  # noqa: ANN001
    """A dead letter that is valid now (its original was restored, say) and one that is not:
    the bulk replay sends the first, skips the second with its reason, and a second bulk
    replay sends nothing again."""
    image_id, good = _stored_event(settings, admin.tenant, int(time.time()) + 23)
    bad = b"still not json " + uuid.uuid4().hex.encode()
    with ThreadPoolExecutor(1) as pool:
        pool.submit(produce, settings.kafka_bootstrap, settings.topic_dlq,
                    [(None, good), (None, bad)]).result()
    first = admin.gateway.post_raw("/v1/admin/console/dlq/replay-all", b"{}",
                                   "application/json")
    assert first.status == 200, first.body
    sent = [r["image_id"] for r in first.json()["replayed"]]
    assert image_id in sent
    assert any("would fail again" in s["reason"] for s in first.json()["skipped"])
    assert admin.gateway.wait_done(image_id, timeout_s=60)["status"] == "done"
    again = admin.gateway.post_raw("/v1/admin/console/dlq/replay-all", b"{}",
                                   "application/json").json()
    assert image_id not in [r["image_id"] for r in again["replayed"]]
