"""On the running stack: workers and functions carry no TensorFlow, every worker names the
engine it chose, and results name the model variant and engine that produced them."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest

from app.model import convert
from tests.conftest import CAT_CLASSES, jpeg_of

pytestmark = pytest.mark.integration


def _serving_processes() -> dict[str, int]:
    from app.settings import get_settings
    from app.stack.layout import Layout
    from app.stack.manage import rpc

    return {p["name"]: p["pid"] for p in rpc(Layout.from_settings(get_settings()))
            .supervisor.getAllProcessInfo()
            if p["name"].startswith(("worker-", "fn-")) and p["pid"]}


def test_workers_and_functions_load_no_tensorflow(settings, gateway) -> None:  # noqa: ANN001
    gateway.wait_done(gateway.upload(jpeg_of("coffee")).json()["id"])  # models are loaded
    procs = _serving_processes()
    assert any(name.startswith("worker-") for name in procs), procs
    for name, pid in procs.items():
        maps = Path(f"/proc/{pid}/maps").read_text()
        libs = {line.split()[-1] for line in maps.splitlines() if "tensorflow" in line}
        assert not libs, f"{name} (pid {pid}) has TensorFlow mapped: {sorted(libs)[:3]}"
        assert "ai_edge_litert" in maps or name.startswith("fn-"), f"{name}: no LiteRT mapped"


def test_workers_and_results_name_the_engine(settings, gateway) -> None:  # noqa: ANN001
    for worker in range(settings.workers):
        url = f"http://127.0.0.1:{settings.web_port + worker}/v1/models"
        with urllib.request.urlopen(url, timeout=10) as resp:
            serving = json.loads(resp.read())["serving"]
        assert serving["engine"].startswith("litert-"), serving
        assert {t["engine"] for t in serving["engines"]} >= {serving["engine"]}
    result = gateway.wait_done(gateway.upload(jpeg_of("chelsea")).json()["id"])
    assert result["labels"][0]["class_id"] in CAT_CLASSES
    assert result["model"]["engine"].startswith("litert-")
    assert result["model"]["variant"] in ("fp32", "int8")
    int8_suffix = convert.int8_version("")
    is_int8 = result["model"]["variant"] == "int8"
    assert result["model"]["version"].endswith(int8_suffix) == is_int8
