"""The context a connector gets in tests: the real guarded client, allowed to reach 127.0.0.0/8
(where the provider servers listen) and nothing else private."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any

from tidings.delivery.connectors.base import OutboundEnvelope
from tidings.delivery.connectors.http import HttpConnectorContext
from tidings.infra.outbound import OutboundClient, OutboundPolicy

LOOPBACK = "127.0.0.0/8"


@contextlib.asynccontextmanager
async def connector_context(
    *,
    timeout_seconds: float = 5.0,
    max_response_bytes: int = 1_048_576,
    allow: tuple[str, ...] = (LOOPBACK,),
) -> AsyncIterator[HttpConnectorContext]:
    policy = OutboundPolicy.from_strings(allow)
    async with OutboundClient(policy, timeout_seconds=timeout_seconds) as http:
        yield HttpConnectorContext(
            http=http,
            policy=policy,
            timeout_seconds=timeout_seconds,
            max_response_bytes=max_response_bytes,
        )


def envelope(
    recipient: str, content: Mapping[str, Any], *, metadata: Mapping[str, Any] | None = None
) -> OutboundEnvelope:
    return OutboundEnvelope(
        delivery_id=f"dlv_{uuid.uuid4().hex}",
        recipient=recipient,
        content=content,
        metadata=metadata or {},
    )
