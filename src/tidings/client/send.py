"""`SendClient` / `SyncSendClient`: the send API (send, batch, get, list, cancel, wait), typed.

Both clients share everything but the I/O: `_Calls` turns each method into a `_Call` (the
request and how to read its answer), `RetryPolicy` decides whether and when to try again, and
`_Waiting` paces `wait()`. The async client awaits; the sync one blocks; neither runs an event
loop of its own.

Sends are safe to retry: each `send()` / `send_batch()` carries an `Idempotency-Key`, generated
once per call unless given, and every retry of that call repeats the same key. The server answers
a repeat with the first answer (`Accepted.replayed`), so a send whose answer was lost in transit
is never delivered twice.
"""

from __future__ import annotations

import asyncio
import builtins
import random
import time
import uuid
from collections.abc import AsyncIterator, Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Generic, Protocol, TypedDict, TypeVar, Unpack
from urllib.parse import quote

import httpx
from pydantic import BaseModel
from pydantic_core import to_jsonable_python

from tidings.client.errors import TidingsError
from tidings.client.http import Id
from tidings.client.send_models import (
    SETTLED_STATUSES,
    Accepted,
    Connector,
    ConnectorOptions,
    ConnectorStats,
    ConnectorTest,
    MessageFilters,
    OutboundMessage,
    OutboundPage,
    Route,
    SendItem,
    SendOptions,
)

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)

MESSAGES = "/api/v1/messages"
USER_AGENT = "tidings-python-sdk"
# Answers after which the same request may succeed; 501 (not implemented) never will.
_RETRY_STATUSES = frozenset({500, 502, 503, 504})
# Failures where the request may have reached the server: retried only when a repeat is safe.
_TRANSIENT_ERRORS = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)
# Failures before the request left: always safe to retry.
_UNSENT_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


def new_idempotency_key() -> str:
    """A fresh `Idempotency-Key` (what `send()` uses when not given one)."""
    return str(uuid.uuid4())


class ClientOptions(TypedDict, total=False):
    """Options of both clients.

    `api_key` (`tdk_…`, implies its workspace) or `access_token` (a user: give `workspace_id`
    too); `workspace_id` is also needed for the connector and route helpers. `retry` is the
    `RetryPolicy`; `headers` are sent with every request.
    """

    api_key: str
    access_token: str
    workspace_id: Id
    timeout: float
    retry: RetryPolicy
    headers: Mapping[str, str]


@dataclass(frozen=True)
class RetryPolicy:
    """When a failed request is tried again: up to `retries` more times, after a jittered
    exponential backoff (`initial_backoff` doubling up to `max_backoff` seconds), or after the
    server's `Retry-After` when it gives one. A `Retry-After` longer than `max_retry_after`
    is not waited for: the `TidingsError` (with `retry_after`) is raised instead.

    Retried: transport failures, 500/502/503/504 and 429 for requests that are safe to repeat
    (reads, sends with their idempotency key, cancel); for the others (creating a connector or
    a route, testing a connector) only failures to connect and 429.
    """

    retries: int = 4
    initial_backoff: float = 0.25
    max_backoff: float = 8.0
    max_retry_after: float = 60.0

    def delay(self, call: _Call[Any], outcome: _Outcome, attempt: int) -> float | None:
        """Seconds to wait before trying `call` again after `outcome`; None: it is final."""
        if attempt >= self.retries:
            return None
        if isinstance(outcome, httpx.TransportError):
            transient = _TRANSIENT_ERRORS if call.replayable else _UNSENT_ERRORS
            return self.backoff(attempt) if isinstance(outcome, transient) else None
        status = outcome.status_code
        if status != 429 and not (call.replayable and status in _RETRY_STATUSES):
            return None
        retry_after = TidingsError.from_response(outcome).retry_after
        if retry_after is None:
            return self.backoff(attempt)
        return retry_after if retry_after <= self.max_retry_after else None

    def backoff(self, attempt: int) -> float:
        ceiling = min(self.max_backoff, self.initial_backoff * 2**attempt)
        return random.uniform(ceiling / 2, ceiling)  # noqa: S311 - jitter, not a secret


_Outcome = httpx.Response | httpx.TransportError


def _raise(error: TidingsError) -> Any:
    raise error


