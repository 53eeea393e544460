"""Mentions in a message's markdown source.

A user is mentioned as `<@user-id>` (what clients insert when a name is picked from a list, so
renames never break it); `@channel`/`@everyone` and `@here` address the whole conversation.
Mentions inside code spans and fenced code blocks are text, not mentions.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field

_FENCE = re.compile(r"```.*?(```|\Z)", re.DOTALL)
# A code span opens and closes with backtick runs of the same length (`a`, ``a ` b``).
_CODE_SPAN = re.compile(r"(?<!`)(`+)(?!`).+?(?<!`)\1(?!`)")
_USER = re.compile(
    r"<@([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})>"
)
_BROADCAST = re.compile(r"(?<![\w@])@(channel|everyone|here)\b")
MAX_USER_MENTIONS = 100


@dataclass(frozen=True)
class Mentions:
    users: tuple[uuid.UUID, ...] = field(default_factory=tuple)
    channel: bool = False  # @channel or @everyone
    here: bool = False

    @property
    def broadcast(self) -> bool:
        return self.channel or self.here

    def as_dict(self) -> dict[str, object]:
        return {"users": [str(u) for u in self.users], "channel": self.channel, "here": self.here}


_NO_MENTIONS = Mentions()


def parse_mentions(body: str) -> Mentions:
    if "@" not in body:  # every mention has one (`<@id>`, `@channel`, `@here`): most bodies
        return _NO_MENTIONS
    text = _CODE_SPAN.sub(" ", _FENCE.sub(" ", body))
    users: dict[uuid.UUID, None] = {}
    for match in _USER.finditer(text):
        users.setdefault(uuid.UUID(match.group(1)), None)
        if len(users) >= MAX_USER_MENTIONS:
            break
    words = {match.group(1) for match in _BROADCAST.finditer(text)}
    return Mentions(
        users=tuple(users),
        channel=bool(words & {"channel", "everyone"}),
        here="here" in words,
    )
