"""The search box language: words, "quoted phrases", `word*` prefixes and filters.

Parsing never produces engine syntax from user text: every term becomes a quoted FTS5 string or
the argument of `phraseto_tsquery` (see `service`), so no input can change the query's shape.
"""

from __future__ import annotations

import re
import unicodedata
import uuid
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta

from tidings.http.problems import Problem

# Snippet markers (private-use characters): the engines wrap matches in them, the service turns
# them into <mark>…</mark> after escaping the text. Removed from queries so none is echoed back.
MARK_START = "\ue000"
MARK_STOP = "\ue001"
# PostgreSQL's headline parser drops anything that looks like an HTML tag; `<` is swapped for
# this before ts_headline and swapped back after, so the snippet keeps the text as written.
LESS_THAN = "\ue002"
_PRIVATE = {ord(c): " " for c in (MARK_START, MARK_STOP, LESS_THAN)}

_TOKEN = re.compile(r'"([^"]*)(?:"|$)|(\S+)')
_FILTER = re.compile(r"^(in|from|before|after|on|has):(.*)$", re.IGNORECASE | re.DOTALL)
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
MIN_PREFIX = 2
# Bounds the work of one query (each term is an index lookup, ANDed).
MAX_TERMS = 32


@dataclass(frozen=True)
class Term:
    text: str
    phrase: bool = False
    # `deploy*` finds deploy, deploying, deployment; `text` is then letters and digits only.
    prefix: bool = False


@dataclass
class SearchQuery:
    terms: list[Term] = field(default_factory=list)
    conversation_ids: list[uuid.UUID] = field(default_factory=list)
    channel_names: list[str] = field(default_factory=list)
    sender_ids: list[uuid.UUID] = field(default_factory=list)
    sender_emails: list[str] = field(default_factory=list)
    from_me: bool = False
    since: datetime | None = None  # created_at >= since
    until: datetime | None = None  # created_at < until
    has_thread: bool = False

    @property
    def has_filters(self) -> bool:
        return bool(
            self.conversation_ids
            or self.channel_names
            or self.sender_ids
            or self.sender_emails
            or self.from_me
            or self.since
            or self.until
            or self.has_thread
        )

    @property
    def in_filter(self) -> bool:
        return bool(self.conversation_ids or self.channel_names)

    @property
    def from_filter(self) -> bool:
        return bool(self.sender_ids or self.sender_emails or self.from_me)


def invalid_filter(detail: str) -> Problem:
    return Problem(detail, code="invalid_filter")


def _clean(raw: str) -> str:
    # Control characters (NUL above all: PostgreSQL refuses it in text) become spaces.
    text = raw.translate(_PRIVATE)
    return "".join(" " if unicodedata.category(c) == "Cc" else c for c in text)


def _searchable(text: str) -> bool:
    # A term without a letter or digit has no token in either engine: nothing to look for.
    return any(c.isalnum() for c in text)


def _day(value: str, name: str) -> date:
    if _DATE.match(value):
        try:
            return date.fromisoformat(value)
        except ValueError:
            pass
    raise invalid_filter(f"{name}: takes a date as YYYY-MM-DD (UTC), not {value!r}.")


def _midnight(day: date, *, plus_days: int = 0) -> datetime | None:
    """Start of `day` + `plus_days` in UTC; None past the last representable day."""
    try:
        return datetime.combine(day, time(), UTC) + timedelta(days=plus_days)
    except OverflowError:
        return None


def _apply_filter(query: SearchQuery, key: str, value: str) -> None:
    if not value:
        raise invalid_filter(f"{key}: needs a value.")
    if key == "in":
        if value.startswith("#"):
            query.channel_names.append(value[1:].lower())
            return
        try:
            query.conversation_ids.append(uuid.UUID(value))
        except ValueError:
            query.channel_names.append(value.lower())
    elif key == "from":
        if value.lower() == "me":
            query.from_me = True
        elif "@" in value.removeprefix("@"):
            query.sender_emails.append(value.removeprefix("@").lower())
        else:
            try:
                query.sender_ids.append(uuid.UUID(value))
            except ValueError:
                raise invalid_filter("from: takes me, a user id or @email.") from None
    elif key == "has":
        if value.lower() != "thread":
            raise invalid_filter("has: supports thread.")
        query.has_thread = True
    else:
        day = _day(value, key)
        # before:/after: exclude the day itself (as Slack does); on: is that day.
        if key in {"before", "on"}:
            until = _midnight(day, plus_days=1 if key == "on" else 0)
            if until is not None:
                query.until = min(query.until, until) if query.until else until
        if key in {"after", "on"}:
            since = _midnight(day, plus_days=1 if key == "after" else 0)
            # After the last representable day nothing can match: an empty range.
            since = since or datetime.max.replace(tzinfo=UTC)
            query.since = max(query.since, since) if query.since else since


def _term(word: str) -> Term | None:
    stem = word.rstrip("*")
    if stem != word and len(stem) >= MIN_PREFIX and stem.isalnum():
        return Term(stem, prefix=True)
    return Term(word) if _searchable(word) else None


def parse(raw: str) -> SearchQuery:
    """Parse the search box. Raises `empty_query` when there is nothing to search by."""
    query = SearchQuery()
    for match in _TOKEN.finditer(_clean(raw)):
        phrase, word = match.group(1), match.group(2)
        if phrase is not None:
            phrase = " ".join(phrase.split())
            if _searchable(phrase):
                query.terms.append(Term(phrase, phrase=True))
            continue
        found = _FILTER.match(word)
        if found:
            _apply_filter(query, found.group(1).lower(), found.group(2))
            continue
        term = _term(word)
        if term is not None:
            query.terms.append(term)
    query.terms = list(dict.fromkeys(query.terms))  # a repeated word adds nothing
    if len(query.terms) > MAX_TERMS:
        raise Problem(f"Search for at most {MAX_TERMS} words at once.", code="too_many_terms")
    if not query.terms and not query.has_filters:
        raise Problem("Give some words to search for, or at least one filter.", code="empty_query")
    return query


def fts5_query(terms: list[Term]) -> str:
    """An FTS5 MATCH expression: each term a quoted string (implicit AND between them).

    Inside a quoted FTS5 string nothing is syntax except the doubled quote, so operators (`OR`,
    `NEAR`, `NOT`, `-`, `*`, `(`, `:`, `^`) typed by the user are plain text.
    """
    parts = []
    for term in terms:
        quoted = '"' + term.text.replace('"', '""') + '"'
        parts.append(f"{quoted} *" if term.prefix else quoted)
    return " ".join(parts)