@dataclass(frozen=True)
class _Call(Generic[T]):
    """One API call, I/O aside: the request, and how its answer becomes a `T`."""

    method: str
    path: str
    parse: Callable[[httpx.Response], T]
    json: Any = None
    params: Mapping[str, Any] | None = None
    idempotency_key: str | None = None
    replayable: bool = True  # a repeat after an unknown outcome does no harm
    on_error: Callable[[TidingsError], T] = _raise

    def request(self, http: httpx.AsyncClient | httpx.Client, bearer: str | None) -> httpx.Request:
        headers = {"authorization": f"Bearer {bearer}"} if bearer else {}
        if self.idempotency_key is not None:
            headers["idempotency-key"] = self.idempotency_key
        return http.build_request(
            self.method, self.path, json=self.json, params=self.params, headers=headers
        )

    def result(self, outcome: _Outcome) -> T:
        if isinstance(outcome, httpx.TransportError):
            raise outcome
        if outcome.status_code >= 400:
            return self.on_error(TidingsError.from_response(outcome))
        return self.parse(outcome)


@dataclass
class _Attempts(Generic[T]):
    """The attempts of one call: `next_delay()` before each (None once the outcome is final),
    `outcome` after each, `result()` at the end."""

    call: _Call[T]
    policy: RetryPolicy
    outcome: _Outcome | None = None
    attempt: int = 0

    def next_delay(self) -> float | None:
        if self.outcome is None:
            return 0.0
        delay = self.policy.delay(self.call, self.outcome, self.attempt)
        self.attempt += 1
        return delay

    def result(self) -> T:
        if self.outcome is None:
            raise RuntimeError("No attempt was made.")
        return self.call.result(self.outcome)


@dataclass
class _Waiting:
    """`wait()`'s pacing: poll until the status is one of `statuses`, backing off from
    `interval` to `max_interval`, and raise `TimeoutError` at the deadline."""

    timeout: float
    statuses: Collection[str]
    interval: float = 0.1
    max_interval: float = 2.0
    deadline: float = field(init=False)

    def __post_init__(self) -> None:
        self.deadline = time.monotonic() + self.timeout

    def next_delay(self, message: OutboundMessage) -> float | None:
        if message.status in self.statuses:
            return None
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(
                f"Message {message.id} is still {message.status} after {self.timeout} s."
            )
        delay, self.interval = min(self.interval, left), min(self.interval * 1.5, self.max_interval)
        return delay


