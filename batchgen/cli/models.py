"""`batchgen models [--json]` and `batchgen models show ID [--json]`: the model catalogue."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from batchgen.cli.validate import add_schemas
from batchgen.errors import ExitCode
from batchgen.manifest.catalogue import SchemaFileError, UnknownModelError
from batchgen.manifest.modelspec import all_specs, describe, describe_fields, model_spec


def add_parser(subparsers: Any) -> None:
    """Register `models`."""
    parser = subparsers.add_parser(
        "models",
        help="list the models batchgen knows, or show one model's fields",
        description="List the model catalogue (`models`), or one model's body fields "
        "(`models show provider/model`).",
    )
    parser.add_argument("action", nargs="?", choices=("show",), help="show one model")
    parser.add_argument("model", nargs="?", metavar="ID", help="provider/model, with show")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    add_schemas(parser)
    parser.set_defaults(handler=handle)


def _money(price: list[dict[str, Any]] | None) -> str:
    if not price:
        return "unknown"
    amounts = sorted({rule["usd"] for rule in price})
    if len(amounts) == 1:
        return f"${amounts[0]:g}/image"
    return f"${amounts[0]:g}-{amounts[-1]:g}/image"


def _inputs(info: dict[str, Any]) -> str:
    parts = []
    for name, image in info["image_inputs"].items():
        count = f"{image['min']}-{image['max']}"
        parts.append(f"{name}[{count}]" + ("" if image["data_uri"] else " https only"))
    return ", ".join(parts) or "-"


def _outputs(info: dict[str, Any]) -> str:
    outputs = info["outputs"]
    if outputs is None:
        return "1 image"
    text = f"{outputs['field']} (default {outputs['default']})"
    if outputs["when"]:
        text += " if " + ", ".join(f"{k}={v}" for k, v in outputs["when"].items())
    return text


def handle(args: argparse.Namespace) -> int:
    """Print the catalogue or one model; exit 2 on an unknown model or a broken schema."""
    try:
        if args.action == "show":
            if not args.model:
                print(
                    "batchgen models show: give a model, e.g. openai/gpt-image-1.5", file=sys.stderr
                )
                return ExitCode.USAGE
            return _show(args.model, as_json=args.json)
        if args.model:
            print("batchgen models: did you mean `models show ID`?", file=sys.stderr)
            return ExitCode.USAGE
        infos = [describe(spec) for spec in all_specs()]
    except (UnknownModelError, SchemaFileError) as exc:
        print(f"batchgen models: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    if args.json:
        print(json.dumps({"models": infos}, indent=2, ensure_ascii=False))
        return ExitCode.OK
    rows = [("model", "type", "outputs", "image inputs", "list price")]
    rows += [
        (i["id"], i["task_type"], _outputs(i), _inputs(i), _money(i["price_per_image_usd"]))
        for i in infos
    ]
    widths = [max(len(row[c]) for row in rows) for c in range(4)]
    for row in rows:
        print(
            "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)) + "  " + row[4]
        )
    return ExitCode.OK


def _show(model: str, *, as_json: bool) -> int:
    spec = model_spec(model)
    info = describe(spec)
    fields = describe_fields(spec)
    if as_json:
        print(json.dumps({**info, "fields": fields}, indent=2, ensure_ascii=False))
        return ExitCode.OK
    print(f"{info['id']} ({info['task_type']})")
    print(f"  submit paths: {', '.join(info['submit_paths'])}")
    print(f"  outputs:      {_outputs(info)}")
    print(f"  list price:   {_money(info['price_per_image_usd'])}")
    print(f"  schema:       {info['file']}")
    description = spec.validator.schema.get("description")
    if description:
        print(f"  notes:        {description}")
    print("fields:")
    for field in fields:
        flags = ["required"] if field["required"] else []
        if "default" in field:
            flags.append(f"default {json.dumps(field['default'])}")
        if "enum" in field:
            flags.append("one of " + ", ".join(str(v) for v in field["enum"]))
        for key, value in field.get("limits", {}).items():
            flags.append(f"{key} {value}")
        if "images" in field:
            image = field["images"]
            flags.append(
                f"images {image['min']}-{image['max']}"
                + (f", max {image['max_bytes']} bytes" if image["max_bytes"] else "")
                + (", local files ok" if image["data_uri"] else ", https URLs only")
            )
        print(f"  {field['name']} ({field['type']}): {'; '.join(flags) or '-'}")
        if field["description"]:
            print(f"      {field['description']}")
    return ExitCode.OK
