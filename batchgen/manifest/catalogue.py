"""The JSON Schemas: model request bodies and the manifest itself.

Model body schemas live at ``<dir>/<provider>/<model>.json`` (JSON Schema 2020-12).
Adding a model is adding one file: its name is its path; its ``x-batchgen`` block
(checked against ``x-batchgen.schema.json`` when the file loads) gives its task
type, submit paths, outputs, image inputs and list price; its defaults come from
each property's ``default``. Folders are searched in this order, the first holding
a model winning: those given to :func:`set_schema_dirs` (``--schemas DIR``), those
in ``BATCHGEN_SCHEMAS`` (colon-separated), then the shipped ``models/`` folder (in
an installed wheel ``batchgen/schemas/``, in a source checkout ``<repo>/schemas/``).

Besides full validation (:meth:`ModelSchema.validate`), a model offers a fast,
exact per-field check (:meth:`ModelSchema.check_field`): when the schema is
*simple* (an object of independent properties, no combinators, conditionals or
references), a body is valid exactly when its key set is valid and every field is
valid on its own.
"""

from __future__ import annotations

import functools
import json
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError, ValidationError

from batchgen.errors import BatchgenError, ExitCode
from batchgen.manifest.diagnostics import did_you_mean, one_of, quoted, short
from batchgen.manifest.extension import Extension, parse_extension

__all__ = [
    "PROVIDER_SUBMIT_SHAPES",
    "FieldProblem",
    "ModelSchema",
    "SchemaFileError",
    "UnknownModelError",
    "available_models",
    "load_model",
    "load_models_in",
    "manifest_schema",
    "model_dirs",
    "models_listing",
    "render_submit_path",
    "schemas_dir",
    "set_schema_dirs",
]

_DEFAULT_SUBMIT_PATH = "/api/v1/{provider}/{model}/async"
SCHEMAS_ENV = "BATCHGEN_SCHEMAS"
_user_dirs: tuple[Path, ...] = ()
# Keywords that only annotate: they never make a value invalid.
_ANNOTATIONS = frozenset(
    {"title", "description", "default", "examples", "$comment", "deprecated", "readOnly",
     "writeOnly", "format", "contentMediaType", "contentEncoding"}
)  # fmt: skip
_STRING_KEYWORDS = frozenset({"type", "minLength", "maxLength", "pattern", "enum", "const"})
_SIMPLE_ROOT_KEYWORDS = frozenset(
    {"$schema", "$id", "type", "properties", "required", "additionalProperties", "x-batchgen"}
) | _ANNOTATIONS  # fmt: skip


class UnknownModelError(BatchgenError, LookupError):
    """No schema file exists for the requested model."""

    exit_code = ExitCode.USAGE

    def __init__(self, model: str, available: list[str]) -> None:
        self.model = model
        self.available = available
        self.hint = did_you_mean(model, available)
        text = f"unknown model '{model}'; available models: {models_listing(available)}"
        if self.hint:
            text += f"; {self.hint}"
        super().__init__(text)


class SchemaFileError(BatchgenError, RuntimeError):
    """A schema file shipped with batchgen (or added by the user) is unreadable or invalid."""


def models_listing(available: list[str]) -> str:
    """The available models for a message: named when few, else counted."""
    if not available:
        return "none installed"
    if len(available) <= 6:
        return ", ".join(available)
    return f"{len(available)} models (`batchgen models` lists them)"


def schemas_dir() -> Path:
    """The folder holding ``manifest.schema.json`` and ``models/``.

    Inside an installed wheel that is ``batchgen/schemas``; in a source checkout
    it is the repository's top-level ``schemas`` folder.
    """
    here = Path(__file__).resolve().parent.parent  # the batchgen package
    packaged = here / "schemas"
    if (packaged / "models").is_dir():
        return packaged
    return here.parent / "schemas"


