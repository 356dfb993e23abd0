"""Loading manifests: the examples, job IDs, limits, run directories, schema discovery."""

from __future__ import annotations

import datetime
import hashlib
import shutil
from pathlib import Path

import pytest
import yaml
from jsonschema import Draft202012Validator

from batchgen.manifest import catalogue as schemas
from batchgen.manifest.loader import ManifestError, load_manifest
from batchgen.manifest.types import Limits, canonical_json, job_id_for
from batchgen.manifest.units import parse_duration, parse_rate

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "manifests"


@pytest.mark.parametrize("name", ["example.yaml", "nightly.yaml"])
def test_example_manifests_are_valid_and_count_matches_expansion(name: str) -> None:
    manifest = load_manifest(EXAMPLES / name)
    jobs = list(manifest.iter_jobs())
    assert manifest.count() == len(jobs)
    assert manifest.warnings == []
    model = schemas.load_model("openai/gpt-image-1.5")
    for job in jobs:
        assert model.validate(job.body) == []
        assert job.job_id == job_id_for(job.model, job.body, job.repeat_index)
    assert len({job.job_id for job in jobs}) == len(jobs)


def test_example_sizes_match_their_descriptions() -> None:
    assert load_manifest(EXAMPLES / "example.yaml").count() == 12
    assert 200 <= load_manifest(EXAMPLES / "nightly.yaml").count() <= 500


def test_expansion_order_is_deterministic() -> None:
    first = [j.job_id for j in load_manifest(EXAMPLES / "nightly.yaml").iter_jobs()]
    second = [j.job_id for j in load_manifest(EXAMPLES / "nightly.yaml").iter_jobs()]
    assert first == second


def test_bodies_get_schema_defaults_then_manifest_defaults_then_group_fields(
    tmp_path: Path,
) -> None:
    path = tmp_path / "m.yaml"
    path.write_text(
        "version: 1\nmodel: openai/gpt-image-1.5\ndefaults: {quality: high, size: 1024x1536}\n"
        "jobs:\n  - prompt: a fox\n    size: 1536x1024\n",
        encoding="utf-8",
    )
    (job,) = load_manifest(path).iter_jobs()
    assert job.body == {
        "prompt": "a fox",
        "size": "1536x1024",
        "quality": "high",
        "background": "auto",
    }
    assert job.group == "jobs[0]"
    assert job.repeat_index == 0


def test_job_id_is_sha256_of_model_canonical_body_and_repeat_index() -> None:
    body = {"prompt": "ü", "size": "1024x1024"}
    text = f"m/x\n{canonical_json(body)}\n2"
    assert canonical_json(body) == '{"prompt":"ü","size":"1024x1024"}'
    assert job_id_for("m/x", body, 2) == hashlib.sha256(text.encode()).hexdigest()[:16]


@pytest.mark.parametrize(
    ("text", "seconds"),
    [(4, 4.0), ("4/s", 4.0), ("240/m", 4.0), ("1/h", 1 / 3600), ("0.5", 0.5), (" 60 / min ", 1.0)],
)
def test_rates_parse_to_submissions_per_second(text: object, seconds: float) -> None:
    assert parse_rate(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [(30, 30.0), ("90s", 90.0), ("30m", 1800.0), ("2h", 7200.0), ("1h30m", 5400.0), ("45", 45.0)],
)
def test_durations_parse_to_seconds(text: object, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["fast", "4/day", 0, -1, True, "", "1h30x"])
def test_bad_rates_and_durations_are_refused(bad: object) -> None:
    with pytest.raises(ValueError, match="found"):
        parse_rate(bad)
    with pytest.raises(ValueError, match="found"):
        parse_duration(bad)


def test_limits_come_from_the_manifest(tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    path.write_text(
        "version: 1\nmodel: openai/gpt-image-1.5\n"
        "limits: {concurrency: 3, rate: 120/m, retries: 0, timeout: 2h, resubmit_unknown: no}\n"
        "jobs: [{prompt: x}]\n",
        encoding="utf-8",
    )
    assert load_manifest(path).limits == Limits(3, 2.0, 0, 7200.0, False)


def test_run_dir_is_relative_to_the_manifest_or_the_current_directory(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "m.yaml"
    path.parent.mkdir()
    path.write_text(
        "version: 1\nname: nightly\nmodel: openai/gpt-image-1.5\noutput: ../out/{name}-{date}\n"
        "jobs: [{prompt: x}]\n",
        encoding="utf-8",
    )
    day = datetime.date(2026, 11, 24)
    assert load_manifest(path).run_dir(day) == tmp_path / "out" / "nightly-2026-11-24"
    path.write_text(
        "version: 1\nmodel: openai/gpt-image-1.5\njobs: [{prompt: x}]\n", encoding="utf-8"
    )
    assert load_manifest(path).run_dir(day) == Path("output/m-2026-11-24")


def test_over_the_job_limit_is_refused_with_its_count(tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    path.write_text(
        "version: 1\nmodel: openai/gpt-image-1.5\n"
        "jobs: [{prompt: '{a}', matrix: {a: [1, 2, 3]}, repeat: 4}]\n",
        encoding="utf-8",
    )
    assert load_manifest(path, max_jobs=12).count() == 12
    with pytest.raises(ManifestError, match="expands to 12 jobs"):
        load_manifest(path, max_jobs=11)


def test_schema_loader_finds_schemas_inside_an_installed_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = tmp_path / "site-packages" / "batchgen"
    shutil.copytree(REPO / "schemas", package / "schemas")
    (package / "schemas" / "models" / "acme").mkdir()
    shutil.copy(
        REPO / "schemas" / "models" / "openai" / "gpt-image-1.5.json",
        package / "schemas" / "models" / "acme" / "painter-2.json",
    )
    monkeypatch.setattr(schemas, "__file__", str(package / "manifest" / "catalogue.py"))
    schemas._load_model.cache_clear()
    try:
        assert schemas.schemas_dir() == package / "schemas"
        models = schemas.available_models()
        assert "acme/painter-2" in models
        assert "openai/gpt-image-1.5" in models
        assert schemas.load_model("acme/painter-2").name == "acme/painter-2"
        assert schemas.manifest_schema()["title"] == "batchgen manifest"
    finally:
        schemas._load_model.cache_clear()


def test_unknown_model_lists_available_models_and_suggests_one() -> None:
    with pytest.raises(schemas.UnknownModelError) as caught:
        schemas.load_model("openai/gpt-image-15")
    assert "openai/gpt-image-1.5" in str(caught.value)
    assert "did you mean 'openai/gpt-image-1.5'?" in str(caught.value)


def test_model_schema_gives_submit_path_and_defaults() -> None:
    model = schemas.load_model("openai/gpt-image-1.5")
    assert model.submit_path == "/api/v1/openai/gpt-image-1.5/async"
    assert model.defaults == {"size": "1024x1024", "quality": "low", "background": "auto"}
    assert model.validate({"prompt": "x"}) == []
    (message,) = model.validate({"prompt": "x", "size": "1536x1000"})
    assert "did you mean '1536x1024'?" in message


@pytest.mark.parametrize("name", ["example.yaml", "nightly.yaml"])
def test_examples_match_the_published_manifest_schema(name: str) -> None:
    document = yaml.safe_load((EXAMPLES / name).read_text(encoding="utf-8"))
    Draft202012Validator(schemas.manifest_schema()).validate(document)
