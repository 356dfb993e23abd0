"""The simulator's tasks: :class:`SimTask` (one accepted task, its timing and fate drawn at
submit) and :class:`TaskStore` (every task of one simulator, in memory, with the heap of end
times that counts the tasks still active).  A task's progress is computed from timestamps when
it is polled: no timer or background work exists per task.  :func:`result_body` is the poll
answer of a task that has ended."""

from __future__ import annotations

import hashlib
import heapq
import json
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

from batchgen.simulator.journal import StoredTask
from batchgen.simulator.models import SimModel
from batchgen.simulator.protocol import FILES_PREFIX, dumps
from batchgen.simulator.settings import SimulatorConfig

__all__ = ["SimTask", "TaskStore", "canonical_key", "result_body"]


def canonical_key(model: str, body: object) -> bytes:
    """A compact key for "the same body": a digest of the model and canonical JSON."""
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.blake2b(f"{model}\n{text}".encode(), digest_size=16).digest()


class SimTask:
    """One accepted task (times on the simulator's real clock)."""

    __slots__ = (
        "alpha",
        "downloads",
        "duration_ms",
        "ends_at",
        "expired_early",
        "fails",
        "final",
        "height",
        "ident",
        "images",
        "model",
        "polls",
        "processing_at",
        "submitted_at",
        "task_id",
        "width",
    )

    def __init__(
        self,
        task_id: str,
        model: SimModel,
        *,
        submitted_at: float,
        latency: float,
        real_latency: float,
        pending_fraction: float,
        fails: bool,
        expired_early: bool,
        size: tuple[int, int],
        alpha: bool,
        images: int = 1,
    ) -> None:
        self.task_id = task_id
        self.model = model
        self.submitted_at = submitted_at
        self.processing_at = submitted_at + real_latency * pending_fraction
        self.ends_at = submitted_at + real_latency
        self.duration_ms = round(latency * 1000)
        self.fails = fails
        self.expired_early = expired_early
        self.width, self.height = size
        self.alpha = alpha
        self.images = images
        self.polls = 0
        self.downloads = 0
        self.final: tuple[str, bytes] | None = None
        ident = {"task_id": task_id, "model_id": model.model_id}
        self.ident = dumps(ident)[1:-1]


class TaskStore:
    """Every task of one simulator, by id, and the accepted bodies (for the statistics)."""

    def __init__(self) -> None:
        self._tasks: dict[str, SimTask] = {}
        self._ends: list[float] = []  # heap: end times of tasks not known to have ended
        self.accepted_bodies: Counter[bytes] = Counter()
        self.peak = 0

    def __len__(self) -> int:
        return len(self._tasks)

    def __iter__(self) -> Iterator[SimTask]:
        return iter(self._tasks.values())

    def get(self, task_id: str) -> SimTask | None:
        """The task ``task_id``, or ``None``."""
        return self._tasks.get(task_id)

    def new_task_id(self, seed: int, provider: str) -> str:
        """The id the next task gets (deterministic under the seed)."""
        digest = hashlib.sha256(f"{seed}:{len(self._tasks)}".encode()).hexdigest()[:20]
        return f"task-{provider}-{digest}"

    def add(self, task: SimTask, body_key: bytes, active_before: int) -> None:
        """Keep an accepted task (``active_before``: tasks active when it was submitted)."""
        self._tasks[task.task_id] = task
        self.accepted_bodies[body_key] += 1
        heapq.heappush(self._ends, task.ends_at)
        self.peak = max(self.peak, active_before + 1)

    def restore(self, task: SimTask, body_key: bytes, now: float) -> None:
        """Know again a task a journal recorded (a restarted simulator)."""
        self._tasks[task.task_id] = task
        self.accepted_bodies[body_key] += 1
        if task.ends_at > now:
            heapq.heappush(self._ends, task.ends_at)

    def active(self, now: float) -> int:
        """Tasks submitted and not ended at ``now``."""
        ends = self._ends
        while ends and ends[0] <= now:
            heapq.heappop(ends)
        return len(ends)

    def next_end(self) -> float:
        """When the first active task ends (call after :meth:`active` found some)."""
        return self._ends[0]

    def stats(self, now: float) -> dict[str, Any]:
        """The ``tasks`` part of the simulator's statistics, and poll/download counts."""
        ended = [task for task in self._tasks.values() if task.ends_at <= now]
        failed = sum(1 for task in ended if task.fails)
        return {
            "accepted": len(self._tasks),
            "active": self.active(now),
            "peak_concurrent": self.peak,
            "ended": len(ended),
            "succeeded": len(ended) - failed,
            "failed": failed,
        }


def stored_task(
    task: SimTask, submitted_wall: float, body_key: bytes, price: float | None
) -> StoredTask:
    """What the journal keeps of ``task`` (real-time offsets from its submit)."""
    return StoredTask(
        task_id=task.task_id,
        model=task.model.name,
        submitted_wall=submitted_wall,
        processing_after=task.processing_at - task.submitted_at,
        ends_after=task.ends_at - task.submitted_at,
        duration_ms=task.duration_ms,
        fails=task.fails,
        expired_early=task.expired_early,
        width=task.width,
        height=task.height,
        alpha=task.alpha,
        images=task.images,
        body_key=body_key,
        price=price,
    )


def task_from_record(record: StoredTask, model: SimModel, submitted_at: float) -> SimTask:
    """The task a journal recorded, submitted at clock reading ``submitted_at``."""
    ends = record.ends_after
    return SimTask(
        record.task_id,
        model,
        submitted_at=submitted_at,
        latency=record.duration_ms / 1000,
        real_latency=ends,
        pending_fraction=record.processing_after / ends if ends > 0 else 0.0,
        fails=record.fails,
        expired_early=record.expired_early,
        size=(record.width, record.height),
        alpha=record.alpha,
        images=record.images,
    )


def result_body(
    task: SimTask, base: str, config: SimulatorConfig, epoch: Callable[[float], float]
) -> bytes:
    """The poll answer of an ended task: its ``k`` result files under ``base``, or its
    failure; ``epoch`` turns a clock reading into real Unix time."""
    names = config.status_names
    data: dict[str, Any] = {
        "status": names.failed if task.fails else names.success,
        "task_id": task.task_id,
        "model_id": task.model.model_id,
        "duration": task.duration_ms,
    }
    if task.fails:
        if config.failed_error_field:
            data["error"] = "Simulated failure: the model could not generate the image"
    else:
        submit_time = epoch(task.submitted_at)
        scale = config.time_scale  # the task took its simulated duration, scaled
        end_time = submit_time + task.duration_ms / 1000 * scale
        data["result"] = {
            "resources": [
                {
                    "url": f"{base}{FILES_PREFIX}{task.task_id}/{i}.png",
                    "type": "image",
                    "width": task.width,
                    "height": task.height,
                    "format": "png",
                    "role": "primary",
                }
                for i in range(task.images)
            ],
            "metadata": {
                "image_count": task.images,
                "request_id": "req-" + task.task_id[5:],
            },
            "extensions": {"submit_time": int(submit_time), "end_time": int(end_time)},
        }
        if config.result_ttl is not None:
            data["result_expires_at"] = int(end_time + config.result_ttl * scale)
    return dumps({"code": 0, "message": "success", "data": data})
