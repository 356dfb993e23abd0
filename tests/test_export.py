"""`batchgen export`: the dataset table of real runs, merged shards, rebuilt metadata.jsonl."""

from __future__ import annotations

import asyncio
import csv
import io
import json
from pathlib import Path

import pytest

from batchgen.cli import main
from batchgen.manifest.shard import filter_shard, parse_shard
from batchgen.manifest.types import Limits
from batchgen.reports.export import ExportStats, export_columns, export_rows, write_csv, write_jsonl
from batchgen.simulator.app import Simulator
from batchgen.store.state import StateStore, acquire_run_lock

try:
    from tests.opshelpers import job, make_jobs, real_run, sim_config
except ModuleNotFoundError:
    from opshelpers import job, make_jobs, real_run, sim_config  # type: ignore[no-redef]

LIMITS = Limits(concurrency=8, rate=1000, retries=0)


@pytest.fixture(scope="module")
def night(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished run with done, failed and one rejected job."""
    run = tmp_path_factory.mktemp("export") / "nightly-2026-11-24"
    jobs = [*make_jobs(40), job("a kite, 'quoted', with, commas", size="999x999")]
    sim = Simulator(sim_config(fail_rate=0.1, seed=5))
    assert asyncio.run(real_run(run, jobs, sim=sim, limits=LIMITS)).exit_code == 1
    return run


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """One manifest's jobs run as three shards, each in its own run directory."""
    base = tmp_path_factory.mktemp("shards")
    jobs = make_jobs(45, tag="isometric")
    dirs = []
    for i in (1, 2, 3):
        shard = parse_shard(f"{i}/3")
        run = base / f"products-2026-11-24{shard.suffix}"
        mine = list(filter_shard(jobs, shard))
        assert asyncio.run(real_run(run, mine, limits=LIMITS)).exit_code == 0
        dirs.append(run)
    return dirs


def _done(run: Path) -> dict[str, str]:
    with StateStore.open_readonly(run) as store:
        return {j.job_id: j.sha256 or "" for j in store.iter_jobs(["done"])}


def test_export_has_exactly_one_row_per_image_with_a_resolvable_file(night: Path) -> None:
    rows = list(export_rows(night, relative_to=night.parent))
    done = _done(night)
    assert len(rows) == len(done) > 0
    assert {r["job_id"] for r in rows} == set(done)
    for r in rows:
        assert r["sha256"] == done[r["job_id"]]
        assert (night.parent / r["file_name"]).is_file()
        assert r["prompt"].startswith(("a red fox", "a lighthouse", "a teacup", "a bicycle", "an"))
        assert r["size"] == "1024x1024"


def test_export_rows_match_metadata_jsonl_when_relative_to_the_run(night: Path) -> None:
    meta = [json.loads(line) for line in (night / "metadata.jsonl").read_text().splitlines()]
    rows = {r["job_id"]: r for r in export_rows(night)}
    assert len(rows) == len(meta)
    for m in meta:
        row = rows[m["job_id"]]
        assert {k: row[k] for k in m} == m


def test_export_all_has_every_job_once_with_state_and_error(night: Path) -> None:
    rows = list(export_rows(night, state="all"))
    with StateStore.open_readonly(night) as store:
        counts = store.counts()
    assert len(rows) == sum(counts.values())
    assert len({r["job_id"] for r in rows}) == len(rows)
    rejected = [r for r in rows if r["state"] == "rejected"]
    assert len(rejected) == 1
    assert rejected[0]["file_name"] is None
    assert "999x999" in rejected[0]["last_error"]
    assert all(r["last_error"] for r in rows if r["state"] == "failed")


def test_csv_round_trips_with_a_fixed_header(night: Path) -> None:
    out = io.StringIO()
    columns = export_columns(night, state="all")
    n = write_csv(export_rows(night, state="all"), out, columns)
    out.seek(0)
    table = list(csv.DictReader(out))
    assert len(table) == n == 41
    assert columns[:4] == ["file_name", "job_id", "index", "prompt"]
    assert {"size", "quality", "background", "state", "last_error", "sha256"} <= set(columns)
    kite = next(r for r in table if r["prompt"].startswith("a kite"))
    assert kite["prompt"] == "a kite, 'quoted', with, commas"
    assert kite["file_name"] == ""


def test_shards_merge_into_one_dataset_with_one_row_per_image(shards: list[Path]) -> None:
    stats = ExportStats()
    rows = list(export_rows(shards, relative_to=shards[0].parent, stats=stats))
    assert len(rows) == 45
    assert len({r["job_id"] for r in rows}) == 45
    assert stats.duplicates == 0
    for r in rows:
        assert (shards[0].parent / r["file_name"]).is_file()
    assert {r["run"] for r in rows} == {str(s) for s in shards}


def test_a_job_done_in_two_run_directories_is_exported_once(
    shards: list[Path], tmp_path: Path
) -> None:
    again = tmp_path / "rerun"
    with StateStore.open_readonly(shards[0]) as store:
        first = next(iter(store.iter_jobs(["done"])))
    redo = job(first.body["prompt"])
    assert redo.job_id == first.job_id
    assert asyncio.run(real_run(again, [redo], limits=LIMITS)).exit_code == 0
    stats = ExportStats()
    rows = list(export_rows([*shards, again], stats=stats))
    assert len(rows) == 45
    assert stats.duplicates == 1
    assert next(r for r in rows if r["job_id"] == first.job_id)["run"] == str(shards[0])


def test_export_cli_writes_jsonl_and_csv_files(
    shards: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "dataset" / "train.jsonl"
    out.parent.mkdir()
    assert main(["export", *map(str, shards), "--output", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 45
    assert all((out.parent / r["file_name"]).is_file() for r in rows)
    assert "wrote 45 rows" in capsys.readouterr().err
    assert main(["export", str(shards[1]), "--format", "csv"]) == 0
    table = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(table) == len(_done(shards[1]))
    assert main(["export", str(tmp_path / "missing")]) == 2


def test_rebuild_metadata_regenerates_the_file_from_state(
    night: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    meta = night / "metadata.jsonl"
    before = meta.read_text()
    meta.write_text('{"torn": ')
    assert main(["export", str(night), "--rebuild-metadata"]) == 0
    assert sorted(meta.read_text().splitlines()) == sorted(before.splitlines())
    assert "rebuilt" in capsys.readouterr().err


def test_rebuild_metadata_refuses_while_a_run_holds_the_lock(
    night: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with acquire_run_lock(night):
        assert main(["export", str(night), "--rebuild-metadata"]) == 75
    assert "locked" in capsys.readouterr().err


def test_write_jsonl_and_csv_without_a_header_list() -> None:
    rows = [{"a": 1, "b": {"x": [1]}}, {"a": None, "c": "z"}]
    out = io.StringIO()
    assert write_jsonl(rows, out) == 2
    assert [json.loads(x) for x in out.getvalue().splitlines()] == rows
    out = io.StringIO()
    assert write_csv(rows, out) == 2
    assert out.getvalue().splitlines() == ["a,b,c", '1,"{""x"":[1]}",', ",,z"]
