"""Reading a job group's ``prompts_file``: ``.txt``, ``.csv`` or ``.jsonl``.

- ``.txt``: one prompt a line; blank lines and lines starting with ``#`` are skipped;
  surrounding whitespace is stripped.
- ``.csv``: a header row with a ``prompt`` column; every other column is a body field
  (when the model has a field of that name) or a template variable. Cells are text;
  an empty cell leaves a body field unset.
- ``.jsonl``: one JSON object a line with a ``prompt`` key; other keys as for CSV,
  with JSON types kept. Blank lines are skipped.

Problems with the file as a whole raise :class:`PromptsFileProblem` (the caller
locates it at the manifest's ``prompts_file`` key); problems inside the file come
back as diagnostics located in the file itself.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from batchgen.manifest.diagnostics import Diagnostic, did_you_mean, short

__all__ = ["SUFFIXES", "PromptRows", "PromptsFileProblem", "read_prompts"]

SUFFIXES = (".txt", ".csv", ".jsonl")
_MAX_ERRORS = 20


class PromptsFileProblem(Exception):
    """The prompts file cannot be used at all (missing, unreadable, not UTF-8, empty…)."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


@dataclass
class PromptRows:
    """The prompts of a file, their line numbers and any extra columns."""

    display: str
    prompts: list[str] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)
    columns: list[str] = field(default_factory=list)
    extras: list[dict[str, Any]] | None = None  # per row: column -> value (None for .txt)


def _decode(path: Path, display: str) -> str:
    if not path.exists():
        hint = ""
        if path.parent.is_dir():
            names = [p.name for p in path.parent.iterdir() if p.suffix in SUFFIXES]
            hint = did_you_mean(path.name, names)
        raise PromptsFileProblem(f"prompts file {display} not found", hint=hint)
    if path.is_dir():
        raise PromptsFileProblem(f"prompts file {display} is a directory, not a file")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise PromptsFileProblem(
            f"cannot read prompts file {display}: {exc.strerror or exc}"
        ) from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        before = data[: exc.start]
        line = before.count(b"\n") + 1
        col = exc.start - (before.rfind(b"\n") + 1) + 1
        raise PromptsFileProblem(
            f"prompts file {display} is not UTF-8 text: byte 0x{data[exc.start]:02x} "
            f"on line {line}, column {col}",
            hint="save the file as UTF-8",
        ) from None


def read_prompts(path: Path, display: str) -> tuple[PromptRows, list[Diagnostic]]:
    """Read ``path`` (shown as ``display`` in messages); see the module doc for formats."""
    suffix = path.suffix.lower()
    if path.is_dir():
        raise PromptsFileProblem(f"prompts file {display} is a directory, not a file")
    if suffix not in SUFFIXES:
        raise PromptsFileProblem(
            f"prompts file {display} has an unknown extension '{path.suffix}'",
            hint="use .txt (one prompt a line), .csv (with a prompt column) or .jsonl",
        )
    text = _decode(path, display)
    if "\x00" in text:
        raise PromptsFileProblem(f"prompts file {display} contains NUL bytes: is it binary?")
    rows = PromptRows(display=display)
    diags: list[Diagnostic] = []
    if suffix == ".txt":
        _read_txt(text, rows)
    elif suffix == ".csv":
        _read_csv(text, rows, diags)
    else:
        _read_jsonl(text, rows, diags)
    if not rows.prompts and not diags:
        raise PromptsFileProblem(
            f"prompts file {display} holds no prompts",
            hint="blank lines and # comment lines are skipped" if suffix == ".txt" else "",
        )
    return rows, diags[:_MAX_ERRORS] + _more(diags, display)


def _more(diags: list[Diagnostic], display: str) -> list[Diagnostic]:
    if len(diags) <= _MAX_ERRORS:
        return []
    return [Diagnostic(display, 0, 0, "", f"… and {len(diags) - _MAX_ERRORS} more errors")]


