"""The event loop of a run: uvloop's where installed, asyncio's when asked or absent."""

from __future__ import annotations

import asyncio

import pytest

from batchgen.run.event_loop import LOOP_ENV, run


async def loop_module() -> str:
    return type(asyncio.get_running_loop()).__module__


def test_a_run_uses_uvloop_where_it_is_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("uvloop")
    monkeypatch.delenv(LOOP_ENV, raising=False)
    assert run(loop_module()).startswith("uvloop")


def test_batchgen_loop_asyncio_runs_on_asyncio_s_own_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(LOOP_ENV, "asyncio")
    assert run(loop_module()).startswith("asyncio")
