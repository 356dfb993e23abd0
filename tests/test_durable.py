"""The image committer: downloads made durable on one worker thread, in batches."""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from batchgen.run.durable import ImageCommitter
from batchgen.simulator.png import png_bytes
from batchgen.store.outputs import ImageFile, OutputDir
from batchgen.store.state import ResultInfo


class GatedOutput(OutputDir):
    """An output folder whose commits wait for ``gate`` and are recorded batch by batch."""

    def __init__(self, run_dir: Path) -> None:
        super().__init__(run_dir)
        self.gate = threading.Event()
        self.batches: list[list[str]] = []

    def commit(self, images: Sequence[tuple[ImageFile, ResultInfo]]) -> list[OSError | None]:
        self.batches.append([image.job_id for image, _ in images])
        if not self.gate.wait(30):
            raise TimeoutError("the test never opened the gate")
        return super().commit(images)


def written(out: OutputDir, job_id: str) -> tuple[ImageFile, ResultInfo]:
    data = png_bytes(2, 2, text=job_id)
    image = out.new_image(job_id)
    image.write(data)
    return image, image.check(expected_bytes=len(data), sha256=hashlib.sha256(data).hexdigest())


async def until(condition: Callable[[], object], what: str) -> None:
    for _ in range(3000):  # 30 s at most
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never happened: {what}")


def test_waiting_commits_go_in_one_batch_and_all_become_durable(tmp_path: Path) -> None:
    out = GatedOutput(tmp_path)
    out.prepare()
    jobs = [f"j{i:02d}" for i in range(40)]

    async def main() -> None:
        with ImageCommitter(out) as committer:
            first = asyncio.ensure_future(committer.commit(*written(out, jobs[0])))
            await until(lambda: out.batches, "the worker took the first image")
            rest = [asyncio.ensure_future(committer.commit(*written(out, j))) for j in jobs[1:]]
            await asyncio.sleep(0.05)
            out.gate.set()
            await asyncio.gather(first, *rest)

    asyncio.run(main())
    out.close()
    assert out.batches == [jobs[:1], jobs[1:]]
    assert sorted(os.listdir(out.images)) == [f"{j}.png" for j in jobs]


def test_a_wait_cancelled_before_the_worker_reaches_it_discards_its_image(tmp_path: Path) -> None:
    out = GatedOutput(tmp_path)
    out.prepare()

    async def main() -> None:
        with ImageCommitter(out) as committer:
            first = asyncio.ensure_future(committer.commit(*written(out, "kept")))
            await until(lambda: out.batches, "the worker took the first image")
            dropped = asyncio.ensure_future(committer.commit(*written(out, "dropped")))
            await asyncio.sleep(0)
            dropped.cancel()
            out.gate.set()
            await first
            with pytest.raises(asyncio.CancelledError):
                await dropped

    asyncio.run(main())
    out.close()
    assert out.batches == [["kept"]]
    assert os.listdir(out.images) == ["kept.png"]  # no temp file left either


def test_a_failed_commit_raises_in_its_waiter_and_the_others_succeed(tmp_path: Path) -> None:
    out = GatedOutput(tmp_path)
    out.prepare()
    (out.images / "bad.png").mkdir()  # its final name is taken by a folder

    async def main() -> list[BaseException | None]:
        with ImageCommitter(out) as committer:
            waits = [committer.commit(*written(out, j)) for j in ("ok1", "bad", "ok2")]
            out.gate.set()
            return await asyncio.gather(*waits, return_exceptions=True)

    outcomes = asyncio.run(main())
    out.close()
    assert [type(o).__name__ for o in outcomes] == ["NoneType", "IsADirectoryError", "NoneType"]
    assert sorted(os.listdir(out.images)) == ["bad.png", "ok1.png", "ok2.png"]


def test_a_closed_committer_takes_no_more_images(tmp_path: Path) -> None:
    out = OutputDir(tmp_path)
    out.prepare()
    committer = ImageCommitter(out)

    async def main() -> None:
        await committer.commit(*written(out, "a1"))
        committer.close()
        image, result = written(out, "b2")
        with pytest.raises(RuntimeError, match="closed"):
            await committer.commit(image, result)
        image.discard()

    asyncio.run(main())
    out.close()
    assert os.listdir(out.images) == ["a1.png"]
