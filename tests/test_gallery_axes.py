"""Template variables on the gallery's axes, the state file's ``vars`` column (schema 4) and
its migration, and every image of a multi-image job in the gallery."""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
from pathlib import Path

import pytest

from batchgen.cli import main
from batchgen.manifest.loader import Job, Limits, job_id_for, load_manifest
from batchgen.reports.export import export_columns, export_rows
from batchgen.reports.gallery import GalleryError, available_axes, build_gallery, load_tiles
from batchgen.simulator.app import Simulator
from batchgen.store.schema import SCHEMA_VERSION, VARS_UNKNOWN
from batchgen.store.state import StateStore
from tests.galleryhelpers import count
from tests.runhelpers import in_process_client, run_in_dir, sim_config

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "manifests" / "example.yaml"
SUBJECTS = ["a red fox", "a lighthouse", "a teacup"]
STYLES = ["watercolor", "isometric render"]
WAN = "alibaba/wan2.7-image"


def simulated_example(run_dir: Path) -> list[Job]:
    """``manifests/example.yaml`` run through the in-process simulator, every job done."""
    jobs = list(load_manifest(EXAMPLE).iter_jobs())
    limits = Limits(concurrency=4, rate=1000.0, retries=2)
    asyncio.run(run_in_dir(run_dir, in_process_client(Simulator(sim_config(seed=1))), jobs, limits))
    return jobs


def grid_cells(html: str) -> list[str]:
    """The grid's cells, in row order (each cell's markup up to the next cell or header)."""
    grid = html.split('<div class="grid"', 1)[1].split("<section>", 1)[0]
    return [re.split(r'<div class="(?:hy|cell)', c)[0] for c in grid.split('<div class="cell')[1:]]


def downgrade_to_schema_3(run_dir: Path) -> None:
    """The state file as batchgen wrote it before it kept variables."""
    conn = sqlite3.connect(run_dir / "state.db")
    conn.execute("ALTER TABLE jobs DROP COLUMN vars")
    conn.execute("UPDATE meta SET value = '3' WHERE key = 'schema_version'")
    conn.commit()
    conn.close()


# -- the manifest and the state file -------------------------------------------------------------


def test_matrix_keys_that_are_not_body_fields_are_a_jobs_variables_and_leave_its_id_alone() -> None:
    jobs = list(load_manifest(EXAMPLE).iter_jobs())
    first = jobs[0]
    assert dict(first.variables) == {"subject": "a red fox", "style": "watercolor"}
    assert "subject" not in first.body
    assert first.body["size"] == "1024x1024"
    # The ID hashes model + body + repeat index only: the same as before variables existed.
    assert first.job_id == "bc867fd73164dee3"
    assert first.job_id == job_id_for(first.model, first.body, 0)
    assert [dict(j.variables) for j in jobs if j.group != "jobs[0]"] == [{}, {}, {}]
    combos = {(j.variables["subject"], j.variables["style"]) for j in jobs if j.variables}
    assert len(combos) == 6


def test_prompts_file_columns_that_are_not_body_fields_are_variables(tmp_path: Path) -> None:
    (tmp_path / "prompts.csv").write_text(
        "prompt,category,size\na red fox,animal,1024x1024\na teacup,object,1536x1024\n"
    )
    (tmp_path / "m.yaml").write_text(
        "version: 1\nmodel: openai/gpt-image-1.5\njobs:\n"
        "  - prompts_file: prompts.csv\n    prompt: '{prompt}, {mood}'\n"
        "    matrix: {mood: [calm, stormy]}\n    repeat: 2\n"
    )
    jobs = list(load_manifest(tmp_path / "m.yaml").iter_jobs())
    assert len(jobs) == 8
    assert [dict(j.variables) for j in jobs[::2]] == [
        {"category": c, "mood": m} for c in ("animal", "object") for m in ("calm", "stormy")
    ]
    assert jobs[0].variables is jobs[1].variables  # repeats share one mapping


def test_the_state_file_records_each_jobs_variables(tmp_path: Path) -> None:
    jobs = list(load_manifest(EXAMPLE).iter_jobs())
    with StateStore.open(tmp_path) as store:
        store.sync_jobs(jobs)
        recorded = {j.job_id: dict(j.variables) for j in store.iter_jobs()}
        assert store.get(jobs[0].job_id).variables == {
            "subject": "a red fox",
            "style": "watercolor",
        }
    assert recorded == {j.job_id: dict(j.variables) for j in jobs}
    conn = sqlite3.connect(tmp_path / "state.db")
    rows = conn.execute("SELECT vars FROM jobs ORDER BY rowid").fetchall()
    conn.close()
    assert json.loads(rows[0][0]) == {"subject": "a red fox", "style": "watercolor"}
    assert rows[-1] == (None,)  # no variables: NULL


