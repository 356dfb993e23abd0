"""The simulated models: every model of the catalogue (:mod:`batchgen.manifest.catalogue`),
served at each submit-path shape the provider has used, its bodies validated by the
catalogue's own :class:`~batchgen.manifest.catalogue.ModelSchema` (the same check as
``batchgen validate``, so the simulator and the manifest checker never disagree)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from batchgen.manifest.catalogue import (
    ModelSchema,
    load_models_in,
    model_dirs,
)
from batchgen.manifest.modelspec import ModelSpec, spec_of
from batchgen.simulator.png import MAX_SIDE

__all__ = ["SimModel", "body_problems", "image_size", "load_models"]

_SIZE_RE = re.compile(r"^\s*(\d{1,5})\s*[xX*]\s*(\d{1,5})\s*$")


@dataclass(frozen=True)
class SimModel:
    """One simulated model."""

    name: str
    provider: str
    model_id: str
    submit_path: str  # the preferred one
    schema: ModelSchema
    default_size: str | None
    spec: ModelSpec


def _model_schemas(schema_dir: Path | None) -> list[ModelSchema]:
    """Every model with a body schema: the catalogue's, or those under ``schema_dir``."""
    dirs = model_dirs() if schema_dir is None else [schema_dir / "models"]
    return load_models_in(dirs)


def load_models(schema_dir: Path | None) -> dict[str, SimModel]:
    """The simulated models, keyed by every submit path they answer at."""
    by_path: dict[str, SimModel] = {}
    for schema in _model_schemas(schema_dir):
        spec = spec_of(schema)
        size = schema.properties.get("size", {}).get("default")
        model = SimModel(
            name=schema.name,
            provider=spec.provider,
            model_id=schema.name.partition("/")[2],
            submit_path=schema.submit_path,
            schema=schema,
            default_size=size if isinstance(size, str) else None,
            spec=spec,
        )
        for path in spec.submit_path_candidates:
            by_path.setdefault(path, model)
    return by_path


def body_problems(model: SimModel, body: object) -> list[str]:
    """Why ``body`` is not a valid request for ``model`` (the catalogue's messages), or
    ``[]``."""
    if not isinstance(body, Mapping):
        return ["the body must be a JSON object"]
    return model.schema.validate(body)


def image_size(model: SimModel, body: Mapping[str, Any]) -> tuple[int, int]:
    """The size of the images a body asks for (``size`` or ``width``/``height``), clamped."""
    size = body.get("size", model.default_size)
    if isinstance(size, str) and (match := _SIZE_RE.match(size)):
        width, height = int(match[1]), int(match[2])
    else:
        width, height = body.get("width", 1024), body.get("height", 1024)
        if not isinstance(width, int) or not isinstance(height, int):
            width, height = 1024, 1024
    return min(max(width, 1), MAX_SIDE), min(max(height, 1), MAX_SIDE)
