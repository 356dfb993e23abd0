"""Every fault knob of the simulator, deterministic under a seed."""

from __future__ import annotations

import random
from collections import Counter

import httpx
import pytest
from simhelpers import AUTH, SUBMIT, FakeClock, client_for, make_sim

import batchgen.simulator.app as simulator_module
from batchgen.simulator.app import Latency, Simulator, SimulatorConfig, serve_in_thread

pytestmark = pytest.mark.anyio


async def codes_of(sim: Simulator, count: int) -> list[int | str]:
    """Submit ``count`` bodies; the status code of each, or "drop"."""
    codes: list[int | str] = []
    async with client_for(sim) as client:
        for i in range(count):
            try:
                answer = await client.post(SUBMIT, json={"prompt": f"p{i}"}, headers=AUTH)
            except httpx.TransportError:
                codes.append("drop")
            else:
                codes.append(answer.status_code)
    return codes


async def test_fault_rates_are_honoured_and_repeat_exactly_under_a_seed() -> None:
    knobs = {"error_500_rate": 0.1, "error_503_rate": 0.1, "error_429_rate": 0.1, "drop_rate": 0.1}
    first = await codes_of(make_sim(seed=3, **knobs), 400)
    again = await codes_of(make_sim(seed=3, **knobs), 400)
    other = await codes_of(make_sim(seed=4, **knobs), 400)
    assert first == again
    assert first != other
    counts = Counter(first)
    for kind in (500, 503, 429, "drop"):
        assert 15 <= counts[kind] <= 70, counts
    assert counts[200] == 400 - sum(counts[k] for k in (500, 503, 429, "drop"))


async def test_fault_counts_in_stats_match_the_answers() -> None:
    sim = make_sim(seed=1, error_500_rate=0.2, error_503_rate=0.2, drop_rate=0.2)
    codes = Counter(await codes_of(sim, 200))
    stats = sim.stats()
    assert stats["faults"]["error_500"] == codes[500]
    assert stats["faults"]["error_503"] == codes[503]
    assert stats["faults"]["dropped_connection"] == codes["drop"]
    assert stats["status_codes"] == {str(c): n for c, n in codes.items() if c != "drop"}


async def test_500_and_503_answers_use_the_error_format_and_503_has_retry_after() -> None:
    async with client_for(make_sim(error_500_rate=1.0)) as client:
        internal = await client.post(SUBMIT, json={"prompt": "x"}, headers=AUTH)
    async with client_for(make_sim(error_503_rate=1.0, retry_after=2.0)) as client:
        outage = await client.get("/api/v1/tasks/task-openai-x", headers=AUTH)
    assert internal.status_code == 500
    assert internal.json()["code"] == 500
    assert internal.json()["message"].startswith("Internal Server Error: ")
    assert outage.status_code == 503
    assert outage.json()["message"].startswith("Service Unavailable: ")
    assert outage.headers["retry-after"] == "2"


async def test_faults_apply_only_to_the_chosen_routes() -> None:
    clock = FakeClock()
    sim = make_sim(clock, error_500_rate=1.0, fault_routes=frozenset({"poll"}), latency=Latency())
    async with client_for(sim) as client:
        submitted = await client.post(SUBMIT, json={"prompt": "x"}, headers=AUTH)
        polled = await client.get(submitted.json()["data"]["get_result"]["url"], headers=AUTH)
        clock.advance(10)
        task_id = submitted.json()["data"]["task_id"]
        downloaded = await client.get(f"/files/{task_id}/0.png")
    assert submitted.status_code == 200
    assert polled.status_code == 500
    assert downloaded.status_code == 200


async def test_dropped_connection_in_process_is_a_transport_error() -> None:
    sim = make_sim(drop_rate=1.0, lost_answer_fraction=0.0)
    async with client_for(sim) as client:
        with pytest.raises(httpx.TransportError):
            await client.post(SUBMIT, json={"prompt": "x"}, headers=AUTH)
    stats = sim.stats()
    assert stats["faults"] == {"dropped_connection": 1}
    assert stats["submissions"]["accepted"] == 0
    assert stats["status_codes"] == {}


