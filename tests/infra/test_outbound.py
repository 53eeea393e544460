"""The outbound SSRF guard (G9): which addresses it refuses, that allow networks open exactly
what they list, and that it holds end to end — through names, odd IP literal forms, IPv4-mapped
IPv6 and redirects — against a real server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.delivery.providers.base import ProviderServer, Received, Reply
from tidings.infra.outbound import (
    OutboundBlocked,
    OutboundClient,
    OutboundConnectionError,
    OutboundPolicy,
    OutboundTooLarge,
)

REFUSED = [
    "127.0.0.1",
    "127.255.255.254",
    "0.0.0.0",
    "10.1.2.3",
    "172.16.0.1",
    "172.31.255.255",
    "192.168.1.1",
    "169.254.169.254",  # cloud metadata
    "100.64.0.1",  # CGNAT
    "192.0.2.10",  # documentation
    "198.18.0.1",  # benchmarking
    "224.0.0.1",  # multicast
    "255.255.255.255",
    "::1",
    "::",
    "fc00::1",  # unique local
    "fd12:3456::1",
    "fe80::1",  # link-local
    "ff02::1",  # multicast
    "::ffff:127.0.0.1",  # IPv4-mapped loopback
    "::ffff:a9fe:a9fe",  # IPv4-mapped 169.254.169.254 (the HackerOne 2301565 bypass)
    "::ffff:10.0.0.1",
]
PERMITTED = ["8.8.8.8", "1.1.1.1", "93.184.215.14", "2606:4700:4700::1111", "::ffff:8.8.8.8"]


@pytest.mark.parametrize("address", REFUSED)
def test_non_public_addresses_refused_by_default(address: str) -> None:
    assert not OutboundPolicy().permits(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", PERMITTED)
def test_public_addresses_permitted(address: str) -> None:
    assert OutboundPolicy().permits(ipaddress.ip_address(address))


def test_allow_networks_open_exactly_what_they_list() -> None:
    policy = OutboundPolicy.from_strings(["10.0.0.0/8", "fd00::/8"])
    assert policy.permits(ipaddress.ip_address("10.200.0.1"))
    assert policy.permits(ipaddress.ip_address("::ffff:10.200.0.1"))  # mapped form too
    assert policy.permits(ipaddress.ip_address("fd12::1"))
    assert not policy.permits(ipaddress.ip_address("192.168.1.1"))
    assert not policy.permits(ipaddress.ip_address("127.0.0.1"))
    assert not policy.permits(ipaddress.ip_address("fc00::1"))
    assert not policy.permits(ipaddress.ip_address("169.254.169.254"))


@dataclass
class Target(ProviderServer):
    """Answers 200, or a redirect to `/landing` on `/redirect`."""

    def handle(self, request: Received) -> Reply:
        if request.path == "/redirect":
            return Reply(302, headers=(("Location", f"{self.base_url}/landing"),))
        return Reply.json({"path": request.path})


@pytest.fixture
async def target() -> AsyncIterator[Target]:
    async with Target() as server:
        yield server


async def get(policy: OutboundPolicy, url: str) -> httpx.Response:
    async with OutboundClient(policy, timeout_seconds=2.0) as client:
        return await client.request("GET", url)


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        "localhost",  # a name that resolves to loopback
        "[::ffff:127.0.0.1]",
        "2130706433",  # 127.0.0.1 as one decimal number
        "0x7f000001",  # … in hex
        "017700000001",  # … in octal
        "127.1",  # … shortened
    ],
)
async def test_loopback_refused_in_every_spelling(target: Target, host: str) -> None:
    with pytest.raises(OutboundBlocked):
        await get(OutboundPolicy(), f"http://{host}:{target.port}/secret")
    assert target.received == []


async def test_ipv6_loopback_refused() -> None:
    with pytest.raises(OutboundBlocked):
        await get(OutboundPolicy(), "http://[::1]:9/")


async def test_allowed_network_reaches_the_server(target: Target) -> None:
    response = await get(OutboundPolicy.from_strings(["127.0.0.0/8"]), f"{target.base_url}/ok")
    assert response.status_code == 200
    assert response.json() == {"path": "/ok"}
    # A neighbouring network does not open loopback.
    with pytest.raises(OutboundBlocked):
        await get(OutboundPolicy.from_strings(["10.0.0.0/8"]), f"{target.base_url}/ok")


async def test_a_callers_header_replaces_the_default_of_that_name_in_any_case(
    target: Target,
) -> None:
    policy = OutboundPolicy.from_strings(["127.0.0.0/8"])
    async with OutboundClient(policy, timeout_seconds=2.0) as client:
        await client.request("GET", f"{target.base_url}/a")
        await client.request(
            "GET", f"{target.base_url}/b", headers={"user-agent": "mine"}, auth=("u", "p")
        )
    default, replaced = target.received
    assert default.headers["user-agent"] == "Tidings"
    assert replaced.headers["user-agent"] == "mine"  # one value, not "Tidings, mine"
    assert replaced.headers["authorization"] == "Basic dTpw"


async def test_redirects_are_not_followed(target: Target) -> None:
    response = await get(
        OutboundPolicy.from_strings(["127.0.0.0/8"]), f"{target.base_url}/redirect"
    )
    assert response.status_code == 302
    assert [r.path for r in target.received] == ["/redirect"]


async def test_a_name_with_any_private_address_is_refused(
    monkeypatch: pytest.MonkeyPatch, target: Target
) -> None:
    # The resolver (the operating system's, replaced here) answers one public and one private
    # address, as a rebinding or split-horizon name would: the guard refuses the whole name,
    # and it asks at connect time, so there is no earlier check to fool.
    loop = asyncio.get_running_loop()
    asked: list[str] = []

    async def resolver(host: str, port: int, *args: Any, **kwargs: Any) -> list[Any]:
        asked.append(host)
        return [
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.215.14", port)),
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port)),
        ]

    monkeypatch.setattr(loop, "getaddrinfo", resolver)
    with pytest.raises(OutboundBlocked, match=r"127\.0\.0\.1"):
        await get(OutboundPolicy(), f"http://rebind.example:{target.port}/")
    assert asked == ["rebind.example"]
    assert target.received == []


async def test_resolving_fails_as_a_connect_error() -> None:
    with pytest.raises(OutboundConnectionError, match=r"no-such-host\.invalid"):
        await get(OutboundPolicy(), "http://no-such-host.invalid/")


async def test_a_public_address_in_a_numeric_spelling_is_refused_before_connecting() -> None:
    # 16843009 is 1.1.1.1: public, but a spelling that hides what it is; the canonical form is
    # asked for, and nothing is sent (the refusal comes before any connection).
    with pytest.raises(OutboundBlocked, match=r"write it as 1\.1\.1\.1"):
        await get(OutboundPolicy(), "http://16843009/")


async def test_a_body_over_the_limit_is_refused(target: Target) -> None:
    policy = OutboundPolicy.from_strings(["127.0.0.0/8"])
    async with OutboundClient(policy, timeout_seconds=2.0) as client:
        small = await client.request("GET", f"{target.base_url}/ok", max_bytes=1_000)
        assert small.json() == {"path": "/ok"}
        with pytest.raises(OutboundTooLarge) as refused:
            await client.request("GET", f"{target.base_url}/ok", max_bytes=5)
    assert refused.value.status == 200
