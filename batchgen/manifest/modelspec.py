"""A model as batchgen uses it: :class:`ModelSpec`, built from the model's schema file.

A spec names the model, its task type, its submit paths (filled in, preferred first),
the body field that sets how many images a task returns and its default, the fields
that take input images with their limits, the list price rules and the body
validator. :func:`expected_images` and :func:`list_price` read a complete body
(schema defaults applied); neither does I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from batchgen.manifest.catalogue import (
    PROVIDER_SUBMIT_SHAPES,
    ModelSchema,
    available_models,
    load_model,
    render_submit_path,
)
from batchgen.manifest.extension import ImageInputSpec, OutputsSpec, PriceRule

__all__ = [
    "ImageInputSpec",
    "ModelSpec",
    "all_specs",
    "describe",
    "describe_fields",
    "expected_images",
    "list_price",
    "model_spec",
]


@dataclass(frozen=True)
class ModelSpec:
    """Everything batchgen knows about one model."""

    id: str  # "kling/kling-image-o1"
    provider: str  # "kling"
    task_type: str  # "image-to-image"
    submit_paths: tuple[str, ...]  # filled in, preferred first
    outputs: OutputsSpec | None  # None: one image per task
    image_inputs: tuple[ImageInputSpec, ...]
    price: tuple[PriceRule, ...] | None  # None: list price unknown
    validator: ModelSchema
    file: Path

    @property
    def submit_path_candidates(self) -> tuple[str, ...]:
        """The model's own submit paths, then the provider's other documented shapes
        (:data:`batchgen.manifest.catalogue.PROVIDER_SUBMIT_SHAPES`), without repeats: the
        order in which a run tries them when a submit answers 404."""
        shapes = (render_submit_path(t, self.id, self.task_type) for t in PROVIDER_SUBMIT_SHAPES)
        return tuple(dict.fromkeys((*self.submit_paths, *shapes)))

    @property
    def outputs_field(self) -> str | None:
        """The body field that sets the number of images, if any."""
        return self.outputs.field if self.outputs is not None else None

    def image_input(self, field: str) -> ImageInputSpec | None:
        """The limits of ``field`` when it takes input images."""
        for spec in self.image_inputs:
            if spec.field == field:
                return spec
        return None


def model_spec(model: str) -> ModelSpec:
    """The spec of ``model`` (``provider/model``); raises like :func:`load_model`."""
    return spec_of(load_model(model))


def spec_of(schema: ModelSchema) -> ModelSpec:
    """The spec of an already loaded model schema."""
    ext = schema.extension
    return ModelSpec(
        id=schema.name,
        provider=schema.name.partition("/")[0],
        task_type=ext.task_type,
        submit_paths=tuple(
            render_submit_path(t, schema.name, ext.task_type) for t in ext.submit_paths
        ),
        outputs=ext.outputs,
        image_inputs=ext.image_inputs,
        price=ext.price,
        validator=schema,
        file=schema.file,
    )


def all_specs() -> list[ModelSpec]:
    """The spec of every available model, sorted by id."""
    return [model_spec(name) for name in available_models()]


def _with_defaults(spec: ModelSpec, body: Mapping[str, Any]) -> dict[str, Any]:
    return {**spec.validator.defaults, **body}


def expected_images(spec: ModelSpec, body: Mapping[str, Any]) -> int:
    """Images one task of ``body`` is expected to return (an upper bound in batch modes).

    The outputs field's value when the body sets it, else the model's default; 1 when
    the model has no outputs field or its ``when`` condition does not hold.
    """
    outputs = spec.outputs
    if outputs is None:
        return 1
    full = _with_defaults(spec, body)
    if outputs.when is not None and not PriceRule(outputs.when, 0).matches(full):
        return 1
    value = body.get(outputs.field, outputs.default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        return outputs.default
    return value


def list_price(spec: ModelSpec, body: Mapping[str, Any]) -> float | None:
    """List price (USD) of one task of ``body``: per-image price x expected images.

    None when the model's price, or the price for this body, is unknown.
    """
    if spec.price is None:
        return None
    full = _with_defaults(spec, body)
    for rule in spec.price:
        if rule.matches(full):
            return rule.usd * expected_images(spec, body)
    return None


_LIMIT_KEYS = (
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "multipleOf",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "pattern",
)


def describe(spec: ModelSpec) -> dict[str, Any]:
    """A JSON-ready summary of a model: what ``batchgen models`` lists."""
    price: list[dict[str, Any]] | None = None
    if spec.price is not None:
        price = [{"when": dict(rule.when), "usd": rule.usd} for rule in spec.price]
    return {
        "id": spec.id,
        "provider": spec.provider,
        "task_type": spec.task_type,
        "submit_paths": list(spec.submit_paths),
        "outputs": (
            None
            if spec.outputs is None
            else {
                "field": spec.outputs.field,
                "default": spec.outputs.default,
                "when": dict(spec.outputs.when) if spec.outputs.when else None,
            }
        ),
        "image_inputs": {
            image.field: {
                "min": image.min_count,
                "max": image.max_count,
                "max_bytes": image.max_bytes,
                "formats": list(image.formats) if image.formats is not None else None,
                "data_uri": image.data_uri,
            }
            for image in spec.image_inputs
        },
        "price_per_image_usd": price,
        "file": str(spec.file),
    }


def describe_fields(spec: ModelSpec) -> list[dict[str, Any]]:
    """Every body field: name, type, required, default, enum, limits, description."""
    schema = spec.validator
    required = set(schema.required)
    fields = []
    for name, raw in schema.properties.items():
        sub: dict[str, Any] = raw if isinstance(raw, dict) else {}
        kind = sub.get("type", "any")
        items = sub.get("items")
        if kind == "array" and isinstance(items, dict) and "type" in items:
            kind = f"array of {items['type']}"
        entry: dict[str, Any] = {"name": name, "type": kind, "required": name in required}
        if "default" in sub:
            entry["default"] = sub["default"]
        elif spec.outputs is not None and spec.outputs.field == name:
            entry["default"] = spec.outputs.default
        if "enum" in sub:
            entry["enum"] = list(sub["enum"])
        limits = {key: sub[key] for key in _LIMIT_KEYS if key in sub}
        if limits:
            entry["limits"] = limits
        image = spec.image_input(name)
        if image is not None:
            entry["images"] = describe(spec)["image_inputs"][name]
        entry["description"] = str(sub.get("description", ""))
        fields.append(entry)
    return fields