@pytest.mark.parametrize("kind", ["drop_rate", "error_500_rate"])
async def test_a_lost_answer_still_creates_the_task(kind: str) -> None:
    sim = make_sim(fault_routes=frozenset({"submit"}), lost_answer_fraction=1.0, **{kind: 1.0})
    async with client_for(sim) as client:
        try:
            answer = await client.post(SUBMIT, json={"prompt": "x"}, headers=AUTH)
        except httpx.TransportError:
            pass
        else:
            assert answer.status_code == 500
    stats = sim.stats()
    assert stats["faults"]["lost_answer"] == 1
    assert stats["submissions"]["accepted"] == 1
    assert stats["tasks"]["peak_concurrent"] == 1


async def test_503_never_creates_a_task() -> None:
    sim = make_sim(error_503_rate=1.0, lost_answer_fraction=1.0)
    assert await codes_of(sim, 3) == [503, 503, 503]
    assert sim.stats()["submissions"]["accepted"] == 0


async def test_concurrent_task_limit_answers_429_until_a_task_ends() -> None:
    clock = FakeClock()
    sim = make_sim(clock, max_concurrent_tasks=2, latency=Latency.fixed(10), time_scale=0.5)
    async with client_for(sim) as client:
        codes = [(await client.post(SUBMIT, json={"prompt": "x"}, headers=AUTH)) for _ in range(3)]
        clock.advance(4.0)
        still = await client.post(SUBMIT, json={"prompt": "x"}, headers=AUTH)
        clock.advance(1.0)  # real 5 s = simulated 10 s: the first two ended
        later = await client.post(SUBMIT, json={"prompt": "x"}, headers=AUTH)
    assert [a.status_code for a in codes] == [200, 200, 429]
    refused = codes[2]
    assert refused.json()["code"] == 429
    assert "concurrent task limit of 2" in refused.json()["message"]
    assert refused.headers["retry-after"] == "5"
    assert "x-ratelimit-reset" in refused.headers
    assert still.status_code == 429
    assert still.headers["retry-after"] == "1"
    assert later.status_code == 200
    stats = sim.stats()
    assert stats["tasks"]["peak_concurrent"] == 2
    assert stats["faults"]["concurrency_limit"] == 2


async def test_request_rate_limit_is_a_token_bucket_with_retry_after() -> None:
    clock = FakeClock()
    sim = make_sim(clock, rate_limit=2.0, rate_burst=2)
    async with client_for(sim) as client:
        answers = [await client.post(SUBMIT, json={"prompt": "x"}, headers=AUTH) for _ in range(3)]
        poll = await client.get(answers[0].json()["data"]["get_result"]["url"], headers=AUTH)
        clock.advance(0.5)
        refilled = await client.post(SUBMIT, json={"prompt": "x"}, headers=AUTH)
        empty = await client.post(SUBMIT, json={"prompt": "x"}, headers=AUTH)
    assert [a.status_code for a in answers] == [200, 200, 429]
    assert answers[2].headers["retry-after"] == "0.500"
    assert "request rate limit" in answers[2].json()["message"]
    assert poll.status_code == 200  # scope "submit": polls are not counted
    assert refilled.status_code == 200
    assert empty.status_code == 429
    assert sim.stats()["faults"]["rate_limit"] == 2


async def test_rate_limit_scope_all_counts_polls_too() -> None:
    clock = FakeClock()
    sim = make_sim(clock, rate_limit=1.0, rate_limit_scope="all")
    async with client_for(sim) as client:
        submitted = await client.post(SUBMIT, json={"prompt": "x"}, headers=AUTH)
        poll = await client.get(submitted.json()["data"]["get_result"]["url"], headers=AUTH)
    assert submitted.status_code == 200
    assert poll.status_code == 429
    assert poll.headers["retry-after"] == "1"


async def test_integer_retry_after_rounds_up_to_whole_seconds() -> None:
    clock = FakeClock()
    sim = make_sim(clock, rate_limit=4.0, rate_burst=1, integer_retry_after=True)
    async with client_for(sim) as client:
        await client.post(SUBMIT, json={"prompt": "x"}, headers=AUTH)
        refused = await client.post(SUBMIT, json={"prompt": "x"}, headers=AUTH)
    assert refused.headers["retry-after"] == "1"


