"""Makes finished downloads durable on one worker thread, a batch at a time.

An image is durable once its file and its folder are fsynced, which blocks for
milliseconds: on the event loop that would stall every poll.  Handing each image
to its own thread (``asyncio.to_thread``) costs more CPU than the work itself:
a thread wake-up, a loop wake-up and a tug-of-war for the GIL around each of a
dozen system calls.  Here downloads queue their checked images; one worker takes
everything queued at once, fsyncs and renames each file, fsyncs the folder once
(:meth:`batchgen.store.outputs.OutputDir.commit`), and one call back into the loop
resolves the whole batch.  While the worker is busy the next batch gathers.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from dataclasses import dataclass

from batchgen.store.outputs import ImageFile, OutputDir
from batchgen.store.records import ResultInfo

__all__ = ["ImageCommitter"]


@dataclass
class _Item:
    image: ImageFile
    result: ResultInfo
    loop: asyncio.AbstractEventLoop
    done: asyncio.Future[None]


class ImageCommitter:
    """Commits checked images of an :class:`OutputDir` on one worker thread, in batches.

    ``await committer.commit(image, result)`` returns once the image is durable under
    ``result.result_path`` and raises the ``OSError`` that stopped it otherwise.  A
    cancelled wait that the worker has not reached yet discards its image instead.
    :meth:`close` (also the end of a ``with`` block) waits for the queue to empty and
    stops the worker.
    """

    def __init__(self, output: OutputDir) -> None:
        self._output = output
        self._ready = threading.Condition()
        self._queue: list[_Item] = []
        self._worker: threading.Thread | None = None
        self._closed = False

    async def commit(self, image: ImageFile, result: ResultInfo) -> None:
        """Make ``image`` durable under ``result.result_path`` (fsync, rename, folder fsync)."""
        loop = asyncio.get_running_loop()
        item = _Item(image, result, loop, loop.create_future())
        with self._ready:
            if self._closed:
                raise RuntimeError("the image committer is closed")
            self._queue.append(item)
            if self._worker is None:
                self._worker = threading.Thread(
                    target=self._work, name="batchgen-image-commit", daemon=True
                )
                self._worker.start()
            else:
                self._ready.notify()
        await item.done

    def close(self) -> None:
        """Commit what is queued, then stop the worker (blocks until it has)."""
        with self._ready:
            self._closed = True
            self._ready.notify()
            worker = self._worker
        if worker is not None:
            worker.join()

    def __enter__(self) -> ImageCommitter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _work(self) -> None:
        while True:
            with self._ready:
                while not self._queue and not self._closed:
                    self._ready.wait()
                if not self._queue:
                    return
                batch, self._queue = self._queue, []
            wanted: list[_Item] = []
            for item in batch:
                if item.done.cancelled():
                    item.image.discard()  # nobody waits for it any more
                else:
                    wanted.append(item)
            if not wanted:
                continue
            outcomes: list[BaseException | None]
            try:
                outcomes = list(self._output.commit([(i.image, i.result) for i in wanted]))
            except BaseException as exc:
                for item in wanted:
                    item.image.discard()
                outcomes = [exc] * len(wanted)
            by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Item, BaseException | None]]] = {}
            for item, outcome in zip(wanted, outcomes, strict=True):
                by_loop.setdefault(item.loop, []).append((item, outcome))
            for loop, settled in by_loop.items():
                with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits
                    loop.call_soon_threadsafe(_settle, settled)


def _settle(settled: list[tuple[_Item, BaseException | None]]) -> None:
    for item, outcome in settled:
        if item.done.done():
            continue
        if outcome is None:
            item.done.set_result(None)
        else:
            item.done.set_exception(outcome)