def _read_txt(text: str, rows: PromptRows) -> None:
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        rows.prompts.append(line)
        rows.lines.append(number)


def _prompt_column_problem(names: list[str], display: str) -> PromptsFileProblem:
    close = did_you_mean("prompt", names)
    hint = ""
    if close:
        hint = (
            "rename the column " + close.removeprefix("did you mean ").rstrip("?") + " to 'prompt'"
        )
    return PromptsFileProblem(
        f"prompts file {display} has no 'prompt' column (found: "
        + ", ".join(repr(n) for n in names)
        + ")",
        hint=hint or "the first row must be a header naming the columns, one of them 'prompt'",
    )


def _read_csv(text: str, rows: PromptRows, diags: list[Diagnostic]) -> None:
    display = rows.display
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader, None)
        if header is None:
            raise PromptsFileProblem(f"prompts file {display} is empty")
        names = [h.strip() for h in header]
        if "prompt" not in names:
            raise _prompt_column_problem(names, display)
        seen: set[str] = set()
        for i, name in enumerate(names):
            if not name:
                diags.append(Diagnostic(display, 1, 0, "", f"column {i + 1} has no name"))
            elif name in seen:
                diags.append(Diagnostic(display, 1, 0, "", f"column '{name}' appears twice"))
            seen.add(name)
        rows.columns = [n for n in names if n != "prompt"]
        rows.extras = []
        prompt_at = names.index("prompt")
        start = reader.line_num + 1
        for record in reader:
            line = start
            start = reader.line_num + 1
            if not record or all(not cell.strip() for cell in record):
                continue
            if len(record) != len(names):
                diags.append(
                    Diagnostic(
                        display,
                        line,
                        0,
                        "",
                        f"row has {len(record)} cells",
                        expected=f"{len(names)}, one per header column",
                        hint="quote cells that contain commas",
                    )
                )
                continue
            prompt = record[prompt_at].strip()
            if not prompt:
                diags.append(Diagnostic(display, line, 0, "", "empty prompt", expected="text"))
                continue
            rows.prompts.append(prompt)
            rows.lines.append(line)
            rows.extras.append(
                {n: c for n, c in zip(names, record, strict=True) if n != "prompt" and c != ""}
            )
    except csv.Error as exc:
        diags.append(Diagnostic(display, reader.line_num, 0, "", f"CSV syntax error: {exc}"))


def _read_jsonl(text: str, rows: PromptRows, diags: list[Diagnostic]) -> None:
    display = rows.display
    rows.extras = []
    columns: dict[str, None] = {}
    decoder = json.JSONDecoder()
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        try:
            obj, end = decoder.raw_decode(line)
            if line[end:].strip():
                raise json.JSONDecodeError("extra data after the object", line, end)
        except json.JSONDecodeError as exc:
            diags.append(
                Diagnostic(
                    display,
                    number,
                    exc.colno + (len(raw) - len(raw.lstrip())),
                    "",
                    f"invalid JSON: {exc.msg}",
                    hint="each line must be one JSON object",
                )
            )
            continue
        if not isinstance(obj, dict):
            diags.append(
                Diagnostic(display, number, 1, "", "line is not a JSON object", expected="{...}")
            )
            continue
        prompt = obj.get("prompt")
        if not isinstance(prompt, str):
            keys = [k for k in obj if isinstance(k, str)]
            hint = did_you_mean("prompt", keys) if "prompt" not in obj else ""
            found = "no 'prompt' key" if "prompt" not in obj else f"prompt {short(prompt)}"
            diags.append(
                Diagnostic(display, number, 1, "", found, expected='a "prompt" string', hint=hint)
            )
            continue
        if not prompt.strip():
            diags.append(Diagnostic(display, number, 1, "", "empty prompt", expected="text"))
            continue
        extra = {k: v for k, v in obj.items() if k != "prompt"}
        for key in extra:
            columns.setdefault(key, None)
        rows.prompts.append(prompt)
        rows.lines.append(number)
        rows.extras.append(extra)
    rows.columns = list(columns)
