"""`TidingsClient`: the REST API, typed, with token refresh and idempotent sends."""

from __future__ import annotations

import asyncio
import inspect
import random
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel

from tidings.client.errors import TidingsError
from tidings.client.models import (
    ApiKeyCreatedOut,
    ApiKeyOut,
    ConversationMemberOut,
    ConversationOut,
    InvitationCreatedOut,
    InvitationOut,
    MessageEditOut,
    MessageOut,
    MessagePage,
    ReactionOut,
    RegisteredOut,
    SessionOut,
    ThreadOut,
    Ticket,
    TokensOut,
    UserOut,
    WorkspaceMemberOut,
    WorkspaceOut,
)

if TYPE_CHECKING:
    from tidings.client.realtime import RealtimeConnection
    from tidings.client.send import ClientOptions, RetryPolicy, SendClient

Id = uuid.UUID | str
"""Ids are accepted as `uuid.UUID` or as their string form."""
ConversationKind = Literal["public", "private", "direct", "group"]
Role = Literal["owner", "admin", "member", "agent", "guest"]
TokensCallback = Callable[[TokensOut], Awaitable[None] | None]

M = TypeVar("M", bound=BaseModel)

API_KEY_PREFIX = "tdk_"
# Refresh this long before the access token expires rather than wait for a 401.
REFRESH_MARGIN_SECONDS = 30.0
_RETRY_STATUSES = frozenset({502, 503, 504})
_IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE"})


