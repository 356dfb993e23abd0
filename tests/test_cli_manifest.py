"""`batchgen validate` and `batchgen plan`: exit codes, text and --json output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from batchgen.cli import main

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = str(REPO / "manifests" / "example.yaml")
NIGHTLY = str(REPO / "manifests" / "nightly.yaml")


def write(tmp_path: Path, text: str, name: str = "m.yaml") -> str:
    path = tmp_path / name
    path.write_text("version: 1\nmodel: openai/gpt-image-1.5\n" + text, encoding="utf-8")
    return str(path)


def test_validate_valid_manifests_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", EXAMPLE, NIGHTLY]) == 0
    out = capsys.readouterr().out
    assert "example.yaml: valid (12 jobs)" in out
    assert "nightly.yaml: valid" in out


def test_validate_reports_every_error_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = write(tmp_path, "jobs:\n  - prompt: a fox\n    qualty: high\n    size: 1024x1000\n")
    assert main(["validate", EXAMPLE, bad]) == 2
    err = capsys.readouterr().err
    assert "m.yaml:5:5: error: jobs[0].qualty: unknown key 'qualty'" in err
    assert "did you mean 'quality'?" in err
    assert "m.yaml:6:11: error: jobs[0].size: size '1024x1000' is not allowed" in err
    assert "invalid (2 errors)" in err


def test_validate_json_gives_one_document(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = write(tmp_path, "jobs:\n  - prompt: '{x}'\n")
    assert main(["validate", "--json", EXAMPLE, bad]) == 2
    doc = json.loads(capsys.readouterr().out)
    assert doc["valid"] is False
    first, second = doc["manifests"]
    assert first["valid"] is True
    assert first["jobs"] == 12
    assert second["valid"] is False
    (error,) = second["errors"]
    assert error["line"] == 4
    assert error["path"] == "jobs[0].prompt"
    assert "unknown placeholder {x}" in error["message"]


def test_validate_warnings_do_not_fail(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "jobs:\n  - prompt: a fox\n    matrix: {mood: [calm, wild]}\n")
    assert main(["validate", path]) == 0
    captured = capsys.readouterr()
    assert "warning: jobs[0].matrix.mood: unused template variable 'mood'" in captured.err
    assert "valid (2 jobs)" in captured.out


def test_max_jobs_option_refuses_bigger_manifests(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", "--max-jobs", "11", EXAMPLE]) == 2
    assert "expands to 12 jobs" in capsys.readouterr().err
    assert main(["plan", "--max-jobs", "12", EXAMPLE]) == 0


def test_missing_manifest_is_a_message_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["validate", str(tmp_path / "nope.yaml")]) == 2
    assert "nope.yaml: error: manifest file not found" in capsys.readouterr().err


def test_plan_prints_counts_run_dir_and_samples(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", EXAMPLE]) == 0
    out = capsys.readouterr().out
    assert "jobs:     12" in out
    assert "openai/gpt-image-1.5" in out
    assert "size: 1024x1024: 9, 1536x1024: 3" in out
    assert "example-" in out
    assert "sample bodies:" in out


def test_plan_json_has_counts_by_model_and_field(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "--json", NIGHTLY]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["total_jobs"] == 320
    assert plan["by_model"] == {"openai/gpt-image-1.5": {"jobs": 320, "expected_images": 320}}
    assert plan["expected_images"] == 320
    assert plan["by_field"]["quality"]["values"] == {"medium": 300, "high": 20}
    assert plan["by_field"]["prompt"]["distinct"] == 160
    assert plan["duplicates"]["bodies"] == 0
    assert plan["run_dir"].endswith(f"nightly-products-{__import__('datetime').date.today()}")
    assert len(plan["samples"]) == 3
    assert sum(plan["by_group"].values()) == 320


def test_plan_warns_about_identical_bodies(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, "jobs:\n  - prompt: a fox\n  - prompt: a fox\n    repeat: 2\n")
    assert main(["plan", path]) == 0
    out = capsys.readouterr().out
    assert "warning: 1 jobs have a body identical to an earlier job" in out
    assert main(["plan", "--json", path]) == 0
    assert json.loads(capsys.readouterr().out)["duplicates"]["bodies"] == 1


def test_plan_of_an_invalid_manifest_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, "jobs: []\n")
    assert main(["plan", path]) == 2
    assert "error: jobs: jobs is a list" in capsys.readouterr().err
    assert main(["plan", "--json", path]) == 2
    assert json.loads(capsys.readouterr().out)["valid"] is False
