"""The simulator validates submitted bodies through the catalogue: the same messages as
``batchgen validate``, in the provider's 400 shape."""

from __future__ import annotations

import pytest
from simhelpers import AUTH, client_for, make_sim

from batchgen.manifest.catalogue import load_model

pytestmark = pytest.mark.anyio

GPT = "openai/gpt-image-1.5"


@pytest.mark.parametrize(
    "body",
    [
        {"prompt": "a fox", "size": "1536x1000"},
        {"prompt": "a fox", "colour": "red"},
        {},
        {"prompt": "a fox", "quality": "ultra", "size": 3},
    ],
    ids=["enum", "unknown-field", "missing-prompt", "two-problems"],
)
async def test_a_refused_body_gets_the_catalogues_messages_in_the_providers_shape(
    body: dict[str, object],
) -> None:
    model = load_model(GPT)
    expected = model.validate(body)
    assert expected  # the body is invalid for the catalogue too
    async with client_for(make_sim()) as client:
        answer = await client.post(model.submit_path, json=body, headers=AUTH)
    assert answer.status_code == 400
    assert answer.json() == {"code": 400, "message": "Invalid parameters: " + "; ".join(expected)}


async def test_a_body_that_is_not_an_object_is_refused_with_400() -> None:
    async with client_for(make_sim()) as client:
        answer = await client.post(load_model(GPT).submit_path, json=["a fox"], headers=AUTH)
    assert answer.status_code == 400
    assert answer.json()["message"].startswith("Invalid parameters: ")


async def test_a_body_the_catalogue_accepts_is_accepted() -> None:
    model = load_model(GPT)
    body = {"prompt": "a fox", "size": "1536x1024", "quality": "high"}
    assert model.validate(body) == []
    async with client_for(make_sim()) as client:
        answer = await client.post(model.submit_path, json=body, headers=AUTH)
    assert answer.status_code == 200, answer.text
