"""YAML manifest -> validated, countable, expandable jobs (no I/O beyond reading files).

:func:`load_manifest` reads a manifest, checks everything it can (structure, body
fields against each model's schema, templates, prompts files, the number of jobs)
and raises :class:`ManifestError` with *every* problem at once. A loaded
:class:`Manifest` is known valid: :meth:`Manifest.count` is exact without expanding,
and :meth:`Manifest.iter_jobs` yields the jobs lazily in a deterministic order, each
body guaranteed valid against its model's schema.

Validation stays fast for millions of jobs while staying exact and generic (a new
model is a new schema file, no code): every distinct value that comes straight from
the manifest or a prompts file is checked once; strings produced by templates are
checked from their possible lengths when length is the field's only constraint,
and rendered and checked one by one otherwise; a model whose schema is not a plain
object of independent fields has every distinct body validated in full.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import math
import os
import re
import string
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from json.encoder import c_make_encoder, encode_basestring  # type: ignore[attr-defined]
from pathlib import Path
from typing import Any

from batchgen.manifest.catalogue import (
    FieldProblem,
    ModelSchema,
    SchemaFileError,
    UnknownModelError,
    available_models,
    load_model,
    type_name,
)
from batchgen.manifest.diagnostics import (
    ERROR,
    WARNING,
    Diagnostic,
    ManifestError,
    did_you_mean,
    one_of,
    quoted,
    short,
)
from batchgen.manifest.expand import (
    CountTooHardError,
    Rule,
    Template,
    TemplateError,
    count_combos,
    iter_combos,
    render_value,
)
from batchgen.manifest.prompts_file import SUFFIXES, PromptRows, PromptsFileProblem, read_prompts
from batchgen.manifest.yaml_reader import Locations, PathT, load_yaml, path_text

__all__ = [
    "DEFAULT_MAX_JOBS",
    "DEFAULT_OUTPUT",
    "Job",
    "Limits",
    "Manifest",
    "ManifestError",
    "canonical_json",
    "job_id_for",
    "load_manifest",
    "parse_duration",
    "parse_rate",
]

DEFAULT_MAX_JOBS = 1_000_000
DEFAULT_OUTPUT = "output/{name}-{date}"
_TOP_KEYS = ("version", "name", "model", "output", "limits", "defaults", "jobs")
_GROUP_KEYS = ("model", "prompt", "prompts_file", "matrix", "exclude", "repeat")
_LIMIT_KEYS = (
    "concurrency",
    "rate",
    "retries",
    "timeout",
    "resubmit_unknown",
    "submits_in_flight",
)
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
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


# --------------------------------------------------------------------------- public types


@dataclass(frozen=True)
class Limits:
    """Run limits from the manifest's ``limits`` mapping."""

    concurrency: int = 16  # remote tasks in flight
    rate: float = 4.0  # submissions per second ("4/s", "240/m" in YAML)
    retries: int = 4  # retries per job after the first attempt
    timeout: float = 1800.0  # seconds per task from submit to end ("30m", "90s", "2h")
    resubmit_unknown: bool = True  # resubmit a submit whose outcome is unknown
    submits_in_flight: int = 1  # submit requests awaiting their answer at once (kill window)


@dataclass(frozen=True)
class Job:
    """One request to send: a complete, valid body and its stable ID."""

    job_id: str  # job_id_for(model, body, repeat_index)
    model: str  # "openai/gpt-image-1.5"
    body: dict[str, Any]  # complete API body (schema defaults, manifest defaults, group)
    repeat_index: int  # 0..repeat-1
    group: str  # "jobs[0]"


_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)
_C_ENCODER: Any = None
if c_make_encoder is not None:  # the C encoder, built once (json.dumps builds one per call)
    _C_ENCODER = c_make_encoder(
        None, _ENCODER.default, encode_basestring, None, ":", ",", True, False, True
    )


def _encode(body: Mapping[str, Any]) -> str:
    if _C_ENCODER is not None:
        return "".join(_C_ENCODER(body, 0))
    return _ENCODER.encode(body)  # pragma: no cover - CPython has the C encoder


def canonical_json(body: Mapping[str, Any]) -> str:
    """The body as JSON with sorted keys and no spaces: the input of :func:`job_id_for`."""
    return _encode(body)


def job_id_for(model: str, body: Mapping[str, Any], repeat_index: int) -> str:
    """Stable job ID: first 16 hex digits of sha256(model, canonical JSON body, repeat index)."""
    text = f"{model}\n{canonical_json(body)}\n{repeat_index}"
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


_RATE_RE = re.compile(
    r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(?:/\s*(s|sec|second|m|min|minute|h|hr|hour))?\s*$"
)
_RATE_UNITS = {"s": 1, "sec": 1, "second": 1, "m": 60, "min": 60, "minute": 60}
_RATE_UNITS |= {"h": 3600, "hr": 3600, "hour": 3600}
_DURATION_PART = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h|d)?\s*")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