class _Calls:
    """Every call of the send API, built once for both clients."""

    def __init__(self, workspace_id: Id | None) -> None:
        self.workspace_id = str(workspace_id) if workspace_id is not None else None

    # -- messages ----------------------------------------------------------------------------

    def send(self, to: str, options: SendOptions) -> _Call[Accepted]:
        fields = dict(options)
        key = str(fields.pop("idempotency_key", None) or new_idempotency_key())
        body = self._scoped({"to": to, **fields})
        return _Call("POST", MESSAGES, _accepted, json=body, idempotency_key=key)

    def send_batch(self, items: Iterable[SendItem], key: str | None) -> _Call[list[Accepted]]:
        body = self._scoped({"messages": [dict(item) for item in items]})
        return _Call(
            "POST",
            f"{MESSAGES}/batch",
            _accepted_batch,
            json=body,
            idempotency_key=key or new_idempotency_key(),
        )

    def get(self, message_id: Id) -> _Call[OutboundMessage]:
        return _Call(
            "GET", _message_path(message_id), _model(OutboundMessage), params=self._query()
        )

    def page(self, cursor: str | None, filters: MessageFilters) -> _Call[OutboundPage]:
        params = self._query(cursor=cursor, **filters)
        return _Call("GET", MESSAGES, _model(OutboundPage), params=params)

    def cancel(self, message_id: Id) -> _Call[OutboundMessage | None]:
        return _Call(
            "POST",
            f"{_message_path(message_id)}/cancel",
            _model(OutboundMessage),
            params=self._query(),
            on_error=_cancelled_before,
        )

    # -- connectors and routes ---------------------------------------------------------------

    def create_connector(
        self, type_name: str, name: str, options: ConnectorOptions
    ) -> _Call[Connector]:
        body = _jsonable({"type": type_name, "name": name, **options})
        return _Call(
            "POST", self._in_workspace("connectors"), _model(Connector), json=body, replayable=False
        )

    def connectors(self) -> _Call[list[Connector]]:
        return _Call("GET", self._in_workspace("connectors"), _models(Connector))

    def connector(self, connector: Id) -> _Call[Connector]:
        return _Call("GET", self._in_workspace("connectors", connector), _model(Connector))

    def test_connector(self, connector: Id) -> _Call[ConnectorTest]:
        path = f"{self._in_workspace('connectors', connector)}/test"
        return _Call("POST", path, _model(ConnectorTest), json={}, replayable=False)

    def connector_stats(self, connector: Id, hours: float) -> _Call[ConnectorStats]:
        path = f"{self._in_workspace('connectors', connector)}/stats"
        return _Call("GET", path, _model(ConnectorStats), params={"hours": hours})

    def create_route(self, name: str, connectors: Iterable[Id]) -> _Call[Route]:
        body = {"name": name, "connectors": [str(c) for c in connectors]}
        return _Call(
            "POST", self._in_workspace("routes"), _model(Route), json=body, replayable=False
        )

    def routes(self) -> _Call[list[Route]]:
        return _Call("GET", self._in_workspace("routes"), _models(Route))

    # -- plumbing ----------------------------------------------------------------------------

    def _scoped(self, body: dict[str, Any]) -> Any:
        if self.workspace_id is not None:
            body["workspace_id"] = self.workspace_id
        return _jsonable(body)

    def _query(self, **params: Any) -> dict[str, Any]:
        params["workspace_id"] = self.workspace_id
        return {k: v for k, v in _jsonable(params).items() if v is not None}

    def _in_workspace(self, collection: str, item: Id | None = None) -> str:
        if self.workspace_id is None:
            raise ValueError(f"Managing {collection} needs the client's `workspace_id`.")
        path = f"/api/v1/workspaces/{self.workspace_id}/{collection}"
        return path if item is None else f"{path}/{quote(str(item), safe='')}"


def _jsonable(value: Any) -> Any:
    """UUIDs and datetimes as the API spells them (ISO 8601)."""
    return to_jsonable_python(value)


def _message_path(message_id: Id) -> str:
    return f"{MESSAGES}/{quote(str(message_id), safe='')}"


def _replayed(response: httpx.Response) -> bool:
    value: str = response.headers.get("idempotent-replayed", "")
    return value.lower() == "true"


def _accepted(response: httpx.Response) -> Accepted:
    return Accepted.model_validate({**response.json(), "replayed": _replayed(response)})


def _accepted_batch(response: httpx.Response) -> list[Accepted]:
    replayed = _replayed(response)
    return [
        Accepted.model_validate({**item, "replayed": replayed})
        for item in response.json()["messages"]
    ]


def _model(model: type[M]) -> Callable[[httpx.Response], M]:
    return lambda response: model.model_validate_json(response.content)


def _models(model: type[M]) -> Callable[[httpx.Response], list[M]]:
    return lambda response: [model.model_validate(item) for item in response.json()]


def _cancelled_before(error: TidingsError) -> None:
    """A cancel answered `message_not_cancellable` because the message is cancelled already
    (a retried cancel whose first answer was lost, or a second cancel) has done its job."""
    if error.code == "message_not_cancellable" and error.problem.get("status_now") == "cancelled":
        return
    raise error


def _http_options(base_url: str, options: ClientOptions) -> dict[str, Any]:
    if options.get("api_key") and options.get("access_token"):
        raise ValueError("Give an access token or an API key, not both.")
    return {
        "base_url": base_url.rstrip("/"),
        "timeout": options.get("timeout", 30.0),
        "headers": {"user-agent": USER_AGENT, **options.get("headers", {})},
    }


# -- the async client ------------------------------------------------------------------------


class TokenSource(Protocol):
    """Where an async client gets its bearer token, and renews it after a 401 (what
    `TidingsClient.send_api()` passes, so the SDK's token refresh covers the send API too)."""

    async def bearer(self) -> str | None: ...

    async def renewed(self, used: str | None, response: httpx.Response) -> bool:
        """True when `response` (to a request made with `used`) was a stale token's 401 and a
        fresh token is now there: the request is made once more."""
        ...


