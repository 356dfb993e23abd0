"""Models side by side: `model` as a matrix key, per-model validation and stable job IDs."""

from __future__ import annotations

from pathlib import Path

import pytest

from batchgen.manifest.diagnostics import ManifestError
from batchgen.manifest.loader import load_manifest
from batchgen.manifest.plan import build_plan
from batchgen.manifest.units import parse_rate


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "m.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def errors_of(path: Path) -> list[str]:
    with pytest.raises(ManifestError) as caught:
        load_manifest(path)
    return [d.format() for d in caught.value.diagnostics]


def test_job_ids_of_gpt_image_1_5_manifests_do_not_change(tmp_path: Path) -> None:
    # Computed by batchgen before the catalogue existed: resume depends on it.
    path = write(
        tmp_path,
        "version: 1\nmodel: openai/gpt-image-1.5\njobs:\n"
        "  - prompt: 'a {subject}, watercolor'\n"
        "    matrix: {subject: [red fox], size: [1536x1024]}\n"
        "    quality: medium\n",
    )
    [job] = list(load_manifest(path).iter_jobs())
    assert job.job_id == "f93248e8daadb251"


def test_a_model_matrix_runs_the_same_prompts_on_each_model(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "version: 1\njobs:\n  - prompt: 'a {thing}'\n    matrix:\n"
        "      model: [openai/gpt-image-1.5, alibaba/wan2.7-image, kling/kling-v2.1-t2i]\n"
        "      thing: [fox, cup]\n"
        "    exclude: [{model: kling/kling-v2.1-t2i, thing: cup}]\n",
    )
    manifest = load_manifest(path)
    jobs = list(manifest.iter_jobs())
    assert [j.model for j in jobs].count("alibaba/wan2.7-image") == 2
    assert [j.model for j in jobs].count("kling/kling-v2.1-t2i") == 1
    assert manifest.group_counts() == {"jobs[0]": 5}
    assert "quality" in jobs[0].body  # gpt-image-1.5's defaults, not wan's
    assert "quality" not in jobs[2].body
    plan = build_plan(manifest, today=__import__("datetime").date(2026, 1, 1))
    assert plan["by_model"]["alibaba/wan2.7-image"] == {"jobs": 2, "expected_images": 8}
    assert plan["expected_images"] == 2 + 8 + 1


def test_each_body_is_checked_against_its_own_model_and_errors_name_it(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "version: 1\njobs:\n  - prompt: a fox\n    size: 1024x1024\n"
        "    matrix: {model: [openai/gpt-image-1.5, kling/kling-image-o1]}\n",
    )
    [line] = errors_of(path)[:1]
    assert line.endswith(
        "jobs[0] (model kling/kling-image-o1): field 'size' is not accepted; "
        "it takes 'resolution' and 'aspect_ratio'"
    )


def test_an_unknown_model_in_a_matrix_gets_a_did_you_mean(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "version: 1\njobs:\n  - prompt: a fox\n"
        "    matrix: {model: [openai/gpt-image-1.5, kling/kling-imag-o1]}\n",
    )
    assert any("did you mean 'kling/kling-image-o1'?" in e for e in errors_of(path))


def test_a_bad_enum_value_suggests_the_closest_allowed_value(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "version: 1\nmodel: openai/gpt-image-1.5\njobs:\n  - prompt: a fox\n"
        "    matrix: {size: [1000x1000, 1536x1024]}\n",
    )
    [line] = [e for e in errors_of(path) if "error" in e][:1]
    assert "size '1000x1000' is not allowed" in line
    assert "did you mean '1024x1024'?" in line


def test_an_exclude_rule_naming_the_right_value_does_not_suggest_the_wrong_one(
    tmp_path: Path,
) -> None:
    path = write(
        tmp_path,
        "version: 1\nmodel: openai/gpt-image-1.5\njobs:\n  - prompt: a fox\n"
        "    matrix: {size: [1000x1000, 1536x1024], quality: [low, high]}\n"
        "    exclude: [{size: 1024x1024, quality: high}]\n",
    )
    errors = errors_of(path)
    assert any("did you mean '1024x1024'?" in e for e in errors)
    assert not any("did you mean '1000x1000'?" in e for e in errors)


@pytest.mark.parametrize(("text", "per_second"), [("20/sec", 20.0), ("20/min", 20 / 60)])
def test_rates_per_sec_and_per_min_are_accepted(text: str, per_second: float) -> None:
    assert parse_rate(text) == pytest.approx(per_second)
