"""atheris harness: the upload event parser (what the classify agent does with each message).

Contract (app/results.py): ``UploadEvent.from_bytes`` returns an event whose fields have the
documented types, or raises ``BadEvent`` (the message goes to the DLQ); any other exception
would escape the agent's parse loop and is a finding, and so is an event with a mistyped
field (it would fail later, inside a batch). Seeds: real events.

    .venv/bin/python fuzz/harness_event.py -max_total_time=60 fuzz/corpus/event
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports(include=["app"]):
    from app import results as res

from fuzz.common import record

TYPES = {"id": str, "sha256": str, "format": str, "size": int, "created_at": str,
         "request_id": str, "width": int, "height": int, "tenant": str}


class MistypedField(AssertionError):
    """A parsed event whose field has the wrong type."""


def test_one(data: bytes) -> None:
    try:
        event = res.UploadEvent.from_bytes(data)
    except res.BadEvent:
        return
    except Exception as exc:  # noqa: BLE001 - exactly what the fuzzer looks for
        record("event", data, exc)
        return
    for name, kind in TYPES.items():
        value = getattr(event, name)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            record("event", data, MistypedField(f"{name}={value!r}"))
            return
    if event.callback_url is not None and not isinstance(event.callback_url, str):
        record("event", data, MistypedField(f"callback_url={event.callback_url!r}"))


def main() -> None:
    atheris.Setup(sys.argv, test_one)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