@dataclass(frozen=True)
class _FixedToken:
    token: str | None

    async def bearer(self) -> str | None:
        return self.token

    async def renewed(self, used: str | None, response: httpx.Response) -> bool:
        return False


class SendClient:
    """The send API, async: `SendClient("https://tidings.example.com", api_key="tdk_…")`.

    Also `TidingsClient.send_api(workspace_id)` for a signed-in user. Problem answers raise
    `TidingsError`; transport failures raise `httpx` errors once `retry` gives up.
    `http` shares an `httpx.AsyncClient` (not closed by `aclose()`) instead of making one.
    """

    def __init__(
        self,
        base_url: str,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        http: httpx.AsyncClient | None = None,
        auth: TokenSource | None = None,
        **options: Unpack[ClientOptions],
    ) -> None:
        settings = _http_options(base_url, options)
        self._calls = _Calls(options.get("workspace_id"))
        self._retry = options.get("retry", RetryPolicy())
        self._auth = auth or _FixedToken(options.get("api_key") or options.get("access_token"))
        self._owns_http = http is None
        self._http = http or httpx.AsyncClient(transport=transport, **settings)

    async def __aenter__(self) -> SendClient:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def send(self, to: str, **options: Unpack[SendOptions]) -> Accepted:
        """Send one message (`connector` or `route`, `content` or `template` + `variables`,
        `metadata`, `send_at`); retried safely with one `idempotency_key`."""
        return await self._run(self._calls.send(to, options))

    async def send_batch(
        self, items: Iterable[SendItem], *, idempotency_key: str | None = None
    ) -> builtins.list[Accepted]:
        """Up to 1,000 messages, accepted all or none, in the order given."""
        return await self._run(self._calls.send_batch(items, idempotency_key))

    async def get(self, message_id: Id) -> OutboundMessage:
        """A message with its `attempt_log`."""
        return await self._run(self._calls.get(message_id))

    async def list(
        self, *, cursor: str | None = None, **filters: Unpack[MessageFilters]
    ) -> OutboundPage:
        """A page of the delivery log, newest first (`status`, `connector_id`, `to`,
        `created_after`, `created_before`, `limit`)."""
        return await self._run(self._calls.page(cursor, filters))

    async def iter_messages(
        self, **filters: Unpack[MessageFilters]
    ) -> AsyncIterator[OutboundMessage]:
        """Every message matching `filters`, newest first, a page (`limit`) at a time."""
        page = await self.list(**filters)
        while True:
            for message in page.items:
                yield message
            if page.next_cursor is None:
                return
            page = await self.list(cursor=page.next_cursor, **filters)

    async def cancel(self, message_id: Id) -> OutboundMessage:
        """Cancel a queued send not tried yet (e.g. scheduled); a cancelled one stays so."""
        return await self._run(self._calls.cancel(message_id)) or await self.get(message_id)

    async def wait(
        self,
        message_id: Id,
        *,
        timeout: float = 60.0,  # noqa: ASYNC109 - a deadline over many polls
        statuses: Collection[str] = SETTLED_STATUSES,
    ) -> OutboundMessage:
        """Poll `get()` (backing off from 0.1 to 2 s) until the status is one of `statuses`
        (default: settled, `sent` included); `TimeoutError` after `timeout` seconds."""
        waiting = _Waiting(timeout, statuses)
        while True:
            message = await self.get(message_id)
            delay = waiting.next_delay(message)
            if delay is None:
                return message
            await asyncio.sleep(delay)

    async def create_connector(
        self, type: str, name: str, **options: Unpack[ConnectorOptions]
    ) -> Connector:
        return await self._run(self._calls.create_connector(type, name, options))

    async def connectors(self) -> builtins.list[Connector]:
        return await self._run(self._calls.connectors())

    async def connector(self, connector: Id) -> Connector:
        return await self._run(self._calls.connector(connector))

    async def test_connector(self, connector: Id) -> ConnectorTest:
        return await self._run(self._calls.test_connector(connector))

    async def connector_stats(self, connector: Id, *, hours: float = 24) -> ConnectorStats:
        return await self._run(self._calls.connector_stats(connector, hours))

    async def create_route(self, name: str, connectors: Iterable[Id]) -> Route:
        return await self._run(self._calls.create_route(name, connectors))

    async def routes(self) -> builtins.list[Route]:
        return await self._run(self._calls.routes())

    async def _run(self, call: _Call[T]) -> T:
        attempts = _Attempts(call, self._retry)
        while (delay := attempts.next_delay()) is not None:
            await asyncio.sleep(delay)
            attempts.outcome = await self._exchange(call)
        return attempts.result()

    async def _exchange(self, call: _Call[Any]) -> _Outcome:
        try:
            bearer = await self._auth.bearer()
            response = await self._http.send(call.request(self._http, bearer))
            if await self._auth.renewed(bearer, response):
                response = await self._http.send(
                    call.request(self._http, await self._auth.bearer())
                )
        except httpx.TransportError as error:
            return error
        return response


