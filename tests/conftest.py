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
