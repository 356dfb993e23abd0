"""What a manifest would do, without sending anything: counts, duplicates, samples."""

from __future__ import annotations

import datetime
import json
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from batchgen.manifest.bill import BillBuilder, format_bill
from batchgen.manifest.compiled import Manifest
from batchgen.manifest.diagnostics import short
from batchgen.manifest.modelspec import ModelSpec, expected_images, model_spec

__all__ = ["build_plan", "format_plan"]

_MAX_DISTINCT = 1000  # per field, values counted one by one up to this many
_SHOWN_VALUES = 6
_DUPLICATE_EXAMPLES = 3


def _value_key(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def build_plan(
    manifest: Manifest,
    *,
    today: datetime.date,
    samples: int = 3,
    known: Mapping[str, tuple[str, int]] | None = None,
    retries: int | None = None,
    run_dir: Path | None = None,
) -> dict[str, Any]:
    """Expand every job once and summarise it as a JSON-ready dict.

    Keys: ``manifest``, ``name``, ``total_jobs``, ``expected_images`` (images the jobs
    should return: each body's outputs field or its model's default), ``by_group``,
    ``by_model`` (per model: ``jobs`` and ``expected_images``),
    ``by_field`` (per body field: ``values`` counts, or ``distinct`` when there are
    many), ``duplicates`` (identical bodies that would run more than once without
    ``repeat``), ``run_dir``, ``limits``, ``samples`` and ``warnings``.

    The bill (:mod:`batchgen.manifest.bill`): ``new_jobs``, ``done_jobs``,
    ``new_expected_images``, ``max_billable_submissions``, ``estimated_cost_usd`` and
    ``worst_case_cost_usd`` (None when a price is unknown), and the whole of it, by model
    too, under ``bill``.  ``known`` maps the job IDs already in the run
    directory to their ``(state, attempts)``; ``retries`` overrides the manifest's.
    """
    bill = BillBuilder(
        manifest.prices, retries=manifest.limits.retries if retries is None else retries
    )
    known = known or {}
    by_model: Counter[str] = Counter()
    images: Counter[str] = Counter()
    specs: dict[str, ModelSpec] = {}
    fields: dict[str, Counter[str]] = {}
    overflow: set[str] = set()
    seen: dict[str, str] = {}  # body id (repeat 0) -> group
    duplicate_jobs = 0
    duplicate_examples: list[dict[str, Any]] = []
    sample_jobs: list[dict[str, Any]] = []
    sampled_groups: set[str] = set()
    spare: list[dict[str, Any]] = []  # the first jobs, to fill up the samples
    total = 0
    for job in manifest.iter_jobs():
        total += 1
        by_model[job.model] += 1
        spec = specs.get(job.model)
        if spec is None:
            spec = specs[job.model] = model_spec(job.model)
        images[job.model] += expected_images(spec, job.body)
        state, attempts = known.get(job.job_id, (None, 0))
        bill.add(job.model, job.body, state, attempts)
        for name, value in job.body.items():
            counter = fields.setdefault(name, Counter())
            if name in overflow:
                continue
            key = _value_key(value)
            if key not in counter and len(counter) >= _MAX_DISTINCT:
                overflow.add(name)
                continue
            counter[key] += 1
        if job.repeat_index == 0:
            first = seen.get(job.job_id)
            if first is not None:
                duplicate_jobs += 1
                if len(duplicate_examples) < _DUPLICATE_EXAMPLES:
                    duplicate_examples.append(
                        {"job_id": job.job_id, "groups": [first, job.group], "body": job.body}
                    )
            else:
                seen[job.job_id] = job.group
        first_of_group = job.group not in sampled_groups and len(sampled_groups) < samples
        if first_of_group or len(spare) < samples:
            entry = {"job_id": job.job_id, "model": job.model, "group": job.group, "body": job.body}
            if first_of_group:
                sampled_groups.add(job.group)
                sample_jobs.append(entry)
            else:
                spare.append(entry)
    sample_jobs = (sample_jobs + spare)[:samples]
    by_field: dict[str, Any] = {}
    for name, counter in fields.items():
        if name in overflow or len(counter) > _SHOWN_VALUES:
            by_field[name] = {
                "distinct": len(counter),
                "more": name in overflow,
                "top": dict(counter.most_common(3)),
            }
        else:
            by_field[name] = {"values": dict(counter.most_common())}
    costs = bill.bill()
    return {
        "manifest": str(manifest.path),
        "name": manifest.name,
        "total_jobs": total,
        "expected_images": sum(images.values()),
        "by_group": manifest.group_counts(),
        "new_jobs": costs["new_jobs"],
        "done_jobs": costs["done_jobs"],
        "new_expected_images": costs["expected_images"],
        "max_billable_submissions": costs["max_billable_submissions"],
        "estimated_cost_usd": costs["estimated_cost_usd"],
        "worst_case_cost_usd": costs["worst_case_cost_usd"],
        "bill": costs,
        "by_model": {
            model: {"jobs": count, "expected_images": images[model]}
            for model, count in by_model.items()
        },
        "by_field": by_field,
        "duplicates": {
            "bodies": duplicate_jobs,
            "examples": duplicate_examples,
        },
        "run_dir": str(run_dir if run_dir is not None else manifest.run_dir(today)),
        "limits": asdict(manifest.limits),
        "samples": sample_jobs,
        "warnings": [d.to_dict() for d in manifest.warnings],
        "warning_lines": [d.format() for d in manifest.warnings],
    }


def format_plan(plan: dict[str, Any]) -> str:
    """The plan as text for a terminal."""
    lines = [
        f"manifest: {plan['manifest']} (name {plan['name']})",
        f"jobs:     {plan['total_jobs']:,}",
        f"images:   {plan['expected_images']:,} expected",
        f"run dir:  {plan['run_dir']}",
    ]
    limits = plan["limits"]
    lines.append("limits:   " + ", ".join(f"{k}={v}" for k, v in limits.items()))
    lines += format_bill(plan["bill"])
    lines.append("")
    lines.append("by group:")
    lines += [f"  {group:<12} {count:>10,}" for group, count in plan["by_group"].items()]
    lines.append("by model:                              jobs     images")
    lines += [
        f"  {model:<32} {info['jobs']:>10,} {info['expected_images']:>10,}"
        for model, info in plan["by_model"].items()
    ]
    lines.append("by body field:")
    for name, info in plan["by_field"].items():
        if "values" in info:
            shown = ", ".join(f"{short(v)}: {c:,}" for v, c in info["values"].items())
            lines.append(f"  {name}: {shown}")
        else:
            more = "more than " if info["more"] else ""
            lines.append(f"  {name}: {more}{info['distinct']:,} distinct values")
    dup = plan["duplicates"]
    if dup["bodies"]:
        lines.append("")
        lines.append(
            f"warning: {dup['bodies']:,} jobs have a body identical to an earlier job and would "
            "run it again (use repeat: N to ask for several images of one body on purpose)"
        )
        for example in dup["examples"]:
            groups = " and ".join(dict.fromkeys(example["groups"]))
            lines.append(f"  {example['job_id']} in {groups}: {short(example['body'], 90)}")
    for warning in plan["warning_lines"]:
        lines.append(warning)
    lines.append("")
    lines.append("sample bodies:")
    for sample in plan["samples"]:
        body = json.dumps(sample["body"], ensure_ascii=False)
        lines.append(f"  {sample['group']} {sample['job_id']} {sample['model']}: {body}")
    return "\n".join(lines)