def set_schema_dirs(dirs: Iterable[Path | str]) -> None:
    """Search these folders first for model schemas (``--schemas DIR``); replaces earlier ones."""
    global _user_dirs  # noqa: PLW0603 - one process-wide search path, set by the CLI
    _user_dirs = tuple(Path(d).expanduser() for d in dirs)


def model_dirs() -> list[Path]:
    """The folders searched for ``<provider>/<model>.json``, first match wins.

    A given folder that holds a ``models/`` subfolder is searched there instead.
    """
    env = [Path(p).expanduser() for p in os.environ.get(SCHEMAS_ENV, "").split(os.pathsep) if p]
    found = []
    for folder in (*_user_dirs, *env):
        found.append(folder / "models" if (folder / "models").is_dir() else folder)
    found.append(schemas_dir() / "models")
    return found


def _model_files(dirs: tuple[Path, ...]) -> dict[str, Path]:
    files: dict[str, Path] = {}
    for root in dirs:
        if not root.is_dir():
            continue
        for path in sorted(root.glob("*/*.json")):
            files.setdefault(path.relative_to(root).with_suffix("").as_posix(), path)
    return files


def available_models() -> list[str]:
    """Every model with a body schema, as ``provider/model`` names, sorted."""
    return sorted(_model_files(tuple(model_dirs())))


def manifest_schema() -> dict[str, Any]:
    """The JSON Schema of the manifest file itself (for editors and tools)."""
    return _read_json(schemas_dir() / "manifest.schema.json")


def load_model(model: str) -> ModelSchema:
    """Load the body schema of ``model`` (``provider/model``); cached per search path.

    Raises :class:`UnknownModelError` (with a did-you-mean) when no schema exists,
    :class:`SchemaFileError` (naming the file) when the schema file itself is broken.
    """
    return _load_model(model, tuple(model_dirs()))


def load_models_in(dirs: Iterable[Path]) -> list[ModelSchema]:
    """Every model schema found in ``dirs`` (first match wins), sorted by name."""
    key = tuple(dirs)
    return [_load_model(name, key) for name in sorted(_model_files(key))]


#: Every submit-path shape the provider has documented or used (its docs, its official CLIs):
#: the fallbacks tried after a model's own ``submit_paths`` when a submit answers 404.
PROVIDER_SUBMIT_SHAPES = (
    "/api/v1/{type}/{provider}/{model}/async",
    "/api/v1/{provider}/{model}/async",
    "/api/v1/{provider}/{model}",
)


def render_submit_path(template: str, model: str, task_type: str) -> str:
    """Fill ``{type}``, ``{provider}`` and ``{model}`` into a submit-path template."""
    provider, _, name = model.partition("/")
    return (
        template.replace("{type}", task_type)
        .replace("{provider}", provider)
        .replace("{model}", name)
    )


