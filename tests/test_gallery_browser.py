"""The gallery of a simulated run with failures, rendered by a real headless Chromium.

Skipped only when no Chromium is installed and ``CI`` is not set; under ``CI=true`` a
missing Chromium fails the test (``.ci/run`` installs it).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from PIL import Image, ImageChops

from batchgen.manifest.loader import Limits, load_manifest
from batchgen.reports.browser import find_chromium, run_chromium
from batchgen.reports.gallery import build_gallery
from batchgen.simulator.app import Simulator
from batchgen.store.state import StateStore
from tests.galleryhelpers import count
from tests.runhelpers import in_process_client, run_in_dir, sim_config

REPO = Path(__file__).resolve().parent.parent


def _chromium() -> str:
    path = find_chromium()
    if path is not None:
        return path
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail("chromium is not installed (CI installs it: apt-get install -y chromium)")
    pytest.skip("chromium is not installed (apt-get install -y chromium); CI is not set")


def _browse(chromium: str, profile: Path, *args: str) -> str:
    done = run_chromium(chromium, profile, *args)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def _simulated_run_with_failures(run_dir: Path) -> dict[str, int]:
    """The example manifest through the in-process simulator, some tasks failing or expiring."""
    jobs = list(load_manifest(REPO / "manifests" / "example.yaml").iter_jobs())
    sim = Simulator(sim_config(seed=3, fail_rate=0.25, expired_rate=0.2))
    limits = Limits(concurrency=4, rate=1000.0, retries=0)
    asyncio.run(run_in_dir(run_dir, in_process_client(sim), jobs, limits))
    store = StateStore.open_readonly(run_dir)
    try:
        return store.counts()
    finally:
        store.close()


def test_a_browser_shows_a_thumbnail_per_image_and_a_placeholder_per_failed_job(
    tmp_path: Path,
) -> None:
    chromium = _chromium()
    run_dir = tmp_path / "example-run"
    counts = _simulated_run_with_failures(run_dir)
    bad = counts["failed"] + counts["expired"] + counts["rejected"]
    assert counts["done"] > 0
    assert bad > 0
    assert counts["done"] + bad == 12
    page = build_gallery([run_dir]).page
    url = page.resolve().as_uri()

    dom = _browse(chromium, tmp_path / "profile", "--dump-dom", url)
    assert count(dom, r"<img ") == counts["done"]
    assert count(dom, r'<img [^>]*\bsrc="') == counts["done"]  # on screen: src given by the script
    assert count(dom, r'class="ph"') == bad
    assert 'data-cards="12"' in dom  # the page's script parsed every card's details and ran

    shot = tmp_path / "gallery.png"
    _browse(chromium, tmp_path / "profile", f"--screenshot={shot}", "--window-size=1280,900", url)
    with Image.open(shot) as im:
        assert im.size == (1280, 900)
        red, green, _ = im.convert("RGB").split()
    # The simulator's images are gradients up to (255, 0, 160): a thumbnail was painted.
    magenta = ImageChops.multiply(
        red.point(lambda v: 255 if v > 200 else 0), green.point(lambda v: 255 if v < 40 else 0)
    )
    assert magenta.getbbox() is not None


def test_a_browser_renders_the_style_by_subject_grid_of_the_example(tmp_path: Path) -> None:
    chromium = _chromium()
    run_dir = tmp_path / "example-run"
    jobs = list(load_manifest(REPO / "manifests" / "example.yaml").iter_jobs())
    limits = Limits(concurrency=4, rate=1000.0, retries=2)
    asyncio.run(run_in_dir(run_dir, in_process_client(Simulator(sim_config(seed=1))), jobs, limits))
    url = build_gallery([run_dir], x="style", y="subject").page.resolve().as_uri()

    dom = _browse(chromium, tmp_path / "profile", "--dump-dom", url)
    assert count(dom, r'class="hx"') == 2
    assert count(dom, r'class="hy"') == 3
    assert count(dom, r'class="cell"') == 6  # every cell of the 2x3 grid has jobs
    # 9 in the grid, 3 in the sections after it, each given its src by the script (on screen)
    assert count(dom, r'<img [^>]*(?<![-\w])src="') == 12
    assert 'data-cards="12"' in dom
