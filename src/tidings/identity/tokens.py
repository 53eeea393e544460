"""Access tokens (short-lived JWTs) and opaque secrets (refresh tokens, invitations, API keys).

Access tokens are HS256 with the algorithm pinned, every claim required, and a key id so the
signing key can rotate: new tokens use the current key, tokens signed with a previous key stay
valid until they expire.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, timedelta

import jwt
from pydantic import SecretStr

from tidings.db.base import utcnow

ALGORITHM = "HS256"
AUDIENCE = "tidings-api"
TOKEN_TYPE = "at+jwt"  # noqa: S105 - the JWT typ header
REQUIRED_CLAIMS = ["exp", "iat", "iss", "aud", "sub", "jti", "sid"]
LEEWAY_SECONDS = 30
# Verified access tokens remembered per process (a few hundred bytes each).
VERIFIED_CACHE_SIZE = 10_000

REFRESH_TOKEN_PREFIX = "tdr_"  # noqa: S105 - a public prefix
INVITATION_PREFIX = "tdi_"
API_KEY_PREFIX = "tdk_"


class InvalidToken(Exception):  # noqa: N818 - reads as the condition it reports
    """The token is malformed, expired, tampered with or signed by an unknown key."""


@dataclass(frozen=True)
class AccessClaims:
    user_id: uuid.UUID
    session_id: uuid.UUID
    token_id: str
    expires_at: datetime


def key_id(secret: SecretStr) -> str:
    return hashlib.sha256(secret.get_secret_value().encode()).hexdigest()[:12]


class AccessTokens:
    def __init__(
        self,
        *,
        secret: SecretStr,
        previous: list[SecretStr],
        issuer: str,
        lifetime: timedelta,
    ) -> None:
        self._current_kid = key_id(secret)
        self._keys = {key_id(s): s.get_secret_value().encode() for s in [*previous, secret]}
        self._issuer = issuer
        self.lifetime = lifetime
        self._verified: OrderedDict[str, tuple[AccessClaims, float]] = OrderedDict()

    def issue(self, user_id: uuid.UUID, session_id: uuid.UUID) -> tuple[str, datetime]:
        now = utcnow()
        expires = now + self.lifetime
        claims = {
            "iss": self._issuer,
            "aud": AUDIENCE,
            "sub": str(user_id),
            "sid": str(session_id),
            "jti": uuid.uuid4().hex,
            "iat": now,
            "exp": expires,
        }
        token = jwt.encode(
            claims,
            self._keys[self._current_kid],
            algorithm=ALGORITHM,
            headers={"kid": self._current_kid, "typ": TOKEN_TYPE},
        )
        return token, expires

    def verify(self, token: str) -> AccessClaims:
        """The claims of a valid token, or InvalidToken.

        A token verified once is remembered until it expires (bounded, least recently used
        first out): a client sends the same token with every request for its whole lifetime,
        and its signature and claims cannot change. The keys are fixed for the process, so
        nothing else could make a remembered token invalid; a revoked session is checked per
        request elsewhere (`session_is_live`).
        """
        remembered = self._verified.get(token)
        if remembered is not None:
            claims, valid_until = remembered
            if time.time() <= valid_until:
                self._verified.move_to_end(token)
                return claims
            del self._verified[token]
        claims = self._verify(token)
        self._verified[token] = (claims, claims.expires_at.timestamp() + LEEWAY_SECONDS)
        if len(self._verified) > VERIFIED_CACHE_SIZE:
            self._verified.popitem(last=False)
        return claims

    def _verify(self, token: str) -> AccessClaims:
        try:
            header = jwt.get_unverified_header(token)
            key = self._keys.get(str(header.get("kid")))
            if key is None or header.get("typ") != TOKEN_TYPE:
                raise InvalidToken("unknown signing key or token type")
            claims = jwt.decode(
                token,
                key,
                algorithms=[ALGORITHM],
                audience=AUDIENCE,
                issuer=self._issuer,
                leeway=LEEWAY_SECONDS,
                options={"require": REQUIRED_CLAIMS},
            )
            return AccessClaims(
                user_id=uuid.UUID(claims["sub"]),
                session_id=uuid.UUID(claims["sid"]),
                token_id=str(claims["jti"]),
                expires_at=datetime.fromtimestamp(claims["exp"]).astimezone(),
            )
        except (jwt.PyJWTError, ValueError, KeyError) as exc:
            raise InvalidToken(str(exc)) from None


def new_secret(prefix: str) -> str:
    return prefix + secrets.token_urlsafe(32)


def digest(secret: str) -> str:
    """SHA-256 of a high-entropy secret; such secrets need no slow hash."""
    return hashlib.sha256(secret.encode()).hexdigest()


def same_digest(secret: str, expected_hex: str) -> bool:
    return hmac.compare_digest(digest(secret), expected_hex)
