"""The simulator's statistics, and serving it on a real loopback port."""

from __future__ import annotations

import socket

import httpx
import pytest
from simhelpers import AUTH, SUBMIT, FakeClock, check_png, client_for, make_sim

from batchgen.simulator.app import (
    MAX_BODY_BYTES,
    Latency,
    Simulator,
    SimulatorConfig,
    serve_in_thread,
)
from batchgen.simulator.serving import bind_socket

pytestmark = pytest.mark.anyio


async def test_stats_count_submissions_per_distinct_body_polls_downloads_and_codes() -> None:
    clock = FakeClock()
    sim = make_sim(clock, latency=Latency.fixed(10))
    async with client_for(sim) as client:
        ids = []
        for body in (
            {"prompt": "a", "size": "1024x1024"},
            {"size": "1024x1024", "prompt": "a"},  # same body, other key order
            {"prompt": "b"},
            {"prompt": "a", "size": "1024x1024"},
        ):
            answer = await client.post(SUBMIT, json=body, headers=AUTH)
            ids.append(answer.json()["data"]["task_id"])
        await client.post(SUBMIT, json={"prompt": ""}, headers=AUTH)  # 400
        for _ in range(3):
            await client.get(f"/api/v1/tasks/{ids[0]}", headers=AUTH)
        await client.get(f"/api/v1/tasks/{ids[1]}", headers=AUTH)
        await client.get("/api/v1/tasks/task-openai-unknown", headers=AUTH)
        clock.advance(10)
        await client.get(f"/api/v1/tasks/{ids[1]}", headers=AUTH)
        await client.get(f"/files/{ids[1]}/0.png")
        await client.get(f"/files/{ids[1]}/0.png")
        served = (await client.get("/_sim/stats")).json()
    stats = sim.stats()
    assert served == stats
    assert stats["submissions"] == {
        "total": 5,
        "distinct_bodies": 3,
        "bodies_submitted_more_than_once": 1,
        "max_per_body": 3,
        "accepted": 4,
        "accepted_distinct_bodies": 2,
        "bodies_accepted_more_than_once": 1,
        "max_accepted_per_body": 3,
    }
    assert stats["polls"] == {
        "total": 5,
        "unknown_task": 1,
        "per_task": {"mean": 5 / 4, "max": 3, "distribution": {"0": 2, "2": 1, "3": 1}},
    }
    assert stats["downloads"]["total"] == 2
    assert stats["downloads"]["max_per_task"] == 2
    assert stats["downloads"]["bytes"] > 0
    assert stats["status_codes"] == {"200": 11, "400": 1, "404": 1}
    assert stats["requests"] == 13
    assert stats["tasks"]["ended"] == 4
    assert stats["tasks"]["succeeded"] == 4
    assert stats["tasks"]["active"] == 0


async def test_peak_concurrency_counts_tasks_submitted_and_not_ended() -> None:
    clock = FakeClock()
    sim = make_sim(clock, latency=Latency.fixed(10))
    async with client_for(sim) as client:
        for _ in range(3):
            await client.post(SUBMIT, json={"prompt": "x"}, headers=AUTH)
            clock.advance(1)
        assert sim.stats()["tasks"]["active"] == 3
        clock.advance(7.5)  # t=10.5: the first task (ends at t=10) ended
        await client.post(SUBMIT, json={"prompt": "x"}, headers=AUTH)
        assert sim.stats()["tasks"]["active"] == 3
        clock.advance(20)
        await client.post(SUBMIT, json={"prompt": "x"}, headers=AUTH)
    stats = sim.stats()
    assert stats["tasks"]["peak_concurrent"] == 3
    assert stats["tasks"]["active"] == 1
    assert stats["tasks"]["accepted"] == 5


async def test_serve_in_thread_answers_over_a_real_loopback_socket() -> None:
    sim = Simulator(SimulatorConfig(latency=Latency.fixed(0)))
    with serve_in_thread(sim) as base_url:
        assert base_url.startswith("http://127.0.0.1:")
        async with httpx.AsyncClient(base_url=base_url) as client:
            submitted = await client.post(SUBMIT, json={"prompt": "x"}, headers=AUTH)
            data = submitted.json()["data"]
            assert data["get_result"]["url"] == f"{base_url}/api/v1/tasks/{data['task_id']}"
            polled = await client.get(data["get_result"]["url"], headers=AUTH)
            resource = polled.json()["data"]["result"]["resources"][0]
            assert resource["url"].startswith(base_url + "/files/")
            image = await client.get(resource["url"])
            stats = (await client.get("/_sim/stats")).json()
    assert check_png(image.content) == (1024, 1024, 2)
    assert stats["submissions"]["accepted"] == 1
    assert stats["status_codes"] == {"200": 3}


def test_serve_in_thread_refuses_a_non_loopback_host() -> None:
    with pytest.raises(ValueError, match="non-loopback"), serve_in_thread(Simulator(), "0.0.0.0"):
        pass


def test_listening_socket_is_tcp_so_asyncio_disables_nagle() -> None:
    # asyncio sets TCP_NODELAY only on sockets whose proto is TCP; without it every answer
    # waited ~40 ms for a delayed ACK.
    sock = bind_socket("127.0.0.1", 0, allow_remote=False)
    try:
        assert sock.proto == socket.IPPROTO_TCP
    finally:
        sock.close()


def test_serve_in_thread_stops_listening_when_the_block_ends() -> None:
    with httpx.Client(trust_env=False) as client:
        with serve_in_thread(Simulator()) as base_url:
            assert client.get(base_url + "/_sim/stats").status_code == 200
        with pytest.raises(httpx.ConnectError):
            client.get(base_url + "/_sim/stats")


async def test_an_oversized_body_is_refused_without_being_accepted() -> None:
    sim = make_sim()
    async with client_for(sim) as client:
        answer = await client.post(SUBMIT, content=b"x" * (MAX_BODY_BYTES + 1), headers=AUTH)
    assert answer.status_code == 413
    assert answer.json()["code"] == 413
    assert sim.stats()["submissions"]["accepted"] == 0
    assert sim.stats()["status_codes"] == {"413": 1}
