"""The download lane (batchgen.run.pacing.DownloadLane): AIMD on the event loop's lateness."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from batchgen.run.pacing import DownloadLane


def _finish(lane: DownloadLane, times: int) -> None:
    for _ in range(times):
        lane._take()  # a download admitted...
        lane.release()  # ...and finished


def test_the_limit_grows_by_one_per_finished_download_while_the_loop_is_on_time() -> None:
    lane = DownloadLane(minimum=4, maximum=10)
    assert lane.limit == 4
    _finish(lane, 3)
    assert lane.limit == 7
    _finish(lane, 10)
    assert lane.limit == 10  # never above maximum


def test_the_limit_halves_while_the_loop_runs_late_but_never_below_minimum() -> None:
    lane = DownloadLane(minimum=4, maximum=100)
    _finish(lane, 60)
    assert lane.limit == 64
    for _ in range(20):
        lane.note_lateness(0.05)  # timers firing 50 ms late
    _finish(lane, 1)
    assert lane.limit == 32
    _finish(lane, 5)
    assert lane.limit == 4


def test_lateness_is_smoothed_one_late_timer_does_not_cut_the_limit() -> None:
    lane = DownloadLane(minimum=2, maximum=100, late=0.005)
    _finish(lane, 10)
    lane.note_lateness(0.02)  # one timer 20 ms late: the average stays under 5 ms
    _finish(lane, 1)
    assert lane.limit == 13


@pytest.mark.anyio
async def test_downloads_beyond_the_limit_wait_in_order_of_arrival() -> None:
    lane = DownloadLane(minimum=2, maximum=2)
    order: list[int] = []
    gate = asyncio.Event()

    async def download(i: int) -> None:
        await lane.acquire()
        try:
            order.append(i)
            await gate.wait()
        finally:
            lane.release()

    tasks = [asyncio.ensure_future(download(i)) for i in range(6)]
    for _ in range(5):
        await asyncio.sleep(0)
    assert order == [0, 1]
    assert lane.active == 2
    gate.set()
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2, 3, 4, 5]
    assert lane.active == 0
    assert lane.peak == 2


@pytest.mark.anyio
async def test_a_cancelled_waiter_gives_its_place_back() -> None:
    lane = DownloadLane(minimum=1, maximum=1)
    await lane.acquire()
    waiter = asyncio.ensure_future(lane.acquire())
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    lane.release()
    await asyncio.wait_for(lane.acquire(), 1.0)  # the place is free again
    assert lane.active == 1


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("acquire"), st.integers(0, 0)),
            st.tuples(st.just("release"), st.integers(0, 0)),
            st.tuples(st.just("late"), st.integers(0, 100)),
        ),
        max_size=80,
    ),
    st.integers(1, 5),
    st.integers(0, 20),
)
def test_admitted_downloads_never_exceed_the_limit_in_force_when_they_were_admitted(
    steps: list[tuple[str, int]], minimum: int, extra: int
) -> None:
    async def scenario() -> None:
        lane = DownloadLane(minimum=minimum, maximum=minimum + extra)
        pending: list[asyncio.Future[None]] = []
        admitted = 0
        for kind, value in steps:
            if kind == "acquire":
                pending.append(asyncio.ensure_future(lane.acquire()))
            elif kind == "release" and admitted > 0:
                lane.release()
                admitted -= 1
            elif kind == "late":
                lane.note_lateness(value / 1000)
            for _ in range(3):
                await asyncio.sleep(0)
            newly = [f for f in pending if f.done()]
            pending = [f for f in pending if not f.done()]
            admitted += len(newly)
            assert lane.active == admitted
            assert lane.minimum <= lane.limit <= lane.maximum
            if newly:  # admitted only into room under the limit in force
                assert lane.active <= lane.limit
            # Nobody waits while there is room.
            assert not pending or lane.active >= lane.limit
        for f in pending:
            f.cancel()

    asyncio.run(scenario())