@functools.lru_cache(maxsize=256)
def _load_model(model: str, dirs: tuple[Path, ...]) -> ModelSchema:
    files = _model_files(dirs)
    if model not in files:
        raise UnknownModelError(model, sorted(files))
    path = files[model]
    schema = _read_json(path)
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        message = f"schema {path} of model '{model}' is not valid JSON Schema: {exc.message}"
        raise SchemaFileError(message) from None
    raw_extension = schema.get("x-batchgen", {})
    if isinstance(raw_extension, dict) and set(raw_extension) <= {"submit_path"}:
        # A body schema alone (or the one-key block of batchgen 0.1) is enough.
        path_template = raw_extension.get("submit_path", _DEFAULT_SUBMIT_PATH)
        raw_extension = {"task_type": "text-to-image", "submit_paths": [path_template],
                         "outputs": None, "image_inputs": {}, "price": None}  # fmt: skip
    try:
        extension = parse_extension(raw_extension, schemas_dir() / "x-batchgen.schema.json")
    except ValueError as exc:
        raise SchemaFileError(f"schema {path} of model '{model}': {exc}") from None
    submit_path = render_submit_path(extension.submit_paths[0], model, extension.task_type)
    properties = schema.get("properties", {})
    defaults = {
        key: sub["default"]
        for key, sub in properties.items()
        if isinstance(sub, dict) and "default" in sub
    }
    return ModelSchema(
        name=model,
        schema=schema,
        submit_path=submit_path,
        defaults=defaults,
        extension=extension,
        file=path,
    )


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SchemaFileError(f"cannot read schema {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise SchemaFileError(f"schema {path} is not a JSON object")
    return data


@dataclass(frozen=True)
class FieldProblem:
    """Why one body field's value is invalid: message, what was expected, a hint."""

    message: str
    expected: str = ""
    hint: str = ""


_Checker = Callable[[Any], list[FieldProblem]]


@dataclass(frozen=True)
class ModelSchema:
    """A model's request-body schema and what batchgen derives from it."""

    name: str
    schema: dict[str, Any]
    submit_path: str  # the preferred submit path, filled in
    defaults: dict[str, Any]
    extension: Extension
    file: Path
    _cache: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def properties(self) -> dict[str, Any]:
        """The body fields and their sub-schemas, in schema order."""
        props = self.schema.get("properties", {})
        return props if isinstance(props, dict) else {}

    @property
    def required(self) -> tuple[str, ...]:
        """The body fields every request must carry."""
        req = self.schema.get("required", [])
        return tuple(r for r in req if isinstance(r, str)) if isinstance(req, list) else ()

    @property
    def closed(self) -> bool:
        """True when the schema refuses unlisted fields (``additionalProperties: false``)."""
        return self.schema.get("additionalProperties", True) is False

    @property
    def simple(self) -> bool:
        """True when per-field checks plus a key-set check are exactly full validation."""
        cached = self._cache.get("simple")
        if cached is None:
            cached = _is_simple_root(self.schema)
            self._cache["simple"] = cached
        return bool(cached)

    def _validator(self) -> Draft202012Validator:
        validator: Draft202012Validator | None = self._cache.get("validator")
        if validator is None:
            validator = Draft202012Validator(self.schema)
            self._cache["validator"] = validator
        return validator

    def validate(self, body: Mapping[str, Any]) -> list[str]:
        """Validate a complete body against the full schema; human messages, empty if valid."""
        return [_problem_text(p) for p in self.body_problems(body)]

    def body_problems(self, body: Mapping[str, Any]) -> list[FieldProblem]:
        """Like :meth:`validate`, but structured (message, expected, hint)."""
        errors = sorted(self._validator().iter_errors(dict(body)), key=_error_order)
        return [_describe(err, self) for err in errors]

    def check_field(self, name: str, value: Any) -> list[FieldProblem]:
        """Check one field's value against its own sub-schema (fast; cached checker)."""
        checkers: dict[str, _Checker] = self._cache.setdefault("checkers", {})
        checker = checkers.get(name)
        if checker is None:
            checker = self._make_checker(name)
            checkers[name] = checker
        return checker(value)

    def check_keys(self, keys: Iterable[str]) -> list[FieldProblem]:
        """Check a body's key set: required fields present, no field the schema refuses."""
        present = set(keys)
        problems = [
            FieldProblem(
                f"required body field '{req}' is not set",
                expected=f"'{req}' in defaults, the job group, its matrix or its prompts file",
            )
            for req in self.required
            if req not in present
        ]
        if self.closed:
            known = list(self.properties)
            for key in sorted(present - set(known)):
                problems.append(
                    FieldProblem(
                        f"'{key}' is not a body field of {self.name}",
                        expected=", ".join(known),
                        hint=did_you_mean(key, known),
                    )
                )
        return problems

    def string_limits(self, name: str) -> tuple[int, int] | None:
        """``(min_length, max_length)`` when a string's length is the field's only constraint.

        Then a templated value whose possible lengths lie inside these bounds is valid
        without rendering it. ``None`` when the field has other constraints (enum,
        pattern, …) or is not a plain string field.
        """
        sub = self.properties.get(name)
        if not isinstance(sub, dict) or sub.get("type") != "string":
            return None
        if set(sub) - _ANNOTATIONS - {"type", "minLength", "maxLength"}:
            return None
        return int(sub.get("minLength", 0)), int(sub.get("maxLength", 2**63))

    def _make_checker(self, name: str) -> _Checker:
        sub = self.properties.get(name)
        if sub is None:
            if self.closed:
                known = list(self.properties)
                problem = FieldProblem(
                    f"'{name}' is not a body field of {self.name}",
                    expected=", ".join(known),
                    hint=did_you_mean(name, known),
                )
                return lambda _value: [problem]
            return lambda _value: []
        if isinstance(sub, dict) and _is_plain_string_schema(sub):
            return _string_checker(name, sub)
        if isinstance(sub, bool) or not _mentions_ref(sub):
            validator = Draft202012Validator(sub)

            def check(value: Any) -> list[FieldProblem]:
                errors = sorted(validator.iter_errors(value), key=_error_order)
                return [_describe(err, self, field_name=name) for err in errors]

            return check

        # A sub-schema with references can only be checked in context: whole body.
        def check_in_body(value: Any) -> list[FieldProblem]:
            relevant = []
            for err in self._validator().iter_errors({name: value}):
                if err.absolute_path and err.absolute_path[0] == name:
                    relevant.append(_describe(err, self))
            return relevant

        return check_in_body


def _mentions_ref(sub: Any) -> bool:
    return '"$ref"' in json.dumps(sub) or '"$dynamicRef"' in json.dumps(sub)


def _is_plain_string_schema(sub: dict[str, Any]) -> bool:
    if set(sub) - _ANNOTATIONS - _STRING_KEYWORDS:
        return False
    if sub.get("type") != "string":
        return False
    if "enum" in sub and not (
        isinstance(sub["enum"], list) and all(isinstance(v, str) for v in sub["enum"])
    ):
        return False
    return "const" not in sub or isinstance(sub["const"], str)


def _is_simple_root(schema: dict[str, Any]) -> bool:
    if set(schema) - _SIMPLE_ROOT_KEYWORDS:
        return False
    if schema.get("type", "object") != "object":
        return False
    if not isinstance(schema.get("additionalProperties", True), bool):
        return False
    props = schema.get("properties", {})
    if not isinstance(props, dict):
        return False
    return not any(_mentions_ref(sub) for sub in props.values())


def _string_checker(name: str, sub: dict[str, Any]) -> _Checker:
    """A pure-Python checker equivalent to jsonschema for plain string sub-schemas."""
    min_len = int(sub.get("minLength", 0))
    max_len = sub.get("maxLength")
    pattern = re.compile(sub["pattern"]) if "pattern" in sub else None
    enum = list(sub["enum"]) if "enum" in sub else None
    enum_set = frozenset(enum) if enum is not None else None
    const = sub.get("const")
    has_const = "const" in sub

    def check(value: Any) -> list[FieldProblem]:
        if not isinstance(value, str):
            return [_type_problem(name, value, "string")]
        problems: list[FieldProblem] = []
        if enum_set is not None and value not in enum_set:
            assert enum is not None
            problems.append(
                FieldProblem(
                    f"{name} {quoted(value)} is not allowed",
                    expected=one_of(enum),
                    hint=did_you_mean(value, enum),
                )
            )
        if has_const and value != const:
            problems.append(FieldProblem(f"{name} {quoted(value)} is not allowed", quoted(const)))
        length = len(value)
        if length < min_len:
            what = "empty" if length == 0 else f"{length} characters long"
            problems.append(
                FieldProblem(f"{name} is {what}", expected=f"at least {_chars(min_len)}")
            )
        if max_len is not None and length > max_len:
            problems.append(
                FieldProblem(
                    f"{name} is {length} characters long", expected=f"at most {_chars(max_len)}"
                )
            )
        if pattern is not None and not pattern.search(value):
            problems.append(
                FieldProblem(
                    f"{name} {quoted(value)} does not match the pattern",
                    expected=f"a string matching {pattern.pattern!r}",
                )
            )
        return problems

    return check


def type_name(value: Any) -> str:
    """How a value read from YAML/JSON reads to a user: ``a list``, ``the number 3``…"""
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, (int, float)):
        return f"the number {value}"
    if isinstance(value, str):
        return f"the string {quoted(value)}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return f"a {type(value).__name__}"


