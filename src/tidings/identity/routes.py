"""HTTP routes of the identity domain: thin — parse, authorise, call the service, shape."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response, status

from tidings.db.base import utcnow
from tidings.http.problems import Unauthenticated
from tidings.identity.accounts import TokenPair
from tidings.identity.deps import (
    ClientDep,
    IdentityDep,
    PrincipalDep,
    UserDep,
    apply_limit,
    limit_by_ip,
    workspace_access,
)
from tidings.identity.models import ApiKey, Invitation, User, Workspace
from tidings.identity.policy import Action
from tidings.identity.roles import Role
from tidings.identity.schemas import (
    AcceptInvitationIn,
    ApiKeyCreatedOut,
    ApiKeyIn,
    ApiKeyOut,
    ChangePasswordIn,
    InvitationCreatedOut,
    InvitationIn,
    InvitationOut,
    LoginIn,
    MemberOut,
    RefreshIn,
    RegisteredOut,
    RegisterIn,
    RoleIn,
    SessionOut,
    TokensOut,
    UserOut,
    WorkspaceIn,
    WorkspaceOut,
)
from tidings.identity.tokens import API_KEY_PREFIX
from tidings.identity.workspaces import Access

REFRESH_COOKIE = "tidings_refresh"
REFRESH_COOKIE_PATH = "/api/v1/auth"

auth = APIRouter(prefix="/api/v1/auth", tags=["auth"])
me = APIRouter(prefix="/api/v1/me", tags=["me"])
workspaces = APIRouter(prefix="/api/v1/workspaces", tags=["workspaces"])
invitations = APIRouter(prefix="/api/v1/invitations", tags=["workspaces"])


def _tokens(pair: TokenPair, response: Response, request: Request) -> TokensOut:
    # Browsers keep the refresh token in an HttpOnly cookie scoped to the auth endpoints.
    response.set_cookie(
        REFRESH_COOKIE,
        pair.refresh_token,
        expires=pair.refresh_expires_at,
        path=REFRESH_COOKIE_PATH,
        httponly=True,
        secure=request.url.scheme == "https",
        samesite="strict",
    )
    return TokensOut(
        access_token=pair.access_token,
        expires_in=max(0, int((pair.access_expires_at - utcnow()).total_seconds())),
        refresh_token=pair.refresh_token,
        refresh_expires_at=pair.refresh_expires_at,
        session_id=pair.session_id,
    )


def _user(user: User) -> UserOut:
    return UserOut(
        id=user.id,
        email=user.email,
        display_name=user.display_name,
        is_instance_admin=user.is_instance_admin,
        created_at=user.created_at,
    )


# -- auth ----------------------------------------------------------------------------------


@auth.post(
    "/register",
    status_code=status.HTTP_201_CREATED,
    dependencies=[Depends(limit_by_ip("register"))],
    summary="Create an account (the first one becomes instance admin) and sign in",
)
async def register(
    body: RegisterIn, identity: IdentityDep, client: ClientDep, request: Request, response: Response
) -> RegisteredOut:
    user, pair = await identity.accounts.register(
        email=body.email, password=body.password, display_name=body.display_name, client=client
    )
    return RegisteredOut(user=_user(user), tokens=_tokens(pair, response, request))


@auth.post("/login", dependencies=[Depends(limit_by_ip("login"))], summary="Sign in")
async def login(
    body: LoginIn, identity: IdentityDep, client: ClientDep, request: Request, response: Response
) -> TokensOut:
    # A second bucket per account slows guessing one password from many addresses.
    await apply_limit(
        identity, request, f"login:email:{body.email.strip().lower()}", identity.limits.login
    )
    pair = await identity.accounts.login(email=body.email, password=body.password, client=client)
    return _tokens(pair, response, request)


@auth.post(
    "/refresh",
    dependencies=[Depends(limit_by_ip("refresh"))],
    summary="Exchange a refresh token for new tokens (the old one stops working)",
)
async def refresh(
    identity: IdentityDep,
    client: ClientDep,
    request: Request,
    response: Response,
    body: RefreshIn | None = None,
) -> TokensOut:
    token = (body.refresh_token if body else None) or request.cookies.get(REFRESH_COOKIE)
    if not token:
        raise Unauthenticated("Send the refresh token.", code="invalid_refresh_token")
    pair = await identity.accounts.refresh(token, client)
    return _tokens(pair, response, request)


@auth.post("/logout", status_code=status.HTTP_204_NO_CONTENT, summary="End this session")
async def logout(
    user: UserDep, identity: IdentityDep, client: ClientDep, response: Response
) -> None:
    if user.session_id is None:
        raise Unauthenticated("External tokens have no Tidings session to end.")
    await identity.accounts.logout(user.session_id, user.user_id, client)
    response.delete_cookie(REFRESH_COOKIE, path=REFRESH_COOKIE_PATH)


# -- me ------------------------------------------------------------------------------------


@me.get("", summary="The signed-in user")
async def get_me(user: UserDep, identity: IdentityDep) -> UserOut:
    return _user(await identity.accounts.get_user(user.user_id))


@me.post("/password", summary="Change password; ends every session and opens a new one")
async def change_password(
    body: ChangePasswordIn,
    user: UserDep,
    identity: IdentityDep,
    client: ClientDep,
    request: Request,
    response: Response,
) -> TokensOut:
    pair = await identity.accounts.change_password(
        user.user_id,
        current_password=body.current_password,
        new_password=body.new_password,
        client=client,
    )
    return _tokens(pair, response, request)


@me.get("/sessions", summary="Active sessions of the signed-in user")
async def list_sessions(user: UserDep, identity: IdentityDep) -> list[SessionOut]:
    return [
        SessionOut(
            id=s.id,
            created_at=s.created_at,
            last_used_at=s.last_used_at,
            expires_at=s.expires_at,
            ip=s.ip,
            user_agent=s.user_agent,
            current=s.id == user.session_id,
        )
        for s in await identity.accounts.list_sessions(user.user_id)
    ]


@me.delete(
    "/sessions/{session_id}", status_code=status.HTTP_204_NO_CONTENT, summary="End a session"
)
async def revoke_session(
    session_id: uuid.UUID, user: UserDep, identity: IdentityDep, client: ClientDep
) -> None:
    await identity.accounts.revoke_session(session_id, user.user_id, client)


# -- workspaces ----------------------------------------------------------------------------


def workspace_out(workspace: Workspace, access: Access | None = None) -> WorkspaceOut:
    return WorkspaceOut(
        id=workspace.id,
        name=workspace.name,
        created_at=workspace.created_at,
        role=access.role if access else None,
    )


@workspaces.get("", summary="Workspaces the caller belongs to")
async def list_workspaces(principal: PrincipalDep, identity: IdentityDep) -> list[WorkspaceOut]:
    return [
        workspace_out(w, Access(w, role))
        for w, role in await identity.workspaces.list_for(principal)
    ]


@workspaces.get("/{workspace_id}", summary="One workspace")
async def get_workspace(
    access: Annotated[Access, Depends(workspace_access(Action.WORKSPACE_READ))],
) -> WorkspaceOut:
    return workspace_out(access.workspace, access)


@workspaces.patch("/{workspace_id}", summary="Rename a workspace")
async def rename_workspace(
    body: WorkspaceIn,
    access: Annotated[Access, Depends(workspace_access(Action.WORKSPACE_UPDATE))],
    principal: PrincipalDep,
    identity: IdentityDep,
    client: ClientDep,
) -> WorkspaceOut:
    workspace = await identity.workspaces.rename(principal, access, body.name, client)
    return workspace_out(workspace, access)


@workspaces.delete(
    "/{workspace_id}", status_code=status.HTTP_204_NO_CONTENT, summary="Delete a workspace"
)
async def delete_workspace(
    access: Annotated[Access, Depends(workspace_access(Action.WORKSPACE_DELETE))],
    principal: PrincipalDep,
    identity: IdentityDep,
    client: ClientDep,
) -> None:
    await identity.workspaces.delete(principal, access, client)


# -- members -------------------------------------------------------------------------------


@workspaces.get("/{workspace_id}/members", summary="Members and their roles")
async def list_members(
    access: Annotated[Access, Depends(workspace_access(Action.MEMBER_LIST))],
    identity: IdentityDep,
) -> list[MemberOut]:
    return [
        MemberOut(**vars(member))
        for member in await identity.workspaces.members(access.workspace.id)
    ]


@workspaces.patch("/{workspace_id}/members/{user_id}", summary="Change a member's role")
async def change_member_role(
    user_id: uuid.UUID,
    body: RoleIn,
    access: Annotated[Access, Depends(workspace_access(Action.MEMBER_UPDATE_ROLE))],
    user: UserDep,
    identity: IdentityDep,
    client: ClientDep,
) -> MemberOut:
    member = await identity.workspaces.change_role(user, access, user_id, body.role, client)
    return MemberOut(**vars(member))


@workspaces.delete(
    "/{workspace_id}/members/{user_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Remove a member",
)
async def remove_member(
    user_id: uuid.UUID,
    access: Annotated[Access, Depends(workspace_access(Action.MEMBER_REMOVE))],
    user: UserDep,
    identity: IdentityDep,
    client: ClientDep,
) -> None:
    await identity.workspaces.remove(user, access, user_id, client)


@workspaces.post(
    "/{workspace_id}/leave",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Leave a workspace (the last owner cannot)",
)
async def leave_workspace(
    access: Annotated[Access, Depends(workspace_access(Action.WORKSPACE_READ))],
    user: UserDep,
    identity: IdentityDep,
    client: ClientDep,
) -> None:
    await identity.workspaces.remove(user, access, user.user_id, client)


# -- invitations ---------------------------------------------------------------------------


def _invitation(invitation: Invitation) -> InvitationOut:
    return InvitationOut(
        id=invitation.id,
        workspace_id=invitation.workspace_id,
        role=Role(invitation.role),
        email=invitation.email,
        created_at=invitation.created_at,
        expires_at=invitation.expires_at,
    )


@workspaces.post(
    "/{workspace_id}/invitations",
    status_code=status.HTTP_201_CREATED,
    summary="Invite someone (the token is shown once)",
)
async def invite(
    body: InvitationIn,
    access: Annotated[Access, Depends(workspace_access(Action.MEMBER_INVITE))],
    user: UserDep,
    identity: IdentityDep,
    client: ClientDep,
) -> InvitationCreatedOut:
    ttl = timedelta(hours=body.expires_in_hours) if body.expires_in_hours else None
    invitation, token = await identity.workspaces.invite(
        user, access, role=body.role, email=body.email, ttl=ttl, client=client
    )
    return InvitationCreatedOut(**_invitation(invitation).model_dump(), token=token)


@workspaces.get("/{workspace_id}/invitations", summary="Open invitations")
async def list_invitations(
    access: Annotated[Access, Depends(workspace_access(Action.MEMBER_INVITE))],
    identity: IdentityDep,
) -> list[InvitationOut]:
    return [_invitation(i) for i in await identity.workspaces.invitations(access.workspace.id)]


@workspaces.delete(
    "/{workspace_id}/invitations/{invitation_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Revoke an invitation",
)
async def revoke_invitation(
    invitation_id: uuid.UUID,
    access: Annotated[Access, Depends(workspace_access(Action.MEMBER_INVITE))],
    user: UserDep,
    identity: IdentityDep,
    client: ClientDep,
) -> None:
    await identity.workspaces.revoke_invitation(user, access, invitation_id, client)


@invitations.post("/accept", summary="Join the workspace of an invitation")
async def accept_invitation(
    body: AcceptInvitationIn, user: UserDep, identity: IdentityDep, client: ClientDep
) -> WorkspaceOut:
    workspace = await identity.workspaces.accept(user, body.token, client)
    return workspace_out(workspace)


# -- API keys ------------------------------------------------------------------------------


def _api_key(key: ApiKey) -> ApiKeyOut:
    return ApiKeyOut(
        id=key.id,
        name=key.name,
        prefix=f"{API_KEY_PREFIX}{key.public_id}_…",
        scopes=key.scopes,
        created_at=key.created_at,
        expires_at=key.expires_at,
        revoked_at=key.revoked_at,
        last_used_at=key.last_used_at,
    )


@workspaces.post(
    "/{workspace_id}/api-keys",
    status_code=status.HTTP_201_CREATED,
    summary="Create an API key (the secret is shown once)",
)
async def create_api_key(
    body: ApiKeyIn,
    access: Annotated[Access, Depends(workspace_access(Action.API_KEY_MANAGE))],
    user: UserDep,
    identity: IdentityDep,
    client: ClientDep,
) -> ApiKeyCreatedOut:
    key, secret = await identity.api_keys.create(
        user,
        access.workspace.id,
        name=body.name,
        scopes=body.scopes,
        expires_at=body.expires_at,
        client=client,
    )
    return ApiKeyCreatedOut(**_api_key(key).model_dump(), key=secret)


@workspaces.get("/{workspace_id}/api-keys", summary="API keys of a workspace (no secrets)")
async def list_api_keys(
    access: Annotated[Access, Depends(workspace_access(Action.API_KEY_MANAGE))],
    identity: IdentityDep,
) -> list[ApiKeyOut]:
    return [_api_key(k) for k in await identity.api_keys.list_for_workspace(access.workspace.id)]


@workspaces.delete(
    "/{workspace_id}/api-keys/{key_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Revoke an API key (effective on every process within a second)",
)
async def revoke_api_key(
    key_id: uuid.UUID,
    access: Annotated[Access, Depends(workspace_access(Action.API_KEY_MANAGE))],
    user: UserDep,
    identity: IdentityDep,
    client: ClientDep,
) -> None:
    await identity.api_keys.revoke(user, access.workspace.id, key_id, client)


routers = [auth, me, workspaces, invitations]