def test_a_schema_3_file_is_read_as_it_is_then_migrated_and_filled_by_the_next_sync(
    tmp_path: Path,
) -> None:
    jobs = list(load_manifest(EXAMPLE).iter_jobs())
    with StateStore.open(tmp_path) as store:
        store.add_jobs(jobs)
    downgrade_to_schema_3(tmp_path)
    with StateStore.open_readonly(tmp_path) as old:  # read-only: read as it is
        assert len(list(old.iter_jobs())) == 12
        assert old.get(jobs[0].job_id).variables == {}
    with StateStore.open(tmp_path) as store:  # migrated on open: the column, no values yet
        assert store.get(jobs[0].job_id).variables == {}
        assert store.sync_jobs(jobs).added == 0
        assert store.get(jobs[0].job_id).variables == {
            "subject": "a red fox",
            "style": "watercolor",
        }
    conn = sqlite3.connect(tmp_path / "state.db")
    meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
    conn.close()
    assert meta["schema_version"] == str(SCHEMA_VERSION) == "4"
    assert VARS_UNKNOWN not in meta  # filled once; later syncs add new jobs only


# -- the gallery ---------------------------------------------------------------------------------


def test_style_by_subject_makes_a_two_by_three_grid_of_the_examples_jobs(tmp_path: Path) -> None:
    run = tmp_path / "example-run"
    simulated_example(run)
    html = build_gallery([run], x="style", y="subject").page.read_text()
    assert re.findall(r'class="hx">([^<]*)<', html) == [f"style = {s}" for s in STYLES]
    assert re.findall(r'class="hy">([^<]*)<', html) == SUBJECTS
    cells = grid_cells(html)
    assert len(cells) == 6
    # watercolor has one size (the other is excluded), isometric render two
    assert [count(c, r"<img ") for c in cells] == [1, 2] * 3
    # the jobs without these variables follow the grid, one section per group
    assert re.findall(r"<section><h2>([^<]*) <", html) == ["jobs[1]", "jobs[2]"]
    assert count(html, r"<img ") == 12
    details = json.loads(html.split('id="d">', 1)[1].split("</script>", 1)[0])
    assert details[0]["vars"] == {"subject": "a red fox", "style": "watercolor"}


def test_the_cli_takes_variables_as_axes_and_lists_them_first(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "example-run"
    simulated_example(run)
    assert available_axes(load_tiles([run]))[:2] == ["subject", "style"]
    assert main(["gallery", str(run), "--x", "style", "--y", "subject"]) == 0
    assert Path(capsys.readouterr().out.strip()) == run / "gallery" / "index.html"
    assert main(["gallery", str(run), "--x", "mood"]) == 2
    assert "use one of: subject, style, " in capsys.readouterr().err


def test_export_carries_the_variables_as_columns(tmp_path: Path) -> None:
    run = tmp_path / "example-run"
    simulated_example(run)
    assert export_columns([run])[-2:] == ["vars.subject", "vars.style"]
    rows = list(export_rows([run]))
    assert (rows[0]["vars.subject"], rows[0]["vars.style"]) == ("a red fox", "watercolor")
    assert sum("vars.subject" in row for row in rows) == 9


def test_a_run_recorded_before_variables_still_builds_a_gallery_from_its_state_file(
    tmp_path: Path,
) -> None:
    run = tmp_path / "old-run"
    simulated_example(run)
    downgrade_to_schema_3(run)
    html = build_gallery([run]).page.read_text()  # read-only: the file stays at version 3
    assert count(html, r"<img ") == 12
    assert re.findall(r"<section><h2>([^<]*) <", html) == ["jobs[0]", "jobs[1]", "jobs[2]"]
    html = build_gallery([run], x="size").page.read_text()  # body fields still work
    assert re.findall(r'class="hx">([^<]*)<', html) == ["size = 1024x1024", "size = 1536x1024"]
    with pytest.raises(GalleryError, match="recorded without their template variables"):
        build_gallery([run], x="style")
    assert export_columns([run])[-1] == "run"  # and no vars columns
    conn = sqlite3.connect(run / "state.db")
    assert conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == ("3",)
    conn.close()


def test_a_job_with_four_images_shows_four_labelled_thumbnails(tmp_path: Path) -> None:
    run = tmp_path / "wan-run"
    body = {"prompt": "a lighthouse at dawn"}  # no n: wan2.7-image returns 4 images
    jobs = [Job(job_id_for(WAN, body, 0), WAN, body, 0, "jobs[0]")]
    limits = Limits(concurrency=2, rate=1000.0, retries=2)
    asyncio.run(run_in_dir(run, in_process_client(Simulator(sim_config())), jobs, limits))
    result = build_gallery([run])
    html = result.page.read_text()
    assert (result.tiles, result.images, result.thumbs_made) == (1, 4, 4)
    assert count(html, r"<img ") == 4
    assert count(html, r'class="ims multi"') == 1
    assert re.findall(r'class="ix">(\d+)<', html) == ["0", "1", "2", "3"]
    hrefs = re.findall(r'<a href="([^"]+)"', html)
    assert [h.rsplit("/", 1)[1] for h in hrefs] == [f"{jobs[0].job_id}-{i}.png" for i in range(4)]