def parse_rate(value: Any) -> float:
    """``4``, ``"4/s"``, ``"240/m"``, ``"1/h"`` -> submissions per second; ValueError if not."""
    if isinstance(value, bool):
        raise ValueError("found a boolean")
    if isinstance(value, (int, float)):
        rate = float(value)
    elif isinstance(value, str) and (match := _RATE_RE.match(value)):
        rate = float(match.group(1)) / _RATE_UNITS[match.group(2) or "s"]
    else:
        raise ValueError(f"found {type_name(value)}")
    if not math.isfinite(rate) or rate <= 0:
        raise ValueError(f"found {short(value)}, which is not more than zero")
    return rate


def parse_duration(value: Any) -> float:
    """``30``, ``"90s"``, ``"30m"``, ``"2h"``, ``"1h30m"`` -> seconds; ValueError if not."""
    if isinstance(value, bool):
        raise ValueError("found a boolean")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str) and value.strip():
        seconds, pos = 0.0, 0
        while pos < len(value):
            match = _DURATION_PART.match(value, pos)
            if not match or match.end() == pos:
                raise ValueError(f"found {quoted(value)}")
            seconds += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
            pos = match.end()
    else:
        raise ValueError(f"found {type_name(value)}")
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"found {short(value)}, which is not more than zero")
    return seconds


# Limits given as text: the parser of each and what it expects.
_PARSED_LIMITS: dict[str, tuple[Callable[[Any], float], str]] = {
    "rate": (parse_rate, 'submissions per second as a number, or "4/s", "240/m", "1/h"'),
    "timeout": (parse_duration, 'seconds as a number, or "90s", "30m", "2h", "1h30m"'),
}


# --------------------------------------------------------------------------- compiled groups


@dataclass
class _Group:
    """A job group, compiled: everything needed to count and expand it quickly."""

    index: int
    path: str
    model: ModelSchema
    base: dict[str, Any]  # static body, keys in schema order (later-set keys hold None)
    templates: dict[str, Template]  # body fields rendered per job
    keys: tuple[str, ...] = ()  # matrix keys
    values: tuple[tuple[Any, ...], ...] = ()  # matrix values per key
    is_body: tuple[bool, ...] = ()  # matrix key is a body field
    value_templates: tuple[tuple[Template | None, ...], ...] = ()
    rules: tuple[Rule, ...] = ()
    rows: PromptRows | None = None
    row_body: tuple[str, ...] = ()  # prompts-file columns that are body fields
    prompt_from_rows: bool = False  # the row's prompt is the body's prompt (no template)
    repeat: int = 1
    combos: int = 1
    key_path: PathT = ()

    @property
    def row_count(self) -> int:
        return len(self.rows.prompts) if self.rows is not None else 1

    def count(self) -> int:
        return self.row_count * self.combos * self.repeat

    def needs_vars(self) -> bool:
        return bool(self.templates) or any(t is not None for ts in self.value_templates for t in ts)

    def _combo_items(
        self,
    ) -> Iterator[tuple[tuple[int, ...], dict[str, Any], dict[str, str]]]:
        """Each combination with its body fields and its variables (as text)."""
        sizes = [len(v) for v in self.values]
        body_positions = [i for i, b in enumerate(self.is_body) if b]
        texts = [[render_value(v) for v in vals] for vals in self.values]
        keys, values = self.keys, self.values
        needs_vars = self.needs_vars()
        for combo in iter_combos(sizes, self.rules):
            updates = {keys[i]: values[i][combo[i]] for i in body_positions}
            variables = (
                {key: texts[i][combo[i]] for i, key in enumerate(keys)} if needs_vars else {}
            )
            yield combo, updates, variables

    def iter_bodies(self) -> Iterator[tuple[dict[str, Any], int, tuple[int, ...]]]:
        """Each distinct body (before repeats) with its row index and combination."""
        templates = [(name, t.text) for name, t in self.templates.items()]
        value_templates = [
            (self.keys[i], {j: t.text for j, t in enumerate(ts) if t is not None})
            for i, ts in enumerate(self.value_templates)
            if any(t is not None for t in ts)
        ]
        positions = {key: i for i, key in enumerate(self.keys)}
        needs_vars = self.needs_vars()
        rows = self.rows
        items: Any = None
        if rows is not None and len(rows.prompts) > 1 and self.combos <= 100_000:
            items = list(self._combo_items())
        for r in range(self.row_count):
            row_base = self.base
            row_vars: dict[str, str] = {}
            if rows is not None:
                row_base = dict(self.base)
                extra = rows.extras[r] if rows.extras is not None else {}
                for col in self.row_body:
                    if col in extra:
                        row_base[col] = extra[col]
                    else:
                        row_base.pop(col, None)
                row_vars = {k: render_value(v) for k, v in extra.items()}
                row_vars["prompt"] = rows.prompts[r]
                if self.prompt_from_rows:
                    row_base["prompt"] = rows.prompts[r]
            for combo, updates, combo_vars in items if items is not None else self._combo_items():
                body = row_base.copy()
                body.update(updates)
                if needs_vars:
                    variables = {**row_vars, **combo_vars} if row_vars else combo_vars
                    for name, fmt in templates:
                        body[name] = fmt.format_map(variables)
                    for key, by_index in value_templates:
                        fmt_value = by_index.get(combo[positions[key]])
                        if fmt_value is not None:
                            body[key] = fmt_value.format_map(variables)
                yield body, r, combo

    def combo_values(self, row: int, combo: tuple[int, ...]) -> dict[str, Any]:
        """The values that identify one combination, for messages."""
        shown: dict[str, Any] = {}
        if self.rows is not None:
            shown["row"] = f"{self.rows.display}:{self.rows.lines[row]}"
        for i, key in enumerate(self.keys):
            shown[key] = self.values[i][combo[i]]
        return shown


