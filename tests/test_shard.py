"""Shards: a deterministic partition of job IDs."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from batchgen.cli import main
from batchgen.manifest.shard import (
    Shard,
    ShardError,
    filter_shard,
    in_shard,
    parse_shard,
    shard_run_dir,
)
from batchgen.manifest.types import job_id_for
from batchgen.store.state import StateStore

job_ids = st.builds(
    lambda prompt, r: job_id_for("openai/gpt-image-1.5", {"prompt": prompt}, r),
    st.text(min_size=1, max_size=30),
    st.integers(min_value=0, max_value=5),
)


@given(job_id=job_ids, count=st.integers(min_value=1, max_value=64))
def test_every_job_is_in_exactly_one_shard(job_id: str, count: int) -> None:
    owners = [i for i in range(1, count + 1) if in_shard(job_id, Shard(i, count))]
    assert owners == [int(job_id, 16) % count + 1]


@given(ids=st.lists(job_ids, max_size=40, unique=True), count=st.integers(1, 8))
def test_shards_partition_a_job_list(ids: list[str], count: int) -> None:
    class J:
        def __init__(self, job_id: str) -> None:
            self.job_id = job_id

    jobs = [J(i) for i in ids]
    parts = [[j.job_id for j in filter_shard(jobs, Shard(i, count))] for i in range(1, count + 1)]
    assert sorted(x for p in parts for x in p) == sorted(ids)
    assert list(filter_shard(jobs, None)) == jobs


@pytest.mark.parametrize(("text", "shard"), [("1/1", Shard(1, 1)), (" 2 / 4 ", Shard(2, 4))])
def test_parse_shard(text: str, shard: Shard) -> None:
    assert parse_shard(text) == shard
    assert str(shard) == text.replace(" ", "")


@pytest.mark.parametrize("text", ["0/4", "5/4", "1/0", "2", "a/b", "-1/3", "1/2/3"])
def test_parse_shard_refuses_bad_values(text: str) -> None:
    with pytest.raises(ShardError):
        parse_shard(text)


def test_shard_run_dir_gets_its_own_suffix() -> None:
    assert shard_run_dir(Path("out/p-2026-11-24"), Shard(2, 4)) == Path(
        "out/p-2026-11-24-shard-2-of-4"
    )
    assert shard_run_dir(Path("out/p"), None) == Path("out/p")


def test_non_hex_job_id_is_an_error() -> None:
    with pytest.raises(ShardError):
        in_shard("not-hex", Shard(1, 2))


def test_run_shards_in_own_directories_and_export_merges_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = tmp_path / "m.yaml"
    manifest.write_text(
        "version: 1\n"
        "name: shardy\n"
        "model: openai/gpt-image-1.5\n"
        "limits: {concurrency: 8, rate: 100/s, retries: 1, timeout: 5m}\n"
        "jobs:\n"
        "  - prompt: '{subject}, study'\n"
        "    matrix:\n"
        "      subject: [a red fox, a lighthouse, a teacup, an owl, a kite, a boat, a cat]\n"
    )
    out = tmp_path / "out" / "{name}"
    dirs = []
    for i in (1, 2, 3):
        args = ["run", str(manifest), "--simulate", "--output", str(out), "--shard", f"{i}/3"]
        assert main(args) == 0
        dirs.append(tmp_path / "out" / f"shardy-shard-{i}-of-3")
    capsys.readouterr()
    ids = []
    for d in dirs:
        with StateStore.open_readonly(d) as store:
            assert store.settings()["shard"] == f"{dirs.index(d) + 1}/3"
            mine = store.job_ids()
        assert all(in_shard(j, Shard(dirs.index(d) + 1, 3)) for j in mine)
        ids.extend(mine)
    assert len(ids) == len(set(ids)) == 7
    assert main(["export", *map(str, dirs)]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert len(rows) == 7
    with pytest.raises(SystemExit) as exit_info:
        main(["run", str(manifest), "--shard", "4/3"])
    assert exit_info.value.code == 2
    assert "shard index" in capsys.readouterr().err
