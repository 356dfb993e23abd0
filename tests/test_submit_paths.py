"""The submit path without ``/async``: a 404 on submit moves the model to its next documented
path shape, once, and the state file remembers the path for a resume. Real sockets: the
simulator on a loopback port serving only some path shapes (``submit_paths``)."""

from __future__ import annotations

from pathlib import Path

import pytest
from runhelpers import MODEL, SIM_KEY, fast_options, make_jobs, run_in_dir, sim_config

from batchgen.api import ModellixClient
from batchgen.manifest.modelspec import model_spec
from batchgen.manifest.types import Limits
from batchgen.run.submit_paths import SUBMIT_PATHS_KEY
from batchgen.simulator.app import Simulator, serve_in_thread
from batchgen.store.state import StateStore

pytestmark = pytest.mark.anyio

NO_ASYNC = "/api/v1/openai/gpt-image-1.5"


def _settings(run_dir: Path) -> dict[str, object]:
    store = StateStore.open_readonly(run_dir)
    try:
        return store.settings()
    finally:
        store.close()


def test_the_candidates_start_with_the_schema_paths_and_hold_every_provider_shape() -> None:
    candidates = model_spec(MODEL).submit_path_candidates
    assert candidates[0] == "/api/v1/openai/gpt-image-1.5/async"
    assert NO_ASYNC in candidates
    assert len(candidates) == len(set(candidates)) == 3


async def test_a_404_on_submit_moves_to_the_path_without_async_and_a_resume_starts_there(
    tmp_path: Path,
) -> None:
    sim = Simulator(sim_config(submit_paths="no-async"))
    with serve_in_thread(sim) as url:
        async with ModellixClient(url, SIM_KEY) as client:
            first = await run_in_dir(
                tmp_path, client, make_jobs(4), Limits(concurrency=2), fast_options()
            )
        assert first.exit_code == 0, first.stop_reason
        assert _settings(tmp_path)[SUBMIT_PATHS_KEY] == {MODEL: NO_ASYNC}
        not_found = sim.stats()["status_codes"].get("404", 0)
        assert 1 <= not_found <= 2  # the /async path, then the type-prefixed one
        async with ModellixClient(url, SIM_KEY) as client:
            second = await run_in_dir(
                tmp_path, client, make_jobs(3, tag="owl"), Limits(concurrency=2), fast_options()
            )
        assert second.exit_code == 0
        assert sim.stats()["status_codes"].get("404", 0) == not_found  # the resume started there
    assert second.done == 7


async def test_a_model_unknown_on_every_path_still_stops_the_run(tmp_path: Path) -> None:
    sim = Simulator(sim_config(submit_paths="no-async"))
    with serve_in_thread(sim) as url:
        async with ModellixClient(url, SIM_KEY) as client:
            summary = await run_in_dir(
                tmp_path,
                client,
                make_jobs(2),
                Limits(concurrency=1),
                fast_options(submit_path=lambda model: f"/api/v1/{model}/async"),
            )
    assert summary.exit_code == 3  # a fixed path has no fallback
    assert "404" in (summary.stop_reason or "")
