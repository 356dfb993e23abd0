"""Where a job group's values come from: its matrix, its exclude rules, its prompts file.

Each method checks one source of a group and records it on the
:class:`~batchgen.manifest.compiled.CompiledGroup`; problems go to the loader's
:class:`~batchgen.manifest.checks.Ctx` with their location.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from batchgen.manifest.catalogue import type_name
from batchgen.manifest.checks import Ctx, as_template
from batchgen.manifest.compiled import CompiledGroup
from batchgen.manifest.diagnostics import ERROR, Diagnostic, did_you_mean, one_of, quoted, short
from batchgen.manifest.expand import Template
from batchgen.manifest.inputs import InputChecker
from batchgen.manifest.prompts_file import SUFFIXES, PromptRows, PromptsFileProblem, read_prompts
from batchgen.manifest.yaml_reader import PathT

__all__ = ["GROUP_KEYS", "GroupSources"]

GROUP_KEYS = ("model", "prompt", "prompts_file", "matrix", "exclude", "repeat")


class GroupSources:
    """Mixin of the loader: the matrix, exclude and prompts-file sections of a group."""

    ctx: Ctx
    path: Path
    _files: dict[Path, None]
    inputs: InputChecker

    def _resolve_inputs(
        self,
        group: CompiledGroup,
        path: PathT,
        key: str,
        value: Any,
        *,
        row: int | None = None,
        rows: PromptRows | None = None,
    ) -> Any:
        """Check the ``file:`` references of an image field's value; return it resolved."""
        spec = group.model.extension
        image = next((i for i in spec.image_inputs if i.field == key), None)
        if image is None:
            return value
        resolved, problems = self.inputs.check_value(group.model.name, image, value)
        if resolved != value:
            group.has_files = True
        for problem in problems:
            if row is not None:
                self._row_error(group, row, message=problem.message, expected=problem.expected,
                                hint=problem.hint, rows=rows)  # fmt: skip
            else:
                self.ctx.error(path, problem.message, expected=problem.expected,
                               hint=problem.hint)  # fmt: skip
        return resolved

    def _matrix(
        self, group: CompiledGroup, raw: Any, present: bool, fields: dict[str, Any]
    ) -> None:
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
            if key in GROUP_KEYS and key != "prompt":
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
                    value, template = as_template(ctx, vpath, value)
                    value = self._resolve_inputs(group, vpath, key, value)
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

    def _exclude(self, group: CompiledGroup, raw: Any) -> None:
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
                            hint=self._exclude_hint(group, key, value, options),
                        )
                        continue
                    indices.add(idents.index(ident))
                if indices:
                    parts.append((pos, frozenset(indices)))
            if len(parts) == len(rule):
                rules.append(tuple(parts))
        group.rules = tuple(rules)

    @staticmethod
    def _exclude_hint(group: CompiledGroup, key: str, value: Any, options: Any) -> str:
        """A did-you-mean among the matrix values that are valid themselves: when the rule
        names a valid value and the matrix has a typo, the typo is the mistake (reported at
        the matrix), not the rule."""
        model = group.model
        body = key in model.properties
        if body and not model.check_field(key, value):
            return ""
        valid = [o for o in options if isinstance(o, str)]
        if body:
            valid = [o for o in valid if not model.check_field(key, o)]
        return did_you_mean(value, valid)

    def _rows(self, group: CompiledGroup, raw: Any, fields: dict[str, Any]) -> None:
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
                    extra[col] = self._resolve_inputs(
                        group, fpath, col, extra[col], row=i, rows=rows
                    )
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
        group: CompiledGroup,
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
