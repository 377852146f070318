"""Shared fixtures: settings, the running stack, an HTTP client for the gateway, real photos.

Integration tests talk to the real servers started by ``make test`` (scripts/test.sh); they
fail with a clear message, rather than skip, when the stack is not up.
"""

from __future__ import annotations

import io
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import urllib3
from PIL import Image

from app.settings import get_settings
from app.stack.layout import Layout
from app.stack.secrets import read_env_file

REPO = Path(__file__).resolve().parent.parent


def _stack_env() -> dict[str, str]:
    settings = get_settings()
    return read_env_file(Layout.from_settings(settings).secrets)


@pytest.fixture(scope="session")
def settings():  # noqa: ANN201
    """Settings with the stack's generated secrets, as every stack process sees them."""
    import os

    for key, value in _stack_env().items():
        os.environ.setdefault(key, value)
    get_settings.cache_clear()
    return get_settings()


@dataclass
class Reply:
    status: int
    headers: Any
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Gateway:
    """A tiny synchronous client for the gateway (thread-safe: urllib3 pools)."""

    def __init__(self, base: str, api_key: str | None) -> None:
        self.base = base.rstrip("/")
        self.api_key = api_key
        self.http = urllib3.PoolManager(maxsize=64, timeout=urllib3.Timeout(connect=5, read=90),
                                        retries=False)

    def _headers(self, headers: dict[str, str] | None, key: bool) -> dict[str, str]:
        out = dict(headers or {})
        if key and self.api_key:
            out.setdefault("Authorization", f"Bearer {self.api_key}")
        return out

    def get(self, path: str, *, headers: dict[str, str] | None = None, key: bool = True,
            **fields: Any) -> Reply:
        resp = self.http.request("GET", self.base + path, fields=fields or None,
                                 headers=self._headers(headers, key))
        return Reply(resp.status, resp.headers, resp.data)

    def upload(self, data: bytes, *, filename: str = "photo.jpg", path: str = "/v1/images",
               headers: dict[str, str] | None = None, key: bool = True,
               content_type: str = "image/jpeg") -> Reply:
        resp = self.http.request("POST", self.base + path,
                                 fields={"file": (filename, data, content_type)},
                                 headers=self._headers(headers, key))
        return Reply(resp.status, resp.headers, resp.data)

    def post_raw(self, path: str, data: bytes, content_type: str, *,
                 headers: dict[str, str] | None = None, key: bool = True) -> Reply:
        hdrs = self._headers(headers, key)
        hdrs["Content-Type"] = content_type
        resp = self.http.request("POST", self.base + path, body=data, headers=hdrs)
        return Reply(resp.status, resp.headers, resp.data)

    def wait_done(self, image_id: str, timeout_s: float = 60.0) -> dict[str, Any]:
        """Long-poll until the image is done or failed."""
        import time

        deadline = time.monotonic() + timeout_s
        last: Any = None
        while time.monotonic() < deadline:
            reply = self.get(f"/v1/images/{image_id}", wait=str(min(20, timeout_s)))
            if reply.status == 200:
                last = reply.json()
                if last["status"] in ("done", "failed"):
                    return last
            elif reply.status not in (404, 502, 503):
                raise AssertionError(f"GET {image_id}: {reply.status} {reply.body[:300]!r}")
            time.sleep(0.2)
        raise AssertionError(f"{image_id} not finished after {timeout_s}s (last: {last})")


def dev_api_key() -> str | None:
    path = Layout.from_settings(get_settings()).home / "dev-api-key"
    return path.read_text().strip() if path.exists() else None


@pytest.fixture(scope="session")
def api_key(settings) -> str | None:  # noqa: ANN001
    return dev_api_key()


@pytest.fixture(scope="session")
def gateway(settings, api_key) -> Gateway:  # noqa: ANN001
    gw = Gateway(settings.gateway_url, api_key)
    try:
        reply = gw.get("/readyz", key=False)
    except urllib3.exceptions.HTTPError as exc:
        pytest.fail(f"the stack is not running ({exc}); start it with `make up`")
    if reply.status != 200:
        pytest.fail(f"the stack is not ready: {reply.body[:500]!r}")
    return gw


# --- real photos ------------------------------------------------------------------------------

_SOURCES = ("chelsea", "coffee", "rocket", "astronaut", "immunohistochemistry",
            "hubble_deep_field", "colorwheel")


def _base_images() -> list[np.ndarray]:
    import skimage.data as data

    return [getattr(data, name)() for name in _SOURCES]


