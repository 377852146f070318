"""The client library's documentation runs: every ```python block of docs/CLIENT.md, as a
user would run it, against the running stack.

Each block runs in its own interpreter, in a folder holding the files the examples name
(fresh bytes each run, so nothing is answered from the de-duplication cache), with the
gateway URL and the development API key in the environment, as ``imagerec stack env`` sets
them. A block that raises, or whose ``assert`` fails, fails the test.
"""

from __future__ import annotations

import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.test_cli_client import _save_jpeg

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "CLIENT.md"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
FILES = {"cat.jpg": "chelsea", "coffee.jpg": "coffee", "rocket.jpg": "rocket",
         "astronaut.jpg": "astronaut", "photos/a.jpg": "chelsea", "photos/b.jpg": "coffee",
         "photos/c.jpg": "rocket"}


def _blocks() -> list[str]:
    return BLOCK.findall(DOC.read_text())


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from skimage import data

    rng = random.Random()
    root = tmp_path_factory.mktemp("client-docs")
    for name, photo in FILES.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        _save_jpeg(getattr(data, photo)(), root / name, rng)
    return root


def test_the_document_has_examples_of_every_call() -> None:
    text = "\n".join(_blocks())
    assert len(_blocks()) >= 6
    for call in ("upload(", "wait(", "get(", "stream(", "upload_presigned(", "classify(",
                 "reclassify(", "AsyncClient", "Client("):
        assert call in text, f"no example uses {call}"


@pytest.fixture(scope="module")
def admin_key(keystore) -> str:  # noqa: ANN001
    """A key with the admin scope, for the re-classification example; deleted afterwards."""
    import time
    import uuid

    from app.apikeys import MISS_REFRESH_S

    name = f"test-client-docs-admin-{uuid.uuid4().hex[:8]}"
    key = keystore.create(name, scopes="admin")
    time.sleep(MISS_REFRESH_S + 0.1)  # every worker knows it by then
    yield key
    keystore.delete(name)


@pytest.mark.parametrize("index", range(len(_blocks())))
def test_example_runs(index: int, folder: Path, gateway, api_key,  # noqa: ANN001
                      admin_key: str) -> None:
    code = _blocks()[index]
    env = {**os.environ, "IMAGEREC_GATEWAY_URL": gateway.base, "IMAGEREC_API_KEY": api_key,
           "IMAGEREC_ADMIN_KEY": admin_key, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", code], cwd=folder, env=env,
                          capture_output=True, text=True, timeout=300)
    first_line = code.strip().splitlines()[0]
    assert proc.returncode == 0, f"example {index} ({first_line}) failed:\n{proc.stderr}"
    print(f"example {index}: {proc.stdout.strip()[:300]}")
