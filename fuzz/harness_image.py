"""atheris harness: image inspection (the upload path) and decoding (the classify agent).

Contract (app/imaging.py): ``inspect`` and ``prepare`` return or raise an ``ImageError``
subclass (415/422/413); any other exception escaping them is a finding. Seeds: one small
valid file of every allowed format, so the fuzzer starts inside each decoder.

    .venv/bin/python fuzz/harness_image.py -max_total_time=60 fuzz/corpus/image
"""

from __future__ import annotations

import os
import sys

import atheris

os.environ.setdefault("IMAGEREC_MAX_PIXELS", "4000000")  # keep one input's decode bounded

with atheris.instrument_imports(include=["app", "PIL"]):
    from app import imaging
    from app.imaging import ImageError, PreprocessSpec

from fuzz.common import record

SPEC = PreprocessSpec()


def test_one(data: bytes) -> None:
    try:
        imaging.inspect(data)
    except ImageError:
        return
    except Exception as exc:  # noqa: BLE001 - exactly what the fuzzer looks for
        record("inspect", data, exc)
        return
    try:
        imaging.prepare(data, SPEC)
    except ImageError:
        return
    except Exception as exc:  # noqa: BLE001
        record("prepare", data, exc)


def main() -> None:
    atheris.Setup(sys.argv, test_one)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
