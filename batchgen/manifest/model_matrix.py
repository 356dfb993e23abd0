"""``model`` as a matrix key: one job group per model, and what a model refuses.

:func:`split_by_model` turns a group whose ``matrix`` has a ``model`` list into one
group per model (same prompts and matrix, the model set, its ``exclude`` rules
narrowed to that model), so every body is checked against its own model's schema.
:func:`refused_field` says why a model refuses a field, naming the fields it takes
for the same purpose when it has such fields.
"""

from __future__ import annotations

from typing import Any

from batchgen.manifest.catalogue import FieldProblem, ModelSchema, type_name
from batchgen.manifest.checks import Ctx
from batchgen.manifest.diagnostics import did_you_mean, quoted
from batchgen.manifest.yaml_reader import PathT, path_text

__all__ = ["refused_field", "split_by_model"]

# Fields that play the same part in different models' bodies.
_SAME_PURPOSE = (
    ("size", "resolution", "aspect_ratio", "width", "height"),
    ("images", "image", "image_list"),
    ("n", "sequential_image_generation_max_images"),
    ("negative_prompt",),
    ("prompt_extend", "prompt_optimizer", "optimize_prompt_mode"),
)


def refused_field(model: ModelSchema, key: str) -> FieldProblem:
    """The problem of setting ``key`` in a body of ``model`` (a closed schema without it)."""
    known = list(model.properties)
    for family in _SAME_PURPOSE:
        if key in family:
            takes = [f for f in family if f in known]
            if takes:
                names = " and ".join(", ".join(f"'{t}'" for t in takes).rsplit(", ", 1))
                return FieldProblem(f"field '{key}' is not accepted", hint=f"it takes {names}")
    return FieldProblem(
        f"field '{key}' is not accepted",
        expected="one of its fields: " + ", ".join(known),
        hint=did_you_mean(key, known),
    )


def _matches(wanted: Any, model: str) -> bool:
    return model in wanted if isinstance(wanted, list) else wanted == model


def split_by_model(
    ctx: Ctx, gpath: PathT, raw: dict[str, Any]
) -> list[tuple[dict[str, Any], PathT, str]]:
    """One ``(group, path of its model value, label)`` per model of ``matrix.model``.

    Problems with the model list itself (not a list, not text, a model also set in the
    group, an exclude rule naming a model not in the list) are reported to ``ctx``.
    """
    where = path_text(gpath)
    matrix: dict[str, Any] = raw["matrix"]
    mpath: PathT = (*gpath, "matrix", "model")
    models = matrix["model"]
    if "model" in raw:
        ctx.error(mpath, "'model' is set both in the group and in its matrix", at_key=True,
                  hint="keep one of them")  # fmt: skip
        return []
    if not isinstance(models, list) or not models:
        ctx.error(mpath, f"matrix.model is {type_name(models)}",
                  expected="a non-empty list of models, e.g. [openai/gpt-image-1.5]")  # fmt: skip
        return []
    rest = {k: v for k, v in matrix.items() if k != "model"}
    rules = raw.get("exclude")
    if isinstance(rules, list):
        names = [m for m in models if isinstance(m, str)]
        for i, rule in enumerate(rules):
            wanted = rule.get("model") if isinstance(rule, dict) else None
            for value in wanted if isinstance(wanted, list) else [wanted]:
                if value is not None and value not in names:
                    ctx.error((*gpath, "exclude", i, "model"),
                              f"exclude value {quoted(value)} is not in matrix.model, so it "
                              "never matches", hint=did_you_mean(value, names))  # fmt: skip
    out = []
    for j, model in enumerate(models):
        sub = {k: v for k, v in raw.items() if k not in ("matrix", "exclude")}
        sub["model"] = model
        if rest:
            sub["matrix"] = rest
        if isinstance(rules, list):
            kept: list[Any] = []
            excluded = False
            for rule in rules:
                if not isinstance(rule, dict) or "model" not in rule:
                    kept.append(rule)
                elif _matches(rule["model"], model):
                    narrowed = {k: v for k, v in rule.items() if k != "model"}
                    if narrowed:
                        kept.append(narrowed)
                    else:
                        excluded = True
            if excluded:
                continue
            if kept:
                sub["exclude"] = kept
        elif "exclude" in raw:
            sub["exclude"] = raw["exclude"]
        out.append((sub, (*mpath, j), f"{where} (model {model})"))
    return out
