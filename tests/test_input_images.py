"""Input images: file: references checked at load, hashed into the job ID, sent as data URIs."""

from __future__ import annotations

import base64
import json
import shutil
import sqlite3
from pathlib import Path

import pytest

from batchgen.cli import main
from batchgen.manifest.diagnostics import ManifestError
from batchgen.manifest.inputs import _DataUriCache, materialize_body
from batchgen.manifest.loader import load_manifest
from batchgen.simulator.png import png_bytes

REPO = Path(__file__).resolve().parent.parent
PNG = png_bytes(8, 8, alpha=False, text="in")


def manifest(tmp_path: Path, images: str, model: str = "kling/kling-image-o1") -> Path:
    path = tmp_path / "m.yaml"
    path.write_text(
        f"version: 1\nmodel: {model}\njobs:\n  - prompt: edit <<<image_1>>>\n"
        f"    images: {images}\n",
        encoding="utf-8",
    )
    return path


def test_a_local_file_is_checked_and_its_content_hash_is_part_of_the_job_id(
    tmp_path: Path,
) -> None:
    (tmp_path / "a.png").write_bytes(PNG)
    path = manifest(tmp_path, "[file:a.png]")
    [first] = load_manifest(path).iter_jobs()
    assert first.body["images"][0].startswith("file:")
    assert "#sha256=" in first.body["images"][0]
    (tmp_path / "a.png").write_bytes(png_bytes(9, 9, alpha=False, text="in"))
    [second] = load_manifest(path).iter_jobs()
    assert second.job_id != first.job_id


def test_moving_the_project_keeps_the_job_ids(tmp_path: Path) -> None:
    for folder in ("one", "two"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "a.png").write_bytes(PNG)
        manifest(tmp_path / folder, "[file:a.png]")
    [one] = load_manifest(tmp_path / "one" / "m.yaml").iter_jobs()
    [two] = load_manifest(tmp_path / "two" / "m.yaml").iter_jobs()
    assert one.job_id == two.job_id


def test_every_bad_input_file_is_reported_at_once_with_its_line(tmp_path: Path) -> None:
    (tmp_path / "notes.png").write_bytes(b"not an image at all")
    (tmp_path / "big.png").write_bytes(PNG + b"\0" * (10 * 1024 * 1024))
    path = manifest(tmp_path, "[file:missing.png, file:notes.png, file:big.png]")
    with pytest.raises(ManifestError) as caught:
        load_manifest(path)
    lines = [d.format() for d in caught.value.diagnostics if d.is_error]
    assert len(lines) == 3
    assert all(line.startswith(f"{path}:5:") for line in lines)
    assert "missing.png not found" in lines[0]
    assert "notes.png is not an image format" in lines[1]
    assert "big.png is 10,485,946 bytes; expected at most 10,485,760" in lines[2]
    assert main(["validate", str(path)]) == 2


def test_a_model_that_takes_only_urls_refuses_local_files(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(PNG)
    path = manifest(tmp_path, "[file:a.png]", model="openai/gpt-image-1.5-edit")
    with pytest.raises(ManifestError, match="takes only https URLs in 'images'"):
        load_manifest(path)


def test_input_files_in_a_jsonl_prompts_file_are_checked_against_that_file(
    tmp_path: Path,
) -> None:
    (tmp_path / "a.png").write_bytes(PNG)
    (tmp_path / "p.jsonl").write_text(
        '{"prompt": "one", "images": ["file:a.png"]}\n'
        '{"prompt": "two", "images": ["file:gone.png"]}\n',
        encoding="utf-8",
    )
    path = tmp_path / "m.yaml"
    path.write_text(
        "version: 1\nmodel: kling/kling-image-o1\njobs:\n  - prompts_file: p.jsonl\n",
        encoding="utf-8",
    )
    with pytest.raises(ManifestError) as caught:
        load_manifest(path)
    [line] = [d.format() for d in caught.value.diagnostics if d.is_error]
    assert "p.jsonl:2:" in line
    assert "gone.png not found" in line


def test_materialize_body_sends_a_data_uri_and_shares_encodings_within_its_budget(
    tmp_path: Path,
) -> None:
    paths = []
    for i in range(5):
        paths.append(tmp_path / f"{i}.png")
        paths[-1].write_bytes(png_bytes(8 + i, 8, alpha=False, text="x"))
    uri_size = len(base64.b64encode(paths[0].read_bytes())) + 40
    cache = _DataUriCache(max_bytes=2 * uri_size)
    bodies = [{"prompt": "p", "images": [f"file:{paths[i % 5]}#sha256=x{i % 5}"]}
              for i in range(100)]  # fmt: skip
    sent = [materialize_body(b, cache=cache) for b in bodies]
    assert cache.size <= 2 * uri_size
    assert sent[0]["images"][0].startswith("data:image/png;base64,")
    assert base64.b64decode(sent[0]["images"][0].split(",", 1)[1]) == paths[0].read_bytes()
    assert bodies[0]["images"][0].startswith("file:")  # the job's own body is untouched
    plain = {"prompt": "p"}
    assert materialize_body(plain) is plain


@pytest.mark.parametrize(("name", "jobs"), [("compare-models", 6), ("edit-images", 3)])
def test_example_manifests_run_through_the_simulator(
    tmp_path: Path, name: str, jobs: int, capsys: pytest.CaptureFixture[str]
) -> None:
    shutil.copytree(REPO / "manifests", tmp_path / "manifests")
    run_dir = tmp_path / "run"
    target = str(tmp_path / "manifests" / f"{name}.yaml")
    assert main(["plan", target]) == 0
    code = main(["run", target, "--simulate", "--output", str(run_dir)])
    assert code == 0, capsys.readouterr()
    assert f"done {jobs}" in capsys.readouterr().out
    with sqlite3.connect(run_dir / "state.db") as db:
        stored = "".join(str(row) for row in db.execute("select * from jobs"))
    assert "base64" not in stored  # the state file holds the hash and path, never the bytes


def _plan_ids(path: Path, capsys: pytest.CaptureFixture[str]) -> list[str]:
    assert main(["plan", str(path), "--json"]) == 0
    return [sample["job_id"] for sample in json.loads(capsys.readouterr().out)["samples"]]


def test_editing_the_shipped_input_image_changes_the_job_ids_plan_shows(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shutil.copytree(REPO / "manifests", tmp_path / "manifests")
    path = tmp_path / "manifests" / "edit-images.yaml"
    before = _plan_ids(path, capsys)
    again = _plan_ids(path, capsys)
    image = tmp_path / "manifests" / "inputs" / "cat.png"
    image.write_bytes(image.read_bytes() + b"edited")  # still a PNG by its magic bytes
    after = _plan_ids(path, capsys)
    assert before == again
    assert len(after) == len(before) == 3
    assert set(after).isdisjoint(before)


def test_a_missing_input_file_is_exit_2_with_file_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = manifest(tmp_path, "[file:inputs/absent.png]")
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr()
    text = err.out + err.err
    assert f"{path}:5:" in text
    assert "absent.png" in text
