"""`batchgen gallery`: the page, its thumbnails, grouping, failures, escaping, several runs."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from urllib.parse import unquote

import pytest
from PIL import Image

from batchgen.cli import main
from batchgen.reports.gallery import GalleryError, build_gallery
from batchgen.reports.reasons import failure_reason
from batchgen.reports.thumbnails import THUMB_SIDE, ThumbRequest, make_thumbnails
from batchgen.store.state import StateStore
from tests.galleryhelpers import count, finish, job, make_run

SUBJECTS = ["a red fox", "a lighthouse", "a teacup"]


def _links(html: str) -> list[str]:
    return [unquote(m) for m in re.findall(r'(?:href|src)="([^"]+)"', html)]


def test_every_done_job_is_a_thumbnail_and_every_failure_a_labelled_placeholder(
    tmp_path: Path,
) -> None:
    run = tmp_path / "run"
    done = [job(s) for s in SUBJECTS]
    error = "submit: server error 500 (after 4 attempts)"
    make_run(run, done, [(job("a cactus"), error), (job("a vase"), "400 bad prompt")])
    result = build_gallery([run])
    html = result.page.read_text()
    assert result.page == run / "gallery" / "index.html"
    assert count(html, r"<img ") == 3
    assert count(html, r'class="ph"') == 2
    assert failure_reason("failed", error) in html
    assert ">rejected<" in html
    assert ">failed<" in html
    assert (result.images, result.placeholders, result.thumbs_made) == (3, 2, 3)
    assert len(list((run / "gallery" / "thumbs").iterdir())) == 3


def test_a_second_call_makes_only_the_thumbnails_of_new_images(tmp_path: Path) -> None:
    run = tmp_path / "run"
    jobs = [job(f"object {i}") for i in range(5)]
    make_run(run, jobs[:3])
    store = StateStore.open(run)
    store.add_jobs(jobs[3:])
    store.close()
    assert build_gallery([run]).thumbs_made == 3
    thumbs = run / "gallery" / "thumbs"
    before = {p.name: p.stat().st_mtime_ns for p in thumbs.iterdir()}
    store = StateStore.open(run)
    for j in jobs[3:]:
        finish(store, run, j)
    store.close()
    result = build_gallery([run])
    after = {p.name: p.stat().st_mtime_ns for p in thumbs.iterdir()}
    assert (result.thumbs_made, result.thumbs_kept) == (2, 3)
    assert len(set(after) - set(before)) == 2
    assert all(after[name] == mtime for name, mtime in before.items())  # none rewritten
    assert build_gallery([run]).thumbs_made == 0


def test_prompts_and_body_values_cannot_inject_markup_or_script(tmp_path: Path) -> None:
    run = tmp_path / "run"
    evil = '</script><script>window.owned=1</script><img src=x onerror="alert(1)"> & "q"'
    make_run(run, [job(evil, style='"><b>bold</b>')], [(job(evil + " 2"), f"400 {evil}")])
    html = build_gallery([run]).page.read_text()
    assert "window.owned=1</script>" not in html
    assert "<img src=x" not in html
    assert "<b>bold" not in html
    assert count(html, r"<script") == 2  # the details block and the page's own script
    assert "&lt;/script&gt;" in html  # the caption and placeholder show it as text


def test_links_are_relative_so_the_run_folder_can_be_moved(tmp_path: Path) -> None:
    run = tmp_path / "run"
    make_run(run, [job(s) for s in SUBJECTS])
    build_gallery([run])
    moved = tmp_path / "elsewhere" / "copy"
    shutil.copytree(run, moved)
    page = moved / "gallery" / "index.html"
    links = _links(page.read_text())
    assert len(links) == 6  # an image and a thumbnail per job
    for link in links:
        assert not link.startswith("/")
        assert "://" not in link
        assert (page.parent / link).is_file(), link


def test_a_grid_puts_the_axis_values_in_headers_and_stacks_the_rest_in_cells(
    tmp_path: Path,
) -> None:
    run = tmp_path / "run"
    jobs = [
        job(s, repeat=r, size=size)
        for s in SUBJECTS
        for size in ("1024x1024", "1536x1024")
        for r in range(2)
    ]
    make_run(run, jobs)
    html = build_gallery([run], x="size", y="prompt").page.read_text()
    assert count(html, r'class="hx"') == 2
    assert "size = 1536x1024" in html
    assert count(html, r'class="hy"') == 3
    cells = [c.split('<div class="hy"')[0] for c in html.split('<div class="cell')[1:]]
    assert len(cells) == 6
    assert all(count(c, r"<img ") == 2 for c in cells)  # the two repeats share a cell


def test_a_grid_on_one_axis_and_on_model_works(tmp_path: Path) -> None:
    run = tmp_path / "run"
    make_run(run, [job(s) for s in SUBJECTS])
    html = build_gallery([run], x="model").page.read_text()
    assert count(html, r'class="hx"') == 1
    assert count(html, r"<img ") == 3


def test_an_unknown_axis_is_a_usage_error_naming_the_choices(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    make_run(run, [job("a fox")])
    assert main(["gallery", str(run), "--x", "style"]) == 2
    err = capsys.readouterr().err
    assert "'style'" in err
    assert "size" in err
    assert "model" in err
    with pytest.raises(GalleryError):
        build_gallery([run], y="nope")


def test_several_runs_merge_into_one_page_beside_the_first(tmp_path: Path) -> None:
    a, b = tmp_path / "shard-1", tmp_path / "shard-2"
    make_run(a, [job("a fox")], [(job("a cat"), "task failed")])
    make_run(b, [job("a owl"), job("a hen")])
    result = build_gallery([a, b / "state.db"])
    html = result.page.read_text()
    assert result.page == a / "gallery" / "index.html"
    assert count(html, r"<img ") == 3
    assert count(html, r'class="ph"') == 1
    assert len(list((b / "gallery" / "thumbs").iterdir())) == 2
    for link in _links(html):
        assert (result.page.parent / link).is_file(), link


def test_state_done_leaves_unfinished_and_failed_jobs_out(tmp_path: Path) -> None:
    run = tmp_path / "run"
    make_run(run, [job("a fox")], [(job("a cat"), "task failed")])
    store = StateStore.open(run)
    store.add_jobs([job("still pending")])
    store.close()
    assert count(build_gallery([run]).page.read_text(), r'class="ph"') == 2
    html = build_gallery([run], states="done").page.read_text()
    assert count(html, r'class="ph"') == 0
    assert count(html, r"<img ") == 1


def test_the_command_prints_the_page_path_and_honours_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    make_run(run, [job("a fox")])
    out = tmp_path / "pages" / "night.html"
    assert main(["gallery", str(run), "--output", str(out), "--state", "done"]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    link = _links(out.read_text())[0]
    assert (out.parent / link).is_file()


def test_a_run_without_a_state_file_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["gallery", str(tmp_path)]) == 2
    assert "no state file" in capsys.readouterr().err


def test_an_undecodable_image_gets_a_labelled_box_and_the_page_is_still_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    make_run(run, [job("a fox"), job("a cat")])
    victim = sorted((run / "images").iterdir())[0]
    os.truncate(victim, 40)
    assert main(["gallery", str(run)]) == 0
    captured = capsys.readouterr()
    assert "no thumbnail for" in captured.err
    html = (run / "gallery" / "index.html").read_text()
    assert count(html, r"<img ") == 1
    assert "no thumbnail" in html


def test_result_files_come_from_the_job_record_not_from_the_job_id(tmp_path: Path) -> None:
    run = tmp_path / "run"
    make_run(run, [job("a fox")])
    store = StateStore.open_readonly(run)
    (recorded,) = store.iter_jobs()
    store.close()
    assert recorded.result_path is not None
    renamed = f"images/{recorded.job_id}-0.png"
    os.rename(run / recorded.result_path, run / renamed)
    html = build_gallery([run]).page.read_text()
    assert f"../{recorded.result_path}" in html  # the recorded path, as the store states it


@pytest.mark.parametrize("parallelism", ["thread", "process"])
def test_thumbnails_are_small_webp_files_whichever_pool_makes_them(
    tmp_path: Path, parallelism: str
) -> None:
    run = tmp_path / "run"
    make_run(run, [job(f"object {i}") for i in range(6)])
    out = tmp_path / "thumbs"
    out.mkdir()
    sources = sorted((run / "images").iterdir())
    requests = [ThumbRequest(s, out / f"{s.stem}.webp") for s in sources]
    stats = make_thumbnails(requests, workers=2, parallelism=parallelism)  # type: ignore[arg-type]
    assert (stats.made, stats.failed) == (6, {})
    for thumb in out.iterdir():
        with Image.open(thumb) as im:
            assert im.format == "WEBP"
            assert max(im.size) <= THUMB_SIDE
    assert make_thumbnails(requests, parallelism=parallelism).kept == 6  # type: ignore[arg-type]
