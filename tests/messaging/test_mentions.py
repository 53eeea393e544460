"""The mention parser: `<@user-id>`, `@channel`/`@everyone`, `@here`; never inside code."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tidings.messaging.mentions import MAX_USER_MENTIONS, parse_mentions

A = uuid.UUID("0b8f6d8e-7a51-4c57-9d0e-5f0c1b7d2a11")
B = uuid.UUID("5d3c2b1a-0f9e-4d8c-b7a6-958473625140")


@pytest.mark.parametrize(
    ("body", "users", "channel", "here"),
    [
        (f"<@{A}> and <@{B}>, again <@{A}>", [A, B], False, False),
        (f"<@{str(A).upper()}>", [A], False, False),
        (f"@{A} or <{A}> or <@{A}", [], False, False),  # not the mention syntax
        (f"`<@{A}>`", [], False, False),
        (f"``<@{A}>``", [], False, False),
        (f"`` a ` <@{A}> ``", [], False, False),
        (f"`code` <@{A}> `more code`", [A], False, False),
        (f"```\n<@{A}>\n@channel\n```", [], False, False),
        (f"```\nunclosed <@{A}>", [], False, False),
        ("@channel", [], True, False),
        ("@everyone!", [], True, False),
        ("ping @here.", [], False, True),
        ("mail ops@channel.io or @@here", [], False, False),
        ("@channels @hereafter", [], False, False),
        ("`@channel`", [], False, False),
    ],
)
def test_parse(body: str, users: list[uuid.UUID], channel: bool, here: bool) -> None:
    mentions = parse_mentions(body)
    assert (list(mentions.users), mentions.channel, mentions.here) == (users, channel, here)
    assert mentions.broadcast is (channel or here)


def test_user_mentions_are_capped() -> None:
    body = " ".join(f"<@{uuid.UUID(int=i)}>" for i in range(MAX_USER_MENTIONS + 20))
    assert len(parse_mentions(body).users) == MAX_USER_MENTIONS


words = st.text(alphabet="abc @#<>\n", max_size=12)
inline = st.text(alphabet="abc @#<>", max_size=12)  # code spans here are one line


@settings(max_examples=200, deadline=None, database=None, derandomize=True)
@given(before=words, after=words, inside=inline, user=st.uuids())
def test_code_hides_mentions_and_prose_does_not(
    before: str, after: str, inside: str, user: uuid.UUID
) -> None:
    mention = f"<@{user}>"
    # Inside a code span (whatever else is around it) it is text.
    hidden = parse_mentions(f"{before} `{inside}{mention}` {after}")
    assert user not in hidden.users
    # In prose it is a mention, whatever is around it.
    assert user in parse_mentions(f"{before} {mention} {after}").users