class TidingsClient:
    """An async client for one Tidings server.

    Authenticate with an access token (plus, ideally, its refresh token), an API key, or not at
    all and call `register()` / `login()`. With a refresh token the client renews the access
    token before it expires and on a `401 invalid_token`, stores the rotated refresh token and
    reports every new pair to `on_tokens` (persist it there: the old refresh token stops
    working).

    Every problem answer raises `TidingsError`; transport failures raise `httpx` errors after
    `retries` attempts (only requests that are safe to repeat are retried).
    """

    def __init__(
        self,
        base_url: str,
        *,
        access_token: str | None = None,
        api_key: str | None = None,
        refresh_token: str | None = None,
        on_tokens: TokensCallback | None = None,
        timeout: float = 30.0,
        retries: int = 2,
        headers: Mapping[str, str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if access_token and api_key:
            raise ValueError("Give an access token or an API key, not both.")
        self.base_url = base_url.rstrip("/")
        self._access_token = access_token
        self._api_key = api_key
        self._refresh_token = refresh_token
        self._access_expires_at: float | None = None
        self._on_tokens = on_tokens
        self._retries = max(0, retries)
        self._refresh_lock = asyncio.Lock()
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            timeout=timeout,
            headers={"user-agent": "tidings-python-sdk", **(headers or {})},
            transport=transport,
        )

    # -- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> TidingsClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    @property
    def access_token(self) -> str | None:
        return self._access_token

    @property
    def refresh_token(self) -> str | None:
        """The current refresh token; it changes on every refresh."""
        return self._refresh_token

    @property
    def can_refresh(self) -> bool:
        return self._refresh_token is not None and self._api_key is None

    # -- auth --------------------------------------------------------------------------------

    async def register(self, email: str, password: str, display_name: str) -> RegisteredOut:
        """Create an account and sign this client in as it."""
        response = await self._request(
            "POST",
            "/api/v1/auth/register",
            json={"email": email, "password": password, "display_name": display_name},
            authenticated=False,
        )
        registered = RegisteredOut.model_validate_json(response.content)
        await self._store(registered.tokens)
        return registered

    async def login(self, email: str, password: str) -> TokensOut:
        """Sign in; the client uses the new tokens from now on."""
        response = await self._request(
            "POST",
            "/api/v1/auth/login",
            json={"email": email, "password": password},
            authenticated=False,
        )
        tokens = TokensOut.model_validate_json(response.content)
        await self._store(tokens)
        return tokens

    async def refresh(self) -> TokensOut:
        """Exchange the refresh token for a new pair (the old refresh token stops working)."""
        async with self._refresh_lock:
            return await self._refresh()

    async def _refresh(self) -> TokensOut:
        if self._refresh_token is None:
            raise TidingsError(401, "invalid_refresh_token", "This client has no refresh token.")
        response = await self._request(
            "POST",
            "/api/v1/auth/refresh",
            json={"refresh_token": self._refresh_token},
            authenticated=False,
        )
        tokens = TokensOut.model_validate_json(response.content)
        await self._store(tokens)
        return tokens

    async def logout(self) -> None:
        """End this session (open realtime connections of it are closed with 4001)."""
        await self._request("POST", "/api/v1/auth/logout", json={})
        self._access_token = self._refresh_token = None
        self._access_expires_at = None

    async def change_password(self, current_password: str, new_password: str) -> TokensOut:
        """Change the password: every session ends and this client gets a fresh one."""
        response = await self._request(
            "POST",
            "/api/v1/me/password",
            json={"current_password": current_password, "new_password": new_password},
        )
        tokens = TokensOut.model_validate_json(response.content)
        await self._store(tokens)
        return tokens

    async def me(self) -> UserOut:
        return await self._get(UserOut, "/api/v1/me")

    async def sessions(self) -> list[SessionOut]:
        return await self._get_list(SessionOut, "/api/v1/me/sessions")

    async def revoke_session(self, session_id: Id) -> None:
        await self._request("DELETE", f"/api/v1/me/sessions/{session_id}")

    # -- workspaces, members, invitations, API keys -------------------------------------------

    async def create_workspace(self, name: str) -> WorkspaceOut:
        response = await self._request("POST", "/api/v1/workspaces", json={"name": name})
        return WorkspaceOut.model_validate_json(response.content)

    async def workspaces(self) -> list[WorkspaceOut]:
        return await self._get_list(WorkspaceOut, "/api/v1/workspaces")

    async def workspace(self, workspace_id: Id) -> WorkspaceOut:
        return await self._get(WorkspaceOut, f"/api/v1/workspaces/{workspace_id}")

    async def rename_workspace(self, workspace_id: Id, name: str) -> WorkspaceOut:
        response = await self._request(
            "PATCH", f"/api/v1/workspaces/{workspace_id}", json={"name": name}
        )
        return WorkspaceOut.model_validate_json(response.content)

    async def delete_workspace(self, workspace_id: Id) -> None:
        await self._request("DELETE", f"/api/v1/workspaces/{workspace_id}")

    async def members(self, workspace_id: Id) -> list[WorkspaceMemberOut]:
        return await self._get_list(
            WorkspaceMemberOut, f"/api/v1/workspaces/{workspace_id}/members"
        )

    async def change_role(self, workspace_id: Id, user_id: Id, role: Role) -> WorkspaceMemberOut:
        response = await self._request(
            "PATCH", f"/api/v1/workspaces/{workspace_id}/members/{user_id}", json={"role": role}
        )
        return WorkspaceMemberOut.model_validate_json(response.content)

    async def remove_member(self, workspace_id: Id, user_id: Id) -> None:
        await self._request("DELETE", f"/api/v1/workspaces/{workspace_id}/members/{user_id}")

    async def leave_workspace(self, workspace_id: Id) -> None:
        await self._request("POST", f"/api/v1/workspaces/{workspace_id}/leave", json={})

    async def presence(self, workspace_id: Id) -> dict[uuid.UUID, str]:
        """Who is online or away in a workspace."""
        response = await self._request("GET", f"/api/v1/workspaces/{workspace_id}/presence")
        return {uuid.UUID(user): str(status) for user, status in response.json().items()}

    async def create_invitation(
        self,
        workspace_id: Id,
        *,
        role: Role = "member",
        email: str | None = None,
        expires_in_hours: float | None = None,
    ) -> InvitationCreatedOut:
        """An invitation; its `token` is shown once — hand it to the invitee."""
        response = await self._request(
            "POST",
            f"/api/v1/workspaces/{workspace_id}/invitations",
            json=_without_none(role=role, email=email, expires_in_hours=expires_in_hours),
        )
        return InvitationCreatedOut.model_validate_json(response.content)

    async def invitations(self, workspace_id: Id) -> list[InvitationOut]:
        return await self._get_list(InvitationOut, f"/api/v1/workspaces/{workspace_id}/invitations")

    async def revoke_invitation(self, workspace_id: Id, invitation_id: Id) -> None:
        await self._request(
            "DELETE", f"/api/v1/workspaces/{workspace_id}/invitations/{invitation_id}"
        )

    async def accept_invitation(self, token: str) -> WorkspaceOut:
        response = await self._request("POST", "/api/v1/invitations/accept", json={"token": token})
        return WorkspaceOut.model_validate_json(response.content)

    async def create_api_key(
        self, workspace_id: Id, name: str, scopes: Iterable[str], *, expires_at: str | None = None
    ) -> ApiKeyCreatedOut:
        """An API key; its secret `key` is shown once."""
        response = await self._request(
            "POST",
            f"/api/v1/workspaces/{workspace_id}/api-keys",
            json=_without_none(name=name, scopes=list(scopes), expires_at=expires_at),
        )
        return ApiKeyCreatedOut.model_validate_json(response.content)

    async def api_keys(self, workspace_id: Id) -> list[ApiKeyOut]:
        return await self._get_list(ApiKeyOut, f"/api/v1/workspaces/{workspace_id}/api-keys")

    async def revoke_api_key(self, workspace_id: Id, key_id: Id) -> None:
        await self._request("DELETE", f"/api/v1/workspaces/{workspace_id}/api-keys/{key_id}")

    # -- conversations -----------------------------------------------------------------------

    async def create_conversation(
        self,
        workspace_id: Id,
        kind: ConversationKind,
        *,
        name: str | None = None,
        topic: str = "",
        member_ids: Iterable[Id] = (),
    ) -> ConversationOut:
        """A channel (`public`/`private`, with a name) or a DM (`direct`/`group`; an existing
        DM with the same people is returned rather than a second one)."""
        response = await self._request(
            "POST",
            f"/api/v1/workspaces/{workspace_id}/conversations",
            json=_without_none(
                kind=kind, name=name, topic=topic, member_ids=[str(m) for m in member_ids]
            ),
        )
        return ConversationOut.model_validate_json(response.content)

    async def conversations(self, workspace_id: Id) -> list[ConversationOut]:
        """The caller's conversations, with unread and mention counts."""
        return await self._get_list(
            ConversationOut, f"/api/v1/workspaces/{workspace_id}/conversations"
        )

    async def browse_conversations(self, workspace_id: Id) -> list[ConversationOut]:
        """Public channels of the workspace, joined or not."""
        return await self._get_list(
            ConversationOut,
            f"/api/v1/workspaces/{workspace_id}/conversations",
            params={"browse": "true"},
        )

    async def conversation(self, conversation_id: Id) -> ConversationOut:
        return await self._get(ConversationOut, f"/api/v1/conversations/{conversation_id}")

    async def update_conversation(
        self, conversation_id: Id, *, name: str | None = None, topic: str | None = None
    ) -> ConversationOut:
        response = await self._request(
            "PATCH",
            f"/api/v1/conversations/{conversation_id}",
            json=_without_none(name=name, topic=topic),
        )
        return ConversationOut.model_validate_json(response.content)

    async def archive_conversation(self, conversation_id: Id) -> ConversationOut:
        return await self._post(ConversationOut, f"/api/v1/conversations/{conversation_id}/archive")

    async def unarchive_conversation(self, conversation_id: Id) -> ConversationOut:
        return await self._post(
            ConversationOut, f"/api/v1/conversations/{conversation_id}/unarchive"
        )

    async def join_conversation(self, conversation_id: Id) -> ConversationOut:
        return await self._post(ConversationOut, f"/api/v1/conversations/{conversation_id}/join")

    async def leave_conversation(self, conversation_id: Id) -> None:
        await self._request("POST", f"/api/v1/conversations/{conversation_id}/leave", json={})

    async def conversation_members(self, conversation_id: Id) -> list[ConversationMemberOut]:
        return await self._get_list(
            ConversationMemberOut, f"/api/v1/conversations/{conversation_id}/members"
        )

    async def add_conversation_members(
        self, conversation_id: Id, user_ids: Iterable[Id]
    ) -> list[uuid.UUID]:
        """Add people; answers who was actually added (members already in are skipped)."""
        response = await self._request(
            "POST",
            f"/api/v1/conversations/{conversation_id}/members",
            json={"user_ids": [str(u) for u in user_ids]},
        )
        return [uuid.UUID(u) for u in response.json()["added"]]

    async def remove_conversation_member(self, conversation_id: Id, user_id: Id) -> None:
        await self._request("DELETE", f"/api/v1/conversations/{conversation_id}/members/{user_id}")

    async def mute_conversation(self, conversation_id: Id, muted: bool = True) -> ConversationOut:
        response = await self._request(
            "PUT", f"/api/v1/conversations/{conversation_id}/mute", json={"muted": muted}
        )
        return ConversationOut.model_validate_json(response.content)

    async def mark_read(self, conversation_id: Id, seq: int) -> ConversationOut:
        """Move your read position forward to message `seq` (never backwards)."""
        response = await self._request(
            "POST", f"/api/v1/conversations/{conversation_id}/read", json={"seq": seq}, retry=True
        )
        return ConversationOut.model_validate_json(response.content)

    async def pins(self, conversation_id: Id) -> list[MessageOut]:
        return await self._get_list(MessageOut, f"/api/v1/conversations/{conversation_id}/pins")

    # -- messages ----------------------------------------------------------------------------

    async def send_message(
        self,
        conversation_id: Id,
        body: str,
        *,
        client_id: str | None = None,
        thread_root_id: Id | None = None,
    ) -> MessageOut:
        """Send a message. `client_id` (generated when not given) makes the send idempotent:
        the client retries a failed attempt with it, and the server answers a repeat with the
        first message rather than a second one."""
        response = await self._request(
            "POST",
            f"/api/v1/conversations/{conversation_id}/messages",
            json=_without_none(
                body=body,
                client_id=client_id or new_client_id(),
                thread_root_id=str(thread_root_id) if thread_root_id else None,
            ),
            retry=True,
        )
        return MessageOut.model_validate_json(response.content)

    async def history(
        self,
        conversation_id: Id,
        *,
        before: int | None = None,
        after: int | None = None,
        around: int | None = None,
        limit: int = 50,
    ) -> MessagePage:
        """Top-level messages in `seq` order: the latest, or before / after / around a `seq`."""
        return await self._get(
            MessagePage,
            f"/api/v1/conversations/{conversation_id}/messages",
            params=_without_none(before=before, after=after, around=around, limit=limit),
        )

    async def iter_history(
        self, conversation_id: Id, *, before: int | None = None, page_size: int = 100
    ) -> AsyncIterator[MessageOut]:
        """Every top-level message, newest first, a page at a time."""
        while True:
            page = await self.history(conversation_id, before=before, limit=page_size)
            for message in reversed(page.messages):
                yield message
            if not page.has_more_before or not page.messages:
                return
            before = page.messages[0].seq

    async def message(self, conversation_id: Id, message_id: Id) -> MessageOut:
        return await self._get(MessageOut, _message_path(conversation_id, message_id))

    async def edit_message(self, conversation_id: Id, message_id: Id, body: str) -> MessageOut:
        response = await self._request(
            "PATCH", _message_path(conversation_id, message_id), json={"body": body}, retry=True
        )
        return MessageOut.model_validate_json(response.content)

    async def delete_message(self, conversation_id: Id, message_id: Id) -> None:
        await self._request("DELETE", _message_path(conversation_id, message_id))

    async def message_edits(self, conversation_id: Id, message_id: Id) -> list[MessageEditOut]:
        return await self._get_list(
            MessageEditOut, f"{_message_path(conversation_id, message_id)}/edits"
        )

    async def react(self, conversation_id: Id, message_id: Id, emoji: str) -> list[ReactionOut]:
        return await self._reaction("PUT", conversation_id, message_id, emoji)

    async def unreact(self, conversation_id: Id, message_id: Id, emoji: str) -> list[ReactionOut]:
        return await self._reaction("DELETE", conversation_id, message_id, emoji)

    async def pin(self, conversation_id: Id, message_id: Id) -> MessageOut:
        response = await self._request("PUT", f"{_message_path(conversation_id, message_id)}/pin")
        return MessageOut.model_validate_json(response.content)

    async def unpin(self, conversation_id: Id, message_id: Id) -> MessageOut:
        response = await self._request(
            "DELETE", f"{_message_path(conversation_id, message_id)}/pin"
        )
        return MessageOut.model_validate_json(response.content)

    async def thread(
        self, conversation_id: Id, root_id: Id, *, after: int | None = None, limit: int = 100
    ) -> ThreadOut:
        """A thread: its root, replies (after reply `seq` `after`), participants."""
        return await self._get(
            ThreadOut,
            f"{_message_path(conversation_id, root_id)}/thread",
            params=_without_none(after=after, limit=limit),
        )

    async def follow_thread(self, conversation_id: Id, root_id: Id) -> None:
        await self._request("PUT", f"{_message_path(conversation_id, root_id)}/follow")

    async def unfollow_thread(self, conversation_id: Id, root_id: Id) -> None:
        await self._request("DELETE", f"{_message_path(conversation_id, root_id)}/follow")

    # -- realtime ----------------------------------------------------------------------------

    async def realtime_ticket(self) -> Ticket:
        """A one-time ticket for the WebSocket or the SSE stream (signed-in users only)."""
        response = await self._request("POST", "/api/v1/realtime/tickets", json={})
        return Ticket.model_validate_json(response.content)

    def realtime(
        self,
        *,
        reconnect: bool = True,
        initial_delay: float = 0.5,
        max_delay: float = 30.0,
        max_attempts: int | None = None,
        command_timeout: float = 30.0,
        gap_timeout: float = 1.0,
    ) -> RealtimeConnection:
        """A WebSocket connection; use it as `async with client.realtime() as conn:`.

        `initial_delay`/`max_delay` bound the jittered exponential backoff between reconnection
        attempts; `max_attempts` (None: forever) how many follow a drop before giving up.
        """
        from tidings.client.realtime import RealtimeConnection  # a cycle: realtime uses this module

        return RealtimeConnection(
            self,
            reconnect=reconnect,
            initial_delay=initial_delay,
            max_delay=max_delay,
            max_attempts=max_attempts,
            command_timeout=command_timeout,
            gap_timeout=gap_timeout,
        )

    @property
    def websocket_url(self) -> str:
        scheme, _, rest = self.base_url.partition("://")
        return f"{'wss' if scheme == 'https' else 'ws'}://{rest}/api/v1/realtime"

    # -- the send API ------------------------------------------------------------------------

    def send_api(
        self, workspace_id: Id | None = None, *, retry: RetryPolicy | None = None
    ) -> SendClient:
        """The send API (`SendClient`) as this client: a user names the workspace (an API key
        implies its own). It shares this client's connections and token refresh; closing this
        client ends it."""
        from tidings.client.send import SendClient  # a cycle only for type checkers

        options: ClientOptions = {}
        if workspace_id is not None:
            options["workspace_id"] = workspace_id
        if retry is not None:
            options["retry"] = retry
        return SendClient(self.base_url, http=self._http, auth=_SessionTokens(self), **options)

    # -- anything else -----------------------------------------------------------------------

    async def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, Any] | None = None,
    ) -> Any:
        """Any other endpoint: the decoded JSON answer (None for 204), problems raised."""
        response = await self._request(method, path, json=json, params=params)
        return response.json() if response.content else None

    # -- plumbing ----------------------------------------------------------------------------

    async def _get(self, model: type[M], path: str, params: Mapping[str, Any] | None = None) -> M:
        response = await self._request("GET", path, params=params)
        return model.model_validate_json(response.content)

    async def _get_list(
        self, model: type[M], path: str, params: Mapping[str, Any] | None = None
    ) -> list[M]:
        response = await self._request("GET", path, params=params)
        return [model.model_validate(item) for item in response.json()]

    async def _post(self, model: type[M], path: str) -> M:
        response = await self._request("POST", path, json={}, retry=True)
        return model.model_validate_json(response.content)

    async def _reaction(
        self, method: str, conversation_id: Id, message_id: Id, emoji: str
    ) -> list[ReactionOut]:
        path = f"{_message_path(conversation_id, message_id)}/reactions/{quote(emoji, safe='')}"
        response = await self._request(method, path)
        return [ReactionOut.model_validate(item) for item in response.json()]

    def _bearer(self) -> str | None:
        return self._access_token or self._api_key

    async def _store(self, tokens: TokensOut) -> None:
        self._access_token = tokens.access_token
        self._refresh_token = tokens.refresh_token
        self._access_expires_at = time.monotonic() + tokens.expires_in
        if self._on_tokens is not None:
            result = self._on_tokens(tokens)
            if inspect.isawaitable(result):
                await result

    async def _refresh_unless_done(self, stale: str | None) -> None:
        """Refresh once for every request that found `stale` wanting (refresh tokens rotate:
        two concurrent refreshes with one token would end the session as a reuse)."""
        async with self._refresh_lock:
            if self._access_token == stale:
                await self._refresh()

    async def _ensure_fresh(self) -> None:
        if not self.can_refresh:
            return
        expiring = (
            self._access_expires_at is not None
            and time.monotonic() > self._access_expires_at - REFRESH_MARGIN_SECONDS
        )
        if self._access_token is None or expiring:
            await self._refresh_unless_done(self._access_token)

    async def _request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, Any] | None = None,
        authenticated: bool = True,
        retry: bool | None = None,
    ) -> httpx.Response:
        if retry is None:
            retry = method in _IDEMPOTENT_METHODS
        if authenticated:
            await self._ensure_fresh()
        bearer = self._bearer() if authenticated else None
        response = await self._send(method, path, json, params, bearer, retry)
        if await self._renewed(bearer, response):
            response = await self._send(method, path, json, params, self._bearer(), retry)
        if response.status_code >= 400:
            raise TidingsError.from_response(response)
        return response

    async def _renewed(self, used: str | None, response: httpx.Response) -> bool:
        """Whether `response` was a `401 invalid_token` to the access token `used` and the
        tokens are now refreshed (once for every request that found it stale)."""
        if (
            response.status_code == 401
            and used is not None
            and used == self._access_token
            and self.can_refresh
            and _problem_code(response) == "invalid_token"
        ):
            await self._refresh_unless_done(used)
            return True
        return False

    async def _send(
        self,
        method: str,
        path: str,
        json: Any,
        params: Mapping[str, Any] | None,
        bearer: str | None,
        retry: bool,
    ) -> httpx.Response:
        headers = {"authorization": f"Bearer {bearer}"} if bearer else {}
        attempts = 1 + (self._retries if retry else 0)
        for attempt in range(attempts):
            last = attempt == attempts - 1
            try:
                response = await self._http.request(
                    method, path, json=json, params=params, headers=headers
                )
            except httpx.TransportError:
                if last:
                    raise
                delay = _backoff(attempt)
            else:
                if last or response.status_code not in _RETRY_STATUSES:
                    return response
                retry_after = TidingsError.from_response(response).retry_after
                delay = min(retry_after, 10.0) if retry_after is not None else _backoff(attempt)
            await asyncio.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover


