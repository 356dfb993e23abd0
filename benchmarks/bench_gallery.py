"""`batchgen gallery` on a run of N images: build time, incremental rebuild, page size,
thumbnails per second (threads vs processes vs one worker), first paint in headless Chromium.

    python benchmarks/bench_gallery.py            # 10,000 images of 1024x1024
    python benchmarks/bench_gallery.py --quick    # 200 images of 256x256 (seconds; CI smoke run)

The run directory is made through the state store's own API with the simulator's PNG maker
(distinct files, as a simulated run writes them); 2% of the jobs end failed, so the page
has placeholders too.  Steps:

* ``first_build``: ``build_gallery`` (as ``batchgen gallery`` calls it) on a run with no
  thumbnails (every thumbnail made);
* ``incremental``: 1% more images arrived; the second build makes only those;
* ``unchanged``: a third build with nothing new (page rewritten, no thumbnail made);
* ``thumbs_per_s``: thumbnails of the same ``--sample`` images into empty folders, with
  a pool of threads, a pool of processes, and one worker (best of two interleaved rounds);
* ``chromium``: ``page_ms``, the page's first contentful paint, DOM interactive (parsed)
  and load end, in ms from navigation start (read through the DevTools protocol), and
  the wall time of a ``--screenshot`` of it (browser start included) beside that of an
  empty page; left out with a note when Chromium is not installed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import emit, machine, peak_rss_mib

from batchgen.manifest.loader import Job, job_id_for
from batchgen.reports.browser import HEADLESS_FLAGS, find_chromium, run_chromium
from batchgen.reports.gallery import build_gallery
from batchgen.reports.thumbnails import ThumbRequest, make_thumbnails
from batchgen.simulator.png import png_bytes
from batchgen.store.state import ResultInfo, StateStore

MODEL = "openai/gpt-image-1.5"
STYLES = ("watercolor", "isometric render", "pencil sketch", "oil painting")
_TIMINGS = """(function(){var p=performance.getEntriesByName('first-contentful-paint')[0],
n=performance.getEntriesByType('navigation')[0];return JSON.stringify(p&&n&&n.loadEventEnd>0?
{fcp:p.startTime,dom_interactive:n.domInteractive,load_end:n.loadEventEnd}:null)})()"""


def _page_timings(chromium: str, profile: Path, url: str, timeout: float = 120.0) -> Any:
    """First contentful paint, DOM interactive and load end (ms) of ``url`` in a headless
    Chromium driven through the DevTools protocol on a pipe (fds 3 and 4), or None."""
    to_chrome_r, to_chrome_w = os.pipe()
    from_chrome_r, from_chrome_w = os.pipe()

    def fds() -> None:  # in the child: the pipe ends where --remote-debugging-pipe wants them
        read_end, write_end = os.dup(to_chrome_r), os.dup(from_chrome_w)  # above 4 by now
        os.dup2(read_end, 3)
        os.dup2(write_end, 4)

    proc = subprocess.Popen(
        [
            chromium,
            *HEADLESS_FLAGS,
            f"--user-data-dir={profile}",
            "--remote-debugging-pipe",
            "--window-size=1280,900",
            url,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=fds,  # noqa: PLW1509 - a benchmark, no threads here
        close_fds=False,  # keeps fds 3 and 4 (subprocess closes fds after preexec_fn)
    )
    os.close(to_chrome_r)
    os.close(from_chrome_w)
    buffer = b""
    ids = iter(range(1, 1_000_000))

    def call(method: str, params: dict[str, Any], session: str | None = None) -> Any:
        nonlocal buffer
        msg_id = next(ids)
        msg: dict[str, Any] = {"id": msg_id, "method": method, "params": params}
        if session:
            msg["sessionId"] = session
        os.write(to_chrome_w, json.dumps(msg).encode() + b"\0")
        while True:
            while b"\0" not in buffer:
                chunk = os.read(from_chrome_r, 65536)
                if not chunk:
                    raise RuntimeError("chromium closed the DevTools pipe")
                buffer += chunk
            raw, _, buffer = buffer.partition(b"\0")
            answer = json.loads(raw)
            if answer.get("id") == msg_id:
                return answer.get("result", {})

    try:
        deadline = time.monotonic() + timeout
        session = None
        while session is None and time.monotonic() < deadline:
            pages = [t for t in call("Target.getTargets", {})["targetInfos"] if t["type"] == "page"]
            if pages:
                attached = call(
                    "Target.attachToTarget", {"targetId": pages[0]["targetId"], "flatten": True}
                )
                session = attached["sessionId"]
            else:
                time.sleep(0.05)
        while session is not None and time.monotonic() < deadline:
            result = call("Runtime.evaluate", {"expression": _TIMINGS}, session)
            value = json.loads(result.get("result", {}).get("value") or "null")
            if value is not None:
                return {k: round(v, 1) for k, v in value.items()}
            time.sleep(0.05)
        return None
    finally:
        os.close(to_chrome_w)
        os.close(from_chrome_r)
        proc.kill()
        proc.wait(timeout=30)


def _jobs(n: int) -> list[Job]:
    out = []
    for i in range(n):
        body = {
            "prompt": f"object number {i}, {STYLES[i % len(STYLES)]}, studio lighting",
            "size": "1024x1024" if i % 3 else "1536x1024",
            "quality": "low",
        }
        out.append(Job(job_id_for(MODEL, body, 0), MODEL, body, 0, f"jobs[{i % 4}]"))
    return out


def _finish(store: StateStore, run_dir: Path, jobs: list[Job], side: int) -> None:
    for i, j in enumerate(jobs):
        store.mark_submitting(j.job_id)
        if i % 50 == 7:
            store.mark_failed(j.job_id, "task failed: content policy (after 4 attempts)")
            continue
        data = png_bytes(side, side, text=j.job_id)
        rel = f"images/{j.job_id}.png"
        (run_dir / rel).write_bytes(data)
        store.mark_running(j.job_id, f"task-{j.job_id}", None)
        store.mark_downloading(j.job_id)
        digest = hashlib.sha256(data).hexdigest()
        store.mark_done(j.job_id, ResultInfo(rel, digest, len(data), "png", side, side))


def _timed_build(run_dir: Path) -> dict[str, Any]:
    t0 = time.perf_counter()
    result = build_gallery([run_dir], parallelism="auto")  # as `batchgen gallery`
    wall = time.perf_counter() - t0
    return {
        "wall_s": round(wall, 2),
        "thumbs_made": result.thumbs_made,
        "thumbs_kept": result.thumbs_kept,
        "thumbs_per_s": round(result.thumbs_made / wall, 1) if result.thumbs_made else None,
        "images": result.images,
        "placeholders": result.placeholders,
        "page_mib": round(result.page_bytes / 2**20, 2),
    }


def _thumb_rates(run_dir: Path, sample: int, scratch: Path) -> dict[str, Any]:
    """Thumbnails per second of each pool on the same images: two interleaved rounds, the
    better of each kept (the machine is shared; one round is at the mercy of a neighbour)."""
    sources = sorted((run_dir / "images").iterdir())[:sample]
    modes: dict[str, dict[str, Any]] = {
        "threads": {"parallelism": "thread"},
        "processes": {"parallelism": "process"},
        "one_worker": {"workers": 1},
    }
    best: dict[str, float] = {}
    for round_ in range(2):
        for name, kw in modes.items():
            folder = scratch / f"thumbs-{name}-{round_}"
            folder.mkdir()
            requests = [ThumbRequest(s, folder / f"{s.stem}.webp") for s in sources]
            t0 = time.perf_counter()
            stats = make_thumbnails(requests, **kw)
            rate = stats.made / (time.perf_counter() - t0)
            best[name] = max(best.get(name, 0.0), rate)
    return {"sample": len(sources), **{k: round(v, 1) for k, v in best.items()}}


def _chromium(page: Path, scratch: Path) -> dict[str, Any]:
    chromium = find_chromium()
    if chromium is None:
        return {"skipped": "chromium is not installed (apt-get install -y chromium)"}
    empty = scratch / "empty.html"
    empty.write_text("<!DOCTYPE html><title>empty</title><p>empty</p>")

    def browse(*args: str) -> tuple[float, str]:
        t0 = time.perf_counter()
        done = run_chromium(chromium, scratch / "profile", *args, timeout=600)
        return time.perf_counter() - t0, done.stdout

    shot = scratch / "shot.png"
    size = "--window-size=1280,900"
    browse(f"--screenshot={shot}", size, empty.as_uri())  # warm the profile and disk cache
    empty_s, _ = browse(f"--screenshot={shot}", size, empty.as_uri())
    page_s, _ = browse(f"--screenshot={shot}", size, page.as_uri())
    timings = _page_timings(chromium, scratch / "profile", page.as_uri())
    return {
        "page_ms": timings,
        "screenshot_wall_s": round(page_s, 2),
        "empty_page_screenshot_wall_s": round(empty_s, 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--images", type=int, help="jobs in the run (default 10,000)")
    parser.add_argument("--side", type=int, help="image side in pixels (default 1024)")
    parser.add_argument("--sample", type=int, help="images for thumbs_per_s (default 1000)")
    args = parser.parse_args()
    n = args.images or (200 if args.quick else 10_000)
    side = args.side or (256 if args.quick else 1024)
    sample = min(n, args.sample or (60 if args.quick else 1000))
    report: dict[str, Any] = {
        "benchmark": "gallery",
        "mode": "quick" if args.quick else "full",
        "jobs": n,
        "image_side": side,
    }
    with tempfile.TemporaryDirectory(prefix="batchgen-bench-") as tmp:
        scratch = Path(tmp)
        run_dir = scratch / "run"
        jobs = _jobs(n)
        later = max(1, n // 100)
        store = StateStore.open(run_dir)
        try:
            store.add_jobs(jobs)
            _finish(store, run_dir, jobs[: n - later], side)
            report["first_build"] = _timed_build(run_dir)
            _finish(store, run_dir, jobs[n - later :], side)
            report["incremental"] = _timed_build(run_dir)
            report["unchanged"] = _timed_build(run_dir)
        finally:
            store.close()
        report["thumbs_per_s"] = _thumb_rates(run_dir, sample, scratch)
        report["chromium"] = _chromium(run_dir / "gallery" / "index.html", scratch)
    report["peak_rss_mib"] = peak_rss_mib()
    report["load_average_1m_at_end"] = round(os.getloadavg()[0], 2)
    report["machine"] = machine()
    emit(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
