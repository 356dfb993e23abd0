"""Small WebP thumbnails of a run's images, made once and kept: the gallery's ``thumbs/``.

A thumbnail's file name is a key of its source image's content: the sha256 the state file
recorded for it when there is one, else a hash of the source's path, size and mtime.  An
existing thumbnail is never made again, so a second call after more images arrived makes
only the new ones.  Each thumbnail is written to a temporary name and renamed, so an
interrupted call leaves no half-written file under a final name.  Sources that cannot be
decoded are reported, not raised.

Thumbnails are made in parallel (:func:`make_thumbnails`), one worker per core: threads by
default (Pillow releases the GIL while it decodes and resizes; safe from any caller), or
worker processes (``parallelism="process"``, or ``"auto"`` for batches of
:data:`PROCESS_THRESHOLD` or more).  Processes start with ``forkserver`` (never ``fork``:
the caller may have threads), so a calling script needs the ``if __name__ == "__main__":``
guard; ``batchgen gallery`` uses ``"auto"``.
"""

from __future__ import annotations

import contextlib
import hashlib
import multiprocessing
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from PIL import Image

__all__ = [
    "PROCESS_THRESHOLD",
    "THUMB_EXT",
    "THUMB_SIDE",
    "ThumbRequest",
    "ThumbStats",
    "make_thumbnail",
    "make_thumbnails",
    "thumb_key",
]

#: Longest side of a thumbnail, in pixels (shown at half that: sharp on high-DPI screens).
THUMB_SIDE = 256
THUMB_EXT = ".webp"
_QUALITY = 70

#: From this many thumbnails to make, ``parallelism="auto"`` uses worker processes.
PROCESS_THRESHOLD = 48

Parallelism = Literal["auto", "thread", "process"]


def thumb_key(source: Path, sha256: str | None) -> str | None:
    """The thumbnail file's name (without extension) for ``source``, or ``None`` when the
    source is missing.  ``sha256`` (the content hash the state file recorded) is preferred."""
    if sha256:
        return sha256[:40]
    try:
        st = source.stat()
    except OSError:
        return None
    text = f"{source.resolve()}\n{st.st_size}\n{st.st_mtime_ns}"
    return "p" + hashlib.sha256(text.encode()).hexdigest()[:39]


@dataclass(frozen=True)
class ThumbRequest:
    """One thumbnail to have: ``source`` image, ``target`` thumbnail file."""

    source: Path
    target: Path


@dataclass
class ThumbStats:
    """What :func:`make_thumbnails` did."""

    made: int = 0
    kept: int = 0  #: already there from an earlier call
    failed: dict[str, str] = field(default_factory=dict)  #: source image -> why


def make_thumbnail(source: Path, target: Path, side: int = THUMB_SIDE) -> None:
    """Write a thumbnail of ``source`` (longest side ``side``) to ``target`` atomically.

    Raises ``OSError`` or Pillow's errors when the source cannot be read or decoded.
    """
    with Image.open(source) as opened:
        opened.draft("RGB", (side, side))  # JPEG: decode at a reduced scale directly
        opened.thumbnail((side, side), Image.Resampling.BILINEAR, reducing_gap=2.0)
        im = opened
        if im.mode not in ("RGB", "RGBA"):
            alpha = "A" in im.getbands() or "transparency" in im.info
            im = im.convert("RGBA" if alpha else "RGB")
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        try:
            im.save(tmp, "WEBP", quality=_QUALITY, method=0)
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise


def _work(request: ThumbRequest) -> str | None:
    """Make one thumbnail; the reason when it cannot be made (a worker's task)."""
    try:
        make_thumbnail(request.source, request.target)
    except Exception as exc:  # any undecodable file is reported, never fatal
        return f"{type(exc).__name__}: {exc}"
    return None


def make_thumbnails(
    requests: Iterable[ThumbRequest],
    *,
    workers: int | None = None,
    parallelism: Parallelism = "thread",
) -> ThumbStats:
    """Make every requested thumbnail that does not exist yet, ``workers`` at a time
    (default: one per core); the folders of the targets must exist."""
    stats = ThumbStats()
    todo: list[ThumbRequest] = []
    seen: set[Path] = set()
    for request in requests:
        if request.target in seen:
            continue
        seen.add(request.target)
        if request.target.exists():
            stats.kept += 1
        else:
            todo.append(request)
    if not todo:
        return stats
    n = max(1, min(workers or os.cpu_count() or 1, len(todo)))
    outcomes: Sequence[str | None]
    if n == 1:
        outcomes = [_work(r) for r in todo]
    else:
        processes = parallelism == "process" or (
            parallelism == "auto" and len(todo) >= PROCESS_THRESHOLD
        )
        pool: Executor = ThreadPoolExecutor(n)
        if processes:
            # Not fork: the caller may have threads (an event loop, a state-file reader).
            methods = multiprocessing.get_all_start_methods()
            method = "forkserver" if "forkserver" in methods else "spawn"
            pool = ProcessPoolExecutor(n, mp_context=multiprocessing.get_context(method))
        with pool:
            chunk = max(1, min(32, len(todo) // (n * 8))) if processes else 1
            outcomes = list(pool.map(_work, todo, chunksize=chunk))
    for request, why in zip(todo, outcomes, strict=True):
        if why is None:
            stats.made += 1
        else:
            stats.failed[str(request.source)] = why
    return stats