# --------------------------------------------------------------------------- the manifest


@dataclass
class Manifest:
    """A loaded, fully validated manifest. Build it with :func:`load_manifest`."""

    path: Path
    name: str
    limits: Limits
    output: str | None
    default_model: str | None
    defaults: dict[str, Any]
    warnings: list[Diagnostic] = field(default_factory=list)
    prompts_files: list[Path] = field(default_factory=list)
    """Every prompts file the manifest read (resolved paths, in group order, no repeats)."""
    _groups: list[_Group] = field(default_factory=list, repr=False)

    @property
    def models(self) -> list[str]:
        """The models the jobs use, in order of first use."""
        return list(dict.fromkeys(g.model.name for g in self._groups))

    @property
    def groups(self) -> list[str]:
        """The job groups' paths (``jobs[0]``, ``jobs[1]``, …)."""
        return [g.path for g in self._groups]

    def model_schema(self, model: str) -> ModelSchema:
        """The schema of a model this manifest uses (submit path, defaults, …)."""
        return load_model(model)

    def count(self) -> int:
        """The number of jobs, computed without expanding anything."""
        return sum(g.count() for g in self._groups)

    def group_counts(self) -> dict[str, int]:
        """Jobs per group path."""
        return {g.path: g.count() for g in self._groups}

    def iter_jobs(self) -> Iterator[Job]:
        """Every job, lazily, in a deterministic order.

        Groups in manifest order; within a group prompts-file rows (file order), then
        matrix combinations (keys and values in manifest order, last key fastest), then
        repeats. Treat the bodies as read-only.
        """
        sha = hashlib.sha256
        encode = _encode
        for group in self._groups:
            model = group.model.name
            path = group.path
            repeat = group.repeat
            for body, _row, _combo in group.iter_bodies():
                prefix = f"{model}\n{encode(body)}\n"
                for r in range(repeat):
                    job_id = sha(f"{prefix}{r}".encode()).hexdigest()[:16]
                    yield Job(job_id, model, body if r == 0 else dict(body), r, path)

    def run_dir(self, today: datetime.date) -> Path:
        """The run directory for a run started on ``today``.

        ``output`` (with ``{name}`` and ``{date}``) resolves relative to the manifest's
        folder; without it, ``output/{name}-{date}`` relative to the current directory.
        """
        template = self.output if self.output is not None else DEFAULT_OUTPUT
        text = template.format(name=self.name, date=today.isoformat())
        path = Path(text).expanduser()
        if self.output is not None and not path.is_absolute():
            path = self.path.parent / path
        return Path(os.path.normpath(path))


# --------------------------------------------------------------------------- loading


class _Ctx:
    """Collects diagnostics while checking one manifest."""

    def __init__(self, file: str, locations: Locations) -> None:
        self.file = file
        self.locations = locations
        self.diagnostics: list[Diagnostic] = []
        self._kinds: dict[tuple[str, str], int] = {}

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


def _unknown_key(ctx: _Ctx, path: PathT, key: str, allowed: Sequence[str], what: str) -> None:
    hint = _KEY_HINTS.get(key.lower(), "") or did_you_mean(key, allowed)
    ctx.error(
        path,
        f"unknown key '{key}' in {what}",
        expected=", ".join(allowed),
        hint=hint,
        at_key=True,
    )


def _int_field(ctx: _Ctx, path: PathT, value: Any, minimum: int, what: str) -> int | None:
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


def _parse_limits(ctx: _Ctx, raw: Any) -> Limits:
    path: PathT = ("limits",)
    if raw is None:
        return Limits()
    if not isinstance(raw, dict):
        ctx.error(path, f"limits is {type_name(raw)}", expected="a mapping, e.g. {rate: 4/s}")
        return Limits()
    values: dict[str, Any] = {}
    for key, value in raw.items():
        kpath = (*path, key)
        if key not in _LIMIT_KEYS:
            _unknown_key(ctx, kpath, key, _LIMIT_KEYS, "limits")
        elif key in ("concurrency", "retries", "submits_in_flight"):
            number = _int_field(ctx, kpath, value, 0 if key == "retries" else 1, key)
            if number is not None:
                values[key] = number
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


def _check_output(ctx: _Ctx, raw: Any) -> str | None:
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


def _resolve_model(ctx: _Ctx, path: PathT, raw: Any) -> ModelSchema | None:
    if not isinstance(raw, str):
        ctx.error(
            path,
            f"model is {type_name(raw)}",
            expected="a model name: " + ", ".join(available_models()),
        )
        return None
    try:
        return load_model(raw)
    except UnknownModelError as exc:
        ctx.error(
            path,
            f"unknown model '{raw}'",
            expected="one of the available models: " + (", ".join(exc.available) or "none"),
            hint=exc.hint,
        )
    except SchemaFileError as exc:
        ctx.error(path, str(exc))
    return None


