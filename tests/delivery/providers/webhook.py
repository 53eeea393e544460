"""A webhook receiver as a careful user writes one: it verifies `Tidings-Signature` (300 s
tolerance, any of the `v1` values) and answers 200, or 400 when the signature does not hold."""

from __future__ import annotations

from dataclasses import dataclass

from tests.delivery.providers.base import ProviderServer, Received, Reply
from tidings.delivery.connectors.webhook import verify_signature

PATH = "/hooks/tidings"


@dataclass
class WebhookReceiver(ProviderServer):
    secret: str = "whsec_" + "r" * 32

    @property
    def url(self) -> str:
        return self.base_url + PATH

    def handle(self, request: Received) -> Reply:
        if request.method != "POST" or request.path != PATH:
            return Reply.text("not found", 404)
        header = request.headers.get("tidings-signature", "")
        if not verify_signature(header, request.body, self.secret):
            return Reply.json({"error": "invalid signature"}, 400)
        return Reply.json({"received": True})
