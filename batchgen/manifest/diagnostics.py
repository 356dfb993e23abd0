"""Located messages about a manifest: errors and warnings that teach.

A :class:`Diagnostic` says where (file, line, column and the path inside the
manifest, such as ``jobs[0].matrix.size``), for which combination of values,
what was found, what was expected and, when a close match exists, what the
user probably meant. :class:`ManifestError` carries every error at once.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from batchgen.errors import BatchgenError, ExitCode

ERROR = "error"
WARNING = "warning"

_VALUE_WIDTH = 40


def short(value: Any, width: int = _VALUE_WIDTH) -> str:
    """Render ``value`` compactly for a message: strings bare, others as JSON, long ones cut."""
    if isinstance(value, str):
        text = value
    else:
        try:
            text = json.dumps(value, ensure_ascii=False, default=str)
        except (TypeError, ValueError):  # pragma: no cover - default=str makes this unlikely
            text = repr(value)
    text = text.replace("\n", "\\n")
    if len(text) > width:
        text = text[: width - 1] + "…"
    return text


def quoted(value: Any, width: int = _VALUE_WIDTH) -> str:
    """Render ``value`` for a message, quoting strings: ``'watercolor'``, ``3``, ``true``."""
    if isinstance(value, str):
        return "'" + short(value, width) + "'"
    return short(value, width)


def did_you_mean(word: Any, candidates: Iterable[Any]) -> str:
    """Return ``"did you mean 'x'?"`` for the closest candidate to ``word``, or ``""``."""
    if not isinstance(word, str):
        word = short(word)
    options = [c for c in candidates if isinstance(c, str)]
    if not options:
        return ""
    lowered = {c.lower(): c for c in options}
    if word.lower() in lowered and lowered[word.lower()] != word:
        return f"did you mean '{lowered[word.lower()]}'?"
    stripped = word.strip()
    if stripped != word and stripped in options:
        return f"did you mean '{stripped}' (without the surrounding spaces)?"
    nearest = _nearest_numbers(word, options)
    if nearest is not None:
        return f"did you mean '{nearest}'?"
    matches = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    if not matches:
        matches = difflib.get_close_matches(word.lower(), list(lowered), n=1, cutoff=0.6)
        matches = [lowered[m] for m in matches]
    return f"did you mean '{matches[0]}'?" if matches else ""


_NUMBER = re.compile(r"\d+")


def _nearest_numbers(word: str, options: list[str]) -> str | None:
    """For values like ``1000x1000`` or ``16:10``: the option of the same shape whose
    numbers are closest (within 25% each), e.g. ``1024x1024``; None otherwise."""
    numbers = [int(n) for n in _NUMBER.findall(word)]
    if not numbers:
        return None
    shape = _NUMBER.sub("#", word)
    best: tuple[float, str] | None = None
    for option in options:
        if _NUMBER.sub("#", option) != shape:
            continue
        theirs = [int(n) for n in _NUMBER.findall(option)]
        gaps = [abs(a - b) / max(a, b, 1) for a, b in zip(numbers, theirs, strict=True)]
        if max(gaps) <= 0.25 and (best is None or sum(gaps) < best[0]):
            best = (sum(gaps), option)
    return best[1] if best is not None else None


def one_of(options: Iterable[Any]) -> str:
    """Render a list of allowed values: ``one of 'a', 'b', 'c'``."""
    return "one of " + ", ".join(quoted(o) for o in options)


@dataclass(frozen=True)
class Diagnostic:
    """One located error or warning about a manifest (or a file it names).

    ``line`` and ``column`` are 1-based; 0 means "the whole file".
    """

    file: str
    line: int
    column: int
    path: str
    message: str
    values: Mapping[str, Any] = field(default_factory=dict)
    expected: str = ""
    severity: str = ERROR
    hint: str = ""

    @property
    def is_error(self) -> bool:
        """True for errors, False for warnings."""
        return self.severity == ERROR

    def location(self) -> str:
        """``file:line:column`` (or just ``file`` when the line is unknown)."""
        if self.line <= 0:
            return self.file
        return f"{self.file}:{self.line}:{max(self.column, 1)}"

    def format(self) -> str:
        """One line: ``file:line:col: error: jobs[0] (style=watercolor): message; expected …``."""
        where = self.path
        if self.values:
            combo = ", ".join(f"{k}={short(v)}" for k, v in self.values.items())
            where = f"{where} ({combo})" if where else f"({combo})"
        text = f"{self.location()}: {self.severity}: "
        if where:
            text += f"{where}: "
        text += self.message
        if self.expected:
            text += f"; expected {self.expected}"
        if self.hint:
            text += f"; {self.hint}"
        return text

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of every field (for ``--json`` output)."""
        return {
            "file": self.file,
            "line": self.line,
            "column": self.column,
            "path": self.path,
            "severity": self.severity,
            "message": self.message,
            "values": dict(self.values),
            "expected": self.expected,
            "hint": self.hint,
        }


class ManifestError(BatchgenError):
    """A manifest (or a file it names) is invalid; ``diagnostics`` holds every problem found."""

    exit_code = ExitCode.USAGE

    def __init__(self, diagnostics: list[Diagnostic]) -> None:
        self.diagnostics = list(diagnostics)
        errors = [d for d in self.diagnostics if d.is_error]
        first = errors[0].format() if errors else "invalid manifest"
        more = f" (and {len(errors) - 1} more errors)" if len(errors) > 1 else ""
        super().__init__(first + more)

    @property
    def errors(self) -> list[Diagnostic]:
        """Only the errors (not the warnings)."""
        return [d for d in self.diagnostics if d.is_error]