def photo_variants(count: int, seed: int = 0) -> list[bytes]:
    """``count`` distinct real JPEGs: crops, flips, sizes and qualities of scikit-image photos.

    Distinct bytes matter: identical uploads are de-duplicated and would not be classified.
    """
    rng = random.Random(seed)
    bases = _base_images()
    out: list[bytes] = []
    seen: set[bytes] = set()
    while len(out) < count:
        img = Image.fromarray(bases[len(out) % len(bases)]).convert("RGB")
        w, h = img.size
        cw, ch = int(w * rng.uniform(0.7, 1.0)), int(h * rng.uniform(0.7, 1.0))
        x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
        img = img.crop((x, y, x + cw, y + ch))
        if rng.random() < 0.5:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        scale = rng.uniform(0.8, 1.3)
        img = img.resize((max(64, int(cw * scale)), max(64, int(ch * scale))))
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=rng.randint(80, 95))
        data = buf.getvalue()
        if data not in seen:
            seen.add(data)
            out.append(data)
    return out


def jpeg_of(name: str) -> bytes:
    import skimage.data as data

    buf = io.BytesIO()
    Image.fromarray(getattr(data, name)()).convert("RGB").save(buf, format="JPEG", quality=92)
    return buf.getvalue()


CAT_CLASSES = {281, 282, 285}  # tabby, tiger cat, Egyptian cat
ESPRESSO = 967


# --- tenants and keys -------------------------------------------------------------------------

@dataclass
class TenantKey:
    """A throwaway API key of one tenant, with a gateway client that sends it."""

    name: str
    tenant: str
    key: str
    gateway: Gateway


@pytest.fixture(scope="session")
def keystore(settings):  # noqa: ANN001, ANN201
    from app.apikeys import KeyStore

    return KeyStore(settings=settings)


@pytest.fixture
def make_tenant_key(settings, keystore, gateway):  # noqa: ANN001, ANN201
    """``make(purpose, tenant=None, scopes=None, expires=None) -> TenantKey``; every key it
    made is deleted from the store after the test. Tenants get a unique suffix so runs never
    see each other's images."""
    import time
    import uuid

    from app.apikeys import MISS_REFRESH_S

    made: list[str] = []
    run = uuid.uuid4().hex[:8]

    def make(purpose: str, tenant: str | None = None, scopes: str | None = None,
             expires: str | None = None, rate_limit: int | None = None) -> TenantKey:
        name = f"test-{purpose}-{uuid.uuid4().hex[:8]}"
        tenant_name = f"t-{tenant}-{run}" if tenant else name
        key = keystore.create(name, tenant=tenant_name, scopes=scopes, expires=expires,
                              rate_limit=rate_limit)
        made.append(name)
        # A worker re-reads the store for an unknown key at most every MISS_REFRESH_S: past
        # that, the new key works on every worker.
        time.sleep(MISS_REFRESH_S + 0.1)
        return TenantKey(name, tenant_name, key, Gateway(settings.gateway_url, key))

    yield make
    for name in made:
        keystore.delete(name)


# --- a webhook receiver on an allow-listed loopback address ----------------------------------

# Webhooks to loopback are refused (app.netguard) unless the operator allows the network;
# scripts/test.sh starts the stack with IMAGEREC_CALLBACK_ALLOW_NETS=127.0.0.2/32, so this
# receiver, and only it, may be called back on this machine.
RECEIVER_HOST = "127.0.0.2"


class Receiver:
    """A tiny HTTP server that records each POST (headers, body) and answers 204.

    ``stop()`` and ``start()`` keep the port, so a test can take the receiver down while a
    webhook is pending and bring it back at the same URL."""

    def __init__(self) -> None:
        import queue

        self.received: queue.Queue[tuple[dict[str, str], bytes]] = queue.Queue()
        self.port = 0
        self._server: Any = None

    def start(self) -> Receiver:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        received = self.received

        class Hook(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                received.put((dict(self.headers), body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        self._server = ThreadingHTTPServer((RECEIVER_HOST, self.port), Hook)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def url(self) -> str:
        return f"http://{RECEIVER_HOST}:{self.port}/hook"


@pytest.fixture
def receiver(settings):  # noqa: ANN001, ANN201
    """A running receiver whose address the stack allows (fails clearly when it does not)."""
    import ipaddress

    from app.netguard import address_allowed, parse_allow_nets

    if not address_allowed(ipaddress.ip_address(RECEIVER_HOST),
                           parse_allow_nets(settings.callback_allow_nets)):
        pytest.fail("the stack must allow the test receiver: start it with "
                    f"IMAGEREC_CALLBACK_ALLOW_NETS={RECEIVER_HOST}/32 (scripts/test.sh does)")
    hook = Receiver().start()
    yield hook
    hook.stop()
