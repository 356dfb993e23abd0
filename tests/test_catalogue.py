"""The model catalogue: one schema file per model, its x-batchgen block, user folders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from batchgen.manifest import catalogue
from batchgen.manifest.catalogue import SchemaFileError, available_models, load_model
from batchgen.manifest.modelspec import all_specs, expected_images, list_price, model_spec

REPO = Path(__file__).resolve().parent.parent
DOCUMENTED = [
    "alibaba/qwen-image",
    "alibaba/qwen-image-2.0",
    "alibaba/qwen-image-edit-plus-2025-10-30",
    "alibaba/wan2.7-image",
    "bytedance/seedream-4.5-t2i",
    "bytedance/seedream-5.0-lite-edit",
    "kling/kling-image-o1",
    "kling/kling-v2.1-i2i",
    "kling/kling-v2.1-t2i",
    "minimax/minimax-image-01-t2i",
    "openai/gpt-image-1.5",
    "openai/gpt-image-1.5-edit",
    "openai/gpt-image-2",
    "openai/gpt-image-2-edit",
]


@pytest.fixture(autouse=True)
def _no_user_dirs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BATCHGEN_SCHEMAS", raising=False)
    catalogue.set_schema_dirs([])


def test_every_documented_model_ships_a_closed_schema_with_an_x_batchgen_block() -> None:
    assert available_models() == DOCUMENTED
    for spec in all_specs():
        assert spec.validator.closed, spec.id
        assert spec.submit_paths[0].startswith("/api/v1/"), spec.id
        assert "{" not in "".join(spec.submit_paths), spec.id


def test_expected_images_resolves_n_from_the_body_or_the_models_default() -> None:
    wan = model_spec("alibaba/wan2.7-image")
    assert wan.outputs_field == "n"
    assert expected_images(wan, {"prompt": "x"}) == 4
    assert expected_images(wan, {"prompt": "x", "n": 2}) == 2
    assert expected_images(model_spec("openai/gpt-image-1.5"), {"prompt": "x"}) == 1


def test_batch_mode_counts_only_when_it_is_switched_on() -> None:
    seedream = model_spec("bytedance/seedream-4.5-t2i")
    assert expected_images(seedream, {"prompt": "x"}) == 1
    on = {"prompt": "x", "sequential_image_generation": "auto"}
    assert expected_images(seedream, on) == 15
    assert expected_images(seedream, {**on, "sequential_image_generation_max_images": 3}) == 3


def test_list_prices_follow_the_known_rules_and_are_none_when_unknown() -> None:
    gpt = model_spec("openai/gpt-image-1.5")
    assert list_price(gpt, {"prompt": "x"}) == pytest.approx(0.009)
    assert list_price(gpt, {"prompt": "x", "quality": "medium", "size": "1024x1536"}) == 0.05
    assert list_price(gpt, {"prompt": "x", "quality": "high"}) == 0.133
    assert list_price(model_spec("bytedance/seedream-5.0-lite-edit"), {}) == 0.037
    assert list_price(model_spec("kling/kling-image-o1"), {"prompt": "x"}) is None


def test_image_inputs_carry_their_limits() -> None:
    o1 = model_spec("kling/kling-image-o1").image_input("images")
    assert o1 is not None
    assert (o1.max_count, o1.max_bytes, o1.data_uri) == (10, 10 * 1024 * 1024, True)
    edit = model_spec("openai/gpt-image-1.5-edit").image_input("images")
    assert edit is not None
    assert not edit.data_uri


def _write(folder: Path, name: str, schema: dict) -> Path:
    path = folder / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(schema), encoding="utf-8")
    return path


def test_a_user_folder_adds_models_and_takes_precedence_over_the_shipped_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shipped = json.loads((REPO / "schemas/models/openai/gpt-image-1.5.json").read_text())
    shipped["properties"]["size"]["enum"] = ["512x512"]
    _write(tmp_path / "mine", "openai/gpt-image-1.5", shipped)
    _write(tmp_path / "env", "acme/painter", {"type": "object", "properties": {}})
    monkeypatch.setenv("BATCHGEN_SCHEMAS", str(tmp_path / "env"))
    catalogue.set_schema_dirs([tmp_path / "mine"])
    assert "acme/painter" in available_models()
    assert load_model("openai/gpt-image-1.5").properties["size"]["enum"] == ["512x512"]
    catalogue.set_schema_dirs([])
    assert load_model("openai/gpt-image-1.5").properties["size"]["enum"] != ["512x512"]


def test_a_broken_x_batchgen_block_is_an_error_naming_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    schema = {"type": "object", "x-batchgen": {"task_type": "text-to-image", "outputs": 3}}
    path = _write(tmp_path, "acme/broken", schema)
    monkeypatch.setenv("BATCHGEN_SCHEMAS", str(tmp_path))
    with pytest.raises(SchemaFileError) as caught:
        load_model("acme/broken")
    assert str(path) in str(caught.value)
    assert "x-batchgen" in str(caught.value)
