"""Outbound connections to user-supplied addresses, guarded against SSRF (G9).

The check happens where the socket is opened, on the addresses the name resolved to, so a
name that resolves to a public address when checked and a private one when connected (DNS
rebinding) cannot slip through. A host is refused when any of its addresses is not public
(loopback, private, link-local, CGNAT, multicast, reserved, IPv4-mapped forms of those) unless
an allowed network contains it. TLS still verifies the certificate against the host name.
Redirects are not followed: a redirect to an internal address would be a way around the guard.

`OutboundClient` sends requests built with httpx's models over aiohttp's connection pool:
httpx encodes bodies, forms and query strings the way connectors expect, and aiohttp's client
costs a third of httpx's CPU per exchange (measured in bench.delivery), which at provider
latency is most of a delivery's cost.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import ipaddress
import socket
import ssl
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import httpx
from aiohttp.abc import AbstractResolver, ResolveResult

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class OutboundBlocked(Exception):  # noqa: N818 - a refusal, reported as error class "blocked"
    """The address is not public and no allowed network contains it."""


class OutboundConnectionError(Exception):
    """No answer came: the name did not resolve, the connection was refused or reset, or the
    peer broke the protocol. The text names the host, never the URL (a path can be a secret)."""


class OutboundTooLarge(Exception):  # noqa: N818 - a refusal of the answer
    """The answer's body is larger than the caller's limit."""

    def __init__(self, status: int, limit: int) -> None:
        super().__init__(f"the answer is larger than {limit} bytes")
        self.status = status
        self.limit = limit


@dataclass(frozen=True)
class OutboundPolicy:
    allow_networks: Sequence[IPNetwork] = field(default_factory=tuple)

    @classmethod
    def from_strings(cls, networks: Iterable[str]) -> OutboundPolicy:
        return cls(tuple(ipaddress.ip_network(n, strict=False) for n in networks))

    def permits(self, address: IPAddress) -> bool:
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if any(address in network for network in self.allow_networks):
            return True
        return address.is_global and not address.is_multicast

    async def resolve(self, host: str, port: int) -> list[str]:
        """The addresses of `host`, all permitted, or OutboundBlocked."""
        try:
            literal: IPAddress | None = ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            literal = None
        if literal is not None:
            addresses = [literal]
        else:
            loop = asyncio.get_running_loop()
            try:
                infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            except socket.gaierror as exc:
                raise OutboundConnectionError(f"cannot resolve {host!r}: {exc}") from exc
            addresses = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]
        refused = [a for a in addresses if not self.permits(a)]
        if refused or not addresses:
            raise _blocked(host, refused[0] if refused else None)
        return list(dict.fromkeys(str(a) for a in addresses))

    def check(self, address: IPAddress) -> None:
        """OutboundBlocked unless `address` (an address literal of a URL) is permitted."""
        if not self.permits(address):
            raise _blocked(str(address), address)


def _blocked(host: str, refused: IPAddress | None) -> OutboundBlocked:
    return OutboundBlocked(
        f"{host} resolves to a non-public address ({refused or 'none'}); "
        "allow its network with TIDINGS_OUTBOUND_ALLOW_NETWORKS if it is meant"
    )


# Both parse the same few provider URLs on every request (a tenth of a delivery's CPU): the
# results are immutable, so they are parsed once per process.
_parsed_url = functools.lru_cache(maxsize=1024)(httpx.URL)


@functools.lru_cache(maxsize=1024)
def literal_address(host: str) -> IPAddress | None:
    """The address `host` spells, in any form the C library accepts (`127.1`, `2130706433`,
    `0x7f000001`, `[::1]` …), or None for a name."""
    bare = host.strip("[]")
    try:
        return ipaddress.ip_address(bare)
    except ValueError:
        pass
    try:
        return ipaddress.IPv4Address(socket.inet_aton(bare))
    except OSError:
        return None


class _GuardedResolver(AbstractResolver):
    """aiohttp's resolver hook: every name is resolved through the policy at connect time."""

    def __init__(self, policy: OutboundPolicy) -> None:
        self._policy = policy

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        return [
            ResolveResult(
                hostname=host,
                host=address,
                port=port,
                family=socket.AF_INET6 if ":" in address else socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
            for address in await self._policy.resolve(host, port)
        ]

    async def close(self) -> None:
        return None


class OutboundClient:
    """HTTP to user-supplied URLs: guarded, no redirects, no proxy from the environment, the
    whole exchange bounded by `timeout_seconds` and the body by the caller's limit.

    The pool is made on first use, in the running event loop; `aclose()` closes it.
    """

    def __init__(
        self,
        policy: OutboundPolicy,
        *,
        timeout_seconds: float,
        max_connections: int = 200,
        headers: Mapping[str, str] | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.policy = policy
        self.timeout_seconds = timeout_seconds
        self._max_connections = max_connections
        self._headers = dict(headers or {"User-Agent": "Tidings"})
        self._ssl_context = ssl_context
        self._session: aiohttp.ClientSession | None = None

    def build_request(
        self,
        method: str,
        url: str | httpx.URL,
        *,
        headers: Mapping[str, str] | None = None,
        auth: tuple[str, str] | None = None,
        **body: Any,
    ) -> httpx.Request:
        """An httpx request (`params`, `json`, `data`, `content` as httpx takes them) with this
        client's default headers and, for `auth`, HTTP basic credentials."""
        given = dict(headers or {})
        if auth is not None:
            pair = f"{auth[0]}:{auth[1]}".encode()
            given["Authorization"] = "Basic " + base64.b64encode(pair).decode("ascii")
        # The caller's headers replace defaults of the same name (in any case); one list, so
        # httpx builds its Headers once rather than three times.
        named = {name.lower() for name in given}
        merged = [(k, v) for k, v in self._headers.items() if k.lower() not in named]
        merged += given.items()
        return httpx.Request(
            method, _parsed_url(url) if isinstance(url, str) else url, headers=merged, **body
        )

    async def request(
        self, method: str, url: str | httpx.URL, *, max_bytes: int = 1_048_576, **kwargs: Any
    ) -> httpx.Response:
        return await self.send(self.build_request(method, url, **kwargs), max_bytes=max_bytes)

    async def send(self, request: httpx.Request, *, max_bytes: int) -> httpx.Response:
        """The answer to `request`, its body read whole.

        Raises OutboundBlocked, OutboundConnectionError, OutboundTooLarge, TimeoutError, or
        ValueError for a URL that cannot be sent (not http(s), no host).
        """
        url = request.url
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError("not an absolute http(s) URL")
        literal = literal_address(url.host)
        if literal is not None:
            # aiohttp connects to an address literal without asking the resolver.
            self.policy.check(literal)
            if url.host.strip("[]") != str(literal):
                raise OutboundBlocked(
                    f"{url.host} is not a canonical address; write it as {literal}"
                )
        headers = [(k, v) for k, v in request.headers.multi_items() if k.lower() != "host"]
        try:
            async with asyncio.timeout(self.timeout_seconds):
                async with self._pool().request(
                    request.method,
                    str(url),
                    headers=headers,
                    data=request.read() or None,
                    allow_redirects=False,
                ) as answer:
                    if answer.content_length is not None and answer.content_length > max_bytes:
                        raise OutboundTooLarge(answer.status, max_bytes)
                    chunks: list[bytes] = []
                    size = 0
                    async for chunk in answer.content.iter_chunked(65_536):
                        size += len(chunk)
                        if size > max_bytes:
                            raise OutboundTooLarge(answer.status, max_bytes)
                        chunks.append(chunk)
        except aiohttp.InvalidURL:
            raise ValueError("the URL cannot be sent") from None
        except aiohttp.ClientError as exc:
            raise OutboundConnectionError(_describe(exc, url.host)) from None
        return httpx.Response(
            answer.status,
            # The body is kept decoded: the headers that described its transfer no longer do.
            headers=[(k, v) for k, v in answer.headers.items() if k.lower() not in _BODY_HEADERS],
            content=b"".join(chunks),
            request=request,
        )

    def _pool(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                limit=self._max_connections,
                resolver=_GuardedResolver(self.policy),
                ssl=self._ssl_context or True,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=None),  # bounded by send()
                trust_env=False,
                auto_decompress=True,
                skip_auto_headers=("User-Agent",),
            )
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        # asyncio closes a transport's socket one loop turn after close().
        await asyncio.sleep(0)

    async def __aenter__(self) -> OutboundClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


_BODY_HEADERS = ("content-encoding", "content-length", "transfer-encoding")


def _describe(error: aiohttp.ClientError, host: str) -> str:
    """A text for a transport failure that names the host and the failure, not the URL."""
    if isinstance(error, aiohttp.ClientConnectorError):
        return f"cannot connect to {host}: {error.os_error}"
    if isinstance(error, aiohttp.ServerDisconnectedError):
        return f"{host} closed the connection before answering"
    return f"{type(error).__name__} from {host}"
