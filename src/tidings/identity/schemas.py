"""API shapes of the identity domain."""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from tidings.identity.limits import MAX_PASSWORD_LENGTH
from tidings.identity.roles import Role


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)


class RegisterIn(_In):
    email: str = Field(min_length=3, max_length=320)
    password: str = Field(min_length=1, max_length=MAX_PASSWORD_LENGTH)
    display_name: str = Field(min_length=1, max_length=100)


class LoginIn(_In):
    email: str = Field(min_length=1, max_length=320)
    password: str = Field(min_length=1, max_length=MAX_PASSWORD_LENGTH)


class RefreshIn(_In):
    refresh_token: str | None = Field(default=None, max_length=200)


class ChangePasswordIn(_In):
    current_password: str = Field(min_length=1, max_length=MAX_PASSWORD_LENGTH)
    new_password: str = Field(min_length=1, max_length=MAX_PASSWORD_LENGTH)


class TokensOut(BaseModel):
    token_type: str = "Bearer"  # noqa: S105 - the OAuth token type, not a secret
    access_token: str
    expires_in: int
    refresh_token: str
    refresh_expires_at: datetime
    session_id: uuid.UUID


class UserOut(BaseModel):
    id: uuid.UUID
    email: str
    display_name: str
    is_instance_admin: bool
    created_at: datetime


class RegisteredOut(BaseModel):
    user: UserOut
    tokens: TokensOut


class SessionOut(BaseModel):
    id: uuid.UUID
    created_at: datetime
    last_used_at: datetime
    expires_at: datetime
    ip: str | None
    user_agent: str | None
    current: bool


class WorkspaceIn(_In):
    name: str = Field(min_length=1, max_length=80)


class WorkspaceOut(BaseModel):
    id: uuid.UUID
    name: str
    created_at: datetime
    role: Role | None = None


class MemberOut(BaseModel):
    user_id: uuid.UUID
    email: str
    display_name: str
    role: Role
    joined_at: datetime


class RoleIn(_In):
    role: Role


class InvitationIn(_In):
    role: Role = Role.MEMBER
    email: str | None = Field(default=None, max_length=320)
    expires_in_hours: float | None = Field(default=None, gt=0, le=24 * 30)


class InvitationOut(BaseModel):
    id: uuid.UUID
    workspace_id: uuid.UUID
    role: Role
    email: str | None
    created_at: datetime
    expires_at: datetime


class InvitationCreatedOut(InvitationOut):
    token: str = Field(description="Shown once; send it to the invitee.")


class AcceptInvitationIn(_In):
    token: str = Field(min_length=10, max_length=200)


class ApiKeyIn(_In):
    name: str = Field(min_length=1, max_length=80)
    scopes: list[str] = Field(min_length=1, max_length=10)
    expires_at: datetime | None = None


class ApiKeyOut(BaseModel):
    id: uuid.UUID
    name: str
    prefix: str = Field(description="The key's public part; the secret is never shown again.")
    scopes: list[str]
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None


class ApiKeyCreatedOut(ApiKeyOut):
    key: str = Field(description="Shown once. Store it now; only a hash is kept.")