_JSON_TYPE_WORDS = {
    "string": "a string",
    "integer": "an integer",
    "number": "a number",
    "boolean": "true or false",
    "array": "a list",
    "object": "a mapping",
    "null": "null",
}


def _type_problem(name: str, value: Any, expected: Any) -> FieldProblem:
    types = expected if isinstance(expected, list) else [expected]
    words = " or ".join(_JSON_TYPE_WORDS.get(t, str(t)) for t in types)
    hint = ""
    if isinstance(value, bool) and "string" in types:
        hint = "YAML reads unquoted yes/no/on/off/true/false as booleans: quote the value"
    elif value is None and "string" in types:
        hint = "an empty value is null in YAML: write a value or quote it"
    elif isinstance(value, list) and "array" not in types:
        hint = f"to make one job per value, put {name} under matrix:"
    return FieldProblem(f"{name} is {type_name(value)}", expected=words, hint=hint)


def _error_order(err: ValidationError) -> tuple[str, str]:
    return (".".join(str(p) for p in err.absolute_path), str(err.validator))


def _describe(err: ValidationError, model: ModelSchema, field_name: str = "") -> FieldProblem:
    """Turn a jsonschema error into found/expected/hint wording."""
    path = [str(p) for p in err.absolute_path]
    name = ".".join(path) if path else (field_name or "body")
    if field_name and path:
        name = f"{field_name}.{name}"
    kind = err.validator
    value: Any = err.instance
    arg: Any = err.validator_value
    if kind == "type":
        return _type_problem(name, value, arg)
    if kind == "enum":
        return FieldProblem(
            f"{name} {quoted(value)} is not allowed",
            expected=one_of(arg),
            hint=did_you_mean(value, arg),
        )
    if kind == "const":
        return FieldProblem(f"{name} {quoted(value)} is not allowed", expected=quoted(arg))
    if kind == "minLength":
        what = "empty" if value == "" else f"{len(value)} characters long"
        return FieldProblem(f"{name} is {what}", expected=f"at least {_chars(arg)}")
    if kind == "maxLength":
        return FieldProblem(f"{name} is {len(value)} characters long", f"at most {_chars(arg)}")
    if kind in ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum"):
        words = {
            "minimum": "at least",
            "exclusiveMinimum": "more than",
            "maximum": "at most",
            "exclusiveMaximum": "less than",
        }
        return FieldProblem(f"{name} is {short(value)}", expected=f"{words[kind]} {arg}")
    if kind == "pattern":
        return FieldProblem(
            f"{name} {quoted(value)} does not match the pattern", f"a string matching {arg!r}"
        )
    if kind == "required":
        missing = [r for r in arg if isinstance(value, dict) and r not in value]
        names = ", ".join(f"'{m}'" for m in missing) or short(arg)
        return FieldProblem(
            f"required body field {names} is not set",
            expected="it in defaults, the job group, its matrix or its prompts file",
        )
    if kind == "additionalProperties" and isinstance(value, dict):
        known = list(err.schema.get("properties", {})) if isinstance(err.schema, dict) else []
        extra = sorted(k for k in value if k not in known)
        key = extra[0] if extra else "?"
        where = model.name if not path else name
        return FieldProblem(
            f"'{key}' is not a body field of {where}",
            expected=", ".join(known),
            hint=did_you_mean(key, known),
        )
    return FieldProblem(f"{name}: {err.message}")


def _chars(count: Any) -> str:
    return "1 character" if count == 1 else f"{count} characters"


def _problem_text(problem: FieldProblem) -> str:
    text = problem.message
    if problem.expected:
        text += f"; expected {problem.expected}"
    if problem.hint:
        text += f"; {problem.hint}"
    return text
