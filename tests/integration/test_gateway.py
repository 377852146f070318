"""The gateway on the real stack: API keys, rate limits, body limits, request ids, headers, TLS.

Every request goes through Nginx on the gateway URL, as a client's would. Tests that need a
key of their own (rate limit, revocation) create one and delete it afterwards, so they neither
disturb nor are disturbed by other tests using the development key.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
import uuid
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import urllib3

from app.apikeys import CACHE_TTL_S, KeyStore
from app.settings import Settings, get_settings
from app.stack.layout import Layout

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SECURITY_HEADERS = ("X-Content-Type-Options", "X-Frame-Options", "Referrer-Policy",
                    "Content-Security-Policy", "X-Request-ID")
# A key becomes valid or revoked everywhere within the workers' cache lifetime.
PROPAGATION_S = CACHE_TTL_S * 3 + 2


# --- helpers ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def conf() -> Settings:
    get_settings.cache_clear()
    return get_settings()


@pytest.fixture(scope="module")
def base(conf: Settings) -> str:
    return conf.gateway_url.rstrip("/")


@pytest.fixture(scope="module")
def http() -> urllib3.PoolManager:
    return urllib3.PoolManager(maxsize=32, retries=False,
                               timeout=urllib3.Timeout(connect=5, read=60))


@pytest.fixture(scope="module")
def dev_key(conf: Settings) -> str:
    path = Layout.from_settings(conf).home / "dev-api-key"
    if not path.exists():
        pytest.fail(f"{path} is missing: `make up` creates the development key")
    return path.read_text().strip()


@pytest.fixture(scope="module")
def keystore(conf: Settings) -> KeyStore:
    return KeyStore(settings=conf)


@pytest.fixture
def make_key(keystore: KeyStore) -> Iterator[Callable[[str], str]]:
    """Create throwaway keys; they are deleted from the store after the test."""
    names: list[str] = []

    def make(purpose: str) -> str:
        name = f"test-{purpose}-{uuid.uuid4().hex[:8]}"
        names.append(name)
        return keystore.create(name)

    yield make
    for name in names:
        keystore.delete(name)


def _get(http: urllib3.PoolManager, url: str, key: str | None = None,
         headers: dict[str, str] | None = None) -> urllib3.BaseHTTPResponse:
    hdrs = dict(headers or {})
    if key:
        hdrs["Authorization"] = f"Bearer {key}"
    return http.request("GET", url, headers=hdrs)


def _wait_status(fn: Callable[[], int], want: int, timeout_s: float = PROPAGATION_S,
                 in_a_row: int = 6) -> int:
    """Poll until ``fn`` answers ``want`` ``in_a_row`` times running (every worker behind the
    gateway must agree, not just one), or the timeout; returns the last status."""
    deadline = time.monotonic() + timeout_s
    streak = 0
    while True:
        status = fn()
        streak = streak + 1 if status == want else 0
        if streak >= in_a_row or time.monotonic() > deadline:
            return status
        time.sleep(0.1)


def _error(resp: urllib3.BaseHTTPResponse) -> dict[str, str]:
    assert resp.headers.get("Content-Type", "").startswith("application/json"), resp.headers
    body = json.loads(resp.data)
    assert set(body) == {"error"} and {"code", "message"} <= set(body["error"]), body
    return body["error"]


def _assert_security_headers(resp: urllib3.BaseHTTPResponse) -> None:
    missing = [h for h in SECURITY_HEADERS if h not in resp.headers]
    assert not missing, f"{resp.status} lacks {missing}: {dict(resp.headers)}"
    assert resp.headers["X-Content-Type-Options"] == "nosniff"


def _input_objects(conf: Settings) -> dict[str, int]:
    from app.storage import get_store

    client = get_store().client
    return {o.object_name: o.size for o in client.list_objects(conf.bucket_input,
                                                                recursive=True)}


def _access_log_entry(conf: Settings, request_id: str, timeout_s: float = 5.0) -> dict[str, Any]:
    log = Layout.from_settings(conf).logs / "gateway-access.log"
    deadline = time.monotonic() + timeout_s
    while True:
        for line in reversed(log.read_text().splitlines()[-5000:]):
            if request_id in line:
                return json.loads(line)
        if time.monotonic() > deadline:
            raise AssertionError(f"request {request_id} not in {log}")
        time.sleep(0.2)


# --- keys --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/v1/models"), ("GET", "/v1/images"), ("POST", "/v1/images"),
    ("POST", "/v1/classify"), ("GET", "/v1/images/01J0000000000000000000000A"),
    ("GET", "/v1/events"), ("POST", "/function/image-upload"),
    ("POST", "/function/image-classifier"), ("GET", "/function/anything"),
])
def test_no_key_is_401_json_everywhere(http: urllib3.PoolManager, base: str, method: str,
                                       path: str) -> None:
    resp = http.request(method, base + path, body=b"x" if method == "POST" else None,
                        headers={"Content-Type": "image/jpeg"} if method == "POST" else None)
    assert resp.status == 401, (path, resp.status, resp.data[:200])
    err = _error(resp)
    assert err["code"] == "unauthorized" and "missing" in err["message"]
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    _assert_security_headers(resp)


@pytest.mark.parametrize("headers", [
    {"Authorization": "Bearer irk_thisIsNotAKeyThatExistsAnywhere0000000000"},
    {"X-API-Key": "irk_thisIsNotAKeyThatExistsAnywhere0000000000"},
    {"Authorization": "Bearer " + "A" * 5000},
    {"X-Api-Key-Name": "dev"},  # the name the gateway forwards cannot be spoofed
])
def test_bad_key_is_401(http: urllib3.PoolManager, base: str, headers: dict[str, str]) -> None:
    resp = _get(http, base + "/v1/models", headers=headers)
    assert resp.status == 401
    assert _error(resp)["code"] == "unauthorized"


def test_valid_key_in_either_header_is_accepted(http: urllib3.PoolManager, base: str,
                                                dev_key: str) -> None:
    assert _get(http, base + "/v1/models", dev_key).status == 200
    assert _get(http, base + "/v1/models", headers={"X-API-Key": dev_key}).status == 200
    resp = _get(http, base + "/v1/images?limit=1", headers={"X-API-Key": dev_key})
    assert resp.status == 200 and "images" in json.loads(resp.data)
    _assert_security_headers(resp)


def test_query_key_only_for_the_event_stream(http: urllib3.PoolManager, base: str,
                                             dev_key: str) -> None:
    assert _get(http, f"{base}/v1/models?api_key={dev_key}").status == 401
    resp = http.request("GET", f"{base}/v1/events?api_key={dev_key}", preload_content=False,
                        timeout=urllib3.Timeout(connect=5, read=10))
    try:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        assert resp.read(11, decode_content=False) == b": connected"
    finally:
        resp.close()  # closes the socket too: an endless stream must not go back to the pool


def test_created_key_works_and_revoked_key_is_refused(http: urllib3.PoolManager, base: str,
                                                      keystore: KeyStore) -> None:
    """Through the CLI an admin would use: create prints the key alone, list never shows it."""
    name = f"test-revoke-{uuid.uuid4().hex[:8]}"
    cli = [str(Path(sys.executable).parent / "imagerec")]
    try:
        made = subprocess.run([*cli, "keys", "create", "--name", name], capture_output=True,
                              text=True, timeout=60, check=True)
        lines = made.stdout.splitlines()
        assert len(lines) == 1 and lines[0].startswith("irk_"), made.stdout
        key = lines[0]
        listed = subprocess.run([*cli, "keys", "list"], capture_output=True, text=True,
                                timeout=60, check=True).stdout
        assert name in listed and key not in listed

        def status() -> int:
            return _get(http, base + "/v1/models", key).status

        assert _wait_status(status, 200) == 200
        subprocess.run([*cli, "keys", "revoke", name], capture_output=True, text=True,
                       timeout=60, check=True)
        started = time.monotonic()
        assert _wait_status(status, 401) == 401
        elapsed = time.monotonic() - started
        resp = _get(http, base + "/v1/models", key)
        assert _error(resp)["message"] == "invalid or revoked API key"
        print(f"revocation took effect after {elapsed:.1f}s")
    finally:
        keystore.delete(name)


# --- rate limit --------------------------------------------------------------------------------


def test_burst_over_the_limit_gets_429_then_service_resumes(
        http: urllib3.PoolManager, base: str, conf: Settings, dev_key: str,
        make_key: Callable[[str], str]) -> None:
    key = make_key("burst")
    url = base + "/v1/images/notanid"  # cheap: a 404 from the worker, no storage lookups
    assert _wait_status(lambda: _get(http, url, key).status, 404) == 404

    statuses: Counter[int] = Counter()
    retry_after: set[str] = set()
    limited: list[urllib3.BaseHTTPResponse] = []
    lock = threading.Lock()
    # More than the burst plus what the steady rate refills while we send; 8 threads make
    # the burst arrive faster than the limit even on a loaded 2-core machine.
    total = conf.rate_limit_burst + int(conf.rate_limit_rps * 3) + 150

    def one(_: int) -> None:
        resp = _get(http, url, key)
        with lock:
            statuses[resp.status] += 1
            if resp.status == 429:
                retry_after.add(resp.headers.get("Retry-After", ""))
                if not limited:
                    limited.append(resp)

    started = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(total)))
    took = time.monotonic() - started
    print(f"burst of {total} in {took:.2f}s: {dict(statuses)}")
    assert set(statuses) <= {404, 429}, statuses
    assert statuses[429] > 0, f"no 429 in {total} requests over {took:.2f}s"
    # at least the burst got through before limiting started
    assert statuses[404] >= conf.rate_limit_burst
    assert retry_after and all(v.isdigit() and int(v) >= 1 for v in retry_after)
    err = _error(limited[0])
    assert err["code"] == "rate_limited"
    _assert_security_headers(limited[0])

    # the limit is per key: the development key is unaffected meanwhile
    assert _get(http, url, dev_key).status == 404
    # and the limited key works again after the window
    time.sleep(max(int(r) for r in retry_after) + 0.5)
    assert _get(http, url, key).status == 404


# --- body and image limits -------------------------------------------------------------


def test_25mb_body_is_413_and_nothing_is_stored(http: urllib3.PoolManager, base: str,
                                                conf: Settings, dev_key: str) -> None:
    size = 25_000_000
    body = b"\xff\xd8\xff\xe0" + os.urandom(1024) * (size // 1024)
    body = body[:size]
    before = _input_objects(conf)
    request_ids = []
    for mode in ("raw", "chunked", "multipart", "function"):
        rid = f"test-413-{mode}-{uuid.uuid4().hex}"
        request_ids.append(rid)
        headers = {"Authorization": f"Bearer {dev_key}", "X-Request-ID": rid}
        if mode in ("raw", "function"):
            path = "/v1/images" if mode == "raw" else "/function/image-upload"
            resp = http.request("POST", base + path, body=body,
                                headers={**headers, "Content-Type": "image/jpeg"})
        elif mode == "chunked":
            step = 1 << 20
            chunks = (body[i:i + step] for i in range(0, len(body), step))
            resp = http.request("POST", base + "/v1/images", body=chunks, chunked=True,
                                headers={**headers, "Content-Type": "image/jpeg"})
        else:
            resp = http.request("POST", base + "/v1/images", headers=headers,
                                fields={"file": ("big.jpg", body, "image/jpeg")})
        assert resp.status == 413, (mode, resp.status, resp.data[:200])
        assert _error(resp)["code"] == "too_large"
        _assert_security_headers(resp)
    after = _input_objects(conf)
    new = {k: v for k, v in after.items() if k not in before}
    # Other tests may upload meanwhile; none of the new objects may be ours.
    assert not [k for k, v in new.items() if v >= size - 1024], new
    print(f"input-images: {len(before)} objects before, {len(after)} after "
          f"({len(new)} new, none of them ours)")
    # The body never reached a worker: Nginx answered without an upstream.
    for rid in request_ids:
        entry = _access_log_entry(conf, rid)
        assert entry["status"] == 413 and entry["upstream"] == "", entry


def test_text_sent_as_jpeg_is_415(http: urllib3.PoolManager, base: str, dev_key: str) -> None:
    text = b"hello, I am a text file and not a JPEG at all\n" * 20
    hdrs = {"Authorization": f"Bearer {dev_key}"}
    raw = http.request("POST", base + "/v1/images", body=text,
                       headers={**hdrs, "Content-Type": "image/jpeg"})
    form = http.request("POST", base + "/v1/images", headers=hdrs,
                        fields={"file": ("photo.jpg", text, "image/jpeg")})
    sync = http.request("POST", base + "/v1/classify", body=text,
                        headers={**hdrs, "Content-Type": "image/jpeg"})
    for resp in (raw, form, sync):
        assert resp.status == 415, (resp.status, resp.data[:200])
        assert _error(resp)["code"] == "unsupported_format"


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def png_bomb(side: int = 30000) -> bytes:
    """A complete, valid 1-bit PNG of side x side (all black): ~110 KB that decodes to ~900 MB
    of pixels in Pillow. Built row by row, so making it costs no memory either."""
    row = b"\x00" + b"\x00" * ((side + 7) // 8)  # filter byte + packed bits
    comp = zlib.compressobj(9)
    out = io.BytesIO()
    for _ in range(side):
        out.write(comp.compress(row))
    out.write(comp.flush())
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr)
            + _png_chunk(b"IDAT", out.getvalue()) + _png_chunk(b"IEND", b""))


def _worker_pids(conf: Settings) -> dict[str, int]:
    from app.stack.manage import rpc

    infos = rpc(Layout.from_settings(conf)).supervisor.getAllProcessInfo()
    return {p["name"]: p["pid"] for p in infos
            if p["name"].startswith("worker-") and p["statename"] == "RUNNING"}


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def test_png_bomb_is_422_without_a_memory_spike(http: urllib3.PoolManager, base: str,
                                                conf: Settings, dev_key: str) -> None:
    bomb = png_bomb()
    assert len(bomb) < 2_000_000
    pids = _worker_pids(conf)
    assert pids, "no running worker"
    baseline = {name: _rss_kb(pid) for name, pid in pids.items()}
    peak = dict(baseline)
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            for name, pid in pids.items():
                peak[name] = max(peak[name], _rss_kb(pid))
            time.sleep(0.01)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        hdrs = {"Authorization": f"Bearer {dev_key}"}
        replies = []
        for _ in range(2):  # twice each, so both workers behind the gateway likely see one
            replies.append(http.request("POST", base + "/v1/images", body=bomb,
                                        headers={**hdrs, "Content-Type": "image/png"}))
            replies.append(http.request("POST", base + "/v1/images", headers=hdrs,
                                        fields={"file": ("bomb.png", bomb, "image/png")}))
            replies.append(http.request("POST", base + "/v1/classify", body=bomb,
                                        headers={**hdrs, "Content-Type": "image/png"}))
        time.sleep(0.3)
    finally:
        stop.set()
        sampler.join()
    for resp in replies:
        assert resp.status in (413, 422), (resp.status, resp.data[:300])
        assert _error(resp)["code"] in ("too_many_pixels", "too_large")
    growth = {name: (peak[name] - baseline[name]) // 1024 for name in pids}
    print(f"worker RSS growth during 6 bomb uploads (MiB): {growth}")
    # Decoding would need ~900 MiB (1 byte per pixel); 100 MiB allows for ordinary churn.
    assert all(g < 100 for g in growth.values()), growth


# --- open endpoints, request ids, headers -----------------------------------------------


def test_probes_are_open_and_metrics_are_not_public(http: urllib3.PoolManager,
                                                    base: str) -> None:
    assert http.request("GET", base + "/healthz").status == 200
    assert http.request("GET", base + "/readyz").status in (200, 503)  # open, whatever it says
    assert http.request("GET", base + "/v1/openapi.json").status == 200
    assert http.request("GET", base + "/v1/asyncapi.json").status == 200
    metrics = http.request("GET", base + "/metrics")
    assert metrics.status == 404 and _error(metrics)["code"] == "not_found"
    page = http.request("GET", base + "/")
    assert page.status == 200 and b"<html" in page.data.lower()
    _assert_security_headers(page)


def test_wrong_methods_and_unknown_paths_answer_json(http: urllib3.PoolManager, base: str,
                                                     dev_key: str) -> None:
    hdrs = {"Authorization": f"Bearer {dev_key}"}
    trace = http.request("TRACE", base + "/v1/models", headers=hdrs)  # refused by Nginx
    delete = http.request("DELETE", base + "/v1/models", headers=hdrs)  # by the worker
    unknown = http.request("GET", base + "/v1/no-such-thing", headers=hdrs)
    for resp, status in ((trace, 405), (delete, 405), (unknown, 404)):
        assert resp.status == status
        assert _error(resp)["code"] in ("method_not_allowed", "not_found")
        _assert_security_headers(resp)
    assert "GET" in trace.headers["Allow"] and "GET" in delete.headers["Allow"]


def test_request_id_is_kept_generated_and_logged(http: urllib3.PoolManager, base: str,
                                                 conf: Settings, dev_key: str) -> None:
    rid = f"test-rid-{uuid.uuid4().hex}"
    resp = _get(http, base + "/v1/models", dev_key, {"X-Request-ID": rid})
    assert resp.status == 200 and resp.headers["X-Request-ID"] == rid
    entry = _access_log_entry(conf, rid)
    assert entry["key"] == "dev" and entry["status"] == 200 and entry["upstream"]

    generated = _get(http, base + "/v1/models", dev_key).headers["X-Request-ID"]
    assert len(generated) == 32 and generated != rid
    # a hostile id (log injection, absurd length) is replaced, not echoed
    for bad in ('x" injected', "y" * 300):
        echoed = _get(http, base + "/v1/models", dev_key, {"X-Request-ID": bad})
        assert echoed.headers["X-Request-ID"] != bad


def test_access_log_is_json_and_redacts_query_keys(http: urllib3.PoolManager, base: str,
                                                   conf: Settings, dev_key: str) -> None:
    rid = f"test-redact-{uuid.uuid4().hex}"
    resp = http.request("GET", f"{base}/v1/events?api_key={dev_key}", preload_content=False,
                        headers={"X-Request-ID": rid},
                        timeout=urllib3.Timeout(connect=5, read=10))
    assert resp.status == 200
    assert resp.read(11, decode_content=False) == b": connected"
    resp.close()
    # Nginx logs a stream when it ends; it notices the closed client at the latest on the
    # next keep-alive comment (15 s).
    entry = _access_log_entry(conf, rid, timeout_s=20)
    assert dev_key not in json.dumps(entry)
    assert "api_key=REDACTED" in entry["uri"]


# --- TLS ------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_tls_with_a_self_signed_certificate(tmp_path: Path, conf: Settings,
                                            dev_key: str) -> None:
    """scripts/make-cert.sh plus the TLS block of the template, on a private Nginx that
    proxies to the stack's real workers (the shared gateway is left alone)."""
    import ssl
    import urllib.error
    import urllib.request

    from app.stack import services

    home = tmp_path / "home"
    env = {**os.environ, "IMAGEREC_HOME": str(home)}
    made = subprocess.run(["bash", str(REPO / "scripts" / "make-cert.sh")], env=env,
                          capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    cert = home / "tls" / "cert.pem"
    assert (home / "tls" / "key.pem").stat().st_mode & 0o077 == 0

    plain, tls = _free_port(), _free_port()
    settings = conf.model_copy(update={"gateway_url": f"http://127.0.0.1:{plain}",
                                       "gateway_tls_port": tls})
    layout = Layout(home=home)
    layout.ensure()
    nginx_conf = services.render_nginx(layout, settings, REPO / "deploy" / "nginx.conf.tmpl")
    assert f"listen 127.0.0.1:{tls} ssl" in nginx_conf.read_text()
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    proc = subprocess.Popen([nginx, "-e", "stderr", "-c", str(nginx_conf)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        ctx = ssl.create_default_context(cafile=str(cert))

        def fetch(path: str, key: str | None = None) -> int:
            req = urllib.request.Request(f"https://localhost:{tls}{path}")
            if key:
                req.add_header("Authorization", f"Bearer {key}")
            try:
                with urllib.request.urlopen(req, context=ctx, timeout=10) as resp:
                    return resp.status
            except urllib.error.HTTPError as exc:
                return exc.code

        deadline = time.monotonic() + 10
        while True:
            try:
                assert fetch("/healthz") == 200
                break
            except (urllib.error.URLError, ConnectionError):
                if time.monotonic() > deadline or proc.poll() is not None:
                    out = proc.stdout.read().decode() if proc.poll() is not None else ""
                    raise AssertionError(f"private nginx did not serve TLS: {out}") from None
                time.sleep(0.2)
        assert fetch("/v1/models") == 401
        assert fetch("/v1/models", dev_key) == 200
        # the certificate is only trusted because we said so
        with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
            urllib.request.urlopen(f"https://localhost:{tls}/healthz",
                                   context=ssl.create_default_context(), timeout=10)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
