"""The ``x-batchgen`` block of a model schema, parsed into typed values.

:func:`parse_extension` checks a block against ``schemas/x-batchgen.schema.json``
and returns an :class:`Extension`; a block that does not conform raises
:class:`ValueError` whose text says what is wrong. The parsed values are plain,
immutable data: nothing here reads image files or talks to the API.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator

__all__ = [
    "Extension",
    "ImageInputSpec",
    "OutputsSpec",
    "PriceRule",
    "parse_extension",
]


@dataclass(frozen=True)
class ImageInputSpec:
    """A body field that takes input images, and its limits (None: not documented)."""

    field: str
    min_count: int
    max_count: int
    max_bytes: int | None
    formats: tuple[str, ...] | None
    data_uri: bool  # base64 data URIs accepted (so local files can be sent)


@dataclass(frozen=True)
class OutputsSpec:
    """The body field that sets how many images a task returns, and its default."""

    field: str
    default: int
    when: Mapping[str, Any] | None = None  # the field counts only with these body values


@dataclass(frozen=True)
class PriceRule:
    """List price per image (USD) for bodies whose fields match ``when``."""

    when: Mapping[str, Any]
    usd: float

    def matches(self, body: Mapping[str, Any]) -> bool:
        """True when every ``when`` field has that value (or one of a listed set)."""
        for key, wanted in self.when.items():
            value = body.get(key)
            if isinstance(wanted, list) and not isinstance(value, list):
                if value not in wanted:
                    return False
            elif value != wanted:
                return False
        return True


@dataclass(frozen=True)
class Extension:
    """Everything batchgen reads from a model schema's ``x-batchgen`` block."""

    task_type: str
    submit_paths: tuple[str, ...]
    outputs: OutputsSpec | None
    image_inputs: tuple[ImageInputSpec, ...]
    price: tuple[PriceRule, ...] | None


@functools.lru_cache(maxsize=1)
def _validator(path: Path) -> Draft202012Validator:
    return Draft202012Validator(json.loads(path.read_text(encoding="utf-8")))


def parse_extension(raw: Any, meta_schema: Path) -> Extension:
    """Check ``raw`` (the ``x-batchgen`` value) against ``meta_schema`` and parse it."""
    errors = sorted(
        _validator(meta_schema).iter_errors(raw), key=lambda e: [str(p) for p in e.path]
    )
    if errors:
        first = errors[0]
        where = "x-batchgen" + "".join(f".{p}" for p in first.absolute_path)
        raise ValueError(f"{where}: {first.message}")
    outputs_raw = raw["outputs"]
    outputs = None
    if outputs_raw is not None:
        outputs = OutputsSpec(outputs_raw["field"], outputs_raw["default"], outputs_raw.get("when"))
    inputs = tuple(
        ImageInputSpec(
            field=name,
            min_count=spec["min"],
            max_count=spec["max"],
            max_bytes=spec["max_bytes"],
            formats=tuple(spec["formats"]) if spec["formats"] is not None else None,
            data_uri=spec["data_uri"],
        )
        for name, spec in raw["image_inputs"].items()
    )
    price = None
    if raw["price"] is not None:
        price = tuple(PriceRule(r["when"], float(r["usd"])) for r in raw["price"]["rules"])
    return Extension(
        task_type=raw["task_type"],
        submit_paths=tuple(raw["submit_paths"]),
        outputs=outputs,
        image_inputs=inputs,
        price=price,
    )
