"""The spend guard: the bill before the first request, the ceilings, the safe default, the
balance and the spend ledger (issue 15)."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from batchgen.cli import main
from batchgen.errors import BatchgenError
from batchgen.manifest.bill import BillBuilder, worst_case_submissions
from batchgen.manifest.loader import load_manifest
from batchgen.manifest.pricing import PriceBook
from batchgen.run.session import RunRequest, run_session
from batchgen.simulator.app import Simulator, serve_in_thread
from batchgen.store.schema import SCHEMA_VERSION
from batchgen.store.state import StateStore
from tests.runhelpers import FAST_TIMES, SIM_KEY, sim_config


def write_manifest(
    tmp_path: Path,
    n: int,
    *,
    quality: str = "low",
    limits: str = "",
    extra: str = "",
    name: str = "m.yaml",
) -> Path:
    numbers = ", ".join(str(i) for i in range(n))
    path = tmp_path / name
    path.write_text(
        "version: 1\n"
        "name: spend\n"
        "model: openai/gpt-image-1.5\n"
        f"limits: {{concurrency: 8, rate: 500/s, retries: 3, timeout: 10m{limits}}}\n"
        f"defaults: {{quality: {quality}, size: 1024x1024}}\n"
        f"{extra}"
        "jobs:\n"
        '  - prompt: "a fox number {n}"\n'
        f"    matrix: {{n: [{numbers}]}}\n"
    )
    return path


def run_fast(path: Path, url: str, out: Path, **kw: Any) -> int:
    """``batchgen run`` through the library, over loopback, with short poll and backoff times."""
    req = RunRequest(
        target=path, base_url=url, output=out, options=dict(FAST_TIMES), progress_bar=False, **kw
    )
    try:
        summary = asyncio.run(run_session(req, environ={"MODELLIX_API_KEY": SIM_KEY}))
    except BatchgenError as exc:
        return int(exc.exit_code)
    return summary.exit_code


@pytest.fixture
def key_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELLIX_API_KEY", SIM_KEY)


def plan_json(path: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> dict[str, Any]:
    capsys.readouterr()
    assert main(["plan", str(path), "--json", *extra]) == 0
    doc: dict[str, Any] = json.loads(capsys.readouterr().out)
    return doc


# --- the bill -------------------------------------------------------------------------------


def test_plan_json_carries_the_bill_as_numbers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_manifest(tmp_path, 10, quality="high", limits=", max_cost: 5")
    doc = plan_json(path, capsys)
    assert doc["new_jobs"] == 10
    assert doc["expected_images"] == 10
    assert doc["max_billable_submissions"] == 10 * (1 + 3)
    assert doc["estimated_cost_usd"] == pytest.approx(10 * 0.133)
    model = doc["bill"]["by_model"]["openai/gpt-image-1.5"]
    assert model["new_jobs"] == 10
    assert model["max_billable_submissions"] == 40
    assert model["estimated_cost_usd"] == pytest.approx(1.33)
    assert doc["limits"]["max_cost"] == 5.0


def test_an_unknown_price_is_null_never_zero(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "k.yaml"
    path.write_text("version: 1\nmodel: kling/kling-v2.1-t2i\njobs:\n  - prompt: a fox\n")
    doc = plan_json(path, capsys)
    assert doc["estimated_cost_usd"] is None
    assert doc["bill"]["unpriced_models"] == ["kling/kling-v2.1-t2i"]
    capsys.readouterr()
    assert main(["plan", str(path)]) == 0
    text = capsys.readouterr().out
    assert "estimated cost unknown: no price for kling/kling-v2.1-t2i" in text
    assert "$0.00" not in text


def test_manifest_prices_override_the_list_price_by_field_value(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prices = (
        "prices:\n"
        "  openai/gpt-image-1.5:\n"
        "    - {when: {quality: low}, usd: 0.5}\n"
        "  kling/kling-v2.1-t2i: 0.25\n"
    )
    path = write_manifest(tmp_path, 4, extra=prices)
    assert plan_json(path, capsys)["estimated_cost_usd"] == pytest.approx(2.0)
    manifest = load_manifest(path)
    assert manifest.prices.task_price("kling/kling-v2.1-t2i", {"prompt": "x"}) == 0.25
    # a body no manifest rule matches falls back to the schema's list price
    body = {"prompt": "x", "quality": "high", "size": "1024x1024"}
    assert manifest.prices.task_price("openai/gpt-image-1.5", body) == pytest.approx(0.133)


def test_plan_counts_jobs_already_done_in_the_run_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], key_env: None
) -> None:
    path = write_manifest(tmp_path, 3)
    run_dir = tmp_path / "run"
    with serve_in_thread(Simulator(sim_config())) as url:
        assert main(["run", str(path), "--base-url", url, "--output", str(run_dir)]) == 0
    bigger = write_manifest(tmp_path, 5)
    doc = plan_json(bigger, capsys, "--output", str(run_dir))
    assert (doc["done_jobs"], doc["new_jobs"]) == (3, 2)
    assert doc["max_billable_submissions"] == 2 * 4


def brute_force_billed(retries: int, attempts: int, depth: int) -> int:
    """The most billed submissions any sequence of submit outcomes can cause one job that
    already used ``attempts``, following the runner's rules (a 429 or a refused connection
    refunds its attempt; a job retries while attempts < 1 + retries)."""
    best = 0

    def walk(used: int, billed: int, left: int) -> None:
        nonlocal best
        best = max(best, billed)
        if left == 0 or used >= 1 + retries:
            return
        for outcome in ("success", "task_failed", "ambiguous", "throttled"):
            if outcome == "success":
                best = max(best, billed + 1)
            elif outcome == "throttled":
                walk(used, billed, left - 1)  # refunded: the attempt does not count
            else:  # accepted then failed, or outcome unknown: billed, one attempt used
                walk(used + 1, billed + 1, left - 1)

    walk(attempts, 0, depth)
    return best


@settings(max_examples=60, deadline=None)
@given(
    retries=st.integers(0, 3),
    jobs=st.lists(
        st.tuples(
            st.sampled_from([None, "pending", "running", "done", "failed", "rejected"]),
            st.integers(0, 4),
        ),
        min_size=1,
        max_size=5,
    ),
)
def test_worst_case_matches_a_brute_force_count(
    retries: int, jobs: list[tuple[str | None, int]]
) -> None:
    builder = BillBuilder(PriceBook(), retries=retries)
    expected = 0
    for i, (state, used) in enumerate(jobs):
        attempts = 0 if state is None else used
        builder.add("openai/gpt-image-1.5", {"prompt": f"p{i}"}, state, attempts)
        if state not in ("done", "failed", "rejected"):
            expected += brute_force_billed(retries, attempts, depth=2 * (retries + 2))
    assert builder.bill()["max_billable_submissions"] == expected
    assert worst_case_submissions(None, 0, retries) == 1 + retries


def test_worst_case_is_what_a_run_where_every_task_fails_pays(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], key_env: None
) -> None:
    path = write_manifest(tmp_path, 4)
    worst = plan_json(path, capsys)["max_billable_submissions"]
    sim = Simulator(sim_config(fail_rate=1.0))
    with serve_in_thread(sim) as url:
        code = run_fast(path, url, tmp_path / "r")
    assert code == 1
    assert sim.stats()["submissions"]["accepted"] == worst == 16


BALANCE = 12.3456  # the provider's documented example balance


def refused_before_submitting(
    path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], *flags: str
) -> str:
    """Run ``path`` over loopback; assert exit 3 with no submission received; return stderr."""
    sim = Simulator(sim_config(account_balance=BALANCE))
    with serve_in_thread(sim) as url:
        out = str(tmp_path / "r")
        code = main(["run", str(path), "--base-url", url, "--output", out, *flags])
    assert code == 3
    assert sim.stats()["submissions"]["total"] == 0
    return capsys.readouterr().err


# --- the ceilings ---------------------------------------------------------------------------


def test_a_plan_over_max_cost_refuses_before_the_first_submission(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], key_env: None
) -> None:
    path = write_manifest(tmp_path, 5000, quality="high", limits=", max_cost: 10")
    err = refused_before_submitting(path, tmp_path, capsys)
    assert "$665.00" in err
    assert "limits.max_cost" in err
    assert "--max-cost" in err


def test_a_plan_over_max_tasks_refuses_naming_the_flag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], key_env: None
) -> None:
    path = write_manifest(tmp_path, 30)
    err = refused_before_submitting(path, tmp_path, capsys, "--max-tasks", "20")
    assert "--max-tasks" in err


def test_max_tasks_stops_retries_and_raising_it_finishes_the_jobs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], key_env: None
) -> None:
    path = write_manifest(tmp_path, 100, limits=", max_tasks: 120")
    run_dir = tmp_path / "run"
    sim = Simulator(sim_config(fail_rate=0.4, seed=3))
    with serve_in_thread(sim) as url:
        code = run_fast(path, url, run_dir)
        assert code == 3
        accepted = sim.stats()["submissions"]["accepted"]
        assert 100 < accepted <= 120 + 1  # submits_in_flight is 1
        with StateStore.open_readonly(run_dir) as store:
            counts = store.counts()
            spend = store.spend()
        assert counts["submitting"] == counts["running"] == counts["downloading"] == 0
        assert spend["accepted"] + spend["ambiguous"] == accepted
        capsys.readouterr()
        assert main(["status", str(run_dir)]) in (1, 75)  # jobs left, maybe some failed
        assert f"stopped: task budget reached ({accepted:,} of 120)" in capsys.readouterr().out
        code = run_fast(path, url, run_dir, max_tasks=1000)
    assert code in (0, 1)
    with StateStore.open_readonly(run_dir) as store:
        counts = store.counts()
    assert counts["pending"] == 0
    assert counts["done"] + counts["failed"] == 100


def test_max_cost_stops_mid_run_within_the_ceiling(tmp_path: Path, key_env: None) -> None:
    # 20 jobs at $0.009 = $0.18 fits $0.25; failures push the spend to the ceiling
    path = write_manifest(tmp_path, 20, limits=", max_cost: 0.25")
    sim = Simulator(sim_config(fail_rate=0.6, seed=5))
    with serve_in_thread(sim) as url:
        code = run_fast(path, url, tmp_path / "r")
    assert code == 3
    assert sim.stats()["submissions"]["accepted"] * 0.009 <= 0.25 + 1e-9
    with StateStore.open_readonly(tmp_path / "r") as store:
        assert store.spend_info()["stopped"].startswith("cost budget reached")


# --- the safe default -----------------------------------------------------------------------


def test_a_large_run_without_a_ceiling_refuses_under_cron_unless_yes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], key_env: None
) -> None:
    path = write_manifest(tmp_path, 1001)
    sim = Simulator(sim_config())
    with serve_in_thread(sim) as url:
        args = ["run", str(path), "--base-url", url, "--output", str(tmp_path / "r")]
        assert main([*args, "--max-runtime", "1s"]) == 3
        assert sim.stats()["submissions"]["total"] == 0
        err = capsys.readouterr().err
        assert "limits.max_tasks" in err
        assert "--yes" in err
        assert main([*args, "--yes", "--max-runtime", "0.2s"]) in (0, 75)
    assert sim.stats()["submissions"]["total"] > 0


# --- the balance ----------------------------------------------------------------------------


def test_a_balance_below_the_estimate_refuses_with_both_figures(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], key_env: None
) -> None:
    path = write_manifest(tmp_path, 100, quality="high")  # $13.30 > $12.35
    err = refused_before_submitting(path, tmp_path, capsys)
    assert "$13.30" in err
    assert "$12.35" in err


def test_status_shows_the_balance_at_start_and_end_and_the_spend(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], key_env: None
) -> None:
    path = write_manifest(tmp_path, 5)
    run_dir = tmp_path / "r"
    with serve_in_thread(Simulator(sim_config(account_balance=BALANCE))) as url:
        assert main(["run", str(path), "--base-url", url, "--output", str(run_dir)]) == 0
    capsys.readouterr()
    assert main(["status", str(run_dir), "--json"]) == 0
    spend = json.loads(capsys.readouterr().out)["spend"]
    assert spend["accepted"] == 5
    assert spend["ambiguous"] == 0
    assert spend["images"] == 5
    assert spend["estimated_usd"] == pytest.approx(0.045)
    assert spend["balance_start"] == pytest.approx(BALANCE)
    assert spend["balance_end"] == pytest.approx(BALANCE - 0.045, abs=1e-4)
    assert spend["by_model"]["openai/gpt-image-1.5"]["accepted"] == 5
    assert main(["status", str(run_dir)]) == 0
    text = capsys.readouterr().out
    assert "estimated spend $0.045" in text
    assert "balance $12.35 at start" in text
    metrics = (run_dir / "metrics.prom").read_text()
    assert 'batchgen_submissions_accepted_total{run="spend",model="openai/gpt-image-1.5"} 5' in (
        metrics
    )
    assert 'batchgen_estimated_spend_usd{run="spend",model="openai/gpt-image-1.5"} 0.045' in (
        metrics
    )
    assert main(["export", str(run_dir), "--cost"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [row["estimated_cost_usd"] for row in rows] == [pytest.approx(0.009)] * 5


# --- the ledger -----------------------------------------------------------------------------


def test_a_version_1_state_file_is_migrated_on_open(tmp_path: Path) -> None:
    store = StateStore.open(tmp_path)
    store.close()
    conn = sqlite3.connect(tmp_path / "state.db")
    conn.execute("DROP TABLE submissions")
    conn.execute("UPDATE meta SET value='1' WHERE key='schema_version'")
    conn.commit()
    conn.close()
    with StateStore.open_readonly(tmp_path) as old:
        assert old.spend()["accepted"] == 0  # no table yet: no spend
    with StateStore.open(tmp_path) as store:
        assert store.spend()["accepted"] == 0
        version = store._conn.execute(
            "SELECT value FROM meta WHERE key='schema_version'"
        ).fetchone()[0]
    assert version == str(SCHEMA_VERSION)
