"""Shared checking helpers for the manifest loader: the diagnostic collector and small checks.

:class:`Ctx` collects located diagnostics (capping repeats of one kind); the
functions check one manifest section each and report through it, never raising.
"""

from __future__ import annotations

import string
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from batchgen.manifest.catalogue import (
    FieldProblem,
    ModelSchema,
    SchemaFileError,
    UnknownModelError,
    available_models,
    load_model,
    models_listing,
    type_name,
)
from batchgen.manifest.diagnostics import ERROR, WARNING, Diagnostic, did_you_mean
from batchgen.manifest.expand import Template, TemplateError
from batchgen.manifest.types import Limits
from batchgen.manifest.units import parse_duration, parse_rate
from batchgen.manifest.yaml_reader import Locations, PathT, path_text

LIMIT_KEYS = (
    "concurrency",
    "rate",
    "retries",
    "timeout",
    "resubmit_unknown",
    "submits_in_flight",
    "max_tasks",
    "max_cost",
)
_ERRORS_PER_KIND = 5
# Hints for keys new users reach for.
_KEY_HINTS = {
    "prompts": "for several prompts use matrix: {prompt: [...]} or prompts_file:",
    "count": "use repeat: N for N jobs of one body",
    "n": "use repeat: N for N jobs of one body",
    "times": "use repeat: N for N jobs of one body",
    "vars": "template variables are matrix keys: matrix: {subject: [...]}",
    "variables": "template variables are matrix keys: matrix: {subject: [...]}",
    "excludes": "the key is exclude:",
    "file": "use prompts_file:",
    "job": "the key is jobs:",
    "groups": "job groups go under jobs:",
}

# Limits given as text: the parser of each and what it expects.
_PARSED_LIMITS: dict[str, tuple[Callable[[Any], float], str]] = {
    "rate": (parse_rate, 'submissions per second as a number, or "4/s", "240/m", "1/h"'),
    "timeout": (parse_duration, 'seconds as a number, or "90s", "30m", "2h", "1h30m"'),
}


class Ctx:
    """Collects diagnostics while checking one manifest."""

    def __init__(self, file: str, locations: Locations) -> None:
        self.file = file
        self.locations = locations
        self.diagnostics: list[Diagnostic] = []
        self._kinds: dict[tuple[str, str], int] = {}
        self.label: tuple[str, str] | None = None
        """(group path, suffix): messages about that group end their path with the suffix."""

    def add(
        self,
        path: PathT,
        message: str,
        *,
        expected: str = "",
        hint: str = "",
        values: Mapping[str, Any] | None = None,
        at_key: bool = False,
        severity: str = ERROR,
        shown_path: str | None = None,
        kind: str | None = None,
    ) -> None:
        if kind is not None:
            seen = self._kinds.get((shown_path or path_text(path), kind), 0)
            self._kinds[(shown_path or path_text(path), kind)] = seen + 1
            if seen >= _ERRORS_PER_KIND:
                return
        line, col = self.locations.key(path) if at_key else self.locations.value(path)
        if self.label is not None:
            prefix, suffix = self.label
            text = shown_path if shown_path is not None else path_text(path)
            if text == prefix or text.startswith((prefix + ".", prefix + "[")):
                shown_path = text + suffix
        self.diagnostics.append(
            Diagnostic(
                self.file,
                line,
                col,
                shown_path if shown_path is not None else path_text(path),
                message,
                values=dict(values or {}),
                expected=expected,
                severity=severity,
                hint=hint,
            )
        )

    def error(self, path: PathT, message: str, **kw: Any) -> None:
        self.add(path, message, **kw)

    def warn(self, path: PathT, message: str, **kw: Any) -> None:
        self.add(path, message, severity=WARNING, **kw)

    def problem(self, path: PathT, problem: FieldProblem, **kw: Any) -> None:
        self.add(path, problem.message, expected=problem.expected, hint=problem.hint, **kw)

    def sorted(self) -> list[Diagnostic]:
        """The diagnostics in reading order: the manifest first, by line; summaries last."""
        return sorted(
            self.diagnostics,
            key=lambda d: (d.line <= 0, d.file != self.file, d.file, d.line, d.column),
        )

    def summarize(self) -> None:
        """Add one line per kind of error that was cut short."""
        for (where, kind), count in self._kinds.items():
            if count > _ERRORS_PER_KIND:
                self.diagnostics.append(
                    Diagnostic(
                        self.file,
                        0,
                        0,
                        where,
                        f"… and {count - _ERRORS_PER_KIND} more combinations with this problem "
                        f"({kind})",
                    )
                )

    @property
    def failed(self) -> bool:
        return any(d.is_error for d in self.diagnostics)


