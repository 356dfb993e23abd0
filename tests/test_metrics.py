"""metrics.prom: Prometheus text format from real runs, written by the runner."""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
import threading
from pathlib import Path

import pytest

from batchgen.manifest.types import Limits
from batchgen.reports.metrics import TEXTFILE_ENV, render_metrics, write_metrics
from batchgen.reports.status import status_report
from batchgen.simulator.app import Simulator
from batchgen.store.state import StateStore

try:
    from tests.opshelpers import fast_options, make_jobs, real_run, sim_config
except ModuleNotFoundError:
    from opshelpers import fast_options, make_jobs, real_run, sim_config  # type: ignore[no-redef]

NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
LABEL = r'[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\\\|\\"|\\n)*"'
SAMPLE = re.compile(rf"^({NAME})(\{{(?:{LABEL})(?:,{LABEL})*\}})? (\S+)$")
KINDS = {"counter", "gauge", "summary", "histogram", "untyped"}


def parse_exposition(text: str) -> dict[tuple[str, str], float]:
    """A strict reader of the text format: HELP/TYPE before samples, valid names, labels and
    values, no duplicate series, newline at the end."""
    assert text.endswith("\n")
    types: dict[str, str] = {}
    samples: dict[tuple[str, str], float] = {}
    for line in text.splitlines():
        if line.startswith("# HELP "):
            assert re.fullmatch(rf"# HELP {NAME} .+", line), line
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert kind in KINDS, line
            assert name not in types, f"TYPE twice for {name}"
            types[name] = kind
            continue
        m = SAMPLE.match(line)
        assert m, f"not a sample line: {line!r}"
        name, labels, value = m.group(1), m.group(2) or "", m.group(3)
        family = re.sub(r"_(sum|count)$", "", name)
        assert name in types or family in types, f"no TYPE before {name}"
        assert (name, labels) not in samples, f"duplicate series {name}{labels}"
        samples[name, labels] = float(value)  # accepts NaN, +Inf
    return samples


@pytest.fixture(scope="module")
def noisy(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, int]]:
    run = tmp_path_factory.mktemp("metrics") / "nightly-2026-11-24"
    sim = Simulator(sim_config(seed=4).with_faults(0.05))
    summary = asyncio.run(
        real_run(run, make_jobs(80), sim=sim, limits=Limits(concurrency=8, rate=1000, retries=3))
    )
    facts = {
        "throttled": summary.throttled,
        "retries": summary.retries,
        "ambiguous": summary.ambiguous_resubmits,
        "exit_code": summary.exit_code,
    }
    return run, facts


def test_the_runner_leaves_a_valid_metrics_file_that_matches_the_state_file(
    noisy: tuple[Path, dict[str, int]],
) -> None:
    run, facts = noisy
    samples = parse_exposition((run / "metrics.prom").read_text())
    with StateStore.open_readonly(run) as store:
        counts = store.counts()
    for state, n in counts.items():
        assert samples["batchgen_jobs", f'{{run="nightly",state="{state}"}}'] == n
    lbl = '{run="nightly"}'
    assert samples["batchgen_rate_limited_total", lbl] == facts["throttled"] > 0
    assert samples["batchgen_retries_total", lbl] == facts["retries"] > 0
    assert samples["batchgen_task_duration_seconds_count", lbl] == counts["done"]
    assert samples["batchgen_task_duration_seconds_sum", lbl] > 0
    q = [
        samples["batchgen_task_duration_seconds", f'{{run="nightly",quantile="{x}"}}']
        for x in ("0.5", "0.9", "0.99")
    ]
    assert q == sorted(q)
    assert samples["batchgen_running", lbl] == 0
    assert samples["batchgen_last_exit_code", lbl] == facts["exit_code"]
    assert samples["batchgen_images_per_minute", lbl] > 0
    assert samples["batchgen_last_success_timestamp_seconds", lbl] > 0
    assert status_report(run).ambiguous_submits == facts["ambiguous"]


def test_textfile_collector_copy_has_a_stable_name(
    noisy: tuple[Path, dict[str, int]], tmp_path: Path
) -> None:
    run, _ = noisy
    written = write_metrics(run, environ={TEXTFILE_ENV: str(tmp_path)})
    assert written == run / "metrics.prom"
    copy = tmp_path / "batchgen_nightly.prom"
    assert copy.read_text().splitlines()[:20] == written.read_text().splitlines()[:20]
    assert copy.stat().st_mode & 0o777 == 0o644
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_labels_are_escaped_and_an_empty_run_has_nan_quantiles(tmp_path: Path) -> None:
    run = tmp_path / "empty"
    with StateStore.open(run, settings={"name": 'say "hi"\\now\n'}):
        pass
    text = render_metrics(status_report(run), [])
    samples = parse_exposition(text)
    key = ("batchgen_task_duration_seconds", '{run="say \\"hi\\"\\\\now\\n",quantile="0.5"}')
    assert math.isnan(samples[key])


@pytest.mark.anyio
async def test_metrics_are_written_periodically_while_the_run_works(tmp_path: Path) -> None:
    run = tmp_path / "live"
    seen: list[str] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set() and len(seen) < 1000:
            with contextlib.suppress(FileNotFoundError):
                seen.append((run / "metrics.prom").read_text())
            stop.wait(0.01)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        sim = Simulator(sim_config(time_scale=0.01))
        summary = await real_run(
            run,
            make_jobs(60),
            sim=sim,
            limits=Limits(concurrency=6, rate=1000),
            options=fast_options(metrics_interval=0.05),
        )
    finally:
        stop.set()
        watcher.join(timeout=30)
    assert summary.exit_code == 0
    during = [t for t in seen if 'batchgen_running{run="nightly"} 1' in t]
    assert during, "no metrics.prom was written while the run held its lock"
    for text in seen:
        parse_exposition(text)  # never a torn file


@pytest.mark.anyio
async def test_metrics_can_be_switched_off(tmp_path: Path) -> None:
    run = tmp_path / "quiet"
    await real_run(run, make_jobs(2), options=fast_options(metrics_interval=None))
    assert not (run / "metrics.prom").exists()
