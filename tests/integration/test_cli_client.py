"""The user CLI (``imagerec upload | get | watch``) against the running gateway.

Runs the real console script in a subprocess, as a user would, so exit codes, stderr lines
and the rendered table are what is checked. The photos come from scikit-image's bundled
data and get a per-run random touch, so every run exercises the whole pipeline instead of
the content-hash de-duplication.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from app.cli.client import collect_files
from imagerec.client import sse_results

GATEWAY = os.environ.get("IMAGEREC_GATEWAY_URL", "http://127.0.0.1:8080").rstrip("/")
ULID = re.compile(r"\b[0-9A-HJKMNP-TV-Z]{26}\b")
PHOTOS = ["chelsea", "coffee", "rocket", "astronaut", "hubble_deep_field",
          "immunohistochemistry", "retina", "camera", "coins", "clock"]
CAT_LABELS = ("tiger cat", "tabby", "Egyptian cat")


def _imagerec() -> str:
    """The installed console script next to this interpreter (the venv's), else PATH's."""
    local = Path(sys.executable).with_name("imagerec")
    return str(local) if local.exists() else (shutil.which("imagerec") or "imagerec")


def _api_key() -> str | None:
    """The key from the environment, else from ``imagerec stack env``; None before keys."""
    if os.environ.get("IMAGEREC_API_KEY"):
        return os.environ["IMAGEREC_API_KEY"]
    try:
        out = subprocess.run([_imagerec(), "stack", "env"], capture_output=True, text=True,
                             timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r"^export IMAGEREC_API_KEY=['\"]?([^'\"\s]+)", out, re.M)
    return match.group(1) if match else None


def _http(path: str, key: str | None = None, timeout: float = 10) -> tuple[int, Any]:
    req = urllib.request.Request(GATEWAY + path)
    if key:
        req.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        body = exc.read()
        try:
            return exc.code, json.loads(body)
        except ValueError:
            return exc.code, body.decode(errors="replace")


def _run(*args: str, key: str | None = None, timeout: float = 300,
         url: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "IMAGEREC_API_KEY"}
    env["IMAGEREC_GATEWAY_URL"] = url or GATEWAY
    if key:
        env["IMAGEREC_API_KEY"] = key
    return subprocess.run([_imagerec(), *args], capture_output=True, text=True, env=env,
                          timeout=timeout)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _save_jpeg(array: np.ndarray, path: Path, rng: random.Random) -> None:
    """Save as JPEG after changing one corner pixel, so this run's bytes are new."""
    from PIL import Image

    if array.ndim == 2:
        array = np.stack([array] * 3, axis=-1)
    array = np.ascontiguousarray(array[..., :3]).copy()
    array[0, 0] = [rng.randrange(256) for _ in range(3)]
    Image.fromarray(array).save(path, "JPEG", quality=90)


def _variants(array: np.ndarray) -> list[np.ndarray]:
    """Five different views of one photo: as is, mirrored, two crops, mirrored crop."""
    h, w = array.shape[:2]
    return [
        array,
        array[:, ::-1],
        array[h // 10: h - h // 10, w // 10: w - w // 10],
        array[: int(h * 0.8), int(w * 0.2):],
        array[int(h * 0.15):, : int(w * 0.85)][:, ::-1],
    ]


# --------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module")
def gateway_up() -> None:
    """Wait for the stack (a just-started one is still loading its model); fail with what
    is down. Two ready answers in a row, since the gateway spreads over workers."""
    deadline = time.monotonic() + 180
    streak, last = 0, ""
    while streak < 2:
        try:
            status, body = _http("/readyz")
        except OSError as exc:
            status, body = 0, f"the gateway at {GATEWAY} is not reachable ({exc}); " \
                "run `imagerec stack up` first"
        streak = streak + 1 if status == 200 else 0
        last = body if isinstance(body, str) else f"/readyz answered {status}: {body}"
        if streak < 2 and time.monotonic() > deadline:
            pytest.fail(f"the stack is not ready: {last}")
        if streak < 2:
            time.sleep(1)


@pytest.fixture(scope="module")
def api_key(gateway_up: None) -> str | None:
    return _api_key()


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """50 distinct JPEGs in a folder tree (with a non-image that must be skipped)."""
    from skimage import data

    rng = random.Random()
    root = tmp_path_factory.mktemp("photos")
    for name in PHOTOS:
        sub = root / ("animals" if name == "chelsea" else "misc") / name
        sub.mkdir(parents=True)
        for i, view in enumerate(_variants(getattr(data, name)())):
            _save_jpeg(view, sub / f"{name}-{i}.jpg", rng)
    (root / "misc" / "README.txt").write_text("not an image; folders skip it\n")
    return root


# --------------------------------------------------------------------------------------
# tests that need no stack


def test_collect_files_walks_folders_for_images_only(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    for name in ("a/x.jpg", "a/b/y.PNG", "a/b/notes.txt", "z.txt"):
        (tmp_path / name).write_bytes(b"x")
    found = [p.relative_to(tmp_path).as_posix()
             for p in collect_files((tmp_path / "a", tmp_path / "z.txt", tmp_path / "a"))]
    # a folder gives images only; an explicitly named file is kept; duplicates dropped
    assert found == ["a/b/y.PNG", "a/x.jpg", "z.txt"]


async def test_sse_parser_yields_result_events_only() -> None:
    class FakeResponse:
        def __init__(self, chunks: list[bytes]) -> None:
            self.content = self._iter(chunks)

        @staticmethod
        async def _iter(chunks: list[bytes]) -> Any:
            for chunk in chunks:
                yield chunk

    stream = [b": keep-alive\n", b"\n", b"event: result\n", b'data: {"id": "A",\n',
              b'data: "status": "done"}\n', b"\n", b"event: other\n", b"data: {}\n", b"\n",
              b"event: result\r\n", b"data:{\"id\": \"B\"}\r\n", b"\r\n",
              b"event: result\n", b"data: not json\n", b"\n"]
    got = [r async for r in sse_results(FakeResponse(stream))]  # type: ignore[arg-type]
    assert got == [{"id": "A", "status": "done"}, {"id": "B"}]


def test_401_answer_gives_one_line_and_exit_4(tmp_path: Path) -> None:
    """Whatever the stack does today, a 401 from a gateway must read as a rejected key."""
    import http.server
    import threading

    class Reject(http.server.BaseHTTPRequestHandler):
        def _reject(self) -> None:
            body = b'{"error": {"code": "unauthorized", "message": "invalid API key"}}'
            length = int(self.headers.get("Content-Length") or 0)
            self.rfile.read(length)
            self.send_response(401)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = _reject

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Reject)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    photo = tmp_path / "x.jpg"
    photo.write_bytes(b"\xff\xd8\xff")
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        for args in (["upload", str(photo)], ["get", "X"], ["watch"]):
            proc = _run(*args, key="wrong", url=url, timeout=60)
            assert proc.returncode == 4, (args, proc)
            assert proc.stderr.splitlines() == [
                "error: the API key was rejected (401): invalid API key [unauthorized]; "
                "check --api-key / IMAGEREC_API_KEY"], proc.stderr
    finally:
        server.shutdown()


# --------------------------------------------------------------------------------------
# against the running stack


@pytest.mark.integration
def test_upload_folder_of_50_with_wait(photo_folder: Path, api_key: str | None) -> None:
    started = time.monotonic()
    proc = _run("upload", str(photo_folder), "--wait", "--concurrency", "8", key=api_key)
    elapsed = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr

    # progress: rich renders the final state of both bars on stderr when it is not a tty
    assert re.search(r"uploaded\s.*50/50", proc.stderr), proc.stderr
    assert re.search(r"classified\s.*50/50", proc.stderr), proc.stderr

    rows = [line for line in proc.stdout.splitlines() if ULID.search(line)]
    assert len(rows) == 50, proc.stdout
    assert "README.txt" not in proc.stdout
    for row in rows:
        assert " done " in row, row
        image_id = ULID.search(row).group(0)  # type: ignore[union-attr]
        status, result = _http(f"/v1/images/{image_id}", api_key)
        assert status == 200 and result["status"] == "done", result
        # the row shows the top label the API reports for that image
        assert result["labels"][0]["label"][:20] in row, (row, result["labels"][0])

    chelsea = next(r for r in rows if "chelsea-0.jpg" in r)
    assert any(label in chelsea for label in CAT_LABELS), chelsea
    coffee = next(r for r in rows if "coffee-0.jpg" in r)
    assert "espresso" in coffee, coffee
    print(f"50 photos uploaded and classified in {elapsed:.1f} s")


@pytest.mark.integration
def test_upload_json_and_get(photo_folder: Path, api_key: str | None) -> None:
    files = sorted(photo_folder.rglob("coffee-*.jpg"))[:2]
    proc = _run("upload", *map(str, files), "--wait", "--json", key=api_key)
    assert proc.returncode == 0, proc.stderr
    docs = json.loads(proc.stdout)
    assert [d["file"] for d in docs] == [str(f) for f in files]
    assert all(d["status"] == "done" and d["labels"] for d in docs), docs

    got = _run("get", docs[0]["id"], key=api_key, timeout=60)
    assert got.returncode == 0, got.stderr
    assert docs[0]["labels"][0]["label"] in got.stdout

    got_json = _run("get", docs[0]["id"], "--json", key=api_key, timeout=60)
    assert json.loads(got_json.stdout)["id"] == docs[0]["id"]

    missing = _run("get", "01ARZ3NDEKTSV4RRFFQ69G5FAV", key=api_key, timeout=60)
    assert missing.returncode == 1
    assert missing.stderr.strip().count("\n") == 0 and missing.stderr.startswith("error:")


@pytest.mark.integration
def test_upload_reports_refused_file(tmp_path: Path, api_key: str | None) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("this is not a picture\n")
    proc = _run("upload", str(text), key=api_key, timeout=60)
    assert proc.returncode == 1
    assert "refused" in proc.stdout
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: 1 of 1 images were not classified"), proc.stderr


@pytest.mark.integration
def test_watch_prints_a_result_as_it_arrives(tmp_path: Path, api_key: str | None) -> None:
    from skimage import data

    photo = tmp_path / "watched-cat.jpg"
    _save_jpeg(data.chelsea()[:, ::-1], photo, random.Random())
    env = {k: v for k, v in os.environ.items() if k != "IMAGEREC_API_KEY"}
    env["IMAGEREC_GATEWAY_URL"] = GATEWAY
    if api_key:
        env["IMAGEREC_API_KEY"] = api_key
    watcher = subprocess.Popen([_imagerec(), "watch", "--json"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert watcher.stderr is not None and watcher.stdout is not None
        assert "# watching" in watcher.stderr.readline()
        up = _run("upload", str(photo), "--json", key=api_key, timeout=60)
        assert up.returncode == 0, up.stderr
        image_id = json.loads(up.stdout)[0]["id"]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = watcher.stdout.readline()
            assert line, "watch ended early: " + watcher.stderr.read()
            if json.loads(line).get("id") == image_id:
                break
        else:
            pytest.fail("the result never came through `imagerec watch`")
    finally:
        watcher.send_signal(2)           # Ctrl-C
        rc = watcher.wait(timeout=10)
    assert rc == 0, "Ctrl-C must end watch cleanly"


@pytest.mark.integration
@pytest.mark.parametrize("command", [["upload", "PHOTO"], ["get", "01ARZ3NDEKTSV4RRFFQ69G5FAV"],
                                     ["watch"]])
def test_gateway_down_gives_one_line(command: list[str], photo_folder: Path) -> None:
    url = f"http://127.0.0.1:{_free_port()}"
    photo = next(photo_folder.rglob("*.jpg"))
    args = [str(photo) if a == "PHOTO" else a for a in command]
    proc = _run(*args, url=url, timeout=60)
    assert proc.returncode == 3, proc
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"error: cannot reach the gateway at {url}: "), lines[0]


@pytest.mark.integration
def test_wrong_key_is_rejected(photo_folder: Path, gateway_up: None) -> None:
    status, _ = _http("/v1/models", key="imagerec-bogus-key-0000")
    if status != 401:
        pytest.skip(f"API keys are not enforced by this stack (bogus key got {status})")
    photo = next(photo_folder.rglob("*.jpg"))
    proc = _run("upload", str(photo), key="imagerec-bogus-key-0000", timeout=60)
    assert proc.returncode == 4, proc
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: the API key was rejected (401)"), \
        proc.stderr
