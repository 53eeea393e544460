"""Tokens from an external OpenID Connect provider, verified against a real local JWKS server."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization

from tests.support.jwks_server import (
    AUDIENCE,
    DISCOVERY_PATH,
    JWKS_PATH,
    JwksServer,
    SigningKey,
)
from tidings.identity.oidc import (
    MAX_RESPONSE_BYTES,
    ExternalIdentity,
    InvalidExternalToken,
    OIDCVerifier,
)


@pytest.fixture(scope="module")
def rsa_key() -> SigningKey:
    return SigningKey.rsa("rsa-1")


@pytest.fixture(scope="module")
def ec_key() -> SigningKey:
    return SigningKey.ec("ec-1")


@pytest.fixture
def idp(rsa_key: SigningKey, ec_key: SigningKey) -> Iterator[JwksServer]:
    server = JwksServer([rsa_key, ec_key]).start()
    yield server
    server.stop()


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    # No proxy from the environment: the provider is on loopback.
    async with httpx.AsyncClient(trust_env=False) as client:
        yield client


def verifier(idp: JwksServer, http: httpx.AsyncClient, **options: Any) -> OIDCVerifier:
    values: dict[str, Any] = {
        "issuer": idp.issuer,
        "audience": AUDIENCE,
        "http": http,
        "jwks_url": idp.jwks_url,
        **options,
    }
    return OIDCVerifier(**values)


async def refused(oidc: OIDCVerifier, token: str) -> str:
    with pytest.raises(InvalidExternalToken) as caught:
        await oidc.verify(token)
    message = str(caught.value)
    assert not token or token not in message
    return message


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned(header: dict[str, Any], claims: dict[str, Any]) -> str:
    """Header and payload segments of a token, without the signature."""
    return f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"


# -- valid tokens ----------------------------------------------------------------------------


async def test_rs256_token_gives_the_identity(
    idp: JwksServer, http: httpx.AsyncClient, rsa_key: SigningKey
) -> None:
    identity = await verifier(idp, http).verify(rsa_key.sign(idp.claims()))
    assert identity == ExternalIdentity(
        issuer=idp.issuer,
        subject="user_2abcDEF",
        email="ada@example.com",
        email_verified=True,
        name="Ada Lovelace",
    )


async def test_es256_token_gives_the_identity(
    idp: JwksServer, http: httpx.AsyncClient, ec_key: SigningKey
) -> None:
    identity = await verifier(idp, http).verify(ec_key.sign(idp.claims(sub="user_ec")))
    assert identity.subject == "user_ec"


async def test_optional_profile_claims(
    idp: JwksServer, http: httpx.AsyncClient, rsa_key: SigningKey
) -> None:
    oidc = verifier(idp, http)
    bare = await oidc.verify(rsa_key.sign(idp.claims(email=None, email_verified=None, name=None)))
    assert (bare.email, bare.email_verified, bare.name) == (None, False, None)
    unverified = await oidc.verify(rsa_key.sign(idp.claims(email_verified=False)))
    assert unverified.email == "ada@example.com"
    assert unverified.email_verified is False
    as_string = await oidc.verify(rsa_key.sign(idp.claims(email_verified="true")))
    assert as_string.email_verified is True


async def test_token_without_kid_is_tried_against_keys_of_its_algorithm(
    idp: JwksServer, http: httpx.AsyncClient, rsa_key: SigningKey
) -> None:
    oidc = verifier(idp, http)
    assert (await oidc.verify(rsa_key.sign(idp.claims(), {"kid": None}))).subject
    stranger = SigningKey.rsa()
    assert await refused(oidc, stranger.sign(idp.claims(), {"kid": None})) == (
        "token signature invalid"
    )


async def test_audience_list_containing_ours_is_accepted(
    idp: JwksServer, http: httpx.AsyncClient, rsa_key: SigningKey
) -> None:
    token = rsa_key.sign(idp.claims(aud=["another-app", AUDIENCE]))
    assert (await verifier(idp, http).verify(token)).subject == "user_2abcDEF"


# -- refused claims --------------------------------------------------------------------------


async def test_wrong_issuer_is_refused_without_contacting_the_provider(
    idp: JwksServer, http: httpx.AsyncClient, rsa_key: SigningKey
) -> None:
    token = rsa_key.sign(idp.claims(iss="https://evil.example"))
    assert await refused(verifier(idp, http), token) == "token issuer mismatch"
    assert idp.requests() == 0


async def test_wrong_audience_is_refused(
    idp: JwksServer, http: httpx.AsyncClient, rsa_key: SigningKey
) -> None:
    token = rsa_key.sign(idp.claims(aud="another-app"))
    assert await refused(verifier(idp, http), token) == "token audience mismatch"


async def test_expiry_allows_the_leeway_and_no_more(
    idp: JwksServer, http: httpx.AsyncClient, rsa_key: SigningKey
) -> None:
    oidc = verifier(idp, http, leeway_seconds=30)
    now = int(time.time())
    within = rsa_key.sign(idp.claims(iat=now - 600, exp=now - 10))
    assert (await oidc.verify(within)).subject == "user_2abcDEF"
    beyond = rsa_key.sign(idp.claims(iat=now - 600, exp=now - 120))
    assert await refused(oidc, beyond) == "token expired"


async def test_token_from_the_future_is_refused(
    idp: JwksServer, http: httpx.AsyncClient, rsa_key: SigningKey
) -> None:
    oidc = verifier(idp, http)
    now = int(time.time())
    assert await refused(oidc, rsa_key.sign(idp.claims(iat=now + 600))) == "token not yet valid"
    assert await refused(oidc, rsa_key.sign(idp.claims(nbf=now + 600))) == "token not yet valid"


@pytest.mark.parametrize("claim", ["exp", "iat", "iss", "aud", "sub"])
async def test_missing_required_claim_is_refused(
    claim: str, idp: JwksServer, http: httpx.AsyncClient, rsa_key: SigningKey
) -> None:
    message = await refused(verifier(idp, http), rsa_key.sign(idp.claims(**{claim: None})))
    # Without `iss` the token is not even ours to check.
    assert message == (
        "token issuer mismatch" if claim == "iss" else f"token lacks the {claim} claim"
    )


async def test_empty_subject_is_refused(
    idp: JwksServer, http: httpx.AsyncClient, rsa_key: SigningKey
) -> None:
    assert await refused(verifier(idp, http), rsa_key.sign(idp.claims(sub=""))) == (
        "token subject invalid"
    )


# -- refused signatures and algorithms -------------------------------------------------------


@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
async def test_alg_none_is_refused(
    alg: str, idp: JwksServer, http: httpx.AsyncClient, rsa_key: SigningKey
) -> None:
    oidc = verifier(idp, http)
    token = unsigned({"alg": alg, "typ": "JWT", "kid": rsa_key.kid}, idp.claims()) + "."
    assert await refused(oidc, token) == "token algorithm not allowed"
    assert idp.requests() == 0


async def test_hs256_signed_with_the_public_key_is_refused(
    idp: JwksServer, http: httpx.AsyncClient, rsa_key: SigningKey
) -> None:
    oidc = verifier(idp, http)
    public = rsa_key.private_key.public_key()
    pem = public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    for secret in (pem, json.dumps(rsa_key.public_jwk()).encode()):
        signing_input = unsigned({"alg": "HS256", "typ": "JWT", "kid": rsa_key.kid}, idp.claims())
        mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
        token = f"{signing_input}.{b64url(mac)}"
        assert await refused(oidc, token) == "token algorithm not allowed"


async def test_token_naming_a_key_of_another_algorithm_is_refused(
    idp: JwksServer, http: httpx.AsyncClient, ec_key: SigningKey
) -> None:
    # RS256 signature, but the kid points at the EC key.
    forged = SigningKey.rsa(ec_key.kid).sign(idp.claims())
    assert await refused(verifier(idp, http), forged) == "no signing key matches the token"


async def test_tampered_token_is_refused(
    idp: JwksServer, http: httpx.AsyncClient, rsa_key: SigningKey
) -> None:
    oidc = verifier(idp, http)
    header, payload, signature = rsa_key.sign(idp.claims()).split(".")
    raw = bytearray(base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4)))
    raw[len(raw) // 2] ^= 0x01
    assert await refused(oidc, f"{header}.{payload}.{b64url(bytes(raw))}") == (
        "token signature invalid"
    )
    other_payload = b64url(json.dumps(idp.claims(sub="user_admin")).encode())
    assert await refused(oidc, f"{header}.{other_payload}.{signature}") == (
        "token signature invalid"
    )


async def test_keys_in_token_headers_are_ignored(
    idp: JwksServer, http: httpx.AsyncClient, rsa_key: SigningKey
) -> None:
    oidc = verifier(idp, http)
    attacker = SigningKey.rsa()
    elsewhere = JwksServer([attacker]).start()
    try:
        pointers = {
            "jku": elsewhere.jwks_url,
            "x5u": elsewhere.jwks_url,
            "jwk": attacker.public_jwk(),
        }
        own_kid = attacker.sign(idp.claims(), pointers)
        assert await refused(oidc, own_kid) == "no signing key matches the token"
        borrowed_kid = attacker.sign(idp.claims(), {**pointers, "kid": rsa_key.kid})
        assert await refused(oidc, borrowed_kid) == "token signature invalid"
        assert elsewhere.requests() == 0
    finally:
        elsewhere.stop()


@pytest.mark.parametrize(
    "token", ["", "garbage", "a.b.c", "eyJhbGciOiJSUzI1NiJ9.e30", "x" * 20_000]
)
async def test_malformed_token_is_refused(
    token: str, idp: JwksServer, http: httpx.AsyncClient
) -> None:
    await refused(verifier(idp, http), token)
    assert idp.requests() == 0


@pytest.mark.parametrize(
    "options",
    [
        {"algorithms": ("HS256",)},
        {"algorithms": ("RS256", "HS512")},
        {"algorithms": ("none",)},
        {"algorithms": ()},
        {"leeway_seconds": 61},
        {"leeway_seconds": -1},
        {"issuer": "http://idp.example.com"},
        {"jwks_url": "http://idp.example.com/jwks.json"},
        {"audience": ""},
    ],
)
async def test_unsafe_configuration_is_refused(
    options: dict[str, Any], http: httpx.AsyncClient
) -> None:
    values: dict[str, Any] = {
        "issuer": "https://idp.example.com",
        "audience": AUDIENCE,
        "http": http,
        **options,
    }
    with pytest.raises(ValueError, match=r"."):
        OIDCVerifier(**values)


# -- keys: rotation, rate limits, outages ----------------------------------------------------


async def test_unknown_kid_refetches_once_after_rotation(
    idp: JwksServer, http: httpx.AsyncClient, rsa_key: SigningKey
) -> None:
    oidc = verifier(idp, http, min_refresh_interval_seconds=0.2)
    old_token = rsa_key.sign(idp.claims())
    await oidc.verify(old_token)
    assert idp.requests() == 1

    rotated = SigningKey.rsa("rsa-2")
    idp.set_keys([rotated])
    await asyncio.sleep(0.25)
    assert (await oidc.verify(rotated.sign(idp.claims(sub="after")))).subject == "after"
    assert idp.requests() == 2
    await oidc.verify(rotated.sign(idp.claims()))
    assert idp.requests() == 2  # known now: served from the cache

    # The old key left the provider's set, so the refreshed cache no longer has it.
    assert await refused(oidc, old_token) == "no signing key matches the token"
    assert idp.requests() == 2


async def test_expired_cache_drops_removed_keys(
    idp: JwksServer, http: httpx.AsyncClient, rsa_key: SigningKey, ec_key: SigningKey
) -> None:
    oidc = verifier(idp, http, jwks_cache_seconds=0.2, min_refresh_interval_seconds=0.15)
    token = rsa_key.sign(idp.claims())
    await oidc.verify(token)
    idp.set_keys([ec_key])
    await oidc.verify(token)  # still cached
    await asyncio.sleep(0.25)
    assert await refused(oidc, token) == "no signing key matches the token"
    assert idp.requests() == 2


async def test_concurrent_verifications_share_one_fetch(
    idp: JwksServer, http: httpx.AsyncClient, rsa_key: SigningKey
) -> None:
    oidc = verifier(idp, http)
    rotated = SigningKey.ec("ec-2")
    idp.set_keys([rsa_key, rotated])
    tokens = [rotated.sign(idp.claims(sub=f"user_{n}")) for n in range(20)]
    identities = await asyncio.gather(*(oidc.verify(token) for token in tokens))
    assert [identity.subject for identity in identities] == [f"user_{n}" for n in range(20)]
    assert idp.requests() == 1


async def test_garbage_kids_cannot_hammer_the_provider(
    idp: JwksServer, http: httpx.AsyncClient, rsa_key: SigningKey
) -> None:
    interval = 0.3
    oidc = verifier(idp, http, min_refresh_interval_seconds=interval)
    stranger = SigningKey.rsa()

    def garbage(n: int) -> str:
        return stranger.sign(idp.claims(), {"kid": f"garbage-{n}"})

    # A burst on a cold cache: one fetch for everyone, no refetch within the interval.
    outcomes = await asyncio.gather(
        *(oidc.verify(garbage(n)) for n in range(50)), return_exceptions=True
    )
    assert all(isinstance(outcome, InvalidExternalToken) for outcome in outcomes)
    assert idp.requests() == 1

    # A steady stream: at most one refetch per interval.
    started = time.monotonic()
    n = 50
    while time.monotonic() - started < 1.0:
        await refused(oidc, garbage(n))
        n += 1
        await asyncio.sleep(0.01)
    elapsed = time.monotonic() - started
    refetches = idp.requests() - 1
    assert 1 <= refetches <= elapsed / interval + 1
    assert (await oidc.verify(rsa_key.sign(idp.claims()))).subject == "user_2abcDEF"


async def test_discovery_is_fetched_once(
    idp: JwksServer, http: httpx.AsyncClient, rsa_key: SigningKey
) -> None:
    oidc = verifier(idp, http, jwks_url=None, min_refresh_interval_seconds=0.1)
    await oidc.verify(rsa_key.sign(idp.claims()))
    assert (idp.requests(DISCOVERY_PATH), idp.requests(JWKS_PATH)) == (1, 1)

    rotated = SigningKey.ec("ec-rotated")
    idp.set_keys([rsa_key, rotated])
    await asyncio.sleep(0.15)
    await oidc.verify(rotated.sign(idp.claims()))
    await oidc.verify(rsa_key.sign(idp.claims()))
    assert (idp.requests(DISCOVERY_PATH), idp.requests(JWKS_PATH)) == (1, 2)


@pytest.mark.parametrize(
    "document",
    [
        {"issuer": "https://evil.example", "jwks_uri": "{issuer}/jwks.json"},
        {"issuer": "{issuer}", "jwks_uri": "http://keys.example.com/jwks.json"},
        {"issuer": "{issuer}"},
    ],
)
async def test_untrustworthy_discovery_document_is_refused(
    document: dict[str, str], idp: JwksServer, http: httpx.AsyncClient, rsa_key: SigningKey
) -> None:
    filled = {key: value.format(issuer=idp.issuer) for key, value in document.items()}
    idp.override(DISCOVERY_PATH, json.dumps(filled).encode())
    oidc = verifier(idp, http, jwks_url=None)
    assert await refused(oidc, rsa_key.sign(idp.claims())) == "no signing key matches the token"
    assert idp.requests(JWKS_PATH) == 0


async def test_provider_down_keeps_cached_keys(
    idp: JwksServer, http: httpx.AsyncClient, rsa_key: SigningKey
) -> None:
    oidc = verifier(idp, http, jwks_cache_seconds=0.2, min_refresh_interval_seconds=0.05)
    await oidc.verify(rsa_key.sign(idp.claims()))
    idp.stop()
    await asyncio.sleep(0.25)
    # The cache expired and the refetch fails: the keys we had still verify.
    assert (await oidc.verify(rsa_key.sign(idp.claims(sub="later")))).subject == "later"
    stranger = SigningKey.rsa()
    assert await refused(oidc, stranger.sign(idp.claims())) == "no signing key matches the token"


async def test_provider_errors_keep_cached_keys(
    idp: JwksServer, http: httpx.AsyncClient, rsa_key: SigningKey
) -> None:
    oidc = verifier(idp, http, jwks_cache_seconds=0.1, min_refresh_interval_seconds=0)
    token = rsa_key.sign(idp.claims())
    await oidc.verify(token)
    for status, body in [(503, b"{}"), (200, b"<html>"), (200, b'{"keys": []}')]:
        idp.override(JWKS_PATH, body, status)
        await asyncio.sleep(0.15)
        assert (await oidc.verify(token)).subject == "user_2abcDEF"
    assert idp.requests() == 4


async def test_provider_down_from_the_start(
    idp: JwksServer, http: httpx.AsyncClient, rsa_key: SigningKey
) -> None:
    oidc = verifier(idp, http)
    idp.stop()
    assert await refused(oidc, rsa_key.sign(idp.claims())) == "no signing key matches the token"


@pytest.mark.parametrize("declare_length", [True, False])
async def test_oversized_jwks_is_refused(
    declare_length: bool, idp: JwksServer, http: httpx.AsyncClient, rsa_key: SigningKey
) -> None:
    padding = b" " * (MAX_RESPONSE_BYTES + 1)
    body = json.dumps({"keys": [rsa_key.public_jwk()]}).encode()[:-1] + padding + b"}"
    idp.override(JWKS_PATH, body, declare_length=declare_length)
    oidc = verifier(idp, http)
    assert await refused(oidc, rsa_key.sign(idp.claims())) == "no signing key matches the token"


async def test_jwks_without_declared_length_is_read(
    idp: JwksServer, http: httpx.AsyncClient, rsa_key: SigningKey
) -> None:
    body = json.dumps({"keys": [rsa_key.public_jwk()]}).encode()
    idp.override(JWKS_PATH, body, declare_length=False)
    assert (await verifier(idp, http).verify(rsa_key.sign(idp.claims()))).subject


async def test_symmetric_and_encryption_keys_in_the_jwks_are_ignored(
    idp: JwksServer, http: httpx.AsyncClient, rsa_key: SigningKey
) -> None:
    secret = b"a-shared-secret-that-is-long-enough-for-hs256"
    keys = [
        {"kty": "oct", "kid": "hmac", "alg": "HS256", "k": b64url(secret)},
        {**rsa_key.public_jwk(), "use": "enc"},
    ]
    idp.override(JWKS_PATH, json.dumps({"keys": keys}).encode())
    oidc = verifier(idp, http)
    signing_input = unsigned({"alg": "HS256", "kid": "hmac"}, idp.claims())
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    assert await refused(oidc, f"{signing_input}.{b64url(mac)}") == "token algorithm not allowed"
    assert await refused(oidc, rsa_key.sign(idp.claims())) == "no signing key matches the token"


# -- routing -----------------------------------------------------------------------------------


async def test_accepts_only_tokens_from_our_issuer(
    idp: JwksServer, http: httpx.AsyncClient, rsa_key: SigningKey
) -> None:
    oidc = verifier(idp, http)
    assert oidc.accepts(rsa_key.sign(idp.claims()))
    # Unverified on purpose: routing only; `verify` checks the signature.
    assert oidc.accepts(SigningKey.rsa().sign(idp.claims()))
    assert not oidc.accepts(rsa_key.sign(idp.claims(iss="https://tidings.example")))
    assert not oidc.accepts(rsa_key.sign(idp.claims(iss=None)))
    list_payload = unsigned({"alg": "RS256"}, {}).split(".")[0] + "." + b64url(b"[1]") + ".sig"
    for garbage in ["", "garbage", "a.b.c", "...", list_payload, "x" * 20_000, "é.é.é"]:
        assert not oidc.accepts(garbage)
    assert idp.requests() == 0
