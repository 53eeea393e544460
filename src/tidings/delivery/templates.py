"""Message templates: named, versioned, per-channel Jinja2 parts, rendered in a sandbox.

A template belongs to a workspace and has immutable versions; each version holds parts per
channel (email subject/text/html, sms text, chat text/blocks). Sources are compiled when saved,
so a template that does not compile is refused with the part, line and reason. Rendering happens
at send-accept time (`Templates.render`), in a worker thread, in an
`ImmutableSandboxedEnvironment` with `StrictUndefined` (a missing variable is an error naming it)
and autoescape only for the `html` part.

Abuse guards, since template authors are not trusted with the server: a size limit on sources,
a budget on rendered output, a wall-clock deadline enforced inside template code (a trace
function raising in the template's frames, so even a loop that calls nothing stops), `range`
capped, and checks *before* the operations that multiply sizes (`*`, `**`, `%`, `+`, `~`, and
the filters and string methods that pad, repeat or join), so no single step can allocate more
than the output budget. Compiled versions are cached by (template id, version): a version never
changes.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import re
import sys
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import BuiltinMethodType, FrameType, TracebackType
from typing import Any, TypeVar

import orjson
from jinja2 import StrictUndefined, TemplateSyntaxError, UndefinedError, nodes
from jinja2 import filters as jinja_filters
from jinja2.compiler import CodeGenerator, Frame
from jinja2.environment import Template as JinjaTemplate
from jinja2.exceptions import SecurityError
from jinja2.nodes import EvalContext
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import pass_environment, pass_eval_context
from sqlalchemy import ColumnElement, and_, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from tidings.db.base import utcnow
from tidings.db.database import Database
from tidings.delivery.models import Template, TemplateVersion
from tidings.delivery.service import RenderedTemplate
from tidings.delivery.template_schemas import (
    CHANNELS,
    Channel,
    RenderedContent,
    TemplateOut,
    TemplatePage,
    TemplateParts,
    TemplateSummaryOut,
    TemplateVersionOut,
    TemplateVersionPage,
)
from tidings.events.service import emit
from tidings.http.cursors import decode_cursor, encode_cursor
from tidings.http.problems import Conflict, NotFound, Problem
from tidings.identity.policy import Principal, UserPrincipal

TEMPLATE_CREATED = "template.created"
TEMPLATE_UPDATED = "template.updated"
TEMPLATE_DELETED = "template.deleted"
MAX_PAGE = 200
_TEMPLATE_FILE = "<template>"
_TOO_DEEP = "the template is nested too deeply to compile"
_FIELDS: dict[str, tuple[str, ...]] = {
    "email": ("subject", "text", "html"),
    "sms": ("text",),
    "chat": ("text", "blocks"),
}
_T = TypeVar("_T")


def template_stream(template_id: uuid.UUID) -> str:
    return f"template:{template_id}"


@dataclass(frozen=True)
class TemplateLimits:
    max_source_bytes: int = 128 * 1024  # all parts of a version, as JSON
    max_sample_bytes: int = 64 * 1024  # sample variables, as JSON
    max_output_chars: int = 512 * 1024  # one render, all parts; also any one value built
    max_range: int = 10_000  # items of one range()
    max_width: int = 1_000  # padding/indent widths, batch/slice counts, format widths
    max_int_bits: int = 65_536  # results of * and ** on integers
    max_blocks_depth: int = 16
    render_seconds: float = 2.0
    cache_size: int = 512


# -- errors -----------------------------------------------------------------------------------


class _LimitExceeded(Exception):  # noqa: N818 - a refusal, raised inside template code
    def __init__(self, limit: str, detail: str) -> None:
        super().__init__(detail)
        self.limit = limit
        self.detail = detail


def _template_line(exc: BaseException) -> int | None:
    """The template line the error happened on (Jinja rewrites tracebacks to template lines)."""
    line = None
    tb: TracebackType | None = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == _TEMPLATE_FILE:
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


_UNDEFINED_NAME = (
    re.compile(r"^'(?P<name>[^']+)' is undefined$"),
    re.compile(r"has no attribute '(?P<name>[^']+)'$"),
    re.compile(r"has no element (?P<name>.+)$"),
)


def _undefined_name(message: str) -> str:
    for pattern in _UNDEFINED_NAME:
        match = pattern.search(message)
        if match:
            return match.group("name").strip("'\"")
    return message


# -- the sandbox ------------------------------------------------------------------------------


class _GuardedCodeGenerator(CodeGenerator):
    """Compiles `a ~ b` through `environment.guarded_join`, which checks sizes before joining."""

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:  # noqa: N802 - Jinja's name
        if frame.eval_ctx.volatile:
            func_name = "(markup_join if context.eval_ctx.volatile else str_join)"
        elif frame.eval_ctx.autoescape:
            func_name = "markup_join"
        else:
            func_name = "str_join"
        self.write(f"environment.guarded_join({func_name}, (")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


_PERCENT_SPEC = re.compile(r"%(?:\([^)]*\))?[#0\- +]*(\*|\d+)?(?:\.(\*|\d+))?")
_BRACE_SPEC = re.compile(r"\{[^{}]*?:([^{}]*)(\{)?")
_PADDING_METHODS = frozenset({"center", "ljust", "rjust", "zfill"})


class _Sandbox(ImmutableSandboxedEnvironment):
    code_generator_class = _GuardedCodeGenerator
    intercepted_binops = frozenset({"*", "**", "%", "+"})

    def __init__(self, limits: TemplateLimits, *, autoescape: bool) -> None:
        super().__init__(
            autoescape=autoescape,
            undefined=StrictUndefined,
            keep_trailing_newline=True,
            auto_reload=False,
            cache_size=0,
        )
        self.limits = limits
        self.globals["range"] = self._range
        self.globals.pop("lipsum", None)  # lipsum(n) is a free CPU and memory sink
        self.filters.update(
            center=self._center,
            indent=self._indent,
            format=self._format,
            join=self._join(),
            replace=self._replace(),
            wordwrap=self._wordwrap(),
            batch=self._batch,
            slice=self._slice,
        )

    # sizes

    def _size(self, value: Any, depth: int = 0) -> int:
        """About how many characters `value` makes once printed."""
        if isinstance(value, str | bytes):
            return len(value)
        if depth > 32:
            return 0
        if isinstance(value, list | tuple | set | frozenset):
            return sum(self._size(item, depth + 1) + 2 for item in value)
        if isinstance(value, dict):
            return sum(
                self._size(k, depth + 1) + self._size(v, depth + 1) + 4 for k, v in value.items()
            )
        if isinstance(value, int) and not isinstance(value, bool):
            return value.bit_length() // 3
        return 8

    def _check_size(self, size: int, what: str) -> None:
        if size > self.limits.max_output_chars:
            raise _LimitExceeded(
                "value_size",
                f"{what} would make about {size} characters; "
                f"the limit is {self.limits.max_output_chars}.",
            )

    def _check_width(self, width: Any, what: str) -> None:
        if isinstance(width, int) and width > self.limits.max_width:
            raise _LimitExceeded(
                "width", f"{what} of {width} is over the limit of {self.limits.max_width}."
            )

    def _check_format_string(self, fmt: str, style: str) -> None:
        if style == "%":
            for star_or_width, precision in _PERCENT_SPEC.findall(fmt):
                for number in (star_or_width, precision):
                    if number == "*":
                        raise _LimitExceeded("width", "'*' widths are not allowed in templates.")
                    if number:
                        self._check_width(int(number), "A format width")
            return
        for spec, nested in _BRACE_SPEC.findall(fmt):
            if nested:
                raise _LimitExceeded("width", "Nested format specs are not allowed in templates.")
            for number in re.findall(r"\d+", spec):
                self._check_width(int(number), "A format width")

    # operators

    def guarded_join(self, join: Callable[[Iterable[Any]], str], values: tuple[Any, ...]) -> str:
        self._check_size(sum(self._size(value) for value in values), "Joining with ~")
        return join(values)

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            self._check_multiply(left, right)
        elif operator == "**":
            self._check_power(left, right)
        elif operator == "%" and isinstance(left, str):
            self._check_format_string(left, "%")
        elif operator == "+" and not _is_number(left):
            self._check_size(self._size(left) + self._size(right), "Adding")
        return super().call_binop(context, operator, left, right)

    def _check_multiply(self, left: Any, right: Any) -> None:
        if _is_int(left) and _is_int(right):
            bits = abs(left).bit_length() + abs(right).bit_length()
            if bits > self.limits.max_int_bits:
                raise _LimitExceeded("value_size", "That multiplication makes too big a number.")
            return
        for sequence, count in ((left, right), (right, left)):
            if _is_int(count) and isinstance(sequence, str | bytes | list | tuple):
                self._check_size(self._size(sequence) * max(count, 0), "Repeating with *")

    def _check_power(self, base: Any, exponent: Any) -> None:
        if (
            _is_int(base)
            and _is_int(exponent)
            and exponent > 0
            and max(abs(base).bit_length(), 1) * exponent > self.limits.max_int_bits
        ):
            raise _LimitExceeded("value_size", "That power makes too big a number.")

    # calls

    def call(self, context: Context, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        wrapped = getattr(obj, "__wrapped__", None)  # str.format as wrapped by the sandbox
        owner = getattr(wrapped if wrapped is not None else obj, "__self__", None)
        name = getattr(obj, "__name__", "")
        if isinstance(owner, str) and name in ("format", "format_map"):
            self._check_format_string(owner, "{}")
        elif isinstance(obj, BuiltinMethodType):
            # A built-in method given a huge number is how sizes sneak in: (2).to_bytes(10**9),
            # 'x'.ljust(10**9). Macros and Jinja's helpers take any number.
            for value in (*args, *kwargs.values()):
                if _is_int(value) and value > self.limits.max_output_chars:
                    raise _LimitExceeded("value_size", f"An argument of {value} is too big.")
            if isinstance(owner, str):
                args = self._check_string_method(owner, name, args, kwargs)
        return super().call(context, obj, *args, **kwargs)

    def _check_string_method(
        self, owner: str, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[Any, ...]:
        if name in _PADDING_METHODS:
            width = args[0] if args else kwargs.get("width", 0)
            self._check_width(width, f"A {name}() width")
        elif name == "expandtabs":
            tabsize = args[0] if args else kwargs.get("tabsize", 8)
            if _is_int(tabsize):
                self._check_size(len(owner) + owner.count("\t") * tabsize, "expandtabs()")
        elif name == "replace" and len(args) >= 2:
            self._check_replace(owner, args[0], args[1], args[2] if len(args) > 2 else -1)
        elif name == "join" and args:
            items = list(args[0])
            size = sum(self._size(item) for item in items) + len(owner) * len(items)
            self._check_size(size, "join()")
            return (items, *args[1:])
        return args

    def _check_replace(self, value: Any, old: Any, new: Any, count: Any) -> None:
        if not (isinstance(value, str) and isinstance(old, str)):
            return
        hits: int = len(value) + 1 if not old else value.count(old)
        if _is_int(count) and count >= 0:
            hits = min(hits, count)
        growth = max(0, self._size(new) - len(old))
        self._check_size(len(value) + hits * growth, "replace()")

    def _range(self, *args: int) -> range:
        numbers = range(*args)
        if len(numbers) > self.limits.max_range:
            raise _LimitExceeded(
                "range",
                f"range() of {len(numbers)} items is over the limit of {self.limits.max_range}.",
            )
        return numbers

    # filters that pad, repeat or join: checked, then Jinja's own

    def _center(self, value: str, width: int = 80) -> str:
        self._check_width(width, "A center width")
        return jinja_filters.do_center(value, width)

    def _indent(
        self, s: str, width: int | str = 4, first: bool = False, blank: bool = False
    ) -> str:
        step = len(width) if isinstance(width, str) else width
        self._check_width(step, "An indent width")
        self._check_size(len(str(s)) + step * (str(s).count("\n") + 1), "indent")
        return jinja_filters.do_indent(s, width, first, blank)

    def _format(self, value: str, *args: Any, **kwargs: Any) -> str:
        self._check_format_string(str(value), "%")
        return jinja_filters.do_format(value, *args, **kwargs)

    def _join(self) -> Callable[..., str]:
        sandbox = self

        @pass_eval_context
        def join(
            eval_ctx: EvalContext, value: Iterable[Any], d: str = "", attribute: Any = None
        ) -> str:
            items = list(value)
            if attribute is not None:
                getter = jinja_filters.make_attrgetter(eval_ctx.environment, attribute)
                items = [getter(item) for item in items]
            size = sum(sandbox._size(item) for item in items) + len(str(d)) * len(items)
            sandbox._check_size(size, "join")
            return jinja_filters.sync_do_join(eval_ctx, items, d)

        return join

    def _replace(self) -> Callable[..., str]:
        sandbox = self

        @pass_eval_context
        def replace(
            eval_ctx: EvalContext, s: str, old: str, new: str, count: int | None = None
        ) -> str:
            sandbox._check_replace(str(s), str(old), str(new), -1 if count is None else count)
            return jinja_filters.do_replace(eval_ctx, s, old, new, count)

        return replace

    def _wordwrap(self) -> Callable[..., str]:
        sandbox = self

        @pass_environment
        def wordwrap(
            environment: Any,
            s: str,
            width: int = 79,
            break_long_words: bool = True,
            wrapstring: str | None = None,
            break_on_hyphens: bool = True,
        ) -> str:
            joiner = len(wrapstring) if wrapstring is not None else 1
            text = str(s)
            sandbox._check_size(len(text) + joiner * (len(text) // max(width, 1) + 1), "wordwrap")
            return jinja_filters.do_wordwrap(
                environment, s, width, break_long_words, wrapstring, break_on_hyphens
            )

        return wordwrap

    def _batch(self, value: Iterable[Any], linecount: int, fill_with: Any = None) -> Any:
        self._check_width(linecount, "A batch size")
        return jinja_filters.do_batch(value, linecount, fill_with)

    def _slice(self, value: Any, slices: int, fill_with: Any = None) -> Any:
        self._check_width(slices, "A slice count")
        return jinja_filters.sync_do_slice(value, slices, fill_with)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _run_with_deadline(fn: Callable[[], _T], seconds: float) -> _T:
    """Run `fn`, raising inside template code once `seconds` have passed.

    A trace function on this thread, active only in frames of compiled templates, checks the
    clock on every line: a template loop stops even if it calls nothing the sandbox sees.
    """
    deadline = time.monotonic() + seconds

    def on_line(frame: FrameType, event: str, arg: Any) -> Any:
        if time.monotonic() > deadline:
            raise _LimitExceeded(
                "render_time", f"The template took longer than {seconds:g} s to render."
            )
        return on_line

    def on_call(frame: FrameType, event: str, arg: Any) -> Any:
        return on_line if frame.f_code.co_filename == _TEMPLATE_FILE else None

    previous = sys.gettrace()
    sys.settrace(on_call)
    try:
        return fn()
    finally:
        sys.settrace(previous)


# -- compiling and rendering (synchronous; runs in a worker thread) ---------------------------


@dataclass(frozen=True)
class CompiledParts:
    """Per channel, per part: a compiled template, a plain string, or (blocks) a JSON tree of
    those."""

    parts: dict[str, dict[str, Any]]
    # Loops, macros or call blocks somewhere: render under the deadline's trace function (it
    # costs about 4x; a template without them runs a bounded number of guarded steps).
    loops: bool = True


@dataclass
class _Findings:
    invalid: list[dict[str, Any]] = field(default_factory=list)
    unsafe: list[dict[str, Any]] = field(default_factory=list)
    loops: bool = False


@dataclass
class _Budget:
    left: int


class TemplateEngine:
    def __init__(self, limits: TemplateLimits) -> None:
        self.limits = limits
        self._text = _Sandbox(limits, autoescape=False)
        self._html = _Sandbox(limits, autoescape=True)

    def compile(self, parts: Mapping[str, Mapping[str, Any]]) -> CompiledParts:
        """Compile every part; 400 `template_invalid` (or `template_unsafe`) listing each error."""
        found = _Findings()
        compiled: dict[str, dict[str, Any]] = {}
        for channel, channel_parts in parts.items():
            compiled[channel] = {}
            for part, source in channel_parts.items():
                env = self._html if part == "html" else self._text
                compiled[channel][part] = self._compile_tree(
                    env, source, f"{channel}.{part}", found, 0
                )
        if found.unsafe:
            raise Problem(
                "The template reaches for internals the sandbox does not allow: "
                + _summary(found.unsafe),
                code="template_unsafe",
                errors=found.unsafe,
            )
        if found.invalid:
            raise Problem(
                "The template does not compile: " + _summary(found.invalid),
                code="template_invalid",
                errors=found.invalid,
            )
        return CompiledParts(compiled, loops=found.loops)

    def _compile_tree(
        self,
        env: _Sandbox,
        value: Any,
        path: str,
        found: _Findings,
        depth: int,
    ) -> Any:
        if isinstance(value, str):
            return self._compile_one(env, value, path, found)
        if depth >= self.limits.max_blocks_depth:
            found.invalid.append(
                {"part": path, "line": None, "reason": "blocks are nested too deeply"}
            )
            return value
        if isinstance(value, list):
            return [
                self._compile_tree(env, item, f"{path}[{i}]", found, depth + 1)
                for i, item in enumerate(value)
            ]
        if isinstance(value, dict):
            return {
                key: self._compile_tree(env, item, f"{path}.{key}", found, depth + 1)
                for key, item in value.items()
            }
        return value

    def _compile_one(
        self, env: _Sandbox, source: str, path: str, found: _Findings
    ) -> JinjaTemplate | str:
        if "{" not in source:  # no {{ }}, {% %} or {# #}: a plain string
            return source
        try:
            return self._parse_and_compile(env, source, path, found)
        except TemplateSyntaxError as exc:  # bad syntax, an unknown filter or test …
            reason = exc.message or str(exc)
            found.invalid.append({"part": path, "line": exc.lineno, "reason": reason})
        except (RecursionError, MemoryError, SyntaxError):  # parser's and Python's nesting limits
            found.invalid.append({"part": path, "line": None, "reason": _TOO_DEEP})
        return source

    def _parse_and_compile(
        self, env: _Sandbox, source: str, path: str, found: _Findings
    ) -> JinjaTemplate | str:
        ast = env.parse(source)
        blocked = (nodes.Extends, nodes.Include, nodes.Import, nodes.FromImport)
        invalid = [
            {
                "part": path,
                "line": node.lineno,
                "reason": "extends, include and import are not available in templates",
            }
            for node in ast.find_all(blocked)
        ]
        unsafe = [
            _unsafe(path, node, node.attr)
            for node in ast.find_all(nodes.Getattr)
            if node.attr.startswith("_")
        ]
        unsafe.extend(
            _unsafe(path, node, str(node.arg.value))
            for node in ast.find_all(nodes.Getitem)
            if isinstance(node.arg, nodes.Const) and str(node.arg.value).startswith("_")
        )
        found.invalid.extend(invalid)
        found.unsafe.extend(unsafe)
        if ast.find(nodes.For) or ast.find(nodes.Macro) or ast.find(nodes.CallBlock):
            found.loops = True
        if invalid or unsafe:
            return source
        return env.from_string(ast)

    def render(
        self, compiled: CompiledParts, variables: Mapping[str, Any], channels: Iterable[str]
    ) -> dict[str, dict[str, Any]]:
        budget = _Budget(self.limits.max_output_chars)
        chosen = list(channels)

        def run() -> dict[str, dict[str, Any]]:
            return {
                channel: {
                    part: self._render_tree(item, variables, f"{channel}.{part}", budget)
                    for part, item in compiled.parts[channel].items()
                }
                for channel in chosen
            }

        if not compiled.loops:
            return run()
        return _run_with_deadline(run, self.limits.render_seconds)

    def _render_tree(self, item: Any, variables: Mapping[str, Any], path: str, b: _Budget) -> Any:
        if isinstance(item, JinjaTemplate):
            return self._render_one(item, variables, path, b)
        if isinstance(item, str):
            self._spend(b, len(item), path)
            return item
        if isinstance(item, list):
            return [
                self._render_tree(value, variables, f"{path}[{i}]", b)
                for i, value in enumerate(item)
            ]
        if isinstance(item, dict):
            return {
                key: self._render_tree(value, variables, f"{path}.{key}", b)
                for key, value in item.items()
            }
        return item

    def _spend(self, budget: _Budget, chars: int, path: str) -> None:
        budget.left -= chars
        if budget.left < 0:
            raise Problem(
                f"The rendered output is over {self.limits.max_output_chars} characters.",
                code="template_limit_exceeded",
                limit="output_size",
                part=path,
            )

    def _render_one(
        self, template: JinjaTemplate, variables: Mapping[str, Any], path: str, budget: _Budget
    ) -> str:
        chunks: list[str] = []
        try:
            for chunk in template.generate(variables):
                self._spend(budget, len(chunk), path)
                chunks.append(chunk)
        except Problem:
            raise
        except _LimitExceeded as exc:
            raise Problem(
                exc.detail,
                code="template_limit_exceeded",
                limit=exc.limit,
                part=path,
                line=_template_line(exc),
            ) from None
        except SecurityError as exc:
            raise Problem(
                f"{path}: {exc}", code="template_unsafe", part=path, line=_template_line(exc)
            ) from None
        except UndefinedError as exc:
            name = _undefined_name(str(exc))
            raise Problem(
                f"Variable {name!r} is missing ({path}: {exc}).",
                code="template_variable_missing",
                variable=name,
                part=path,
                line=_template_line(exc),
            ) from None
        except RecursionError:
            raise Problem(
                f"{path}: the template recursed too deeply.",
                code="template_limit_exceeded",
                limit="recursion",
                part=path,
            ) from None
        except Exception as exc:  # the template's own error: 1/0, a bad filter argument …
            reason = f"{type(exc).__name__}: {exc}"[:500]
            raise Problem(
                f"{path}: {reason}",
                code="template_render_failed",
                part=path,
                line=_template_line(exc),
                reason=reason,
            ) from None
        return "".join(chunks)


def _unsafe(path: str, node: nodes.Node, attribute: str) -> dict[str, Any]:
    return {
        "part": path,
        "line": node.lineno,
        "reason": f"access to {attribute!r} is not allowed (names starting with _ are internal)",
    }


def _summary(errors: list[dict[str, Any]]) -> str:
    return "; ".join(
        f"{e['part']}" + (f" line {e['line']}" if e.get("line") else "") + f": {e['reason']}"
        for e in errors[:5]
    )


# -- the service ------------------------------------------------------------------------------


def parts_document(parts: TemplateParts) -> dict[str, dict[str, Any]]:
    """The stored form of `parts` (absent parts left out); 400 `template_invalid` if a channel
    lacks what it needs."""
    doc: dict[str, dict[str, Any]] = {}
    errors: list[dict[str, Any]] = []
    if parts.email is not None:
        email = parts.email
        doc["email"] = {
            k: v
            for k, v in (("subject", email.subject), ("text", email.text), ("html", email.html))
            if v is not None
        }
        if not (email.text or email.html):
            errors.append({"part": "email", "line": None, "reason": "an email needs text or html"})
    if parts.sms is not None:
        doc["sms"] = {"text": parts.sms.text}
        if not parts.sms.text:
            errors.append({"part": "sms", "line": None, "reason": "an sms needs text"})
    if parts.chat is not None:
        chat = parts.chat
        doc["chat"] = {
            k: v for k, v in (("text", chat.text), ("blocks", chat.blocks)) if v is not None
        }
        if not (chat.text or chat.blocks):
            errors.append({"part": "chat", "line": None, "reason": "a chat needs text or blocks"})
    if not doc:
        errors.append({"part": "", "line": None, "reason": "a template needs at least one channel"})
    if errors:
        raise Problem(
            "The template is not valid: " + _summary(errors),
            code="template_invalid",
            errors=errors,
        )
    return doc


def _channels(parts: Mapping[str, Any]) -> list[Channel]:
    return [channel for channel in CHANNELS if channel in parts]


def _ref_clause(ref: str | uuid.UUID) -> ColumnElement[bool]:
    if isinstance(ref, uuid.UUID):
        return Template.id == ref
    try:
        return Template.id == uuid.UUID(ref)
    except ValueError:
        return Template.name == ref


def _check_name(name: str) -> None:
    try:
        uuid.UUID(name)
    except ValueError:
        return
    raise Problem("A template name cannot look like an id.", code="invalid_name")


def _encode_version_cursor(version: int) -> str:
    return base64.urlsafe_b64encode(f"v{version}".encode()).decode().rstrip("=")


def _decode_version_cursor(cursor: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        if raw.startswith("v"):
            return int(raw[1:])
    except (ValueError, binascii.Error, UnicodeDecodeError):
        pass
    raise Problem("The cursor is not valid.", code="invalid_cursor")


def _actor(principal: Principal | None) -> dict[str, str | None]:
    if principal is None:
        return {"by_type": "system", "by": None}
    return {"by_type": principal.kind, "by": principal.actor_id}


@dataclass
class _Cache:
    size: int
    entries: OrderedDict[tuple[uuid.UUID, int], CompiledParts] = field(default_factory=OrderedDict)
    hits: int = 0
    misses: int = 0

    def get(self, key: tuple[uuid.UUID, int]) -> CompiledParts | None:
        compiled = self.entries.get(key)
        if compiled is None:
            self.misses += 1
            return None
        self.hits += 1
        self.entries.move_to_end(key)
        return compiled

    def put(self, key: tuple[uuid.UUID, int], compiled: CompiledParts) -> None:
        self.entries[key] = compiled
        self.entries.move_to_end(key)
        while len(self.entries) > self.size:
            self.entries.popitem(last=False)

    def drop(self, template_id: uuid.UUID) -> None:
        for key in [key for key in self.entries if key[0] == template_id]:
            del self.entries[key]


class Templates:
    """Create, version, read, delete, preview and render a workspace's templates.

    Authorisation is the caller's (routes use `workspace_access`); every method scopes its
    queries to `workspace_id`, so an id from another workspace is simply not found.
    """

    def __init__(self, db: Database, *, limits: TemplateLimits | None = None) -> None:
        self._db = db
        self.limits = limits or TemplateLimits()
        self.engine = TemplateEngine(self.limits)
        self.cache = _Cache(self.limits.cache_size)

    # -- writes ------------------------------------------------------------------------------

    async def create(
        self,
        workspace_id: uuid.UUID,
        *,
        name: str,
        parts: TemplateParts,
        description: str = "",
        sample_variables: Mapping[str, Any] | None = None,
        actor: Principal | None = None,
    ) -> TemplateOut:
        _check_name(name)
        doc, compiled = await self._prepare(parts)
        samples = self._check_samples(sample_variables or {})
        async with self._db.transaction() as session:
            await self._claim_name(session, workspace_id, name)
            now = utcnow()
            template = Template(
                workspace_id=workspace_id,
                name=name,
                description=description,
                latest_version=1,
                created_at=now,
                updated_at=now,
            )
            session.add(template)
            await self._flush(session, name)
            version = TemplateVersion(
                template_id=template.id,
                version=1,
                parts=doc,
                sample_variables=samples,
                created_by=_user_id(actor),
                created_at=now,
            )
            session.add(version)
            await self._flush(session, name)
            out = _out(template, version)
            await emit(
                session,
                TEMPLATE_CREATED,
                stream_key=template_stream(template.id),
                workspace_id=workspace_id,
                payload={"template": _event_view(out), **_actor(actor)},
            )
        self.cache.put((template.id, 1), compiled)
        return out

    async def update(
        self,
        workspace_id: uuid.UUID,
        ref: str | uuid.UUID,
        *,
        name: str | None = None,
        description: str | None = None,
        parts: TemplateParts | None = None,
        sample_variables: Mapping[str, Any] | None = None,
        actor: Principal | None = None,
    ) -> TemplateOut:
        """Change what is given. New parts or sample variables (different from the latest
        version's) make a new immutable version; name and description are not versioned."""
        if name is not None:
            _check_name(name)
        prepared = await self._prepare(parts) if parts is not None else None
        samples = self._check_samples(sample_variables) if sample_variables is not None else None
        async with self._db.transaction() as session:
            template = await self._find(session, workspace_id, ref, lock=True)
            latest = await self._version(session, template, None)
            changes: list[str] = []
            if name is not None and name != template.name:
                await self._claim_name(session, workspace_id, name)
                template.name = name
                changes.append("name")
            if description is not None and description != template.description:
                template.description = description
                changes.append("description")
            new_parts = prepared[0] if prepared is not None else latest.parts
            new_samples = samples if samples is not None else latest.sample_variables
            version = latest
            if new_parts != latest.parts or new_samples != latest.sample_variables:
                changes.extend(
                    key
                    for key, changed in (
                        ("parts", new_parts != latest.parts),
                        ("sample_variables", new_samples != latest.sample_variables),
                    )
                    if changed
                )
                template.latest_version += 1
                version = TemplateVersion(
                    template_id=template.id,
                    version=template.latest_version,
                    parts=new_parts,
                    sample_variables=new_samples,
                    created_by=_user_id(actor),
                    created_at=utcnow(),
                )
                session.add(version)
            if not changes:
                return _out(template, latest)
            template.updated_at = utcnow()
            await self._flush(session, template.name)
            out = _out(template, version)
            await emit(
                session,
                TEMPLATE_UPDATED,
                stream_key=template_stream(template.id),
                workspace_id=workspace_id,
                payload={"template": _event_view(out), "changes": changes, **_actor(actor)},
            )
        if prepared is not None and version is not latest:
            self.cache.put((template.id, version.version), prepared[1])
        return out

    async def delete(
        self, workspace_id: uuid.UUID, ref: str | uuid.UUID, *, actor: Principal | None = None
    ) -> None:
        """Soft delete: the template is gone for reads and renders; its rows stay for the
        delivery log. Its name is free again."""
        async with self._db.transaction() as session:
            template = await self._find(session, workspace_id, ref, lock=True)
            template.deleted_at = template.updated_at = utcnow()
            await emit(
                session,
                TEMPLATE_DELETED,
                stream_key=template_stream(template.id),
                workspace_id=workspace_id,
                payload={
                    "template": {"id": str(template.id), "name": template.name},
                    **_actor(actor),
                },
            )
        self.cache.drop(template.id)

    # -- reads -------------------------------------------------------------------------------

    async def get(
        self, workspace_id: uuid.UUID, ref: str | uuid.UUID, version: int | None = None
    ) -> TemplateOut:
        async with self._db.read() as session:
            template = await self._find(session, workspace_id, ref)
            return _out(template, await self._version(session, template, version))

    async def list_templates(
        self, workspace_id: uuid.UUID, *, limit: int = 50, cursor: str | None = None
    ) -> TemplatePage:
        """Newest first; `cursor` continues after the last item of the previous page."""
        query = select(Template).where(
            Template.workspace_id == workspace_id, Template.deleted_at.is_(None)
        )
        if cursor:
            moment, template_id = decode_cursor(cursor)
            query = query.where(
                or_(
                    Template.created_at < moment,
                    and_(Template.created_at == moment, Template.id < template_id),
                )
            )
        limit = max(1, min(limit, MAX_PAGE))
        async with self._db.read() as session:
            rows = list(
                await session.scalars(
                    query.order_by(Template.created_at.desc(), Template.id.desc()).limit(limit + 1)
                )
            )
        more = len(rows) > limit
        rows = rows[:limit]
        return TemplatePage(
            items=[
                TemplateSummaryOut(
                    id=t.id,
                    name=t.name,
                    description=t.description,
                    latest_version=t.latest_version,
                    created_at=t.created_at,
                    updated_at=t.updated_at,
                )
                for t in rows
            ],
            next_cursor=encode_cursor(rows[-1].created_at, rows[-1].id) if more else None,
        )

    async def versions(
        self,
        workspace_id: uuid.UUID,
        ref: str | uuid.UUID,
        *,
        limit: int = 50,
        cursor: str | None = None,
    ) -> TemplateVersionPage:
        """A template's versions, newest first (without their parts: GET ?version= for those)."""
        limit = max(1, min(limit, MAX_PAGE))
        async with self._db.read() as session:
            template = await self._find(session, workspace_id, ref)
            query = select(TemplateVersion).where(TemplateVersion.template_id == template.id)
            if cursor:
                query = query.where(TemplateVersion.version < _decode_version_cursor(cursor))
            rows = list(
                await session.scalars(
                    query.order_by(TemplateVersion.version.desc()).limit(limit + 1)
                )
            )
        more = len(rows) > limit
        rows = rows[:limit]
        return TemplateVersionPage(
            items=[
                TemplateVersionOut(
                    version=v.version,
                    channels=_channels(v.parts),
                    created_at=v.created_at,
                    created_by=v.created_by,
                )
                for v in rows
            ],
            next_cursor=_encode_version_cursor(rows[-1].version) if more else None,
        )

    # -- rendering ---------------------------------------------------------------------------

    async def render(
        self,
        workspace_id: uuid.UUID,
        template: str | uuid.UUID,
        version: int | None,
        variables: Mapping[str, Any],
        channel: Channel | None = None,
    ) -> RenderedContent:
        """Render a saved template (by name or id; the latest version unless one is given) for
        one channel or all of its channels. Sample variables are not used: a send supplies
        every variable itself, or is refused with 400 `template_variable_missing`."""
        template_id, number, compiled, channels = await self._load_compiled(
            workspace_id, template, version
        )
        return await self._render(compiled, channels, variables, channel, template_id, number)

    async def preview(
        self,
        workspace_id: uuid.UUID,
        *,
        template: str | uuid.UUID | None = None,
        version: int | None = None,
        parts: TemplateParts | None = None,
        variables: Mapping[str, Any] | None = None,
        channel: Channel | None = None,
    ) -> RenderedContent:
        """Render a saved template over its version's sample variables (overridden by
        `variables`), or ad-hoc `parts` with `variables`. Nothing is saved."""
        if parts is not None:
            doc, compiled = await self._prepare(parts)
            return await self._render(
                compiled, _channels(doc), variables or {}, channel, None, None
            )
        if template is None:
            raise Problem("Give a template or parts to preview.", code="bad_request")
        async with self._db.read() as session:
            row = await self._find(session, workspace_id, template)
            stored = await self._version(session, row, version)
        cached = self.cache.get((row.id, stored.version))
        if cached is None:
            cached = await asyncio.to_thread(self.engine.compile, stored.parts)
            self.cache.put((row.id, stored.version), cached)
        merged = {**stored.sample_variables, **(variables or {})}
        return await self._render(
            cached, _channels(stored.parts), merged, channel, row.id, stored.version
        )

    async def render_for_send(
        self,
        session: AsyncSession,
        workspace_id: uuid.UUID,
        template_ref: str,
        version: int | None,
        variables: Mapping[str, Any],
        channels: set[str],
    ) -> RenderedTemplate:
        """`render` for the send API (its `TemplateRenderer`), inside its transaction: the parts
        of the asked channels the template has (all of them when `channels` is empty, e.g. a
        webhook-only route), every field present (None when the template lacks it)."""
        template_id, number, compiled, available = await self._load_compiled(
            workspace_id, template_ref, version, session=session
        )
        chosen = [c for c in available if c in channels] if channels else available
        rendered = (
            await asyncio.to_thread(self.engine.render, compiled, dict(variables), chosen)
            if chosen
            else {}
        )
        parts = {
            channel: {field: fields.get(field) for field in _FIELDS[channel]}
            for channel, fields in rendered.items()
        }
        return RenderedTemplate(template_id=template_id, version=number, parts=parts)

    async def _load_compiled(
        self,
        workspace_id: uuid.UUID,
        ref: str | uuid.UUID,
        version: int | None,
        *,
        session: AsyncSession | None = None,
    ) -> tuple[uuid.UUID, int, CompiledParts, list[Channel]]:
        async with contextlib.AsyncExitStack() as stack:
            if session is None:
                session = await stack.enter_async_context(self._db.read())
            template = await self._find(session, workspace_id, ref)
            number = version if version is not None else template.latest_version
            compiled = self.cache.get((template.id, number))
            if compiled is not None:
                return template.id, number, compiled, _channels(compiled.parts)
            stored = await self._version(session, template, number)
        compiled = await asyncio.to_thread(self.engine.compile, stored.parts)
        self.cache.put((template.id, number), compiled)
        return template.id, number, compiled, _channels(stored.parts)

    async def _render(
        self,
        compiled: CompiledParts,
        channels: list[Channel],
        variables: Mapping[str, Any],
        channel: Channel | None,
        template_id: uuid.UUID | None,
        version: int | None,
    ) -> RenderedContent:
        if channel is not None:
            if channel not in channels:
                raise Problem(
                    f"The template has no {channel} parts.",
                    code="template_channel_missing",
                    channel=channel,
                    channels=channels,
                )
            channels = [channel]
        rendered = await asyncio.to_thread(self.engine.render, compiled, dict(variables), channels)
        return RenderedContent.model_validate(
            {"template_id": template_id, "template_version": version, **rendered}
        )

    # -- helpers -----------------------------------------------------------------------------

    async def _prepare(self, parts: TemplateParts) -> tuple[dict[str, Any], CompiledParts]:
        doc = parts_document(parts)
        size = len(orjson.dumps(doc))
        if size > self.limits.max_source_bytes:
            raise Problem(
                f"The template's parts are {size} bytes; the limit is "
                f"{self.limits.max_source_bytes}.",
                code="template_too_large",
                limit="source_size",
            )
        return doc, await asyncio.to_thread(self.engine.compile, doc)

    def _check_samples(self, samples: Mapping[str, Any]) -> dict[str, Any]:
        size = len(orjson.dumps(dict(samples)))
        if size > self.limits.max_sample_bytes:
            raise Problem(
                f"The sample variables are {size} bytes; the limit is "
                f"{self.limits.max_sample_bytes}.",
                code="template_too_large",
                limit="sample_size",
            )
        return dict(samples)

    async def _find(
        self,
        session: AsyncSession,
        workspace_id: uuid.UUID,
        ref: str | uuid.UUID,
        *,
        lock: bool = False,
    ) -> Template:
        query = select(Template).where(
            Template.workspace_id == workspace_id,
            Template.deleted_at.is_(None),
            _ref_clause(ref),
        )
        if lock:
            query = query.with_for_update()
        template = await session.scalar(query)
        if template is None:
            raise NotFound("No such template.", code="template_not_found")
        return template

    async def _version(
        self, session: AsyncSession, template: Template, version: int | None
    ) -> TemplateVersion:
        number = version if version is not None else template.latest_version
        row = await session.get(TemplateVersion, (template.id, number))
        if row is None:
            raise NotFound(
                f"Template {template.name!r} has no version {number}.",
                code="template_version_not_found",
            )
        return row

    async def _claim_name(self, session: AsyncSession, workspace_id: uuid.UUID, name: str) -> None:
        """409 if a live template has `name`; a deleted one holding it is renamed aside (the
        unique constraint covers deleted rows too)."""
        holder = await session.scalar(
            select(Template).where(Template.workspace_id == workspace_id, Template.name == name)
        )
        if holder is None:
            return
        if holder.deleted_at is None:
            raise Conflict(f"A template named {name!r} exists.", code="template_name_taken")
        await session.execute(
            update(Template)
            .where(Template.id == holder.id)
            .values(name=f"{name[:40]}~deleted~{holder.id.hex[:12]}")
        )

    async def _flush(self, session: AsyncSession, name: str) -> None:
        try:
            await session.flush()
        except IntegrityError:  # a concurrent create or rename took the name first
            raise Conflict(
                f"A template named {name!r} exists.", code="template_name_taken"
            ) from None


def _user_id(principal: Principal | None) -> uuid.UUID | None:
    return principal.user_id if isinstance(principal, UserPrincipal) else None


def _out(template: Template, version: TemplateVersion) -> TemplateOut:
    return TemplateOut(
        id=template.id,
        workspace_id=template.workspace_id,
        name=template.name,
        description=template.description,
        version=version.version,
        latest_version=template.latest_version,
        channels=_channels(version.parts),
        parts=TemplateParts.model_validate(version.parts),
        sample_variables=version.sample_variables,
        created_at=template.created_at,
        updated_at=template.updated_at,
        version_created_at=version.created_at,
        version_created_by=version.created_by,
    )


def _event_view(out: TemplateOut) -> dict[str, Any]:
    return {
        "id": str(out.id),
        "name": out.name,
        "description": out.description,
        "version": out.version,
        "channels": list(out.channels),
    }


__all__ = [
    "TEMPLATE_CREATED",
    "TEMPLATE_DELETED",
    "TEMPLATE_UPDATED",
    "CompiledParts",
    "TemplateEngine",
    "TemplateLimits",
    "Templates",
    "parts_document",
    "template_stream",
]
