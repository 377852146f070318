"""A schemathesis check loaded by tests/integration/test_openapi.py (``SCHEMATHESIS_HOOKS``):
no response to the fuzzing tenant may carry anything of the other tenant's images.

``IMAGEREC_FOREIGN_MARKERS`` lists, comma-separated, the other tenant's image ids, its tenant
name and its images' digests; any of them in any response body or header fails the run.
"""

from __future__ import annotations

import os

import schemathesis

MARKERS = [m for m in os.environ.get("IMAGEREC_FOREIGN_MARKERS", "").split(",") if m]


@schemathesis.check
def no_other_tenants_data(ctx, response, case) -> None:  # noqa: ANN001
    """Fail when a response shows the other tenant's ids, name or image digests."""
    body = response.content or b""
    headers = " ".join(f"{k}: {v}" for k, v in response.headers.items())
    for marker in MARKERS:
        if marker.encode() in body or marker in headers:
            raise AssertionError(f"response carries another tenant's data ({marker[:12]}...)")
