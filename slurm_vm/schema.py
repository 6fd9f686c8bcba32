"""A small declarative schema: dataclass fields carry a Kind, a doc string and a default.

One source of truth for three things: validating untrusted YAML into frozen
dataclasses, reporting every problem with its path and line, and generating the
reference docs (docs/spec-reference.md, docs/config-reference.md).
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass
from typing import Any, Callable

from . import units
from .errors import Problem, ValidationError
from .yamldoc import Document, Path, format_path

_NO_DEFAULT = dataclasses.MISSING


class Invalid(Exception):
    """Raised by a Kind for one bad value; carries the message for the user."""


class Kind:
    def check(self, value: Any, ctx: "Context", path: Path) -> Any:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError


def field(kind: Kind, doc: str, default: Any = _NO_DEFAULT, example: Any = None) -> Any:
    """A dataclass field with schema metadata. No default means required."""
    meta = {"kind": kind, "doc": doc, "example": example, "default_text": None}
    if isinstance(kind, Size) and isinstance(default, str):
        meta["default_text"] = default
        default = units.parse_size(default)
    if isinstance(default, list):
        default = tuple(default)
    if isinstance(default, dict):
        factory = (lambda d=default: type(d)(d))
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _type_name(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    return {bool: "a boolean", int: "a number", float: "a number", str: "text", list: "a list", dict: "a mapping"}.get(
        type(value), type(value).__name__
    )


@dataclass
class Str(Kind):
    pattern: str | None = None
    pattern_help: str = ""
    max_len: int = 255
    choices: tuple[str, ...] | None = None

    def check(self, value: Any, ctx: "Context", path: Path) -> str:
        if not isinstance(value, str):
            raise Invalid(f"expected {self.describe()}, got {_type_name(value)}")
        if self.choices is not None and value not in self.choices:
            raise Invalid(f"{value!r} is not allowed; use one of: {', '.join(self.choices)}")
        if len(value) > self.max_len:
            raise Invalid(f"longer than {self.max_len} characters")
        if "\x00" in value:
            raise Invalid("contains a NUL character")
        if self.pattern is not None and not re.fullmatch(self.pattern, value):
            raise Invalid(f"{value!r} is not allowed: {self.pattern_help or 'must match ' + self.pattern}")
        return value

    def describe(self) -> str:
        if self.choices:
            return "one of " + ", ".join(f"`{c}`" for c in self.choices)
        return "text" + (f" ({self.pattern_help})" if self.pattern_help else "")


@dataclass
class Text(Kind):
    """Free multi-line text with a byte limit (the limit may come from the admin config)."""

    max_bytes: int = 64 * 1024
    limit_name: str = ""

    def check(self, value: Any, ctx: "Context", path: Path) -> str:
        if not isinstance(value, str):
            raise Invalid(f"expected text, got {_type_name(value)}")
        limit = ctx.limits.get(self.limit_name, self.max_bytes) if self.limit_name else self.max_bytes
        size = len(value.encode("utf-8", "surrogatepass"))
        if size > limit:
            hint = f" (admin limit {self.limit_name})" if self.limit_name else ""
            raise Invalid(f"is {size} bytes, more than the {limit} allowed{hint}; shorten it")
        if "\x00" in value:
            raise Invalid("contains a NUL character")
        return value

    def describe(self) -> str:
        return "text"


@dataclass
class Int(Kind):
    min: int = 0
    max: int = 2**31 - 1

    def check(self, value: Any, ctx: "Context", path: Path) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise Invalid(f"expected a whole number, got {_type_name(value)}")
        if not self.min <= value <= self.max:
            raise Invalid(f"{value} is out of range; use {self.min} to {self.max}")
        return value

    def describe(self) -> str:
        return f"whole number, {self.min} to {self.max}"


@dataclass
class Size(Kind):
    min: int = 0
    max: int = 1 << 50

    def check(self, value: Any, ctx: "Context", path: Path) -> int:
        try:
            size = units.parse_size(value)
        except ValueError as exc:
            raise Invalid(str(exc)) from None
        if not self.min <= size <= self.max:
            raise Invalid(
                f"{value} is out of range; use {units.format_size(self.min)} to {units.format_size(self.max)}"
            )
        return size

    def describe(self) -> str:
        return f"size with K/M/G/T suffix, {units.format_size(self.min)} to {units.format_size(self.max)}"


@dataclass
class Bool(Kind):
    def check(self, value: Any, ctx: "Context", path: Path) -> bool:
        if not isinstance(value, bool):
            raise Invalid(f"expected true or false, got {_type_name(value)}")
        return value

    def describe(self) -> str:
        return "`true` or `false`"


@dataclass
class BoolOrChoice(Kind):
    """One of `choices`, or `true` / `false` standing for `when_true` / `when_false` (a setting that was a boolean
    before it had more values)."""
    choices: tuple[str, ...]
    when_true: str
    when_false: str

    def check(self, value: Any, ctx: "Context", path: Path) -> str:
        if isinstance(value, bool):
            return self.when_true if value else self.when_false
        if not isinstance(value, str) or value not in self.choices:
            shown = repr(value) if isinstance(value, str) else _type_name(value)
            raise Invalid(f"{shown} is not allowed; use {self.describe()}")
        return value

    def describe(self) -> str:
        return ("one of " + ", ".join(f"`{c}`" for c in self.choices) +
                f" (`true` = `{self.when_true}`, `false` = `{self.when_false}`)")


@dataclass
class SlurmTime(Kind):
    def check(self, value: Any, ctx: "Context", path: Path) -> str:
        try:
            units.parse_slurm_time(value)
        except ValueError as exc:
            raise Invalid(str(exc)) from None
        return str(value)

    def describe(self) -> str:
        return "Slurm time limit (`60`, `2:00:00`, `1-12:00:00`, `unlimited`)"


@dataclass
class AbsPath(Kind):
    """An absolute, normalised path: no `..`, no `//`, no trailing slash."""

    def check(self, value: Any, ctx: "Context", path: Path) -> str:
        if not isinstance(value, str):
            raise Invalid(f"expected an absolute path, got {_type_name(value)}")
        if not value.startswith("/"):
            raise Invalid(f"{value!r} is not an absolute path; start it with /")
        if "\x00" in value or "\n" in value:
            raise Invalid("contains a NUL or newline character")
        if len(value) > 4000:
            raise Invalid("path is too long")
        if os.path.normpath(value) != value or "/../" in value + "/" or value.startswith("//"):
            raise Invalid(f"{value!r} is not a normalised path; remove '..', '.', '//' and trailing '/'")
        return value

    def describe(self) -> str:
        return "absolute path"


@dataclass
class SharePath(Kind):
    """A normalised absolute path; with `allow_home`, `$HOME` or `$HOME/...` too (slurm_vm.mounts)."""

    allow_home: bool = False

    def check(self, value: Any, ctx: "Context", path: Path) -> str:
        from .mounts import path_problem
        problem = path_problem(value, self.allow_home)
        if problem is not None:
            raise Invalid(problem if isinstance(value, str) else f"expected a path, got {_type_name(value)}")
        return value

    def describe(self) -> str:
        return "absolute path, or `$HOME`/`$HOME/...`" if self.allow_home else "absolute path"


@dataclass
class ListOf(Kind):
    item: Kind
    max_items: int = 64

    def check(self, value: Any, ctx: "Context", path: Path) -> tuple:
        if not isinstance(value, list):
            raise Invalid(f"expected a list, got {_type_name(value)}")
        if len(value) > self.max_items:
            raise Invalid(f"has {len(value)} entries; at most {self.max_items} are allowed")
        out = [ctx.check(self.item, item, path + (i,)) for i, item in enumerate(value)]
        return tuple(out)

    def describe(self) -> str:
        return f"list of {self.item.describe()} (at most {self.max_items})"


NAME_PATTERN = r"[a-z0-9]([a-z0-9_-]{0,30}[a-z0-9])?"
NAME_HELP = "1-32 lower-case letters, digits, '-' or '_', starting and ending with a letter or digit"


@dataclass
class MapOf(Kind):
    """A mapping from admin-chosen names to values of one kind."""

    item: Kind
    max_items: int = 256

    def check(self, value: Any, ctx: "Context", path: Path) -> dict:
        if not isinstance(value, dict):
            raise Invalid(f"expected a mapping of names, got {_type_name(value)}")
        if len(value) > self.max_items:
            raise Invalid(f"has {len(value)} entries; at most {self.max_items} are allowed")
        out = {}
        for key, item in value.items():
            if not isinstance(key, str) or not re.fullmatch(NAME_PATTERN, key):
                ctx.problem(path + (str(key),), f"{key!r} is not a valid name: {NAME_HELP}")
                continue
            out[key] = ctx.check(self.item, item, path + (key,))
        return out

    def describe(self) -> str:
        return f"mapping of name to {self.item.describe()}"


@dataclass
class RawMapping(Kind):
    """Any YAML mapping, passed through (e.g. a cloud-init network-config)."""

    def check(self, value: Any, ctx: "Context", path: Path) -> dict:
        if not isinstance(value, dict):
            raise Invalid(f"expected a mapping, got {_type_name(value)}")
        _check_plain(value)
        return value

    def describe(self) -> str:
        return "mapping (passed through)"


def _check_plain(value: Any) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, (str, int)):
                raise Invalid("keys must be text")
            _check_plain(item)
    elif isinstance(value, list):
        for item in value:
            _check_plain(item)
    elif not isinstance(value, (str, int, float, bool)) and value is not None:
        raise Invalid(f"contains a value of type {type(value).__name__}; use text, numbers and booleans")


@dataclass
class Obj(Kind):
    cls: type

    def check(self, value: Any, ctx: "Context", path: Path) -> Any:
        if not isinstance(value, dict):
            raise Invalid(f"expected a mapping, got {_type_name(value)}")
        fields = {f.name: f for f in dataclasses.fields(self.cls)}
        before = len(ctx.problems)
        for key in value:
            if key not in fields:
                ctx.problem(path + (key,), _unknown_key_message(key, fields))
        values = {}
        for name, f in fields.items():
            if name in value:
                values[name] = ctx.check(f.metadata["kind"], value[name], path + (name,))
            elif f.default is _NO_DEFAULT and f.default_factory is _NO_DEFAULT:  # type: ignore[misc]
                ctx.problem(path + (name,), f"is required: add `{name}:` ({f.metadata['doc']})")
        if len(ctx.problems) > before:
            return None
        return self.cls(**values)

    def describe(self) -> str:
        return f"mapping ({self.cls.__name__})"


def _unknown_key_message(key: object, fields: dict) -> str:
    import difflib   # here: only a misspelt key needs it
    close = difflib.get_close_matches(str(key), list(fields), n=1)
    hint = f"; did you mean `{close[0]}`?" if close else f"; allowed: {', '.join(fields)}"
    return f"unknown field{hint}"


class Context:
    """Collects problems while a document is checked."""

    def __init__(self, doc: Document, limits: dict[str, int] | None = None):
        self.doc = doc
        self.limits = limits or {}
        self.problems: list[Problem] = []

    def problem(self, path: Path, message: str) -> None:
        self.problems.append(Problem(format_path(path), message, self.doc.line_of(path), self.doc.source))

    def check(self, kind: Kind, value: Any, path: Path) -> Any:
        try:
            return kind.check(value, self, path)
        except Invalid as exc:
            self.problem(path, str(exc))
            return None

    def raise_if_problems(self) -> None:
        if self.problems:
            raise ValidationError(self.problems)


def parse_object(cls: type, doc: Document, limits: dict[str, int] | None = None,
                 extra_checks: Callable[[Any, Context], None] | None = None) -> Any:
    """Validate a whole document into `cls`. Raises ValidationError listing every problem."""
    ctx = Context(doc, limits)
    if not isinstance(doc.data, dict):
        ctx.problem((), f"the document must be a mapping of fields, got {_type_name(doc.data)}")
        ctx.raise_if_problems()
    result = ctx.check(Obj(cls), doc.data, ())
    if result is not None and extra_checks is not None:
        extra_checks(result, ctx)
    ctx.raise_if_problems()
    return result


def reference_markdown(cls: type, prefix: str = "") -> list[str]:
    """Rows of a markdown table documenting every field of `cls`, nested objects flattened."""
    rows = []
    for f in dataclasses.fields(cls):
        kind: Kind = f.metadata["kind"]
        name = f"{prefix}{f.name}"
        required = f.default is _NO_DEFAULT and f.default_factory is _NO_DEFAULT  # type: ignore[misc]
        default = "required" if required else _default_text(f)
        rows.append(f"| `{name}` | {kind.describe()} | {default} | {f.metadata['doc']} |")
        inner = kind
        suffix = ""
        while isinstance(inner, (ListOf, MapOf)):
            suffix += "[]" if isinstance(inner, ListOf) else ".NAME"
            inner = inner.item
        if isinstance(inner, Obj):
            rows.extend(reference_markdown(inner.cls, f"{name}{suffix}."))
    return rows


def _default_text(f: dataclasses.Field) -> str:
    if f.metadata.get("default_text"):
        return f"`{f.metadata['default_text']}`"
    value = f.default_factory() if f.default_factory is not _NO_DEFAULT else f.default  # type: ignore[misc]
    if value is None:
        return "none"
    if dataclasses.is_dataclass(value):
        return "see below"
    if value in ((), [], {}):
        return "empty"
    if isinstance(value, bool):
        return "`true`" if value else "`false`"
    return f"`{value}`"