async def test_failed_tasks_end_failed_without_a_result() -> None:
    clock = FakeClock()
    sim = make_sim(clock, fail_rate=1.0, latency=Latency.fixed(5))
    async with client_for(sim) as client:
        task_id = (await client.post(SUBMIT, json={"prompt": "x"}, headers=AUTH)).json()["data"][
            "task_id"
        ]
        clock.advance(5)
        data = (await client.get(f"/api/v1/tasks/{task_id}", headers=AUTH)).json()["data"]
        file = await client.get(f"/files/{task_id}/0.png")
    assert data == {
        "status": "failed",
        "task_id": task_id,
        "model_id": "gpt-image-1.5",
        "duration": 5000,
    }
    assert file.status_code == 404
    assert sim.stats()["tasks"]["failed"] == 1
    assert sim.stats()["faults"] == {"task_failed": 1}


async def test_failed_error_field_adds_the_retired_error_message() -> None:
    clock = FakeClock()
    sim = make_sim(clock, fail_rate=1.0, failed_error_field=True)
    async with client_for(sim) as client:
        url = (await client.post(SUBMIT, json={"prompt": "x"}, headers=AUTH)).json()["data"][
            "get_result"
        ]["url"]
        clock.advance(10)
        data = (await client.get(url, headers=AUTH)).json()["data"]
    assert data["status"] == "failed"
    assert "error" in data


async def test_fail_rate_fails_about_that_fraction_of_tasks_deterministically() -> None:
    outcomes = []
    for _ in range(2):
        clock = FakeClock()
        sim = make_sim(clock, seed=5, fail_rate=0.3, latency=Latency.fixed(1))
        async with client_for(sim) as client:
            urls = [
                (await client.post(SUBMIT, json={"prompt": "x"}, headers=AUTH)).json()["data"][
                    "get_result"
                ]["url"]
                for _ in range(100)
            ]
            clock.advance(1)
            outcomes.append(
                [(await client.get(u, headers=AUTH)).json()["data"]["status"] for u in urls]
            )
    assert outcomes[0] == outcomes[1]
    assert 15 <= outcomes[0].count("failed") <= 45


@pytest.mark.parametrize("status", [403, 404, 410])
async def test_result_urls_expire_after_the_ttl(status: int) -> None:
    clock = FakeClock()
    sim = make_sim(
        clock, latency=Latency.fixed(10), result_ttl=100, time_scale=0.1, expired_status=status
    )
    async with client_for(sim) as client:
        task_id = (await client.post(SUBMIT, json={"prompt": "x"}, headers=AUTH)).json()["data"][
            "task_id"
        ]
        clock.advance(1)  # simulated 10 s: the task ended
        data = (await client.get(f"/api/v1/tasks/{task_id}", headers=AUTH)).json()["data"]
        fresh = await client.get(f"/files/{task_id}/0.png")
        clock.advance(9.99)
        still = await client.get(f"/files/{task_id}/0.png")
        clock.advance(0.02)
        gone = await client.get(f"/files/{task_id}/0.png")
    ext = data["result"]["extensions"]
    # Wall-clock times: 100 simulated seconds at time_scale 0.1 are 10 real seconds.
    assert data["result_expires_at"] - ext["end_time"] in (9, 10, 11)
    assert fresh.status_code == 200
    assert still.status_code == 200
    assert gone.status_code == status
    assert gone.json()["code"] == status
    assert sim.stats()["faults"]["expired_url"] == 1


async def test_expired_rate_kills_some_result_urls_from_the_start() -> None:
    clock = FakeClock()
    sim = make_sim(clock, expired_rate=1.0, latency=Latency.fixed(1))
    async with client_for(sim) as client:
        task_id = (await client.post(SUBMIT, json={"prompt": "x"}, headers=AUTH)).json()["data"][
            "task_id"
        ]
        clock.advance(1)
        assert (await client.get(f"/api/v1/tasks/{task_id}", headers=AUTH)).json()["data"][
            "status"
        ] == "success"
        file = await client.get(f"/files/{task_id}/0.png")
    assert file.status_code == 410


