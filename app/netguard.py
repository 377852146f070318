"""Server-side request forgery guard for webhooks: where a callback may and may not go.

A ``callback_url`` is a URL a client chose, and the worker POSTs to it from inside the
deployment. Without a guard a client could make it talk to loopback services (Redis, MinIO's
admin API, the workers' own ports), to the private network, or to a cloud metadata service
(169.254.169.254, fd00:ec2::254), which hands out credentials.

Rule: every address a callback host is or resolves to must be globally routable unicast.
Loopback, RFC 1918 and other private ranges, fc00::/7, link-local (169.254/16, fe80::/10,
where metadata services live), multicast, unspecified, shared (100.64/10) and reserved ranges
are refused, and so are IPv4-mapped/6to4/Teredo forms of them. The check runs at upload (a
400 before anything is stored) and again at send time on a fresh resolution (DNS answers can
change), and the connection is then made to exactly the vetted addresses (no second lookup
an attacker's DNS could answer differently). Redirects are never followed.

``IMAGEREC_CALLBACK_ALLOW_NETS`` (comma-separated CIDRs, empty by default) opts intranet
receivers in: addresses inside those networks are accepted even though they are private.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
MAX_URL_LEN = 2048


class CallbackRefused(ValueError):
    """The callback URL is malformed or its host is (or resolves to) a refused address."""


@lru_cache(maxsize=8)
def parse_allow_nets(value: str) -> tuple[Network, ...]:
    """``"10.1.0.0/16, 127.0.0.2/32"`` as networks; a bad entry is a startup-time error."""
    nets: list[Network] = []
    for item in (value or "").split(","):
        item = item.strip()
        if item:
            try:
                nets.append(ipaddress.ip_network(item, strict=False))
            except ValueError as exc:
                raise ValueError(f"IMAGEREC_CALLBACK_ALLOW_NETS: {item!r} is not a network "
                                 "(use CIDR notation, e.g. 10.0.0.0/8)") from exc
    return tuple(nets)


def _embedded_v4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address inside an IPv4-mapped, 6to4 or Teredo IPv6 address, if any."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    return None


def address_allowed(ip: IPAddress, allow: Iterable[Network] = ()) -> bool:
    """True for a globally routable unicast address, or one inside an allowed network."""
    if any(ip.version == net.version and ip in net for net in allow):
        return True
    if isinstance(ip, ipaddress.IPv6Address):
        inner = _embedded_v4(ip)
        if inner is not None and not address_allowed(inner, allow):
            return False
    return (ip.is_global and not ip.is_multicast and not ip.is_private
            and not ip.is_loopback and not ip.is_link_local and not ip.is_unspecified
            and not ip.is_reserved)


@dataclass(frozen=True)
class Target:
    """A vetted callback: the URL, its host and port, and the addresses it may connect to."""

    url: str
    host: str
    port: int
    addresses: tuple[tuple[int, str], ...]  # (family, address)


def split_url(url: str) -> tuple[str, int, str | None]:
    """``(host, port, literal_ip_or_None)``; refuses anything but an absolute http(s) URL."""
    if not isinstance(url, str) or not url or len(url) > MAX_URL_LEN:
        raise CallbackRefused("callback_url must be an absolute http(s) URL of at most "
                              f"{MAX_URL_LEN} characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise CallbackRefused(f"callback_url is malformed: {exc}") from exc
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise CallbackRefused("callback_url must be an absolute http(s) URL")
    if any(c in url for c in "\r\n\t\x00 "):
        raise CallbackRefused("callback_url contains whitespace or control characters")
    host = parts.hostname.rstrip(".").lower()
    if not host:
        raise CallbackRefused("callback_url has no host")
    port = port or (443 if parts.scheme == "https" else 80)
    try:
        literal = str(ipaddress.ip_address(host.split("%", 1)[0]))
    except ValueError:
        # A name, or a numeric form such as 2130706433 or 0x7f.1 that getaddrinfo reads as
        # 127.0.0.1: either way the resolved addresses are what is checked.
        literal = None
    return host, port, literal


async def _resolve(host: str, port: int) -> list[tuple[int, str]]:
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise CallbackRefused(f"callback_url host {host!r} does not resolve") from exc
    out: list[tuple[int, str]] = []
    for family, _, _, _, sockaddr in infos:
        address = str(sockaddr[0]).split("%", 1)[0]
        if (family, address) not in out:
            out.append((int(family), address))
    return out


async def vet(url: str, allow_nets: str = "") -> Target:
    """Check ``url`` now: its host and every address it resolves to must be allowed.

    One refused address refuses the URL (an attacker may control which of several records a
    client library picks)."""
    host, port, literal = split_url(url)
    allow = parse_allow_nets(allow_nets)
    if literal is not None:
        ip = ipaddress.ip_address(literal)
        addresses = [(socket.AF_INET6 if ip.version == 6 else socket.AF_INET, literal)]
    else:
        addresses = await _resolve(host, port)
    if not addresses:
        raise CallbackRefused(f"callback_url host {host!r} does not resolve")
    for _, address in addresses:
        if not address_allowed(ipaddress.ip_address(address), allow):
            raise CallbackRefused(
                f"callback_url host {host!r} is or resolves to a refused address "
                f"({address}: loopback, private, link-local, multicast, unspecified or "
                "reserved); an operator can allow intranet receivers with "
                "IMAGEREC_CALLBACK_ALLOW_NETS")
    return Target(url=url, host=host, port=port, addresses=tuple(addresses))


class PinnedResolver(AbstractResolver):
    """An aiohttp resolver that answers only the vetted addresses of one target's host, so
    the connection goes exactly where the check said it may."""

    def __init__(self, target: Target) -> None:
        self.target = target

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[Any]:
        if host.rstrip(".").lower() != self.target.host:
            raise OSError(f"refusing to resolve {host!r}: not the vetted callback host")
        found = [{"hostname": host, "host": address, "port": port or self.target.port,
                  "family": fam, "proto": 0, "flags": socket.AI_NUMERICHOST}
                 for fam, address in self.target.addresses
                 if family in (socket.AF_UNSPEC, fam)]
        if not found:
            raise OSError(f"no vetted address of {host!r} in family {family!r}")
        return found

    async def close(self) -> None:
        return None
