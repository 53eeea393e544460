"""FastAPI dependencies: who is calling, may they, and are they within their rate limits."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Request

from tidings.http.middleware import remember_limit
from tidings.http.problems import Forbidden, Unauthenticated
from tidings.identity.accounts import ClientInfo
from tidings.identity.component import Identity
from tidings.identity.oidc import InvalidExternalToken
from tidings.identity.policy import Action, ApiKeyPrincipal, Principal, UserPrincipal
from tidings.identity.tokens import API_KEY_PREFIX, InvalidToken
from tidings.identity.workspaces import Access
from tidings.infra.ratelimit import Rate, enforce

_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="tidings"'}


# Every dependency is `async def`, even when it awaits nothing: FastAPI runs plain functions in
# a worker thread, a thread hop (and GIL hand-off) per dependency per request.


async def get_identity(request: Request) -> Identity:
    return identity_of(request)


def identity_of(request: Request) -> Identity:
    identity: Identity = request.app.state.runtime.identity
    return identity


IdentityDep = Annotated[Identity, Depends(get_identity)]


async def client_info(request: Request) -> ClientInfo:
    return client_of(request)


def client_of(request: Request) -> ClientInfo:
    return ClientInfo(
        ip=request.client.host if request.client else None,
        user_agent=request.headers.get("user-agent"),
    )


ClientDep = Annotated[ClientInfo, Depends(client_info)]


async def apply_limit(identity: Identity, request: Request, key: str, rate: Rate) -> None:
    # The answer's RateLimit-* headers are added by the request middleware, whatever answers:
    # a model, a Response returned as it is, or a problem.
    remember_limit(request.scope, await enforce(identity.limiter, key, rate))


def limit_by_ip(rate_name: str) -> Callable[..., Awaitable[None]]:
    """A per-IP bucket for unauthenticated endpoints (`rate_name` is a field of RateLimits)."""

    async def dependency(identity: IdentityDep, client: ClientDep, request: Request) -> None:
        rate: Rate = getattr(identity.limits, rate_name)
        await apply_limit(identity, request, f"{rate_name}:ip:{client.ip}", rate)

    return dependency


async def authenticate(request: Request) -> Principal:
    # The identity and the client are read here, not as sub-dependencies: every authenticated
    # request runs this, and FastAPI's dependency solving costs more than what they do.
    identity, client = identity_of(request), client_of(request)
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        await apply_limit(identity, request, f"ip:{client.ip}", identity.limits.ip)
        raise Unauthenticated("Send `Authorization: Bearer <token>`.", headers=_CHALLENGE)
    token = token.strip()
    principal: Principal
    if token.startswith(API_KEY_PREFIX):
        key = await identity.api_keys.authenticate(token)
        if key is None:
            await apply_limit(identity, request, f"ip:{client.ip}", identity.limits.ip)
            raise Unauthenticated(
                "The API key is not valid.", code="invalid_api_key", headers=_CHALLENGE
            )
        await apply_limit(identity, request, f"key:{key.key_id}", identity.limits.api_key)
        principal = key
    elif identity.oidc is not None and identity.oidc.accepts(token):
        try:
            external = await identity.oidc.verify(token)
        except InvalidExternalToken as exc:
            raise Unauthenticated(str(exc), code="invalid_token", headers=_CHALLENGE) from None
        user = await identity.accounts.login_external(
            external, auto_provision=identity.settings.oidc_auto_provision, client=client
        )
        await apply_limit(identity, request, f"user:{user.id}", identity.limits.user)
        principal = UserPrincipal(user.id, None, user.is_instance_admin)
    else:
        try:
            claims = identity.tokens.verify(token)
        except InvalidToken:
            await apply_limit(identity, request, f"ip:{client.ip}", identity.limits.ip)
            raise Unauthenticated(
                "The access token is not valid.", code="invalid_token", headers=_CHALLENGE
            ) from None
        if not await identity.accounts.session_is_live(claims):
            raise Unauthenticated(
                "The session has ended; sign in again.", code="session_ended", headers=_CHALLENGE
            )
        await apply_limit(identity, request, f"user:{claims.user_id}", identity.limits.user)
        principal = UserPrincipal(claims.user_id, claims.session_id)
    request.state.principal = principal
    return principal


PrincipalDep = Annotated[Principal, Depends(authenticate)]


async def require_user(principal: PrincipalDep) -> UserPrincipal:
    if isinstance(principal, ApiKeyPrincipal):
        raise Forbidden("This needs a signed-in user, not an API key.", code="user_required")
    return principal


UserDep = Annotated[UserPrincipal, Depends(require_user)]


async def require_instance_admin(user: UserDep, identity: IdentityDep) -> UserPrincipal:
    account = await identity.accounts.get_user(user.user_id)
    if not account.is_instance_admin:
        raise Forbidden("This needs an instance administrator.", code="instance_admin_required")
    return user


AdminDep = Annotated[UserPrincipal, Depends(require_instance_admin)]


def workspace_access(action: Action) -> Callable[..., Awaitable[Access]]:
    """Authorise `action` on the `{workspace_id}` of the path."""

    async def dependency(
        workspace_id: uuid.UUID, principal: PrincipalDep, identity: IdentityDep, client: ClientDep
    ) -> Access:
        return await identity.workspaces.authorize(principal, workspace_id, action, client)

    return dependency