async def test_slow_downloads_stream_in_chunks_paced_by_the_byte_rate(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pauses: list[float] = []

    async def record(seconds: float) -> None:
        pauses.append(seconds)

    monkeypatch.setattr(simulator_module.asyncio, "sleep", record)
    clock = FakeClock()
    sim = make_sim(
        clock, latency=Latency.fixed(1), download_bytes_per_second=50_000, download_chunk_size=8192
    )
    async with client_for(sim) as client:
        task_id = (await client.post(SUBMIT, json={"prompt": "x"}, headers=AUTH)).json()["data"][
            "task_id"
        ]
        clock.advance(1)
        expected_len = len(simulator_module.png_bytes(1024, 1024, alpha=False, text=task_id))
        file = await client.get(f"/files/{task_id}/0.png")
    assert file.status_code == 200
    assert len(file.content) == expected_len
    assert len(pauses) == -(-expected_len // 8192)
    assert sum(pauses) == pytest.approx(expected_len / 50_000)


@pytest.mark.parametrize("http", ["h11", "httptools"])
async def test_dropped_connection_over_uvicorn_closes_without_an_answer(http: str) -> None:
    pytest.importorskip(http)
    sim = Simulator(SimulatorConfig(drop_rate=1.0, fault_routes=frozenset({"poll"})))
    with serve_in_thread(sim, http=http) as base_url:
        async with httpx.AsyncClient(base_url=base_url) as client:
            submitted = await client.post(SUBMIT, json={"prompt": "x"}, headers=AUTH)
            for _ in range(3):
                with pytest.raises(httpx.RemoteProtocolError):
                    await client.get(submitted.json()["data"]["get_result"]["url"], headers=AUTH)
            stats = (await client.get("/_sim/stats")).json()
    assert submitted.status_code == 200
    assert stats["faults"] == {"dropped_connection": 3}
    assert stats["status_codes"] == {"200": 1}


def test_config_refuses_impossible_knobs() -> None:
    for knobs in (
        {"error_500_rate": 0.6, "drop_rate": 0.6},
        {"fail_rate": 1.5},
        {"time_scale": 0},
        {"expired_status": 500},
        {"max_concurrent_tasks": 0},
        {"rate_limit": 0},
        {"api_key": ""},
        {"fault_routes": frozenset({"stats"})},
    ):
        with pytest.raises(ValueError):  # noqa: PT011
            SimulatorConfig(**knobs)  # type: ignore[arg-type]


def test_with_faults_switches_every_random_fault_kind_on() -> None:
    config = SimulatorConfig(seed=9).with_faults(0.1)
    assert config.seed == 9
    assert (
        config.error_500_rate,
        config.error_503_rate,
        config.error_429_rate,
        config.drop_rate,
        config.fail_rate,
        config.expired_rate,
    ) == (0.1,) * 6


@pytest.mark.parametrize(
    ("text", "latency"),
    [
        ("7", Latency.fixed(7)),
        ("fixed:2.5", Latency.fixed(2.5)),
        ("uniform:5..20", Latency.uniform(5, 20)),
        ("lognormal:12,0.5", Latency.lognormal(12, 0.5)),
    ],
)
def test_latency_specs_parse_and_print_back(text: str, latency: Latency) -> None:
    assert Latency.parse(text) == latency
    assert Latency.parse(str(latency)) == latency


@pytest.mark.parametrize("text", ["", "uniform:5", "uniform:9..1", "gamma:1,2", "lognormal:0,1"])
def test_bad_latency_specs_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="latenc"):
        Latency.parse(text)


def test_latency_samples_follow_their_distribution() -> None:
    rng = random.Random(1)
    uniform = [Latency.uniform(5, 20).sample(rng) for _ in range(500)]
    lognormal = sorted(Latency.lognormal(12, 0.5).sample(rng) for _ in range(501))
    assert all(5 <= x <= 20 for x in uniform)
    assert 8 < lognormal[250] < 16
    assert lognormal[-1] > 20
    assert Latency.fixed(3).sample(rng) == 3
