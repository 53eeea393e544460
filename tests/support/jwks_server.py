"""A stand-in OpenID Connect provider: a real HTTP server on 127.0.0.1 that publishes a
discovery document and a JWKS, signs tokens with its keys, rotates them and counts requests."""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

DISCOVERY_PATH = "/.well-known/openid-configuration"
JWKS_PATH = "/jwks.json"
AUDIENCE = "tidings-test"

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class SigningKey:
    kid: str
    algorithm: str
    private_key: PrivateKey

    @classmethod
    def rsa(cls, kid: str | None = None) -> SigningKey:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        return cls(kid or f"rsa-{secrets.token_hex(4)}", "RS256", key)

    @classmethod
    def ec(cls, kid: str | None = None) -> SigningKey:
        key = ec.generate_private_key(ec.SECP256R1())
        return cls(kid or f"ec-{secrets.token_hex(4)}", "ES256", key)

    def public_jwk(self) -> dict[str, Any]:
        public = self.private_key.public_key()
        if isinstance(public, rsa.RSAPublicKey):
            jwk = RSAAlgorithm.to_jwk(public, as_dict=True)
        else:
            jwk = ECAlgorithm.to_jwk(public, as_dict=True)
        return {**jwk, "kid": self.kid, "alg": self.algorithm, "use": "sig"}

    def sign(self, claims: dict[str, Any], headers: dict[str, Any] | None = None) -> str:
        """Sign `claims`; a header given as None is left out (`{"kid": None}`: no kid)."""
        merged = {"kid": self.kid, **(headers or {})}
        chosen = {name: value for name, value in merged.items() if value is not None}
        return jwt.encode(claims, self.private_key, algorithm=self.algorithm, headers=chosen)


@dataclass
class _State:
    keys: list[SigningKey]
    requests: Counter[str] = field(default_factory=Counter)
    # Raw bodies served instead of the real documents: path -> (status, body, declare length).
    overrides: dict[str, tuple[int, bytes, bool]] = field(default_factory=dict)
    issuer: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    state: _State


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        state = self.server.state
        with state.lock:
            state.requests[self.path] += 1
            declare_length = True
            override = state.overrides.get(self.path)
            if override is not None:
                status, body, declare_length = override
            elif self.path == DISCOVERY_PATH:
                status, body = 200, json.dumps(_discovery(state.issuer)).encode()
            elif self.path == JWKS_PATH:
                jwks = {"keys": [key.public_jwk() for key in state.keys]}
                status, body = 200, json.dumps(jwks).encode()
            else:
                status, body = 404, b"{}"
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        if declare_length:  # without it, HTTP/1.0 delimits the body by closing the connection
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        return None  # keep test output clean


def _discovery(issuer: str) -> dict[str, Any]:
    return {
        "issuer": issuer,
        "jwks_uri": issuer + JWKS_PATH,
        "id_token_signing_alg_values_supported": ["RS256", "ES256"],
    }


class JwksServer:
    def __init__(self, keys: list[SigningKey]) -> None:
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self.port: int = self._server.server_address[1]
        self.issuer = f"http://127.0.0.1:{self.port}"
        self.jwks_url = self.issuer + JWKS_PATH
        self._server.state = _State(keys=list(keys), issuer=self.issuer)
        self._thread: threading.Thread | None = None

    @property
    def _state(self) -> _State:
        return self._server.state

    def start(self) -> JwksServer:
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(5)
            self._thread = None
        self._server.server_close()

    def set_keys(self, keys: list[SigningKey]) -> None:
        with self._state.lock:
            self._state.keys = list(keys)

    def override(
        self, path: str, body: bytes, status: int = 200, *, declare_length: bool = True
    ) -> None:
        with self._state.lock:
            self._state.overrides[path] = (status, body, declare_length)

    def requests(self, path: str = JWKS_PATH) -> int:
        with self._state.lock:
            return self._state.requests[path]

    def claims(self, **overrides: Any) -> dict[str, Any]:
        """Valid claims for this issuer; pass `name=None` to drop a claim."""
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": AUDIENCE,
            "sub": "user_2abcDEF",
            "iat": now,
            "exp": now + 300,
            "email": "ada@example.com",
            "email_verified": True,
            "name": "Ada Lovelace",
        }
        claims.update(overrides)
        return {key: value for key, value in claims.items() if value is not None}
