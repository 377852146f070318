"""Unit tests see no running stack: settings come from the environment and arguments only,
not from a stack's ``secrets.env`` or a running cluster's ``stack.env``."""

from __future__ import annotations

import pytest

from app.settings import Settings


@pytest.fixture(autouse=True)
def _no_stack_files(monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setitem(Settings.model_config, "env_file", ())
    for name in ("IMAGEREC_TOPOLOGY", "IMAGEREC_KAFKA_BOOTSTRAP", "IMAGEREC_REDIS_SENTINELS",
                 "IMAGEREC_WORKERS", "IMAGEREC_TABLE_STANDBY_REPLICAS"):
        monkeypatch.delenv(name, raising=False)