def unknown_key(ctx: Ctx, path: PathT, key: str, allowed: Sequence[str], what: str) -> None:
    hint = _KEY_HINTS.get(key.lower(), "") or did_you_mean(key, allowed)
    ctx.error(
        path,
        f"unknown key '{key}' in {what}",
        expected=", ".join(allowed),
        hint=hint,
        at_key=True,
    )


def int_field(ctx: Ctx, path: PathT, value: Any, minimum: int, what: str) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int):
        hint = ""
        if isinstance(value, float) and value.is_integer():
            hint = f"write {int(value)}"
        elif isinstance(value, str) and value.strip().isdigit():
            hint = f"write {value.strip()} without quotes"
        ctx.error(path, f"{what} is {type_name(value)}", expected="a whole number", hint=hint)
        return None
    if value < minimum:
        ctx.error(path, f"{what} is {value}", expected=f"at least {minimum}")
        return None
    return value


def parse_limits(ctx: Ctx, raw: Any) -> Limits:
    path: PathT = ("limits",)
    if raw is None:
        return Limits()
    if not isinstance(raw, dict):
        ctx.error(path, f"limits is {type_name(raw)}", expected="a mapping, e.g. {rate: 4/s}")
        return Limits()
    values: dict[str, Any] = {}
    for key, value in raw.items():
        kpath = (*path, key)
        if key not in LIMIT_KEYS:
            unknown_key(ctx, kpath, key, LIMIT_KEYS, "limits")
        elif key in ("concurrency", "retries", "submits_in_flight", "max_tasks"):
            number = int_field(ctx, kpath, value, 0 if key == "retries" else 1, key)
            if number is not None:
                values[key] = number
        elif key == "max_cost":
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                ctx.error(kpath, f"max_cost is {type_name(value)}", expected="USD, e.g. 25 or 7.5")
            else:
                values[key] = float(value)
        elif key in _PARSED_LIMITS:
            parse, expected = _PARSED_LIMITS[key]
            try:
                values[key] = parse(value)
            except ValueError as exc:
                ctx.error(kpath, f"{key}: {exc}", expected=expected)
        elif not isinstance(value, bool):
            ctx.error(kpath, f"resubmit_unknown is {type_name(value)}", expected="true or false")
        else:
            values[key] = value
    return Limits(**values)


def check_output(ctx: Ctx, raw: Any) -> str | None:
    if raw is None:
        return None
    path: PathT = ("output",)
    if not isinstance(raw, str) or not raw.strip():
        ctx.error(path, f"output is {type_name(raw)}", expected="a path like output/{name}-{date}")
        return None
    try:
        names = [n for _, n, _, _ in string.Formatter().parse(raw) if n is not None]
    except ValueError as exc:
        ctx.error(path, f"output template is malformed: {exc}", hint="write {{ }} for braces")
        return None
    for name in names:
        if name not in ("name", "date"):
            ctx.error(
                path,
                f"unknown placeholder {{{name}}} in output",
                expected="{name} or {date}",
                hint=did_you_mean(name, ["name", "date"]),
            )
    return raw


def resolve_model(ctx: Ctx, path: PathT, raw: Any) -> ModelSchema | None:
    if not isinstance(raw, str):
        ctx.error(
            path,
            f"model is {type_name(raw)}",
            expected="a model name, one of " + models_listing(available_models()),
        )
        return None
    try:
        return load_model(raw)
    except UnknownModelError as exc:
        ctx.error(
            path,
            f"unknown model '{raw}'",
            expected="one of the available models: " + models_listing(exc.available),
            hint=exc.hint,
        )
    except SchemaFileError as exc:
        ctx.error(path, str(exc))
    return None


def as_template(
    ctx: Ctx, path: PathT, value: Any, where: str | None = None
) -> tuple[Any, Template | None]:
    """A manifest string value with placeholders becomes a template; others stay as they are."""
    if not isinstance(value, str) or ("{" not in value and "}" not in value):
        return value, None
    try:
        template = Template.compile(value)
    except TemplateError as exc:
        ctx.error(path, exc.message, hint=exc.hint, shown_path=where)
        return value, None
    if template.is_static:
        return template.parts[0], None
    return value, template
