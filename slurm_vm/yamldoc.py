"""Loading untrusted YAML: bounded, alias-free, duplicate-key-free, with line numbers.

The result is plain data (dict/list/str/int/float/bool/None) plus a map from
path tuples to 1-based line numbers, so validators can say where a problem is.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import yaml

from .errors import Problem, ValidationError

Path = tuple[object, ...]
MAX_DOCUMENT_BYTES = 1 << 20
MAX_DEPTH = 32
MAX_NODES = 20000


@dataclass
class Document:
    data: object
    source: str
    lines: dict[Path, int] = field(default_factory=dict)

    def line_of(self, path: Path) -> int | None:
        while True:
            if path in self.lines:
                return self.lines[path]
            if not path:
                return None
            path = path[:-1]


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses aliases, the tool of 'billion laughs' documents."""

    def compose_node(self, parent, index):  # type: ignore[override]
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise yaml.composer.ComposerError(
                None, None, "YAML aliases (*name) are not allowed; write the values out", mark
            )
        return super().compose_node(parent, index)


class _Builder:
    def __init__(self, loader: yaml.SafeLoader, source: str):
        self.loader = loader
        self.source = source
        self.lines: dict[Path, int] = {}
        self.count = 0

    def fail(self, node: yaml.Node, path: Path, message: str) -> ValidationError:
        return ValidationError([Problem(format_path(path), message, node.start_mark.line + 1, self.source)])

    def build(self, node: yaml.Node, path: Path = ()) -> object:
        self.count += 1
        if self.count > MAX_NODES:
            raise self.fail(node, path, f"the document has more than {MAX_NODES} values; make it smaller")
        if len(path) > MAX_DEPTH:
            raise self.fail(node, path, f"nesting deeper than {MAX_DEPTH} levels is not allowed")
        self.lines[path] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, path)
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, path + (i,)) for i, item in enumerate(node.value)]
        try:
            value = self.loader.construct_object(node, deep=True)
        except yaml.MarkedYAMLError as exc:
            raise self.fail(node, path, f"cannot read this value: {exc.problem or exc.context}") from None
        except yaml.YAMLError as exc:
            raise self.fail(node, path, f"cannot read this value: {_first_line(exc)}") from None
        self._check_text(node, path, value)
        return value

    def _check_text(self, node: yaml.Node, path: Path, value: object) -> None:
        """Text must be valid Unicode: a `\\uD800` escape makes a lone surrogate that no file can hold."""
        if isinstance(value, str):
            bad = unencodable(value)
            if bad is not None:
                raise self.fail(node, path, f"contains U+{ord(bad):04X}, a lone surrogate (not a character); "
                                "remove that \\u escape")

    def _mapping(self, node: yaml.MappingNode, path: Path) -> dict:
        result: dict = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                raise self.fail(key_node, path, "keys must be plain names (merge keys and complex keys are not allowed)")
            key = key_node.value
            self._check_text(key_node, path, key)
            if key in result:
                raise self.fail(key_node, path + (key,), f"key {key!r} appears twice; keep one")
            result[key] = self.build(value_node, path + (key,))
            self.lines[path + (key,)] = key_node.start_mark.line + 1
        return result


def unencodable(text: str) -> str | None:
    """The first character of `text` that UTF-8 cannot encode (a lone surrogate), or None."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return text[exc.start]
    return None


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return " ".join(line.strip() for line in text[:2]) if text else type(exc).__name__


def format_path(path: Path) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def load_document(text: str | bytes, source: str, max_bytes: int = MAX_DOCUMENT_BYTES) -> Document:
    """Parse one YAML document from untrusted text. Raises ValidationError, nothing else."""
    if isinstance(text, bytes):
        if len(text) > max_bytes:
            raise ValidationError([Problem("", f"the file is larger than {max_bytes} bytes", None, source)])
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValidationError([Problem("", f"the file is not UTF-8 text (byte {exc.start})", None, source)]) from None
    if len(text.encode("utf-8", "surrogatepass")) > max_bytes:
        raise ValidationError([Problem("", f"the file is larger than {max_bytes} bytes", None, source)])
    try:
        loader = _StrictLoader(text)
    except yaml.YAMLError as exc:   # the reader refuses control characters up front
        raise ValidationError([Problem("", f"not valid YAML: {_first_line(exc)}", None, source)]) from None
    try:
        try:
            node = loader.get_single_node()
        except yaml.MarkedYAMLError as exc:
            line = exc.problem_mark.line + 1 if exc.problem_mark else None
            raise ValidationError([Problem("", f"not valid YAML: {exc.problem or exc.context}", line, source)]) from None
        except yaml.YAMLError as exc:
            raise ValidationError([Problem("", f"not valid YAML: {_first_line(exc)}", None, source)]) from None
        except RecursionError:
            raise ValidationError([Problem("", "not valid YAML: nested too deeply", None, source)]) from None
        if node is None:
            return Document(None, source, {})
        builder = _Builder(loader, source)
        data = builder.build(node)
        return Document(data, source, builder.lines)
    finally:
        loader.dispose()