class _SessionTokens:
    """`TidingsClient`'s tokens, refreshed as it does, for the `SendClient` it makes."""

    def __init__(self, client: TidingsClient) -> None:
        self._client = client

    async def bearer(self) -> str | None:
        await self._client._ensure_fresh()
        return self._client._bearer()

    async def renewed(self, used: str | None, response: httpx.Response) -> bool:
        return await self._client._renewed(used, response)


def new_client_id() -> str:
    """A fresh idempotency key for `send_message`."""
    return uuid.uuid4().hex


def _message_path(conversation_id: Id, message_id: Id) -> str:
    return f"/api/v1/conversations/{conversation_id}/messages/{message_id}"


def _without_none(**values: Any) -> dict[str, Any]:
    return {key: value for key, value in values.items() if value is not None}


def _problem_code(response: httpx.Response) -> str | None:
    try:
        body = response.json()
    except ValueError:
        return None
    code = body.get("code") if isinstance(body, dict) else None
    return code if isinstance(code, str) else None


def _backoff(attempt: int) -> float:
    ceiling = min(5.0, 0.2 * 2**attempt)
    return random.uniform(ceiling / 2, ceiling)  # noqa: S311 - jitter, not a secret


__all__ = ["Id", "TidingsClient", "new_client_id"]
