"""A custom model imported into the real `models` bucket becomes the default, running
workers switch to it without a restart, every result names the model that made it, and
switching back restores the built-in model."""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from tests.conftest import CAT_CLASSES, jpeg_of, photo_variants

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
BUILTIN = "efficientnet_lite0"


def imagerec(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(REPO / ".venv" / "bin" / "imagerec"), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=180, env=dict(os.environ))


def serving(settings) -> set[str]:  # noqa: ANN001
    """What each worker serves right now, asked directly (not through the gateway)."""
    names = set()
    for worker in range(settings.workers):
        url = f"http://127.0.0.1:{settings.web_port + worker}/v1/models"
        with urllib.request.urlopen(url, timeout=10) as resp:
            body = json.loads(resp.read())
        names.add((body.get("serving") or {}).get("name"))
    return names


def wait_serving(settings, name: str, timeout_s: float = 90) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if serving(settings) == {name}:
            return
        time.sleep(1)
    raise AssertionError(f"workers serve {serving(settings)}, not {name}")


@pytest.fixture
def tiny_model(tmp_path: Path) -> tuple[Path, Path]:
    """A real (if useless) 2-class Keras model: enough to prove the switch."""
    import keras

    inputs = keras.Input((96, 96, 3))
    x = keras.layers.GlobalAveragePooling2D()(inputs)
    outputs = keras.layers.Dense(2, activation="softmax")(x)
    model = keras.Model(inputs, outputs)
    path = tmp_path / "tiny.keras"
    model.save(path)
    labels = tmp_path / "labels.txt"
    labels.write_text("bright\ndark\n")
    return path, labels


def test_import_refuses_a_label_count_mismatch(settings, gateway, tiny_model, tmp_path) -> None:
    model, _ = tiny_model
    wrong = tmp_path / "three.txt"
    wrong.write_text("a\nb\nc\n")
    done = imagerec("models", "import", str(model), "--labels", str(wrong), "--name",
                    f"mismatch-{uuid.uuid4().hex[:6]}")
    assert done.returncode != 0
    assert "output size 2" in done.stderr and "3 labels" in done.stderr, done.stderr


def test_workers_switch_default_without_restart(settings, gateway, tiny_model) -> None:
    model, labels = tiny_model
    name = f"tiny-{uuid.uuid4().hex[:6]}"
    wait_serving(settings, BUILTIN)
    from tests.integration.test_stack import _worker_pids

    pids = _worker_pids()
    done = imagerec("models", "import", str(model), "--labels", str(labels), "--name", name)
    assert done.returncode == 0, done.stderr
    try:
        assert imagerec("models", "set-default", name).returncode == 0
        wait_serving(settings, name)
        reply = gateway.upload(photo_variants(1, seed=int(time.time()) % 77777)[0])
        result = gateway.wait_done(reply.json()["id"])
        assert result["model"]["name"] == name
        assert {lab["label"] for lab in result["labels"]} <= {"bright", "dark"}
    finally:
        assert imagerec("models", "set-default", BUILTIN).returncode == 0
        wait_serving(settings, BUILTIN)
    assert _worker_pids() == pids, "a worker restarted"
    again = gateway.wait_done(gateway.upload(jpeg_of("chelsea")).json()["id"])
    assert again["model"]["name"] == BUILTIN
    assert again["labels"][0]["class_id"] in CAT_CLASSES
