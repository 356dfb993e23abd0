"""What a run shows while it works: a tqdm bar on a terminal, log lines otherwise."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Mapping
from typing import IO, Any

__all__ = ["JsonFormatter", "Progress", "setup_logging"]

logger = logging.getLogger("batchgen.run")

_SHOWN = (
    "done",
    "running",
    "downloading",
    "submitting",
    "pending",
    "failed",
    "rejected",
    "expired",
)


class JsonFormatter(logging.Formatter):
    """One JSON object per log line: ``ts``, ``level``, ``msg`` and any ``extra={"data": ...}``."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        data = getattr(record, "data", None)
        if isinstance(data, Mapping):
            out.update(data)
        if record.exc_info and record.exc_info[0] is not None:
            out["error"] = f"{record.exc_info[0].__name__}: {record.exc_info[1]}"
        return json.dumps(out, ensure_ascii=False, default=str)


def setup_logging(
    fmt: str = "text", stream: IO[str] | None = None, level: int = logging.INFO
) -> None:
    """Send batchgen's log records to ``stream`` (stderr) as plain text or JSON lines."""
    handler = logging.StreamHandler(stream or sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    root = logging.getLogger("batchgen")
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    root.propagate = False


def format_counts(counts: Mapping[str, int]) -> str:
    """``done=3 running=2 ...`` for the states that have jobs."""
    return " ".join(f"{k}={counts[k]}" for k in _SHOWN if counts.get(k))


class Progress:
    """Progress reporting: a tqdm bar when ``bar`` (a terminal), else a log line every
    ``interval`` seconds when the counts changed."""

    def __init__(self, total: int, *, bar: bool | None = None, interval: float = 5.0) -> None:
        self.total = total
        self.interval = interval
        self._last_log = 0.0
        self._last_counts: dict[str, int] = {}
        self._bar: Any = None
        if bar is None:
            bar = sys.stderr.isatty()
        if bar:
            from tqdm import tqdm  # noqa: PLC0415 - only on a terminal

            self._bar = tqdm(total=total, unit="img", dynamic_ncols=True, file=sys.stderr)

    def update(self, counts: Mapping[str, int], *, force: bool = False) -> None:
        """Show the current counts per state."""
        ended = sum(counts.get(k, 0) for k in ("done", "failed", "rejected", "expired"))
        if self._bar is not None:
            self._bar.n = ended
            self._bar.set_postfix_str(format_counts(counts), refresh=False)
            self._bar.refresh()
            return
        now = time.monotonic()
        if dict(counts) == self._last_counts and not force:
            return
        if force or now - self._last_log >= self.interval:
            self._last_log = now
            self._last_counts = dict(counts)
            logger.info(
                "progress %d/%d %s",
                ended,
                self.total,
                format_counts(counts),
                extra={
                    "data": {"event": "progress", "ended": ended, "total": self.total, **counts}
                },
            )

    def close(self) -> None:
        """Remove the bar (if any)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
