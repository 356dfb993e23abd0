"""The simulator serves every catalogue model: its shapes, its outputs, the key and balance."""

from __future__ import annotations

import httpx
import pytest
from simhelpers import AUTH, FakeClock, check_png, client_for, make_sim

from batchgen.manifest.catalogue import available_models
from batchgen.manifest.modelspec import model_spec
from batchgen.simulator.app import Latency

pytestmark = pytest.mark.anyio


def minimal_body(model: str) -> dict[str, object]:
    """The smallest valid body of ``model``: its required fields."""
    spec = model_spec(model)
    body: dict[str, object] = {}
    for name in spec.validator.required:
        sub = spec.validator.properties[name]
        body[name] = ["https://example.invalid/a.png"] if sub.get("type") == "array" else "x"
    if spec.id == "kling/kling-v2.1-i2i":
        body["image"] = "https://example.invalid/a.png"
    return body


async def finished(client: httpx.AsyncClient, clock: FakeClock, answer: httpx.Response) -> dict:
    assert answer.status_code == 200, answer.text
    clock.advance(2)
    task_id = answer.json()["data"]["task_id"]
    data: dict = (await client.get(f"/api/v1/tasks/{task_id}", headers=AUTH)).json()["data"]
    return data


async def test_every_shipped_model_is_accepted_at_all_three_submit_path_shapes() -> None:
    clock = FakeClock()
    sim = make_sim(clock, latency=Latency.fixed(1))
    assert sim.models == available_models()
    assert len(sim.models) >= 14
    async with client_for(sim) as client:
        for model in sim.models:
            spec = model_spec(model)
            provider, _, name = model.partition("/")
            for path in (
                f"/api/v1/{spec.task_type}/{provider}/{name}/async",
                f"/api/v1/{provider}/{name}/async",
                f"/api/v1/{provider}/{name}",
            ):
                answer = await client.post(path, json=minimal_body(model), headers=AUTH)
                assert answer.status_code == 200, (path, answer.text)


async def test_an_invalid_body_is_refused_with_the_providers_message_shape() -> None:
    async with client_for(make_sim()) as client:
        answer = await client.post(
            "/api/v1/kling/kling-image-o1/async",
            json={"prompt": "x", "size": "1024x1024"},
            headers=AUTH,
        )
    assert answer.status_code == 400
    doc = answer.json()
    assert doc["code"] == 400
    assert doc["message"].startswith("Invalid parameters: ")
    assert "size" in doc["message"]


async def test_wan_without_n_returns_its_default_of_four_resources_each_downloadable() -> None:
    clock = FakeClock()
    sim = make_sim(clock, latency=Latency.fixed(1))
    async with client_for(sim) as client:
        answer = await client.post(
            "/api/v1/alibaba/wan2.7-image/async", json={"prompt": "x"}, headers=AUTH
        )
        data = await finished(client, clock, answer)
        resources = data["result"]["resources"]
        assert len(resources) == 4
        assert data["result"]["metadata"]["image_count"] == 4
        for resource in resources:
            file = await client.get(resource["url"])
            assert file.status_code == 200
            check_png(file.content)
        missing = await client.get(resources[0]["url"].replace("/0.png", "/4.png"))
        assert missing.status_code == 404


async def test_n_of_k_returns_k_resources() -> None:
    clock = FakeClock()
    sim = make_sim(clock, latency=Latency.fixed(1))
    async with client_for(sim) as client:
        answer = await client.post(
            "/api/v1/kling/kling-v2.1-t2i/async", json={"prompt": "x", "n": 3}, headers=AUTH
        )
        data = await finished(client, clock, answer)
    assert len(data["result"]["resources"]) == 3


async def test_apikey_validate_accepts_the_configured_key_and_refuses_another() -> None:
    async with client_for(make_sim()) as client:
        good = await client.get("/api/v1/apikey/validate", headers=AUTH)
        bad = await client.get("/api/v1/apikey/validate", headers={"Authorization": "Bearer wrong"})
    assert good.status_code == 200
    assert good.json() == {"code": 0, "message": "success", "data": {"is_valid": True}}
    assert bad.status_code == 401


async def test_balance_falls_by_the_list_price_of_each_accepted_task() -> None:
    sim = make_sim(account_balance=12.3456)
    async with client_for(sim) as client:
        before = (await client.get("/api/v1/team/balance", headers=AUTH)).json()
        await client.post(
            "/api/v1/openai/gpt-image-1.5/async",
            json={"prompt": "x", "quality": "high", "size": "1536x1024"},
            headers=AUTH,
        )
        await client.post(
            "/api/v1/kling/kling-v2.1-t2i/async", json={"prompt": "x"}, headers=AUTH
        )  # price unknown: free here
        after = (await client.get("/api/v1/team/balance", headers=AUTH)).json()
    assert before == {"code": 0, "message": "success", "data": {"balance": 12.3456}}
    assert after["data"]["balance"] == pytest.approx(12.3456 - 0.2)
