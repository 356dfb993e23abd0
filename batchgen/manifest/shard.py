"""Deterministic slices of a manifest's jobs: ``batchgen run MANIFEST --shard i/N``.

Job IDs are hex hashes (:func:`batchgen.manifest.types.job_id_for`), so ``int(job_id, 16) % N``
spreads jobs evenly and the same job always lands in the same shard, on every host
and in every run.  Shard ``i`` (1-based) takes the jobs with ``int(job_id, 16) % N ==
i - 1``; the N shards together take every job exactly once.  Each shard runs in its own
run directory (suffix ``-shard-i-of-N``), and ``batchgen export`` merges them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

from batchgen.errors import BatchgenError, ExitCode

__all__ = ["Shard", "ShardError", "filter_shard", "in_shard", "parse_shard", "shard_run_dir"]

_SHARD_RE = re.compile(r"\s*(\d+)\s*/\s*(\d+)\s*")
MAX_SHARDS = 1_000_000


class ShardError(BatchgenError, ValueError):
    """A ``--shard`` value that is not ``i/N`` with ``1 <= i <= N``."""

    exit_code = ExitCode.USAGE


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` (1-based) of ``count``."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if not 1 <= self.count <= MAX_SHARDS:
            raise ShardError(f"shard count must be between 1 and {MAX_SHARDS}, not {self.count}")
        if not 1 <= self.index <= self.count:
            raise ShardError(
                f"shard index must be between 1 and {self.count}, not {self.index} "
                "(shards are numbered from 1)"
            )

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    @property
    def suffix(self) -> str:
        """The run directory's suffix: ``-shard-2-of-4``."""
        return f"-shard-{self.index}-of-{self.count}"


def parse_shard(text: str) -> Shard:
    """``"2/4"`` -> ``Shard(2, 4)``; :class:`ShardError` for anything else."""
    m = _SHARD_RE.fullmatch(text)
    if not m:
        raise ShardError(f"invalid shard {text!r}: expected i/N, e.g. 2/4 (numbered from 1)")
    return Shard(int(m.group(1)), int(m.group(2)))


def in_shard(job_id: str, shard: Shard) -> bool:
    """Whether ``job_id`` (a hex job ID) belongs to ``shard``."""
    try:
        value = int(job_id, 16)
    except ValueError:
        raise ShardError(f"job ID {job_id[:40]!r} is not hexadecimal") from None
    return value % shard.count == shard.index - 1


class _HasJobId(Protocol):
    @property
    def job_id(self) -> str: ...


_J = TypeVar("_J", bound=_HasJobId)


def filter_shard(jobs: Iterable[_J], shard: Shard | None) -> Iterator[_J]:
    """The jobs (anything with a ``job_id``) of ``shard``; every job when ``shard`` is None."""
    for job in jobs:
        if shard is None or in_shard(job.job_id, shard):
            yield job


def shard_run_dir(run_dir: Path, shard: Shard | None) -> Path:
    """``output/products-2026-11-24`` -> ``output/products-2026-11-24-shard-2-of-4``."""
    if shard is None:
        return Path(run_dir)
    run_dir = Path(run_dir)
    return run_dir.with_name(run_dir.name + shard.suffix)
