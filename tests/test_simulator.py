"""The simulator's core routes answer with the documented shapes (in process)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest
from simhelpers import AUTH, KEY, SUBMIT, FakeClock, check_png, client_for, make_sim

from batchgen.simulator.app import Latency, Simulator, SimulatorConfig, StatusNames

pytestmark = pytest.mark.anyio


async def submit(client: httpx.AsyncClient, **body: object) -> httpx.Response:
    return await client.post(SUBMIT, json={"prompt": "a red fox", **body}, headers=AUTH)


async def test_submit_answers_the_documented_shape_with_an_absolute_poll_url() -> None:
    async with client_for(make_sim()) as client:
        answer = await submit(client)
    assert answer.status_code == 200
    doc = answer.json()
    assert doc["code"] == 0
    assert doc["message"] == "success"
    data = doc["data"]
    assert set(data) == {"status", "task_id", "model_id", "get_result"}
    assert data["status"] == "pending"
    assert data["task_id"].startswith("task-openai-")
    assert data["get_result"] == {
        "method": "GET",
        "url": f"http://127.0.0.1/api/v1/tasks/{data['task_id']}",
    }


async def test_task_moves_pending_processing_success_as_its_clock_advances() -> None:
    clock = FakeClock()
    sim = make_sim(clock, latency=Latency.fixed(10), pending_fraction=0.2)
    async with client_for(sim) as client:
        task_id = (await submit(client, size="1536x1024")).json()["data"]["task_id"]

        async def status() -> dict[str, object]:
            answer = await client.get(f"/api/v1/tasks/{task_id}", headers=AUTH)
            assert answer.status_code == 200
            data: dict[str, object] = answer.json()["data"]
            return data

        assert await status() == {
            "status": "pending",
            "task_id": task_id,
            "model_id": "gpt-image-1.5",
        }
        clock.advance(2.5)
        assert (await status())["status"] == "processing"
        clock.advance(7.49)
        assert (await status())["status"] == "processing"
        clock.advance(0.02)
        data = await status()
    assert data["status"] == "success"
    assert data["task_id"] == task_id
    assert data["duration"] == 10000
    result = data["result"]
    assert isinstance(result, dict)
    assert set(result) == {"resources", "metadata", "extensions"}
    (resource,) = result["resources"]
    assert resource == {
        "url": f"http://127.0.0.1/files/{task_id}/0.png",
        "type": "image",
        "width": 1536,
        "height": 1024,
        "format": "png",
        "role": "primary",
    }
    assert result["metadata"]["image_count"] == 1
    assert isinstance(result["metadata"]["request_id"], str)
    extensions = result["extensions"]
    assert extensions["end_time"] - extensions["submit_time"] in (9, 10, 11)


async def test_reported_times_are_wall_clock_times_whatever_the_time_scale() -> None:
    """At time_scale 0.01 a 15-minute session simulates 25 hours; ``submit_time`` and
    ``end_time`` still never run ahead of the real clock: the task's simulated 600 s took 6
    real seconds, and that is what they span."""
    clock = FakeClock()
    sim = make_sim(clock, latency=Latency.fixed(600), time_scale=0.01)
    before = time.time()
    async with client_for(sim) as client:
        clock.advance(900)  # 15 real minutes of other work first
        task_id = (await submit(client)).json()["data"]["task_id"]
        clock.advance(6.01)
        answer = await client.get(f"/api/v1/tasks/{task_id}", headers=AUTH)
    data = answer.json()["data"]
    assert data["duration"] == 600_000  # the simulated duration is reported as such
    ext = data["result"]["extensions"]
    assert ext["end_time"] - ext["submit_time"] in (5, 6, 7)
    # The simulator's clock moved 906 s past its start: never ahead by the simulated hours.
    assert ext["submit_time"] <= int(time.time()) + 900 + 2
    assert ext["submit_time"] >= int(before) + 900 - 2


async def test_time_scale_shrinks_real_time_but_not_the_reported_duration() -> None:
    clock = FakeClock()
    sim = make_sim(clock, latency=Latency.fixed(10), time_scale=0.01)
    async with client_for(sim) as client:
        task_id = (await submit(client)).json()["data"]["task_id"]
        clock.advance(0.099)
        running = (await client.get(f"/api/v1/tasks/{task_id}", headers=AUTH)).json()
        clock.advance(0.002)
        done = (await client.get(f"/api/v1/tasks/{task_id}", headers=AUTH)).json()
    assert running["data"]["status"] == "processing"
    assert done["data"]["status"] == "success"
    assert done["data"]["duration"] == 10000


async def test_result_file_is_a_valid_png_of_the_requested_size() -> None:
    clock = FakeClock()
    sim = make_sim(clock, latency=Latency.fixed(1))
    async with client_for(sim) as client:
        ids = [
            (await submit(client, size=size, background=bg)).json()["data"]["task_id"]
            for size, bg in (("1024x1536", "opaque"), ("1024x1024", "transparent"))
        ]
        clock.advance(1)
        files = []
        for task_id in ids:
            data = (await client.get(f"/api/v1/tasks/{task_id}", headers=AUTH)).json()["data"]
            url = data["result"]["resources"][0]["url"]
            answer = await client.get(url)  # result URLs need no key, like a CDN's
            assert answer.status_code == 200
            assert answer.headers["content-type"] == "image/png"
            files.append(answer.content)
    assert check_png(files[0]) == (1024, 1536, 2)
    assert check_png(files[1]) == (1024, 1024, 6)


async def test_each_task_gets_a_distinct_file_and_the_same_file_on_every_download() -> None:
    clock = FakeClock()
    sim = make_sim(clock, latency=Latency.fixed(1))
    async with client_for(sim) as client:
        first = (await submit(client)).json()["data"]["task_id"]
        second = (await submit(client)).json()["data"]["task_id"]
        clock.advance(1)
        a1 = (await client.get(f"/files/{first}/0.png")).content
        a2 = (await client.get(f"/files/{first}/0.png")).content
        b = (await client.get(f"/files/{second}/0.png")).content
    assert a1 == a2
    assert a1 != b


async def test_file_of_a_running_or_unknown_task_is_404() -> None:
    async with client_for(make_sim()) as client:
        task_id = (await submit(client)).json()["data"]["task_id"]
        running = await client.get(f"/files/{task_id}/0.png")
        unknown = await client.get("/files/task-openai-nope/0.png")
    assert running.status_code == 404
    assert unknown.status_code == 404


async def test_invalid_bodies_get_400_in_the_provider_format() -> None:
    async with client_for(make_sim()) as client:
        bad_size = await submit(client, size="1536x1000")
        extra = await submit(client, colour="red")
        empty = await client.post(SUBMIT, json={}, headers=AUTH)
        not_json = await client.post(SUBMIT, content=b"{nope", headers=AUTH)
    for answer in (bad_size, extra, empty, not_json):
        assert answer.status_code == 400
        doc = answer.json()
        assert doc["code"] == 400
        assert doc["message"].startswith("Invalid parameters: ")
    assert "1536x1000" in bad_size.json()["message"]
    assert "colour" in extra.json()["message"]
    assert "prompt" in empty.json()["message"]


@pytest.mark.parametrize(
    ("headers", "detail"),
    [({}, "missing"), ({"Authorization": "Bearer wrong-key"}, "invalid")],
)
async def test_missing_or_wrong_key_gets_401_without_echoing_it(
    headers: dict[str, str], detail: str
) -> None:
    sim = make_sim()
    async with client_for(sim) as client:
        posted = await client.post(SUBMIT, json={"prompt": "x"}, headers=headers)
        polled = await client.get("/api/v1/tasks/task-openai-x", headers=headers)
    for answer in (posted, polled):
        assert answer.status_code == 401
        assert answer.json()["code"] == 401
        assert answer.json()["message"].startswith("Unauthorized: ")
        assert detail in answer.json()["message"]
        assert "wrong-key" not in answer.text
        assert KEY not in answer.text
    assert sim.stats()["submissions"]["accepted"] == 0


async def test_api_key_none_accepts_requests_without_a_key() -> None:
    async with client_for(make_sim(api_key=None)) as client:
        answer = await client.post(SUBMIT, json={"prompt": "x"})
    assert answer.status_code == 200


async def test_balance_answers_402_after_n_accepted_tasks() -> None:
    sim = make_sim(balance=2)
    async with client_for(sim) as client:
        codes = [(await submit(client, quality=q)).status_code for q in ("low", "medium", "high")]
        refused = await submit(client)
    assert codes == [200, 200, 402]
    assert refused.json()["code"] == 402
    assert refused.json()["message"].startswith("Insufficient balance: ")
    stats = sim.stats()
    assert stats["submissions"]["accepted"] == 2
    assert stats["faults"]["payment_required"] == 2


async def test_unknown_task_model_route_and_method_answer_in_the_error_format() -> None:
    async with client_for(make_sim()) as client:
        task = await client.get("/api/v1/tasks/task-openai-missing", headers=AUTH)
        model = await client.post("/api/v1/acme/nothing/async", json={}, headers=AUTH)
        method = await client.get(SUBMIT, headers=AUTH)
    assert task.status_code == 404
    assert task.json() == {
        "code": 404,
        "message": "Not Found: task 'task-openai-missing' does not exist",
    }
    assert model.status_code == 404
    assert model.json()["code"] == 404
    assert method.status_code == 405
    assert method.headers["allow"] == "POST"


async def test_status_names_can_use_the_documented_variants() -> None:
    clock = FakeClock()
    names = StatusNames(pending="queued", processing="running", success="completed")
    sim = make_sim(clock, latency=Latency.fixed(1), status_names=names)
    async with client_for(sim) as client:
        submitted = (await submit(client)).json()["data"]
        clock.advance(0.5)
        running = (await client.get(f"/api/v1/tasks/{submitted['task_id']}", headers=AUTH)).json()
        clock.advance(1)
        done = (await client.get(f"/api/v1/tasks/{submitted['task_id']}", headers=AUTH)).json()
    assert submitted["status"] == "queued"
    assert running["data"]["status"] == "running"
    assert done["data"]["status"] == "completed"


async def test_every_model_with_a_schema_file_is_served_at_its_submit_path(
    tmp_path: Path,
) -> None:
    models = tmp_path / "models" / "acme"
    models.mkdir(parents=True)
    schema = {
        "type": "object",
        "properties": {"prompt": {"type": "string"}, "size": {"default": "64x32"}},
        "required": ["prompt"],
        "additionalProperties": False,
    }
    (models / "tiny.json").write_text(json.dumps(schema))
    other = dict(schema, **{"x-batchgen": {"submit_path": "/api/v1/acme/other"}})
    (models / "other.json").write_text(json.dumps(other))
    clock = FakeClock()
    sim = Simulator(SimulatorConfig(latency=Latency.fixed(1)), clock=clock, schema_dir=tmp_path)
    assert sim.models == ["acme/other", "acme/tiny"]
    assert sim.submit_path("acme/other") == "/api/v1/acme/other"
    async with client_for(sim) as client:
        tiny = await client.post("/api/v1/acme/tiny/async", json={"prompt": "p"}, headers=AUTH)
        other_answer = await client.post("/api/v1/acme/other", json={"prompt": "p"}, headers=AUTH)
        clock.advance(1)
        task_id = tiny.json()["data"]["task_id"]
        data = (await client.get(f"/api/v1/tasks/{task_id}", headers=AUTH)).json()["data"]
    assert other_answer.status_code == 200
    assert data["model_id"] == "tiny"
    assert data["result"]["resources"][0]["width"] == 64
    assert data["result"]["resources"][0]["height"] == 32


async def test_default_simulator_serves_the_shipped_model_schemas() -> None:
    sim = Simulator()
    assert "openai/gpt-image-1.5" in sim.models
    assert sim.submit_path("openai/gpt-image-1.5") == SUBMIT


async def test_seeded_simulators_give_the_same_task_ids_and_latencies() -> None:
    runs = []
    for _ in range(2):
        clock = FakeClock()
        sim = make_sim(clock, seed=7, latency=Latency.uniform(1, 20))
        async with client_for(sim) as client:
            ids = [(await submit(client)).json()["data"]["task_id"] for _ in range(5)]
            clock.advance(30)
            durations = [
                (await client.get(f"/api/v1/tasks/{i}", headers=AUTH)).json()["data"]["duration"]
                for i in ids
            ]
        runs.append((ids, durations))
    assert runs[0] == runs[1]
    assert len(set(runs[0][1])) == 5
