"""argon2id password hashing, off the event loop and with bounded concurrency.

Each hash costs tens of MiB and tens of milliseconds of CPU; running them in threads keeps the
loop responsive, and the semaphore caps memory when a login storm arrives.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError


@dataclass(frozen=True)
class Verification:
    ok: bool
    needs_rehash: bool = False


class PasswordHashing:
    def __init__(
        self, *, time_cost: int, memory_kib: int, parallelism: int, max_concurrent: int = 4
    ) -> None:
        self._hasher = PasswordHasher(
            time_cost=time_cost, memory_cost=memory_kib, parallelism=parallelism
        )
        self._slots = asyncio.Semaphore(max_concurrent)
        self._dummy_hash: str | None = None

    async def hash(self, password: str) -> str:
        async with self._slots:
            return await asyncio.to_thread(self._hasher.hash, password)

    async def verify(self, password_hash: str | None, password: str) -> Verification:
        """Check `password`; with no hash (unknown account) spend the same time and fail."""
        if password_hash is None:
            await self._verify_dummy(password)
            return Verification(ok=False)
        async with self._slots:
            try:
                await asyncio.to_thread(self._hasher.verify, password_hash, password)
            except (VerifyMismatchError, VerificationError, InvalidHashError):
                return Verification(ok=False)
        return Verification(ok=True, needs_rehash=self._hasher.check_needs_rehash(password_hash))

    async def _verify_dummy(self, password: str) -> None:
        if self._dummy_hash is None:
            self._dummy_hash = await self.hash(secrets.token_urlsafe(16))
        async with self._slots:
            with contextlib.suppress(VerificationError):
                await asyncio.to_thread(self._hasher.verify, self._dummy_hash, password)
