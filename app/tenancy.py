"""Who is asking, and what they may see: the tenant boundary in one place.

The gateway's auth check (``web.auth``) resolves the API key and nginx forwards the key's
tenant and scopes to the upstream as ``X-Api-Tenant`` and ``X-Api-Scopes`` (any value a client
sent is replaced). Workers and functions listen on loopback only, so they trust these headers
as they already trust ``X-Api-Key-Name``.

Every image records its tenant (the upload event, the result document, the original's
object metadata). A tenant sees only its own images; an admin sees all. Anything else answers
exactly as an unknown id does, so ids of other tenants cannot even be confirmed to exist.
Images stored before tenants existed have no tenant and are visible to admins only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

TENANT_HEADER = "X-Api-Tenant"
SCOPES_HEADER = "X-Api-Scopes"
ORIGINAL_TENANT_META = "tenant"  # user metadata on the stored original (x-amz-meta-tenant)


@dataclass(frozen=True)
class Principal:
    """The caller: its tenant and scopes."""

    tenant: str
    scopes: frozenset[str]

    @property
    def admin(self) -> bool:
        return "admin" in self.scopes

    def can(self, scope: str) -> bool:
        return self.admin or scope in self.scopes

    def sees(self, tenant: str | None) -> bool:
        """May this caller see an image of ``tenant`` (``None``/"" for pre-tenant images)?"""
        return self.admin or (bool(tenant) and tenant == self.tenant)

    def sees_result(self, result: Mapping[str, Any] | None) -> bool:
        return result is not None and self.sees(result.get("tenant"))


def from_headers(headers: Mapping[str, str]) -> Principal | None:
    """The caller as the gateway described it; None when the request did not pass the gateway
    (no tenant header), which data endpoints refuse."""
    tenant = (headers.get(TENANT_HEADER) or "").strip()
    if not tenant:
        return None
    scopes = frozenset(s.strip() for s in (headers.get(SCOPES_HEADER) or "").split(",")
                       if s.strip())
    return Principal(tenant=tenant, scopes=scopes)


def auth_headers(tenant: str, scopes: tuple[str, ...] | frozenset[str]) -> dict[str, str]:
    """What the auth check answers so nginx can forward it (the inverse of ``from_headers``)."""
    return {TENANT_HEADER: tenant, SCOPES_HEADER: ",".join(sorted(scopes))}