def _as_template(
    ctx: _Ctx, path: PathT, value: Any, where: str | None = None
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


def load_manifest(path: Path | str, *, max_jobs: int = DEFAULT_MAX_JOBS) -> Manifest:
    """Read and fully validate a manifest.

    Raises :class:`ManifestError` listing every error (each a located
    :class:`Diagnostic`); warnings of a valid manifest are in ``Manifest.warnings``.
    A manifest whose job count exceeds ``max_jobs`` is refused before expansion.
    """
    path = Path(path)
    file = str(path)
    try:
        raw_bytes = path.read_bytes()
    except FileNotFoundError:
        raise ManifestError([Diagnostic(file, 0, 0, "", "manifest file not found")]) from None
    except IsADirectoryError:
        raise ManifestError(
            [Diagnostic(file, 0, 0, "", "is a directory, not a manifest")]
        ) from None
    except OSError as exc:
        message = f"cannot read manifest: {exc.strerror or exc}"
        raise ManifestError([Diagnostic(file, 0, 0, "", message)]) from None
    try:
        text = raw_bytes.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        before = raw_bytes[: exc.start]
        line = before.count(b"\n") + 1
        col = exc.start - (before.rfind(b"\n") + 1) + 1
        raise ManifestError(
            [Diagnostic(file, line, col, "", "manifest is not UTF-8 text", hint="save as UTF-8")]
        ) from None
    data, locations = load_yaml(text, file)
    ctx = _Ctx(file, locations)
    if data is None:
        ctx.error((), "the manifest is empty", expected="version: 1, model: …, jobs: [...]")
        raise ManifestError(ctx.diagnostics)
    if not isinstance(data, dict):
        ctx.error(
            (), f"the manifest is {type_name(data)}", expected="a mapping with version, jobs…"
        )
        raise ManifestError(ctx.diagnostics)
    return _Loader(ctx, path, data, max_jobs).load()


class _Loader:
    def __init__(self, ctx: _Ctx, path: Path, data: dict[str, Any], max_jobs: int) -> None:
        self.ctx = ctx
        self.path = path
        self.data = data
        self.max_jobs = max_jobs
        self._template_sources: dict[int, PathT] = {}
        self._once_seen: set[tuple[str, ...]] = set()
        self._files: dict[Path, None] = {}  # prompts files read, in order

    def load(self) -> Manifest:
        ctx, data = self.ctx, self.data
        for key in data:
            if key not in _TOP_KEYS and not key.startswith("x-"):
                _unknown_key(ctx, (key,), key, _TOP_KEYS, "the manifest")
        version = data.get("version")
        if "version" not in data:
            ctx.error((), "missing 'version'", expected="version: 1 at the top")
        elif version != 1 or isinstance(version, bool):
            ctx.error(("version",), f"version is {type_name(version)}", expected="1")
        name = data.get("name", self.path.stem)
        if not isinstance(name, str) or not _NAME_RE.match(name):
            ctx.error(
                ("name",),
                f"name is {type_name(name)}",
                expected="letters, digits, '.', '_' or '-' (it names the run directory)",
            )
            name = "manifest"
        output = _check_output(ctx, data.get("output"))
        limits = _parse_limits(ctx, data.get("limits"))
        default_model = None
        if "model" in data:
            schema = _resolve_model(ctx, ("model",), data["model"])
            default_model = schema.name if schema else None
        defaults = data.get("defaults", {})
        if defaults is None:
            defaults = {}
        if not isinstance(defaults, dict):
            ctx.error(("defaults",), f"defaults is {type_name(defaults)}", expected="a mapping")
            defaults = {}
        groups = self._groups(data, default_model)
        manifest = Manifest(
            path=self.path,
            name=name,
            limits=limits,
            output=output,
            default_model=default_model,
            defaults=defaults,
        )
        if ctx.failed:
            ctx.summarize()
            raise ManifestError(ctx.sorted())
        self._check_count(groups)
        for group in groups:
            self._check_expanded(group)
        ctx.summarize()
        if ctx.failed:
            raise ManifestError(ctx.sorted())
        manifest.warnings = [d for d in ctx.sorted() if not d.is_error]
        manifest._groups = groups
        manifest.prompts_files = list(self._files)
        return manifest

    # ----------------------------------------------------------------- groups

    def _groups(self, data: dict[str, Any], default_model: str | None) -> list[_Group]:
        ctx = self.ctx
        jobs = data.get("jobs")
        if "jobs" not in data:
            ctx.error((), "missing 'jobs'", expected="jobs: a list of job groups")
            return []
        if isinstance(jobs, dict):
            ctx.error(
                ("jobs",),
                "jobs is a mapping",
                expected="a list of job groups",
                hint="start each group with '- ', e.g. '- prompt: …'",
            )
            return []
        if not isinstance(jobs, list) or not jobs:
            ctx.error(
                ("jobs",), f"jobs is {type_name(jobs)}", expected="a non-empty list of groups"
            )
            return []
        groups = []
        for index, raw in enumerate(jobs):
            group = self._group(index, raw, default_model)
            if group is not None:
                groups.append(group)
        return groups

    def _group(self, index: int, raw: Any, default_model: str | None) -> _Group | None:
        ctx = self.ctx
        gpath: PathT = ("jobs", index)
        where = path_text(gpath)
        if isinstance(raw, str):
            ctx.error(
                gpath,
                f"job group is {type_name(raw)}",
                expected="a mapping",
                hint=f"write '- prompt: {short(raw, 30)}'",
            )
            return None
        if not isinstance(raw, dict):
            ctx.error(gpath, f"job group is {type_name(raw)}", expected="a mapping with prompt: …")
            return None
        if "model" in raw:
            model = _resolve_model(ctx, (*gpath, "model"), raw["model"])
        elif default_model is not None:
            model = load_model(default_model)
        else:
            if "model" not in self.data:
                ctx.error(
                    gpath,
                    "no model for this group",
                    expected="model: at the top of the manifest or in the group; available: "
                    + ", ".join(available_models()),
                )
            return None
        if model is None:
            return None
        errors_before = self._errors()
        props = model.properties
        allowed = [*_GROUP_KEYS, *(p for p in props if p not in _GROUP_KEYS)]
        fields: dict[str, Any] = {}
        for key, value in raw.items():
            if key in _GROUP_KEYS and key != "prompt":
                continue
            if key.startswith("x-"):
                continue
            if key in props or key == "prompt" or not model.closed:
                fields[key] = value
            else:
                _unknown_key(ctx, (*gpath, key), key, allowed, f"{where} (model {model.name})")
        group = _Group(index=index, path=where, model=model, base={}, templates={}, key_path=gpath)

        # matrix
        self._matrix(group, raw.get("matrix"), "matrix" in raw, fields)
        # prompts file
        if "prompts_file" in raw:
            self._rows(group, raw["prompts_file"], fields)
        raw_matrix = raw.get("matrix")
        sources_ok = (
            "matrix" not in raw
            or (isinstance(raw_matrix, dict) and len(raw_matrix) == len(group.keys))
        ) and ("prompts_file" not in raw or group.rows is not None)
        # repeat
        if "repeat" in raw:
            repeat = _int_field(ctx, (*gpath, "repeat"), raw["repeat"], 1, "repeat")
            group.repeat = repeat if repeat is not None else 1
        # exclude
        if "exclude" in raw:
            self._exclude(group, raw["exclude"])

        # the static body: schema defaults < manifest defaults < group fields
        base: dict[str, Any] = {}
        for key, value in model.defaults.items():
            base[key] = value
        defaults = self.data.get("defaults")
        if isinstance(defaults, dict):
            for key, value in defaults.items():
                self._body_value(
                    group, path=("defaults", key), key=key, value=value, base=base, where=where
                )
        before_fields = self._errors()
        for key, value in fields.items():
            self._body_value(group, path=(*gpath, key), key=key, value=value, base=base, where=None)
        templates_ok = self._errors() == before_fields
        matrix_body = [k for k, b in zip(group.keys, group.is_body, strict=True) if b]
        for key in [*matrix_body, *group.row_body]:
            base[key] = None
            group.templates.pop(key, None)
        if group.rows is not None and "prompt" not in fields and "prompt" not in matrix_body:
            group.prompt_from_rows = True
            base["prompt"] = None
            group.templates.pop("prompt", None)
        for key in group.templates:
            base[key] = None
        order = {k: i for i, k in enumerate(props)}
        group.base = dict(sorted(base.items(), key=lambda kv: order.get(kv[0], len(order))))

        # key set: required fields and fields the schema refuses
        always = set(base) - set(group.row_body)
        rows_ok = "prompts_file" not in raw or group.rows is not None
        if self._errors() == errors_before and rows_ok:
            for problem in model.check_keys(always | set(group.row_body)):
                ctx.problem(gpath, problem, shown_path=where)
        if group.rows is not None and group.rows.extras is not None:
            missing_req = [r for r in model.required if r in group.row_body and r not in always]
            for i, extra in enumerate(group.rows.extras):
                for req in missing_req:
                    if req not in extra:
                        self._row_error(
                            group, i, message=f"required body field '{req}' is empty", expected=""
                        )
        self._check_placeholders(group, sources_ok=sources_ok, templates_ok=templates_ok)
        if self._errors() > errors_before:
            return None
        try:
            group.combos = count_combos([len(v) for v in group.values], group.rules)
        except CountTooHardError as exc:
            ctx.error((*gpath, "exclude"), str(exc), hint="use fewer, broader exclude rules")
            return None
        return group

    def _body_value(
        self,
        group: _Group,
        *,
        path: PathT,
        key: str,
        value: Any,
        base: dict[str, Any],
        where: str | None,
    ) -> None:
        """Check one static body value (or compile it as a template) into ``base``."""
        model = group.model
        if key not in model.properties and model.closed:
            if where is None or self._once(("defaults-unknown", model.name, key)):
                known = list(model.properties)
                self.ctx.error(
                    path,
                    f"'{key}' is not a body field of {model.name}",
                    expected=", ".join(known),
                    hint=did_you_mean(key, known),
                    at_key=True,
                )
            return
        value, template = _as_template(self.ctx, path, value, where)
        if template is not None:
            group.templates[key] = template
            base[key] = None
            self._template_sources[id(template)] = path
            return
        group.templates.pop(key, None)
        if where is None or self._once(("defaults", model.name, key)):
            for problem in model.check_field(key, value):
                self.ctx.problem(path, problem)
        base[key] = value

    def _errors(self) -> int:
        return sum(1 for d in self.ctx.diagnostics if d.is_error)

    def _once(self, token: tuple[str, ...]) -> bool:
        """True the first time ``token`` is seen (to report a shared default once)."""
        if token in self._once_seen:
            return False
        self._once_seen.add(token)
        return True

    def _matrix(self, group: _Group, raw: Any, present: bool, fields: dict[str, Any]) -> None:
        if not present:
            return
        ctx = self.ctx
        mpath: PathT = (*group.key_path, "matrix")
        if not isinstance(raw, dict) or not raw:
            ctx.error(
                mpath,
                f"matrix is {type_name(raw)}" if raw != {} else "matrix is empty",
                expected="a mapping of key: [values]",
            )
            return
        model = group.model
        keys, values, is_body, vtemplates = [], [], [], []
        for key, vals in raw.items():
            kpath = (*mpath, key)
            if key in _GROUP_KEYS and key != "prompt":
                ctx.error(
                    kpath,
                    f"'{key}' cannot vary in a matrix",
                    hint="use one job group per model" if key == "model" else "",
                    at_key=True,
                )
                continue
            if key in fields:
                ctx.error(
                    kpath,
                    f"'{key}' is set both in the group and in its matrix",
                    hint="keep one of them",
                    at_key=True,
                )
                continue
            body = key in model.properties or (not model.closed and key != "prompt")
            if not body and not key.isidentifier():
                ctx.error(
                    kpath,
                    f"matrix key '{key}' is not a body field of {model.name} and cannot be a "
                    "template variable",
                    expected="a body field or a name of letters, digits and _",
                    hint=did_you_mean(key, list(model.properties)),
                    at_key=True,
                )
                continue
            if not isinstance(vals, list):
                ctx.error(
                    kpath,
                    f"matrix.{key} is {type_name(vals)}",
                    expected="a list of values",
                    hint=f"write {key}: [{short(vals, 30)}]" if not isinstance(vals, dict) else "",
                )
                continue
            if not vals:
                ctx.error(kpath, f"matrix.{key} is an empty list, so the group makes no jobs")
                continue
            seen: dict[str, int] = {}
            row_templates: list[Template | None] = []
            clean: list[Any] = []
            for i, item in enumerate(vals):
                vpath = (*kpath, i)
                value = item
                ident = json.dumps(value, sort_keys=True)
                if ident in seen:
                    ctx.warn(
                        vpath,
                        f"{quoted(value)} appears twice in matrix.{key} "
                        f"(first as item {seen[ident]})",
                        hint="the duplicate makes identical jobs",
                    )
                seen.setdefault(ident, i)
                template = None
                if body:
                    value, template = _as_template(ctx, vpath, value)
                    if template is None:
                        for problem in model.check_field(key, value):
                            ctx.problem(vpath, problem)
                elif isinstance(value, (dict, list)):
                    ctx.error(
                        vpath,
                        f"template variable {key} has {type_name(value)}",
                        expected="text or a number",
                    )
                clean.append(value)
                row_templates.append(template)
            keys.append(key)
            values.append(tuple(clean))
            is_body.append(body)
            vtemplates.append(tuple(row_templates))
        group.keys = tuple(keys)
        group.values = tuple(values)
        group.is_body = tuple(is_body)
        group.value_templates = tuple(vtemplates)

    def _exclude(self, group: _Group, raw: Any) -> None:
        ctx = self.ctx
        epath: PathT = (*group.key_path, "exclude")
        if not isinstance(raw, list):
            ctx.error(
                epath,
                f"exclude is {type_name(raw)}",
                expected="a list of mappings, e.g. [{style: watercolor, size: 1536x1024}]",
                hint="start each rule with '- '" if isinstance(raw, dict) else "",
            )
            return
        if not group.keys:
            ctx.error(epath, "exclude without a matrix", hint="exclude removes matrix combinations")
            return
        rules = []
        for i, rule in enumerate(raw):
            rpath = (*epath, i)
            if not isinstance(rule, dict) or not rule:
                ctx.error(
                    rpath,
                    f"exclude rule is {type_name(rule)}" if rule != {} else "empty exclude rule",
                    expected="a mapping of matrix keys to values",
                )
                continue
            parts = []
            for key, wanted in rule.items():
                kpath = (*rpath, key)
                if key not in group.keys:
                    ctx.error(
                        kpath,
                        f"exclude names '{key}', which is not a matrix key",
                        expected="one of the matrix keys: " + ", ".join(group.keys),
                        hint=did_you_mean(key, group.keys),
                        at_key=True,
                    )
                    continue
                pos = group.keys.index(key)
                options = group.values[pos]
                idents = [json.dumps(v, sort_keys=True) for v in options]
                candidates = [wanted] if json.dumps(wanted, sort_keys=True) in idents else None
                if candidates is None:
                    candidates = wanted if isinstance(wanted, list) else [wanted]
                indices = set()
                for value in candidates:
                    ident = json.dumps(value, sort_keys=True)
                    if ident not in idents:
                        ctx.error(
                            kpath,
                            f"exclude value {quoted(value)} is not in matrix.{key}, so it "
                            "never matches",
                            expected=one_of(options),
                            hint=did_you_mean(value, [o for o in options if isinstance(o, str)]),
                        )
                        continue
                    indices.add(idents.index(ident))
                if indices:
                    parts.append((pos, frozenset(indices)))
            if len(parts) == len(rule):
                rules.append(tuple(parts))
        group.rules = tuple(rules)

    def _rows(self, group: _Group, raw: Any, fields: dict[str, Any]) -> None:
        ctx = self.ctx
        fpath: PathT = (*group.key_path, "prompts_file")
        if not isinstance(raw, str) or not raw.strip():
            ctx.error(
                fpath,
                f"prompts_file is {type_name(raw)}",
                expected="a path relative to the manifest, ending in " + ", ".join(SUFFIXES),
            )
            return
        if "prompt" in group.keys:
            ctx.error(
                fpath,
                "prompts_file and matrix.prompt both give prompts",
                hint="use prompt: '…{prompt}…' to wrap the file's prompts",
            )
            return
        target = Path(raw).expanduser()
        if not target.is_absolute():
            target = self.path.parent / target
        self._files[target] = None
        try:
            rows, diags = read_prompts(target, raw)
        except PromptsFileProblem as exc:
            ctx.error(fpath, exc.message, hint=exc.hint)
            return
        except OSError as exc:  # pragma: no cover - read_prompts maps the usual ones
            ctx.error(fpath, f"cannot read prompts file {raw}: {exc}")
            return
        # Diagnostics inside the prompts file name that file (relative to the manifest).
        shown = str(Path(self.ctx.file).parent / raw) if not Path(raw).is_absolute() else raw
        for d in diags:
            ctx.diagnostics.append(
                Diagnostic(shown, d.line, d.column, group.path, d.message, d.values,
                           d.expected, d.severity, d.hint)
            )  # fmt: skip
        rows.display = shown
        model = group.model
        body_cols = []
        for col in rows.columns:
            is_body = col in model.properties or (not model.closed and not col.isidentifier())
            if not is_body:
                if not col.isidentifier():
                    ctx.error(
                        fpath,
                        f"column '{col}' of {raw} is not a body field of {model.name} and "
                        "cannot be a template variable",
                        hint=did_you_mean(col, list(model.properties)),
                    )
                continue
            if col in fields or col in group.keys:
                ctx.error(
                    fpath,
                    f"column '{col}' of {raw} is also set by the group"
                    + (" matrix" if col in group.keys else ""),
                    hint="keep one of them",
                )
                continue
            body_cols.append(col)
            seen_problem: set[str] = set()
            extras = rows.extras or []
            for i, extra in enumerate(extras):
                if col in extra:
                    for problem in model.check_field(col, extra[col]):
                        if problem.message in seen_problem and len(seen_problem) > 20:
                            continue
                        seen_problem.add(problem.message)
                        self._row_error(
                            group,
                            i,
                            message=problem.message,
                            expected=problem.expected,
                            hint=problem.hint,
                            rows=rows,
                        )
        group.rows = rows
        group.row_body = tuple(body_cols)

    def _row_error(
        self,
        group: _Group,
        row: int,
        *,
        message: str,
        expected: str,
        hint: str = "",
        rows: PromptRows | None = None,
    ) -> None:
        rows = rows or group.rows
        assert rows is not None
        self.ctx.diagnostics.append(
            Diagnostic(rows.display, rows.lines[row], 0, group.path, message,
                       {"prompt": rows.prompts[row]}, expected, ERROR, hint)
        )  # fmt: skip

    def _check_placeholders(self, group: _Group, *, sources_ok: bool, templates_ok: bool) -> None:
        ctx = self.ctx
        if not sources_ok:
            return  # the variables are not all known: any message would mislead
        variables = list(group.keys)
        if group.rows is not None:
            variables += [c for c in group.rows.columns if c not in variables]
            variables.append("prompt")
        used: set[str] = set()
        templates: list[tuple[PathT, Template]] = [
            (self._template_sources.get(id(t), group.key_path), t) for t in group.templates.values()
        ]
        for i, key in enumerate(group.keys):
            for j, t in enumerate(group.value_templates[i] if group.value_templates else ()):
                if t is not None:
                    templates.append(((*group.key_path, "matrix", key, j), t))
        for tpath, template in templates:
            shown = group.path if tpath[:1] == ("defaults",) else None
            for name in template.names:
                used.add(name)
                if name not in variables:
                    templates_ok = False
                    ctx.error(
                        tpath,
                        f"unknown placeholder {{{name}}}",
                        expected="one of the group's variables: "
                        + (", ".join("{" + v + "}" for v in variables) or "none (add a matrix)"),
                        hint=did_you_mean(name, variables),
                        shown_path=shown,
                    )
        if not templates_ok:
            return
        for i, key in enumerate(group.keys):
            if group.is_body[i] or key in used:
                continue
            close = did_you_mean(key, list(group.model.properties))
            message = (
                f"matrix key '{key}' is not a body field of {group.model.name} and no "
                "template uses it"
            )
            kpath = (*group.key_path, "matrix", key)
            if close:
                ctx.error(kpath, message, hint=close, at_key=True)
            else:
                ctx.warn(
                    kpath,
                    f"unused template variable '{key}': no template uses it",
                    hint=f"use {{{key}}} in the prompt, or remove it (its values make "
                    "identical jobs)",
                    at_key=True,
                )
        if group.rows is not None:
            fpath = (*group.key_path, "prompts_file")
            for col in group.rows.columns:
                if col not in group.row_body and col not in used and col.isidentifier():
                    ctx.warn(
                        fpath,
                        f"column '{col}' of {group.rows.display} is neither a body field nor "
                        "used by a template",
                        hint=did_you_mean(col, list(group.model.properties))
                        or f"use {{{col}}} in the prompt",
                    )
            if not group.prompt_from_rows and "prompt" not in used:
                ctx.warn(
                    (*group.key_path, "prompt"),
                    "the prompt template does not use {prompt}, so the prompts file's prompts "
                    "are ignored",
                    hint="add {prompt} where the file's text belongs",
                )

    # ----------------------------------------------------------------- count and expansion

    def _check_count(self, groups: list[_Group]) -> None:
        total = sum(g.count() for g in groups)
        if total <= self.max_jobs:
            return
        biggest = max(groups, key=lambda g: g.count())
        detail = ", ".join(f"{g.path}: {g.count():,}" for g in groups if g.count())
        self.ctx.error(
            ("jobs",),
            f"the manifest expands to {total:,} jobs ({detail}), over the limit",
            expected=f"at most {self.max_jobs:,} jobs",
            hint=f"shrink {biggest.path}, or raise the limit with --max-jobs",
            at_key=True,
        )
        raise ManifestError(self.ctx.diagnostics)

    def _check_expanded(self, group: _Group) -> None:
        """Validate what static checks could not: template output, or whole bodies."""
        model = group.model
        if not model.simple:
            self._check_full_bodies(group)
            return
        fields = set(group.templates)
        fields |= {k for k, ts in zip(group.keys, group.value_templates, strict=True)
                   if any(t is not None for t in ts)}  # fmt: skip
        pending = {f for f in fields if not self._bounded_ok(group, f)}
        if not pending:
            return
        cache: dict[tuple[str, str], list[FieldProblem]] = {}
        for body, row, combo in group.iter_bodies():
            for name in pending:
                value = body[name]
                key = (name, value) if isinstance(value, str) else (name, json.dumps(value))
                problems = cache.get(key)
                if problems is None:
                    problems = model.check_field(name, value)
                    if len(cache) < 100_000:
                        cache[key] = problems
                for problem in problems:
                    self._combo_problem(group, name, row, combo, problem)

    def _bounded_ok(self, group: _Group, name: str) -> bool:
        """True when every string the template for ``name`` can produce is valid by length."""
        limits = group.model.string_limits(name)
        if limits is None:
            return False
        template = group.templates.get(name)
        if template is None:
            return False  # matrix value templates: render them all
        bounds: dict[str, tuple[int, int]] = {}
        for i, key in enumerate(group.keys):
            lengths = [len(render_value(v)) for v in group.values[i]]
            bounds[key] = (min(lengths), max(lengths))
        row_names = [n for n in template.names if n not in bounds]
        low, high = template.length_bounds({**bounds, **dict.fromkeys(row_names, (0, 0))})
        if row_names:
            rows = group.rows
            assert rows is not None
            extras = rows.extras
            lows, highs = [], []
            for r, prompt in enumerate(rows.prompts):
                total = 0
                for n in row_names:
                    if n == "prompt":
                        total += len(prompt)
                    elif extras is not None and n in extras[r]:
                        total += len(render_value(extras[r][n]))
                    else:
                        return False  # a missing cell: render to report it
                lows.append(total)
                highs.append(total)
            low += min(lows)
            high += max(highs)
        return limits[0] <= low and high <= limits[1]

    def _combo_problem(
        self, group: _Group, name: str, row: int, combo: tuple[int, ...], problem: FieldProblem
    ) -> None:
        source = self._template_sources.get(id(group.templates.get(name)), group.key_path)
        if name in group.keys:
            pos = group.keys.index(name)
            source = (*group.key_path, "matrix", name, combo[pos])
        self.ctx.problem(
            source,
            problem,
            values=group.combo_values(row, combo),
            shown_path=group.path if source[:1] == ("defaults",) else None,
            kind=problem.message.split(" ")[0] + " " + problem.expected,
        )

    def _check_full_bodies(self, group: _Group) -> None:
        seen: set[str] = set()
        model = group.model
        for body, row, combo in group.iter_bodies():
            text = canonical_json(body)
            if text in seen:
                continue
            if len(seen) < 1_000_000:
                seen.add(text)
            for problem in model.body_problems(body):
                self.ctx.problem(
                    group.key_path,
                    problem,
                    values=group.combo_values(row, combo),
                    kind=problem.message.split(" ")[0] + " " + problem.expected,
                )
