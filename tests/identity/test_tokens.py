"""Access-token verification: the remembered verification keeps every refusal of the first."""

from __future__ import annotations

import time
import uuid
from datetime import datetime, timedelta, tzinfo

import jwt.api_jwt
import pytest
from pydantic import SecretStr

from tidings.identity import tokens
from tidings.identity.tokens import LEEWAY_SECONDS, AccessTokens, InvalidToken


def _tokens(secret: str = "s" * 40) -> AccessTokens:
    return AccessTokens(
        secret=SecretStr(secret), previous=[], issuer="tidings", lifetime=timedelta(minutes=15)
    )


def test_a_verified_token_is_remembered_until_it_expires(monkeypatch: pytest.MonkeyPatch) -> None:
    access = _tokens()
    user, session = uuid.uuid4(), uuid.uuid4()
    token, expires = access.issue(user, session)
    first = access.verify(token)
    assert (first.user_id, first.session_id) == (user, session)
    assert access.verify(token) is first  # remembered, not decoded again

    # Past its expiry (and the leeway), the remembered token is refused like a fresh one:
    # both clocks (ours and PyJWT's) move on.
    later = expires.timestamp() + LEEWAY_SECONDS + 1

    class Later(datetime):
        @classmethod
        def now(cls, tz: tzinfo | None = None) -> Later:
            return cls.fromtimestamp(later, tz)

    monkeypatch.setattr(tokens.time, "time", lambda: later)
    monkeypatch.setattr(jwt.api_jwt, "datetime", Later)
    with pytest.raises(InvalidToken):
        access.verify(token)
    assert token not in access._verified


def test_refusals_are_not_remembered_and_tampering_is_caught() -> None:
    access = _tokens()
    token, _ = access.issue(uuid.uuid4(), uuid.uuid4())
    access.verify(token)
    head, payload, signature = token.split(".")
    for bad in (f"{head}.{payload[:-4]}AAAA.{signature}", "not.a.token", token + "x"):
        for _ in range(2):
            with pytest.raises(InvalidToken):
                access.verify(bad)
    # Another process with another key refuses what this one remembered.
    with pytest.raises(InvalidToken):
        _tokens("t" * 40).verify(token)


def test_the_memory_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tokens, "VERIFIED_CACHE_SIZE", 3)
    access = _tokens()
    issued = [access.issue(uuid.uuid4(), uuid.uuid4())[0] for _ in range(5)]
    for token in issued:
        access.verify(token)
    assert list(access._verified) == issued[2:]  # the least recently used went first
    assert access.verify(issued[0]).expires_at.timestamp() > time.time()  # verified again
