"""Who may do what: the one place that answers "may this principal do this action here".

Every route asks through `authorize` (via the dependencies in `identity.deps`). Two answers
matter to clients: a principal with no access to the workspace at all gets 404 (its existence
is not revealed), a member whose role is too weak gets 403.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cached_property

from tidings.identity.roles import Role


class Action(StrEnum):
    WORKSPACE_READ = "workspace.read"
    WORKSPACE_UPDATE = "workspace.update"
    WORKSPACE_DELETE = "workspace.delete"
    MEMBER_LIST = "member.list"
    MEMBER_INVITE = "member.invite"
    MEMBER_UPDATE_ROLE = "member.update_role"
    MEMBER_REMOVE = "member.remove"
    API_KEY_MANAGE = "api_key.manage"
    AUDIT_READ = "audit.read"
    CONNECTOR_READ = "connector.read"
    CONNECTOR_MANAGE = "connector.manage"
    TEMPLATE_READ = "template.read"
    TEMPLATE_MANAGE = "template.manage"
    DELIVERY_SEND = "delivery.send"
    DELIVERY_READ = "delivery.read"


class Scope(StrEnum):
    MESSAGES_SEND = "messages:send"
    MESSAGES_READ = "messages:read"
    CONVERSATIONS_WRITE = "conversations:write"
    ADMIN = "admin"


_ALL = frozenset(Role)
_MANAGERS = frozenset({Role.OWNER, Role.ADMIN})

ROLE_PERMISSIONS: dict[Action, frozenset[Role]] = {
    Action.WORKSPACE_READ: _ALL,
    Action.WORKSPACE_UPDATE: _MANAGERS,
    Action.WORKSPACE_DELETE: frozenset({Role.OWNER}),
    Action.MEMBER_LIST: _ALL - {Role.GUEST},
    Action.MEMBER_INVITE: _MANAGERS,
    Action.MEMBER_UPDATE_ROLE: _MANAGERS,
    Action.MEMBER_REMOVE: _MANAGERS,
    Action.API_KEY_MANAGE: _MANAGERS,
    Action.AUDIT_READ: _MANAGERS,
    Action.CONNECTOR_READ: _ALL - {Role.GUEST},
    Action.CONNECTOR_MANAGE: _MANAGERS,
    Action.TEMPLATE_READ: _ALL - {Role.GUEST},
    Action.TEMPLATE_MANAGE: _ALL - {Role.GUEST},
    Action.DELIVERY_SEND: _ALL - {Role.GUEST},
    Action.DELIVERY_READ: _ALL - {Role.GUEST},
}

# What an API key may do, by scope. Keys never delete workspaces or mint other keys.
SCOPE_PERMISSIONS: dict[Action, frozenset[Scope]] = {
    Action.WORKSPACE_READ: frozenset(Scope),
    Action.MEMBER_LIST: frozenset({Scope.ADMIN}),
    Action.AUDIT_READ: frozenset({Scope.ADMIN}),
    # A sending app sees the connectors, routes and templates it names, and its delivery log.
    Action.CONNECTOR_READ: frozenset({Scope.MESSAGES_SEND, Scope.ADMIN}),
    Action.CONNECTOR_MANAGE: frozenset({Scope.ADMIN}),
    Action.TEMPLATE_READ: frozenset({Scope.MESSAGES_SEND, Scope.ADMIN}),
    Action.TEMPLATE_MANAGE: frozenset({Scope.ADMIN}),
    Action.DELIVERY_SEND: frozenset({Scope.MESSAGES_SEND, Scope.ADMIN}),
    Action.DELIVERY_READ: frozenset({Scope.MESSAGES_SEND, Scope.MESSAGES_READ, Scope.ADMIN}),
}


@dataclass(frozen=True)
class UserPrincipal:
    user_id: uuid.UUID
    session_id: uuid.UUID | None
    is_instance_admin: bool = False
    kind: str = field(default="user", init=False)

    @cached_property
    def actor_id(self) -> str:
        # Cached: a chat send asks three times, and a UUID's text costs ~0.8 µs each.
        return str(self.user_id)


@dataclass(frozen=True)
class ApiKeyPrincipal:
    key_id: uuid.UUID
    workspace_id: uuid.UUID
    scopes: frozenset[str]
    kind: str = field(default="api_key", init=False)

    @cached_property
    def actor_id(self) -> str:
        return str(self.key_id)


Principal = UserPrincipal | ApiKeyPrincipal


class Decision(StrEnum):
    ALLOW = "allow"
    FORBIDDEN = "forbidden"  # knows the workspace, may not do this: 403
    HIDDEN = "hidden"  # not in the workspace: 404


def decide(
    principal: Principal, action: Action, workspace_id: uuid.UUID, role: Role | None
) -> Decision:
    """`role` is the user's membership role in the workspace (None when not a member)."""
    if isinstance(principal, ApiKeyPrincipal):
        if principal.workspace_id != workspace_id:
            return Decision.HIDDEN
        allowed_scopes = SCOPE_PERMISSIONS.get(action, frozenset())
        return Decision.ALLOW if principal.scopes & allowed_scopes else Decision.FORBIDDEN
    if role is None:
        return Decision.HIDDEN
    return Decision.ALLOW if role in ROLE_PERMISSIONS[action] else Decision.FORBIDDEN


def may_assign(actor_role: Role, current: Role | None, target: Role) -> bool:
    """Admins manage everyone below owner; only owners make or unmake owners."""
    if actor_role is Role.OWNER:
        return True
    if actor_role is Role.ADMIN:
        return Role.OWNER not in {current, target}
    return False
