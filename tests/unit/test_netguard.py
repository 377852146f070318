"""The webhook SSRF guard: which addresses are refused, and the pinned resolver.

Nothing here opens a connection: literal addresses are checked without one, and names are
only resolved (``localhost`` from /etc/hosts)."""

from __future__ import annotations

import asyncio
import ipaddress
import socket

import pytest

from app import callbacks, netguard
from app.netguard import CallbackRefused, address_allowed, parse_allow_nets

REFUSED = ["127.0.0.1", "127.8.9.10", "::1", "10.0.0.1", "172.16.5.4", "192.168.1.1",
           "169.254.169.254", "100.100.100.200", "fd00:ec2::254", "fe80::1", "0.0.0.0", "::",
           "224.0.0.1", "ff02::1", "240.0.0.1", "255.255.255.255", "::ffff:127.0.0.1",
           "::ffff:169.254.169.254", "2002:7f00:1::", "100.64.0.1", "198.18.0.1",
           "192.0.2.1"]
ALLOWED = ["93.184.215.14", "8.8.8.8", "2606:4700:4700::1111", "1.1.1.1"]


@pytest.mark.parametrize("address", REFUSED)
def test_non_global_addresses_are_refused(address: str) -> None:
    assert not address_allowed(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ALLOWED)
def test_global_unicast_addresses_are_allowed(address: str) -> None:
    assert address_allowed(ipaddress.ip_address(address))


def test_the_allow_list_opts_networks_in() -> None:
    allow = parse_allow_nets("127.0.0.2/32, 10.20.0.0/16")
    assert address_allowed(ipaddress.ip_address("127.0.0.2"), allow)
    assert address_allowed(ipaddress.ip_address("10.20.3.4"), allow)
    assert not address_allowed(ipaddress.ip_address("127.0.0.1"), allow)
    assert not address_allowed(ipaddress.ip_address("10.21.0.1"), allow)
    with pytest.raises(ValueError):
        parse_allow_nets("not-a-net")


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:9/x", "http://[::1]/", "http://10.0.0.1/", "http://169.254.169.254/latest",
    "http://0.0.0.0:8080/", "http://localhost:1234/", "http://LOCALHOST./", "http://2130706433/",
    "http://0x7f.1/", "https://[::ffff:7f00:1]/", "http://[fe80::1%25eth0]/",
])
def test_vet_refuses_loopback_private_link_local_and_unspecified(url: str) -> None:
    with pytest.raises(CallbackRefused):
        asyncio.run(netguard.vet(url))


@pytest.mark.parametrize("url", ["ftp://x/y", "javascript:alert(1)", "/rel", "http://",
                                 "http://a b/", "http://x:99999/", "h" * 3000])
def test_vet_refuses_malformed_urls(url: str) -> None:
    with pytest.raises(CallbackRefused):
        asyncio.run(netguard.vet(url))


def test_vet_accepts_an_allowed_literal_and_pins_it() -> None:
    target = asyncio.run(netguard.vet("http://127.0.0.2:8123/hook", "127.0.0.2/32"))
    assert target.addresses == ((socket.AF_INET, "127.0.0.2"),)
    assert target.port == 8123
    target = asyncio.run(netguard.vet("https://8.8.8.8/hook"))
    assert target.port == 443


def test_the_pinned_resolver_answers_only_the_vetted_host() -> None:
    target = netguard.Target(url="http://hooks.example/", host="hooks.example", port=80,
                             addresses=((socket.AF_INET, "93.184.215.14"),))
    resolver = netguard.PinnedResolver(target)
    found = asyncio.run(resolver.resolve("hooks.example", 80, socket.AF_UNSPEC))
    assert [f["host"] for f in found] == ["93.184.215.14"]
    with pytest.raises(OSError):
        asyncio.run(resolver.resolve("other.example", 80))
    with pytest.raises(OSError):
        asyncio.run(resolver.resolve("hooks.example", 80, socket.AF_INET6))


def test_a_refused_target_is_blocked_at_send_time_without_a_connection(monkeypatch) -> None:  # noqa: ANN001
    """DNS changed since the upload: the send-time check refuses, and no socket is opened.

    The spy refuses to create any IP socket, so even a broken guard sends nothing."""
    opened: list[object] = []
    real = socket.socket

    def spy(family: int = socket.AF_INET, *args: object, **kwargs: object) -> socket.socket:
        if family in (socket.AF_INET, socket.AF_INET6):
            opened.append(family)
            raise OSError("the test forbids IP sockets")
        return real(family, *args, **kwargs)  # the event loop's own AF_UNIX pair

    monkeypatch.setattr(socket, "socket", spy)
    outcome = asyncio.run(callbacks._attempt(  # noqa: SLF001
        "http://127.0.0.1:9/hook", b"{}", {}, "", 5.0))
    assert outcome.final == "blocked" and outcome.status is None
    assert opened == []


def test_backoff_doubles_and_is_capped() -> None:
    assert [callbacks.backoff_s(n, 2.0) for n in range(5)] == [0.0, 2.0, 4.0, 8.0, 16.0]
    assert callbacks.backoff_s(30, 2.0) == callbacks.MAX_BACKOFF_S


def test_the_signature_is_the_same_for_the_same_result() -> None:
    result = {"id": "01J0000000000000000000000A", "status": "done", "labels": [],
              "callback_url": "http://x/", "tenant": "t"}
    body = callbacks.body_of(result)
    assert body == callbacks.body_of(dict(result))
    assert b"callback_url" not in body
    assert callbacks.sign(body, "s") == callbacks.sign(callbacks.body_of(result), "s")
