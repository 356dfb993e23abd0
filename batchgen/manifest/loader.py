"""YAML manifest -> validated, countable, expandable jobs (no I/O beyond reading files).

:func:`load_manifest` reads a manifest, checks everything it can (structure, body
fields against each model's schema, templates, prompts files, the number of jobs)
and raises :class:`ManifestError` with *every* problem at once. A loaded
:class:`Manifest` is known valid: :meth:`Manifest.count` is exact without expanding,
and :meth:`Manifest.iter_jobs` yields the jobs lazily in a deterministic order, each
body guaranteed valid against its model's schema.

Validation is exact and generic (a new model is a new schema file, no code); how
expanded values are checked is described in :mod:`batchgen.manifest.expansion_checks`.
A group whose ``matrix`` has a ``model`` list compiles to one group per model
(:mod:`batchgen.manifest.model_matrix`); local input images are checked by
:mod:`batchgen.manifest.inputs`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from batchgen.manifest.catalogue import available_models, load_model, models_listing, type_name
from batchgen.manifest.checks import (
    LIMIT_KEYS,
    Ctx,
    as_template,
    check_output,
    int_field,
    parse_limits,
    resolve_model,
    unknown_key,
)
from batchgen.manifest.compiled import DEFAULT_OUTPUT, CompiledGroup, Manifest
from batchgen.manifest.diagnostics import (
    Diagnostic,
    ManifestError,
    did_you_mean,
    short,
)
from batchgen.manifest.expand import CountTooHardError, count_combos
from batchgen.manifest.expansion_checks import ExpansionChecks
from batchgen.manifest.group_sources import GROUP_KEYS, GroupSources
from batchgen.manifest.inputs import InputChecker
from batchgen.manifest.model_matrix import refused_field, split_by_model
from batchgen.manifest.pricing import parse_prices
from batchgen.manifest.types import Job, Limits, canonical_json, job_id_for
from batchgen.manifest.units import parse_duration, parse_rate
from batchgen.manifest.yaml_reader import PathT, load_yaml, path_text

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
TOP_KEYS = ("version", "name", "model", "output", "limits", "prices", "defaults", "jobs")


def manifest_keys() -> dict[str, tuple[str, ...]]:
    """The keys the loader accepts: at the top level, under ``limits`` and in a job group
    (besides the model's body fields). ``schemas/manifest.schema.json`` must list the same."""
    return {"top": TOP_KEYS, "limits": LIMIT_KEYS, "group": GROUP_KEYS}


_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


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
    ctx = Ctx(file, locations)
    if data is None:
        ctx.error((), "the manifest is empty", expected="version: 1, model: …, jobs: [...]")
        raise ManifestError(ctx.diagnostics)
    if not isinstance(data, dict):
        ctx.error(
            (), f"the manifest is {type_name(data)}", expected="a mapping with version, jobs…"
        )
        raise ManifestError(ctx.diagnostics)
    return _Loader(ctx, path, data, max_jobs).load()


class _Loader(GroupSources, ExpansionChecks):
    def __init__(self, ctx: Ctx, path: Path, data: dict[str, Any], max_jobs: int) -> None:
        self.ctx = ctx
        self.path = path
        self.data = data
        self.max_jobs = max_jobs
        self._template_sources: dict[int, PathT] = {}
        self._once_seen: set[tuple[str, ...]] = set()
        self._files: dict[Path, None] = {}  # prompts files read, in order
        self.inputs = InputChecker(path.parent)

    def load(self) -> Manifest:
        ctx, data = self.ctx, self.data
        for key in data:
            if key not in TOP_KEYS and not key.startswith("x-"):
                unknown_key(ctx, (key,), key, TOP_KEYS, "the manifest")
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
        output = check_output(ctx, data.get("output"))
        limits = parse_limits(ctx, data.get("limits"))
        prices = parse_prices(ctx, data.get("prices"))
        default_model = None
        if "model" in data:
            schema = resolve_model(ctx, ("model",), data["model"])
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
            prices=prices,
        )
        if ctx.failed:
            ctx.summarize()
            raise ManifestError(ctx.sorted())
        self._check_count(groups)
        for group in groups:
            ctx.label = (group.path, group.label[len(group.path) :]) if group.label else None
            self._check_expanded(group)
        ctx.label = None
        ctx.summarize()
        if ctx.failed:
            raise ManifestError(ctx.sorted())
        manifest.warnings = [d for d in ctx.sorted() if not d.is_error]
        manifest._groups = groups
        manifest.prompts_files = list(self._files)
        manifest.input_files = list(self.inputs.files)
        return manifest

    # ----------------------------------------------------------------- groups

    def _groups(self, data: dict[str, Any], default_model: str | None) -> list[CompiledGroup]:
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
            matrix = raw.get("matrix") if isinstance(raw, dict) else None
            if isinstance(matrix, dict) and "model" in matrix:
                for sub_raw, model_path, label in split_by_model(ctx, ("jobs", index), raw):
                    ctx.label = (path_text(("jobs", index)), label[label.index(" (") :])
                    group = self._group(index, sub_raw, default_model, model_path, label)
                    ctx.label = None
                    if group is not None:
                        groups.append(group)
                continue
            group = self._group(index, raw, default_model)
            if group is not None:
                groups.append(group)
        return groups

    def _group(
        self,
        index: int,
        raw: Any,
        default_model: str | None,
        model_path: PathT | None = None,
        label: str | None = None,
    ) -> CompiledGroup | None:
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
            model = resolve_model(ctx, model_path or (*gpath, "model"), raw["model"])
        elif default_model is not None:
            model = load_model(default_model)
        else:
            if "model" not in self.data:
                ctx.error(
                    gpath,
                    "no model for this group",
                    expected="model: at the top of the manifest or in the group; available: "
                    + models_listing(available_models()),
                )
            return None
        if model is None:
            return None
        errors_before = self._errors()
        props = model.properties
        allowed = [*GROUP_KEYS, *(p for p in props if p not in GROUP_KEYS)]
        fields: dict[str, Any] = {}
        for key, value in raw.items():
            if key in GROUP_KEYS and key != "prompt":
                continue
            if key.startswith("x-"):
                continue
            if key in props or key == "prompt" or not model.closed:
                fields[key] = value
            elif (refused := refused_field(model, key)).hint.startswith("it takes"):
                ctx.problem((*gpath, key), refused, at_key=True,
                            shown_path=f"{where} (model {model.name})")  # fmt: skip
            else:
                unknown_key(ctx, (*gpath, key), key, allowed, f"{where} (model {model.name})")
        group = CompiledGroup(
            index=index,
            path=where,
            model=model,
            base={},
            templates={},
            key_path=gpath,
            label=label,
        )

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
            repeat = int_field(ctx, (*gpath, "repeat"), raw["repeat"], 1, "repeat")
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
        group: CompiledGroup,
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
        value, template = as_template(self.ctx, path, value, where)
        if template is not None:
            group.templates[key] = template
            base[key] = None
            self._template_sources[id(template)] = path
            return
        group.templates.pop(key, None)
        value = self._resolve_inputs(group, path, key, value)
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
