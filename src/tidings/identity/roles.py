"""Workspace roles: a module of its own so API shapes (and the SDK) need no table definitions."""

from __future__ import annotations

from enum import StrEnum


class Role(StrEnum):
    OWNER = "owner"
    ADMIN = "admin"
    MEMBER = "member"
    AGENT = "agent"
    GUEST = "guest"
