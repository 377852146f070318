"""Every log line of every local process about one image (``imagerec logs --image ID``).

Each process writes JSON lines (app.logs) to ``$IMAGEREC_HOME/logs/<service>.log``, rotated
by supervisord to ``.log.1`` ... A line is about an image when it names it: ``image_id``,
an ``image_ids`` list (a classify batch), its id in a request URI (the gateway's access log),
or the upload's ``request_id`` (every line of the upload request, in the gateway, the auth
check and the worker). The request ids are learnt from the lines that name the image, so one
pass finds them and a second pass collects the lines; a substring test skips the JSON parse
of every unrelated line, which keeps a scan of a few hundred MB of logs to seconds.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_ROTATED = re.compile(r"\.log(\.\d+)?$")


@dataclass(frozen=True)
class LogLine:
    """One JSON log line and the service (file) it came from."""

    service: str
    time: str
    fields: dict[str, Any]


def log_files(logs_dir: Path) -> list[Path]:
    """Every current and rotated log file, oldest rotation first within each service."""
    def order(path: Path) -> tuple[str, int]:
        stem, _, number = path.name.partition(".log")
        return stem, -int(number[1:]) if number.startswith(".") and number[1:].isdigit() else 0
    return sorted((p for p in logs_dir.glob("*.log*") if _ROTATED.search(p.name)
                   and p.is_file()), key=order)


def _service(path: Path) -> str:
    return path.name.partition(".log")[0]


def _parse(line: str) -> dict[str, Any] | None:
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        data = json.loads(line)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def _names_image(data: dict[str, Any], image_id: str) -> bool:
    if data.get("image_id") == image_id or data.get("reuse_of") == image_id:
        return True
    ids = data.get("image_ids")
    if isinstance(ids, list) and image_id in ids:
        return True
    uri = data.get("uri")
    return isinstance(uri, str) and image_id in uri


def _scan(files: Iterable[Path], needles: tuple[str, ...]) -> Iterator[tuple[Path, dict]]:
    for path in files:
        try:
            with path.open(encoding="utf-8", errors="replace") as handle:
                for line in handle:
                    if any(n in line for n in needles):
                        data = _parse(line)
                        if data is not None:
                            yield path, data
        except OSError:
            continue


def lines_about(image_id: str, logs_dir: Path,
                request_ids: Iterable[str] = ()) -> list[LogLine]:
    """The lines about ``image_id`` across every log, in time order; ``request_ids`` adds
    request ids known from elsewhere (the result's own ``request_id``)."""
    files = log_files(logs_dir)
    rids = {r for r in request_ids if r}
    for _path, data in _scan(files, (image_id,)):
        if _names_image(data, image_id) and isinstance(data.get("request_id"), str):
            rids.add(data["request_id"])
    rids.discard("")
    found: list[LogLine] = []
    for path, data in _scan(files, (image_id, *rids)):
        if _names_image(data, image_id) or data.get("request_id") in rids:
            stamp = str(data.get("timestamp") or data.get("time") or "")
            found.append(LogLine(_service(path), stamp, data))
    found.sort(key=lambda line: _sortable(line.time))
    return found


def _sortable(stamp: str) -> str:
    """ISO times from structlog (``...23:54:31.650Z``) and Nginx (``...23:54:31+00:00``,
    whole seconds) as one sortable form, ``2026-12-02 23:54:31.650``."""
    text = stamp.replace("+00:00", "").rstrip("Z").replace("T", " ")
    if len(text) == 19:  # whole seconds
        text += ".000"
    return text


_SHOWN_FIRST = ("timestamp", "time", "level", "event", "component", "logger")


def render(line: LogLine) -> str:
    """``time service level message key=value ...`` for one line."""
    data = line.fields
    message = data.get("event")
    if message is None and "method" in data:  # the gateway's access log
        message = f"{data.get('method')} {data.get('uri')} -> {data.get('status')}"
    rest = " ".join(f"{k}={json.dumps(v, ensure_ascii=False) if not isinstance(v, str) else v}"
                    for k, v in data.items() if k not in _SHOWN_FIRST and v not in ("", None))
    level = str(data.get("level") or "-")
    return f"{_sortable(line.time)[:23]:<23} {line.service:<16} {level:<7} {message}  {rest}"
