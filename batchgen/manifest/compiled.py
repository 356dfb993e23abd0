"""Compiled job groups and the loaded :class:`Manifest`: counting and lazy expansion.

A :class:`Manifest` is built only by :func:`batchgen.manifest.loader.load_manifest`
and is known valid: :meth:`Manifest.count` is exact without expanding, and
:meth:`Manifest.iter_jobs` yields the jobs lazily in a deterministic order.
"""

from __future__ import annotations

import datetime
import hashlib
import operator
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from batchgen.manifest.catalogue import ModelSchema, load_model
from batchgen.manifest.diagnostics import Diagnostic
from batchgen.manifest.expand import Rule, Template, iter_combos, render_value
from batchgen.manifest.pricing import PriceBook
from batchgen.manifest.prompts_file import PromptRows
from batchgen.manifest.types import NO_VARIABLES, Job, Limits, encode_canonical, identity_view
from batchgen.manifest.yaml_reader import PathT

__all__ = ["DEFAULT_OUTPUT", "CompiledGroup", "Manifest"]

DEFAULT_OUTPUT = "output/{name}-{date}"
#: Distinct variable mappings a group keeps to share between its jobs (per prompts-file row).
_SHARED_VARIABLES = 4096

VariablesOf = Callable[[int, tuple[int, ...]], Mapping[str, Any]]


@dataclass
class CompiledGroup:
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
    label: str | None = None  # "jobs[0] (model x/y)" when the model comes from a matrix
    has_files: bool = False  # some body holds a local input image (file:…#sha256=…)

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

    def variables_of(self) -> VariablesOf:
        """A function ``(row, combo) -> variables`` for the bodies :meth:`iter_bodies` yields,
        in its order: the prompts-file columns and matrix keys that are not body fields.

        Bodies that share their variables (sizes or other body fields varying, repeats) share
        one mapping: at most :data:`_SHARED_VARIABLES` per row are kept, so memory stays
        bounded whatever the group's size.
        """
        positions = tuple(i for i, is_body in enumerate(self.is_body) if not is_body)
        rows = self.rows
        columns: tuple[str, ...] = ()
        if rows is not None and rows.extras is not None:
            columns = tuple(c for c in rows.columns if c not in self.row_body and c != "prompt")
        if not positions and not columns:
            return lambda _row, _combo: NO_VARIABLES
        keys = tuple(self.keys[i] for i in positions)
        values = tuple(self.values[i] for i in positions)
        pick: Callable[[tuple[int, ...]], Any] = (
            operator.itemgetter(*positions) if positions else lambda _combo: ()
        )
        extras = rows.extras if rows is not None and rows.extras is not None else None
        shared: dict[Any, Mapping[str, Any]] = {}
        current = [-1]

        def variables(row: int, combo: tuple[int, ...]) -> Mapping[str, Any]:
            if row != current[0]:
                current[0] = row
                shared.clear()
            key = pick(combo)
            found = shared.get(key)
            if found is not None:
                return found
            out: dict[str, Any] = {}
            if extras is not None:
                extra = extras[row]
                out.update((c, extra[c]) for c in columns if c in extra)
            indices = key if len(positions) > 1 else (key,)
            for name, options, index in zip(keys, values, indices, strict=False):
                out[name] = options[index]
            if len(shared) < _SHARED_VARIABLES:
                shared[key] = out
            return out

        return variables

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
    input_files: list[Path] = field(default_factory=list)
    """Every local input image the bodies refer to (resolved paths, no repeats)."""
    prices: PriceBook = field(default_factory=PriceBook)
    """The manifest's ``prices:`` over the models' list prices."""
    _groups: list[CompiledGroup] = field(default_factory=list, repr=False)

    @property
    def models(self) -> list[str]:
        """The models the jobs use, in order of first use."""
        return list(dict.fromkeys(g.model.name for g in self._groups))

    @property
    def groups(self) -> list[str]:
        """The job groups' paths (``jobs[0]``, ``jobs[1]``, …)."""
        return list(dict.fromkeys(g.path for g in self._groups))

    def model_schema(self, model: str) -> ModelSchema:
        """The schema of a model this manifest uses (submit path, defaults, …)."""
        return load_model(model)

    def count(self) -> int:
        """The number of jobs, computed without expanding anything."""
        return sum(g.count() for g in self._groups)

    def group_counts(self) -> dict[str, int]:
        """Jobs per group path (a group with a model matrix counts all its models)."""
        counts: dict[str, int] = {}
        for g in self._groups:
            counts[g.path] = counts.get(g.path, 0) + g.count()
        return counts

    def iter_jobs(self) -> Iterator[Job]:
        """Every job, lazily, in a deterministic order.

        Groups in manifest order; within a group prompts-file rows (file order), then
        matrix combinations (keys and values in manifest order, last key fastest), then
        repeats. Treat the bodies as read-only.
        """
        sha = hashlib.sha256
        encode = encode_canonical
        for group in self._groups:
            model = group.model.name
            path = group.path
            repeat = group.repeat
            files = group.has_files
            variables_of = group.variables_of()
            for body, row, combo in group.iter_bodies():
                prefix = f"{model}\n{encode(identity_view(body) if files else body)}\n"
                variables = variables_of(row, combo)
                for r in range(repeat):
                    job_id = sha(f"{prefix}{r}".encode()).hexdigest()[:16]
                    yield Job(job_id, model, body if r == 0 else dict(body), r, path, variables)

    def run_dir(self, today: datetime.date, override: str | Path | None = None) -> Path:
        """The run directory for a run started on ``today``.

        ``output`` (with ``{name}`` and ``{date}``) resolves relative to the manifest's
        folder; without it, ``output/{name}-{date}`` relative to the current directory.
        ``override`` (``--output``, same placeholders) resolves relative to the current
        directory.
        """
        if override is not None:
            return Path(str(override).format(name=self.name, date=today.isoformat()))
        template = self.output if self.output is not None else DEFAULT_OUTPUT
        text = template.format(name=self.name, date=today.isoformat())
        path = Path(text).expanduser()
        if self.output is not None and not path.is_absolute():
            path = self.path.parent / path
        return Path(os.path.normpath(path))