# -- the sync client -------------------------------------------------------------------------


class SyncSendClient:
    """The send API, blocking, over `httpx.Client`: the same methods as `SendClient`."""

    def __init__(
        self,
        base_url: str,
        *,
        transport: httpx.BaseTransport | None = None,
        http: httpx.Client | None = None,
        **options: Unpack[ClientOptions],
    ) -> None:
        settings = _http_options(base_url, options)
        self._calls = _Calls(options.get("workspace_id"))
        self._retry = options.get("retry", RetryPolicy())
        self._bearer = options.get("api_key") or options.get("access_token")
        self._owns_http = http is None
        self._http = http or httpx.Client(transport=transport, **settings)

    def __enter__(self) -> SyncSendClient:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def send(self, to: str, **options: Unpack[SendOptions]) -> Accepted:
        return self._run(self._calls.send(to, options))

    def send_batch(
        self, items: Iterable[SendItem], *, idempotency_key: str | None = None
    ) -> builtins.list[Accepted]:
        return self._run(self._calls.send_batch(items, idempotency_key))

    def get(self, message_id: Id) -> OutboundMessage:
        return self._run(self._calls.get(message_id))

    def list(self, *, cursor: str | None = None, **filters: Unpack[MessageFilters]) -> OutboundPage:
        return self._run(self._calls.page(cursor, filters))

    def iter_messages(self, **filters: Unpack[MessageFilters]) -> Iterator[OutboundMessage]:
        page = self.list(**filters)
        yield from page.items
        while page.next_cursor is not None:
            page = self.list(cursor=page.next_cursor, **filters)
            yield from page.items

    def cancel(self, message_id: Id) -> OutboundMessage:
        return self._run(self._calls.cancel(message_id)) or self.get(message_id)

    def wait(
        self, message_id: Id, *, timeout: float = 60.0, statuses: Collection[str] = SETTLED_STATUSES
    ) -> OutboundMessage:
        waiting = _Waiting(timeout, statuses)
        while (delay := waiting.next_delay(message := self.get(message_id))) is not None:
            time.sleep(delay)
        return message

    def create_connector(
        self, type: str, name: str, **options: Unpack[ConnectorOptions]
    ) -> Connector:
        return self._run(self._calls.create_connector(type, name, options))

    def connectors(self) -> builtins.list[Connector]:
        return self._run(self._calls.connectors())

    def connector(self, connector: Id) -> Connector:
        return self._run(self._calls.connector(connector))

    def test_connector(self, connector: Id) -> ConnectorTest:
        return self._run(self._calls.test_connector(connector))

    def connector_stats(self, connector: Id, *, hours: float = 24) -> ConnectorStats:
        return self._run(self._calls.connector_stats(connector, hours))

    def create_route(self, name: str, connectors: Iterable[Id]) -> Route:
        return self._run(self._calls.create_route(name, connectors))

    def routes(self) -> builtins.list[Route]:
        return self._run(self._calls.routes())

    def _run(self, call: _Call[T]) -> T:
        attempts = _Attempts(call, self._retry)
        while (delay := attempts.next_delay()) is not None:
            time.sleep(delay)
            attempts.outcome = self._exchange(call)
        return attempts.result()

    def _exchange(self, call: _Call[Any]) -> _Outcome:
        try:
            return self._http.send(call.request(self._http, self._bearer))
        except httpx.TransportError as error:
            return error


__all__ = [
    "ClientOptions",
    "RetryPolicy",
    "SendClient",
    "SyncSendClient",
    "TokenSource",
    "new_idempotency_key",
]
