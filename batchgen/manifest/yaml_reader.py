"""A strict YAML reader that remembers where every value came from.

PyYAML silently keeps the last of two equal keys, expands aliases without bound and
reports tabs obscurely. This reader composes the node graph (linear even for alias
bombs), refuses duplicate keys, non-text keys, tags batchgen does not know, dates and
non-finite numbers, measures the document's size *with aliases expanded* before
building anything, and records the line and column of every key and value.
"""

from __future__ import annotations

import datetime
import math
from typing import Any

import yaml
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from batchgen.manifest.diagnostics import Diagnostic, ManifestError, short

__all__ = ["MAX_NODES", "Locations", "PathT", "load_yaml", "path_text"]

PathT = tuple[str | int, ...]
MAX_NODES = 1_000_000
_MERGE_TAG = "tag:yaml.org,2002:merge"
_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def path_text(path: PathT) -> str:
    """``("jobs", 0, "matrix", "size")`` -> ``"jobs[0].matrix.size"``."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


class Locations:
    """Line and column (1-based) of each key and value, by path inside the document."""

    def __init__(self) -> None:
        self.values: dict[PathT, tuple[int, int]] = {}
        self.keys: dict[PathT, tuple[int, int]] = {}

    def value(self, path: PathT) -> tuple[int, int]:
        """Where the value at ``path`` starts (or its nearest located ancestor)."""
        while True:
            found = self.values.get(path)
            if found is not None:
                return found
            if not path:
                return (1, 1)
            path = path[:-1]

    def key(self, path: PathT) -> tuple[int, int]:
        """Where the key naming ``path`` starts (falls back to the value's place)."""
        found = self.keys.get(path)
        return found if found is not None else self.value(path)


class _Builder:
    def __init__(self, file: str, max_nodes: int) -> None:
        self.file = file
        self.max_nodes = max_nodes
        self.locations = Locations()
        self.errors: list[Diagnostic] = []
        self.constructor = SafeConstructor()
        self.sizes: dict[int, int] = {}

    def error(self, node: Node, path: PathT, message: str, hint: str = "") -> None:
        mark = node.start_mark
        self.errors.append(
            Diagnostic(
                self.file, mark.line + 1, mark.column + 1, path_text(path), message, hint=hint
            )
        )

    def size(self, root: Node) -> int:
        """Number of nodes once aliases are expanded, computed without expanding them."""
        stack: list[tuple[Node, bool]] = [(root, False)]
        while stack:  # iterative post-order: children are sized before their parents
            node, children_done = stack.pop()
            if id(node) in self.sizes:
                continue
            children: list[Node] = []
            if isinstance(node, SequenceNode):
                children = list(node.value)
            elif isinstance(node, MappingNode):
                children = [n for pair in node.value for n in pair]
            if not children_done:
                stack.append((node, True))
                stack.extend((c, False) for c in children if id(c) not in self.sizes)
                continue
            total = 1 + sum(self.sizes.get(id(c), 0) for c in children)
            self.sizes[id(node)] = min(total, 10 * self.max_nodes)
        return self.sizes[id(root)]

    def build(self, node: Node, path: PathT) -> Any:
        mark = node.start_mark
        self.locations.values[path] = (mark.line + 1, mark.column + 1)
        if isinstance(node, ScalarNode):
            return self.scalar(node, path)
        if isinstance(node, SequenceNode):
            return [self.build(child, (*path, i)) for i, child in enumerate(node.value)]
        if isinstance(node, MappingNode):
            return self.mapping(node, path)
        self.error(node, path, "unsupported YAML node")  # pragma: no cover
        return None

    def scalar(self, node: ScalarNode, path: PathT) -> Any:
        try:
            value = self.constructor.construct_object(node, deep=True)
        except ConstructorError as exc:
            self.error(node, path, f"cannot read this value: {exc.problem}")
            return None
        except (ValueError, TypeError, OverflowError) as exc:
            self.error(node, path, f"cannot read this value: {exc}")
            return None
        if isinstance(value, (datetime.date, datetime.datetime)):
            self.error(
                node,
                path,
                f"YAML read {short(node.value)} as a date",
                hint="quote it to keep it as text",
            )
            return node.value
        if isinstance(value, float) and not math.isfinite(value):
            self.error(node, path, f"{node.value} is not a finite number")
            return None
        if isinstance(value, (bytes, set)) or not isinstance(
            value, (str, int, float, bool, type(None))
        ):
            self.error(node, path, f"unsupported YAML type {node.tag}")
            return None
        return value

    def key_text(self, node: Node, path: PathT) -> str | None:
        if not isinstance(node, ScalarNode):
            self.error(node, path, "a key must be plain text, not a list or mapping")
            return None
        value = self.scalar(node, path)
        if isinstance(value, str):
            return value
        if value is None and node.value == "":
            self.error(node, path, "empty key")
            return None
        self.error(
            node,
            path,
            f"key {short(node.value)} is read as {type(value).__name__}, not text",
            hint=f"quote it: '{node.value}'",
        )
        return None

    def mapping(self, node: MappingNode, path: PathT) -> dict[str, Any]:
        result: dict[str, Any] = {}
        merged: dict[str, Any] = {}
        first_seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                self.merge(value_node, path, merged)
                continue
            key = self.key_text(key_node, path)
            if key is None:
                continue
            child = (*path, key)
            if key in first_seen:
                self.error(
                    key_node,
                    child,
                    f"duplicate key '{key}' (first defined on line {first_seen[key]})",
                    hint="YAML would silently keep only the last one: remove or rename one",
                )
                continue
            first_seen[key] = key_node.start_mark.line + 1
            self.locations.keys[child] = (
                key_node.start_mark.line + 1,
                key_node.start_mark.column + 1,
            )
            result[key] = self.build(value_node, child)
        for key, value in merged.items():
            result.setdefault(key, value)
        return result

    def merge(self, value_node: Node, path: PathT, merged: dict[str, Any]) -> None:
        sources = value_node.value if isinstance(value_node, SequenceNode) else [value_node]
        for source in sources:
            if not isinstance(source, MappingNode):
                self.error(source, path, "'<<' merges only mappings (anchored with &name)")
                continue
            for key, value in self.mapping(source, path).items():
                merged.setdefault(key, value)


def _syntax_hint(problem: str, line_text: str) -> str:
    if (
        "\t" in problem
        or "'\\t'" in problem
        or line_text[: len(line_text) - len(line_text.lstrip())].count("\t")
    ):
        return "YAML indentation must use spaces, not tabs"
    if "mapping values are not allowed" in problem:
        return "a value containing ': ' must be quoted"
    if "could not find expected ':'" in problem:
        return "each line of a mapping needs 'key: value'"
    if "found undefined alias" in problem:
        return "define the anchor (&name) before using the alias (*name)"
    if "found character '%'" in problem or "found character '@'" in problem or "'`'" in problem:
        return "quote values that start with %, @ or `"
    if "expected <block end>" in problem or "expected ',' or ']'" in problem:
        return "check the indentation and brackets of this line and the one above"
    return ""


def load_yaml(text: str, file: str, *, max_nodes: int = MAX_NODES) -> tuple[Any, Locations]:
    """Parse one YAML document strictly; raise :class:`ManifestError` with located errors."""
    lines = text.splitlines()
    try:
        root = yaml.compose(text, Loader=_Loader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 0
        col = mark.column + 1 if mark else 0
        problem = exc.problem or "invalid YAML"
        if "end of stream" in problem and exc.context_mark is not None:
            line, col = exc.context_mark.line + 1, exc.context_mark.column + 1
            what = "a quoted string" if "quoted" in str(exc.context) else "a value"
            problem = f"{what} starting here never ends (unclosed quote or bracket?)"
        line_text = lines[line - 1] if 0 < line <= len(lines) else ""
        if "\t" in line_text[: len(line_text) - len(line_text.lstrip())]:
            col = line_text.index("\t") + 1
            problem = "tab character in indentation"
        message = f"YAML syntax error: {problem}"
        if exc.context and exc.context_mark and exc.context_mark.line + 1 != line:
            message += f" ({exc.context} on line {exc.context_mark.line + 1})"
        hint = _syntax_hint(str(exc.problem), line_text)
        if "expected a single document" in str(exc.context) + problem:
            message = "the file holds more than one YAML document (---)"
            hint = "keep one manifest per file"
        raise ManifestError([Diagnostic(file, line, col, "", message, hint=hint)]) from None
    except yaml.reader.ReaderError as exc:  # a control character: locate it
        before = text[: max(exc.position, 0)]
        line, col = before.count("\n") + 1, len(before) - (before.rfind("\n") + 1) + 1
        message = f"YAML error: character {exc.character!r} is not allowed in YAML"
        raise ManifestError([Diagnostic(file, line, col, "", message)]) from None
    except yaml.YAMLError as exc:
        raise ManifestError([Diagnostic(file, 0, 0, "", f"YAML error: {exc}")]) from None
    except RecursionError:
        raise ManifestError([Diagnostic(file, 0, 0, "", "YAML nested too deeply")]) from None
    if root is None:
        return None, Locations()
    builder = _Builder(file, max_nodes)
    total = builder.size(root)
    if total > max_nodes:
        where = f"more than {10 * max_nodes:,}" if total >= 10 * max_nodes else f"{total:,}"
        raise ManifestError(
            [
                Diagnostic(
                    file,
                    root.start_mark.line + 1,
                    root.start_mark.column + 1,
                    "",
                    f"the document expands to {where} values through aliases (*name)",
                    expected=f"at most {max_nodes:,}",
                    hint="this looks like an alias bomb; use prompts_file for long lists",
                )
            ]
        )
    try:
        value = builder.build(root, ())
    except RecursionError:
        raise ManifestError([Diagnostic(file, 0, 0, "", "YAML nested too deeply")]) from None
    if builder.errors:
        raise ManifestError(builder.errors)
    return value, builder.locations
