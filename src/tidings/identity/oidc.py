"""Verification of tokens issued by an external OpenID Connect provider (Clerk, Auth0, Keycloak...).

Follows RFC 8725 and OWASP ASVS V9: the accepted algorithms come from configuration, never from
the token; only asymmetric algorithms are allowed, so a public key can never double as an HMAC
secret; signing keys come only from the configured JWKS URL (or the one the issuer's discovery
document names), never from the token's `jku`, `x5u` or `jwk` headers.

The JWKS is cached. A token naming an unknown `kid` triggers a refetch (the provider rotated its
keys), but at most once per `min_refresh_interval_seconds` and with one fetch shared by every
waiting verification, so a flood of made-up kids cannot hammer the provider. A failed fetch keeps
the previous keys.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import jwt

from tidings.infra.logging import get_logger

ASYMMETRIC_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
REQUIRED_CLAIMS = ["exp", "iat", "iss", "aud", "sub"]
MAX_LEEWAY_SECONDS = 60
HTTP_TIMEOUT = httpx.Timeout(5.0)
# httpx's timeouts are per operation; this bounds a server that drips bytes.
FETCH_DEADLINE_SECONDS = 10.0
MAX_RESPONSE_BYTES = 1_048_576
# Far more than any provider publishes; bounds the work a hostile JWKS can cause.
MAX_KEYS = 50
# Real ID tokens are a few KiB; anything bigger is not worth parsing.
MAX_TOKEN_CHARS = 16_384
DISCOVERY_PATH = "/.well-known/openid-configuration"

_log = get_logger(__name__)


@dataclass(frozen=True)
class ExternalIdentity:
    issuer: str
    subject: str
    email: str | None
    email_verified: bool
    name: str | None


class InvalidExternalToken(Exception):  # noqa: N818 - reads as the condition it reports
    """The token was refused; the message is safe to show and never contains the token."""


class _FetchError(Exception):
    pass


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _secure_url(url: str) -> bool:
    # Plain HTTP would let anyone on the path substitute keys; allowed only for local testing.
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:
        return False
    if not parsed.host:
        return False
    return parsed.scheme == "https" or (parsed.scheme == "http" and _is_loopback(parsed.host))


class OIDCVerifier:
    def __init__(
        self,
        *,
        issuer: str,
        audience: str,
        http: httpx.AsyncClient,
        jwks_url: str | None = None,
        algorithms: Sequence[str] = ("RS256", "ES256"),
        leeway_seconds: float = 30,
        jwks_cache_seconds: float = 3600,
        min_refresh_interval_seconds: float = 10,
    ) -> None:
        if not _secure_url(issuer):
            raise ValueError("the OIDC issuer must be an https URL (http only on loopback)")
        if jwks_url is not None and not _secure_url(jwks_url):
            raise ValueError("the JWKS URL must be an https URL (http only on loopback)")
        if not audience:
            raise ValueError("an OIDC audience is required")
        if isinstance(algorithms, str) or not algorithms:
            raise ValueError("algorithms must be a non-empty list of algorithm names")
        refused = [name for name in algorithms if name not in ASYMMETRIC_ALGORITHMS]
        if refused:
            raise ValueError(f"algorithms not allowed for external tokens: {refused}")
        if not 0 <= leeway_seconds <= MAX_LEEWAY_SECONDS:
            raise ValueError(f"leeway_seconds must be between 0 and {MAX_LEEWAY_SECONDS}")
        if jwks_cache_seconds <= 0 or min_refresh_interval_seconds < 0:
            raise ValueError("cache durations must be positive")
        self.issuer = issuer
        self._audience = audience
        self._http = http
        self._jwks_url = jwks_url
        self._discovery_url = issuer.rstrip("/") + DISCOVERY_PATH
        self._algorithms = tuple(algorithms)
        self._leeway = leeway_seconds
        self._cache_seconds = jwks_cache_seconds
        self._min_refresh = min_refresh_interval_seconds
        self._keys: list[jwt.PyJWK] = []
        self._fetched_at: float | None = None
        self._attempted_at: float | None = None
        self._attempts = 0
        self._lock = asyncio.Lock()

    def accepts(self, token: str) -> bool:
        try:
            if len(token) > MAX_TOKEN_CHARS:
                return False
            claims = jwt.decode(token, options={"verify_signature": False})
        except (jwt.PyJWTError, ValueError, TypeError):
            return False
        return claims.get("iss") == self.issuer

    async def verify(self, token: str) -> ExternalIdentity:
        if len(token) > MAX_TOKEN_CHARS:
            raise InvalidExternalToken("token too large")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise InvalidExternalToken("malformed token") from exc
        algorithm = header.get("alg")
        kid = header.get("kid")
        if not isinstance(algorithm, str) or algorithm not in self._algorithms:
            raise InvalidExternalToken("token algorithm not allowed")
        if kid is not None and not isinstance(kid, str):
            raise InvalidExternalToken("malformed token")
        # A token from another issuer must not make us contact ours.
        if not self.accepts(token):
            raise InvalidExternalToken("token issuer mismatch")

        candidates = await self._keys_for(kid, algorithm)
        if not candidates:
            raise InvalidExternalToken("no signing key matches the token")
        for key in candidates:
            try:
                claims = jwt.decode(
                    token,
                    key,
                    algorithms=list(self._algorithms),
                    audience=self._audience,
                    issuer=self.issuer,
                    leeway=self._leeway,
                    options={"require": REQUIRED_CLAIMS, "enforce_minimum_key_length": True},
                )
            except jwt.InvalidSignatureError:
                continue  # only when the token has no kid and several keys share its algorithm
            except jwt.PyJWTError as exc:
                raise InvalidExternalToken(_describe(exc)) from exc
            return self._identity(claims)
        raise InvalidExternalToken("token signature invalid")

    def _identity(self, claims: dict[str, Any]) -> ExternalIdentity:
        subject = claims["sub"]
        if not isinstance(subject, str) or not subject:
            raise InvalidExternalToken("token subject invalid")
        email = claims.get("email")
        name = claims.get("name")
        # Some providers send the boolean as a string.
        verified = claims.get("email_verified") in (True, "true")
        return ExternalIdentity(
            issuer=self.issuer,
            subject=subject,
            email=email if isinstance(email, str) and email else None,
            email_verified=verified and isinstance(email, str) and bool(email),
            name=name if isinstance(name, str) and name else None,
        )

    # -- keys ------------------------------------------------------------------------------

    def _matching(self, kid: str | None, algorithm: str) -> list[jwt.PyJWK]:
        # PyJWT also refuses a key whose algorithm differs from the token's; filtering here
        # keeps a kid pointing at, say, an EC key from being tried with an RSA signature.
        return [
            key
            for key in self._keys
            if key.algorithm_name == algorithm and (kid is None or key.key_id == kid)
        ]

    async def _keys_for(self, kid: str | None, algorithm: str) -> list[jwt.PyJWK]:
        now = time.monotonic()
        if self._fetched_at is None or now - self._fetched_at >= self._cache_seconds:
            await self._refresh()
        keys = self._matching(kid, algorithm)
        if not keys and kid is not None:
            await self._refresh()  # the provider may have rotated its keys
            keys = self._matching(kid, algorithm)
        return keys

    async def _refresh(self) -> None:
        attempts_seen = self._attempts
        async with self._lock:
            if self._attempts != attempts_seen:
                return  # another verification fetched while we waited; share its result
            now = time.monotonic()
            if self._attempted_at is not None and now - self._attempted_at < self._min_refresh:
                return
            self._attempted_at = now
            try:
                async with asyncio.timeout(FETCH_DEADLINE_SECONDS):
                    keys = await self._fetch_keys()
            except (_FetchError, httpx.HTTPError, TimeoutError, ValueError, RecursionError) as exc:
                _log.warning(
                    "oidc_jwks_fetch_failed",
                    issuer=self.issuer,
                    reason=str(exc) or type(exc).__name__,
                    cached_keys=len(self._keys),
                )
                return
            finally:
                self._attempts += 1
            self._keys = keys
            self._fetched_at = time.monotonic()

    async def _fetch_keys(self) -> list[jwt.PyJWK]:
        document = await self._get_json(await self._resolve_jwks_url())
        if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
            raise _FetchError("JWKS is not a key set")
        candidates = document["keys"][:MAX_KEYS]
        keys = [key for key in map(self._usable_key, candidates) if key is not None]
        if not keys:
            # More likely a broken response than a provider revoking every key at once.
            raise _FetchError("JWKS has no usable signing key")
        return keys

    def _usable_key(self, data: Any) -> jwt.PyJWK | None:
        if not isinstance(data, dict) or data.get("kty") == "oct":
            return None
        if data.get("use", "sig") != "sig":
            return None
        key_ops = data.get("key_ops")
        if key_ops is not None and (not isinstance(key_ops, list) or "verify" not in key_ops):
            return None
        try:
            key = jwt.PyJWK(data)
        except jwt.PyJWTError:
            return None
        return key if key.algorithm_name in self._algorithms else None

    async def _resolve_jwks_url(self) -> str:
        if self._jwks_url is not None:
            return self._jwks_url
        document = await self._get_json(self._discovery_url)
        if not isinstance(document, dict):
            raise _FetchError("discovery document is not an object")
        # OIDC Discovery 1.0 §4.3: the document must name the issuer we asked about.
        if document.get("issuer") != self.issuer:
            raise _FetchError("discovery document names another issuer")
        jwks_uri = document.get("jwks_uri")
        if not isinstance(jwks_uri, str) or not _secure_url(jwks_uri):
            raise _FetchError("discovery document has no usable jwks_uri")
        self._jwks_url = jwks_uri
        return jwks_uri

    async def _get_json(self, url: str) -> Any:
        async with self._http.stream(
            "GET",
            url,
            headers={"Accept": "application/json"},
            timeout=HTTP_TIMEOUT,
            follow_redirects=False,  # keys come from the configured URL only
        ) as response:
            if response.status_code != 200:
                raise _FetchError(f"HTTP {response.status_code} from {url}")
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > MAX_RESPONSE_BYTES:
                raise _FetchError(f"response from {url} is too large")
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body.extend(chunk)
                if len(body) > MAX_RESPONSE_BYTES:
                    raise _FetchError(f"response from {url} is too large")
        return json.loads(body)


def _describe(exc: jwt.PyJWTError) -> str:
    if isinstance(exc, jwt.ExpiredSignatureError):
        return "token expired"
    if isinstance(exc, jwt.ImmatureSignatureError):
        return "token not yet valid"
    if isinstance(exc, jwt.InvalidAudienceError):
        return "token audience mismatch"
    if isinstance(exc, jwt.InvalidIssuerError):
        return "token issuer mismatch"
    if isinstance(exc, jwt.MissingRequiredClaimError):
        return f"token lacks the {exc.claim} claim"
    if isinstance(exc, jwt.InvalidAlgorithmError):
        return "token algorithm not allowed"
    if isinstance(exc, jwt.InvalidSignatureError):
        return "token signature invalid"
    return "invalid token"
