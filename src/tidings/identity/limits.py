"""Limits on identity input, shared by the API shapes (and the SDK) and the services."""

from __future__ import annotations

MIN_PASSWORD_LENGTH = 8
MAX_PASSWORD_LENGTH = 256
