"""Prices: what one task of a body is estimated to cost, from the manifest's ``prices:`` and the
model's schema.

:class:`PriceBook` answers :meth:`PriceBook.task_price` (USD, or ``None`` when unknown, never 0
for "unknown"): the first matching rule of the manifest's ``prices:`` for the model, else the
first matching rule of the model schema's list price, times the images the task is expected
to return (:func:`batchgen.manifest.modelspec.expected_images`). :func:`parse_prices` checks the
``prices:`` key of a manifest. No I/O beyond reading model schemas.

``prices:`` maps a model to one USD price per image, or to a list of rules
``{when: {field: value-or-list}, usd: N}`` (``when`` may be left out: every body).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from batchgen.manifest.catalogue import type_name
from batchgen.manifest.checks import Ctx, resolve_model
from batchgen.manifest.extension import PriceRule
from batchgen.manifest.modelspec import ModelSpec, list_price, model_spec
from batchgen.manifest.yaml_reader import PathT

__all__ = ["PriceBook", "parse_prices"]

Rules = tuple[PriceRule, ...]


class PriceBook:
    """Task prices by model: the manifest's rules first, then the schema's list price."""

    def __init__(self, overrides: Mapping[str, Sequence[PriceRule]] | None = None) -> None:
        self.overrides: dict[str, Rules] = {m: tuple(r) for m, r in (overrides or {}).items()}
        self._specs: dict[str, ModelSpec | None] = {}

    def _spec(self, model: str) -> ModelSpec | None:
        if model not in self._specs:
            try:
                spec: ModelSpec | None = model_spec(model)
            except Exception:  # an unknown model (a state file from elsewhere): price unknown
                spec = None
            if spec is not None and model in self.overrides:
                rules = self.overrides[model] + (spec.price or ())
                spec = dataclasses.replace(spec, price=rules)
            self._specs[model] = spec
        return self._specs[model]

    def task_price(self, model: str, body: Mapping[str, Any]) -> float | None:
        """Estimated USD of one accepted task of ``body``; None when unknown."""
        spec = self._spec(model)
        return None if spec is None else list_price(spec, body)

    def to_json(self) -> dict[str, list[dict[str, Any]]]:
        """The overrides as JSON (stored in the run's settings, so a resume keeps them)."""
        return {
            model: [{"when": dict(rule.when), "usd": rule.usd} for rule in rules]
            for model, rules in self.overrides.items()
        }

    @classmethod
    def from_json(cls, data: Any) -> PriceBook:
        """The inverse of :meth:`to_json`; anything unreadable counts as no overrides."""
        overrides: dict[str, Rules] = {}
        if isinstance(data, Mapping):
            for model, rules in data.items():
                if isinstance(rules, list):
                    overrides[str(model)] = tuple(
                        PriceRule(dict(r.get("when") or {}), float(r["usd"]))
                        for r in rules
                        if isinstance(r, Mapping) and isinstance(r.get("usd"), (int, float))
                    )
        return cls(overrides)


def _usd(ctx: Ctx, path: PathT, value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        ctx.error(path, f"price is {type_name(value)}", expected="USD per image, e.g. 0.04")
        return None
    return float(value)


def _rule(ctx: Ctx, path: PathT, raw: Any) -> PriceRule | None:
    if not isinstance(raw, dict):
        ctx.error(path, f"price rule is {type_name(raw)}", expected="{when: {...}, usd: N}")
        return None
    for key in raw:
        if key not in ("when", "usd"):
            ctx.error((*path, key), f"unknown key {key!r} in a price rule", expected="when, usd")
    when = raw.get("when", {})
    if not isinstance(when, dict):
        ctx.error((*path, "when"), f"when is {type_name(when)}", expected="{field: value}")
        return None
    if "usd" not in raw:
        ctx.error(path, "price rule without usd", expected="usd: USD per image")
        return None
    usd = _usd(ctx, (*path, "usd"), raw["usd"])
    return None if usd is None else PriceRule(when, usd)


def parse_prices(ctx: Ctx, raw: Any) -> PriceBook:
    """Check the manifest's ``prices:`` (reporting through ``ctx``) and return its book."""
    if raw is None:
        return PriceBook()
    if not isinstance(raw, dict):
        ctx.error(("prices",), f"prices is {type_name(raw)}", expected="a mapping by model")
        return PriceBook()
    overrides: dict[str, Rules] = {}
    for model, value in raw.items():
        path: PathT = ("prices", model)
        schema = resolve_model(ctx, path, model)
        if schema is None:
            continue
        if isinstance(value, list):
            rules = [_rule(ctx, (*path, i), item) for i, item in enumerate(value)]
            overrides[schema.name] = tuple(r for r in rules if r is not None)
        else:
            usd = _usd(ctx, path, value)
            if usd is not None:
                overrides[schema.name] = (PriceRule({}, usd),)
    return PriceBook(overrides)
