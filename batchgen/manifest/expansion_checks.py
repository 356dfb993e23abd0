"""Checks of a compiled job group that need its variables or its expansion.

Placeholders must name a variable of their group; template output is validated
from its possible lengths when length is the field's only constraint, else rendered
and checked per distinct value; a model whose schema is not a plain object of
independent fields has every distinct body validated in full. Problems go to the
loader's :class:`~batchgen.manifest.checks.Ctx`; nothing raises but the job-count cap.
"""

from __future__ import annotations

import json

from batchgen.manifest.catalogue import FieldProblem
from batchgen.manifest.checks import Ctx
from batchgen.manifest.compiled import CompiledGroup
from batchgen.manifest.diagnostics import ManifestError, did_you_mean
from batchgen.manifest.expand import Template, render_value
from batchgen.manifest.model_matrix import refused_field
from batchgen.manifest.types import canonical_json
from batchgen.manifest.yaml_reader import PathT

__all__ = ["ExpansionChecks"]


class ExpansionChecks:
    """Mixin of the loader: placeholder, count and expanded-body checks."""

    ctx: Ctx
    max_jobs: int
    _template_sources: dict[int, PathT]

    def _check_placeholders(
        self, group: CompiledGroup, *, sources_ok: bool, templates_ok: bool
    ) -> None:
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
            refused = refused_field(group.model, key)
            if refused.hint.startswith("it takes"):
                ctx.problem(kpath, refused, at_key=True)
            elif close:
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

    def _check_count(self, groups: list[CompiledGroup]) -> None:
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

    def _check_expanded(self, group: CompiledGroup) -> None:
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

    def _bounded_ok(self, group: CompiledGroup, name: str) -> bool:
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
        self,
        group: CompiledGroup,
        name: str,
        row: int,
        combo: tuple[int, ...],
        problem: FieldProblem,
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

    def _check_full_bodies(self, group: CompiledGroup) -> None:
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
