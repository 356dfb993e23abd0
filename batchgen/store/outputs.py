"""The run directory's outputs: atomic, checked image files and ``metadata.jsonl``.

A download goes to ``images/.<job_id>.<pid>.tmp`` through an :class:`ImageFile`,
which checks it from the bytes written (length, magic bytes, complete trailer:
PNG ``IEND``, JPEG ``FFD9``, WEBP RIFF size); :meth:`OutputDir.commit` fsyncs it,
renames it to ``images/<job_id>.<ext>`` (``images/<job_id>-<i>.<ext>``, i from 0, when the
task returned several images) and fsyncs the directory, once for a whole batch of images.
``metadata.jsonl`` gets one line per image of a done job, in the shape the ``datasets``
library's ``imagefolder`` builder loads (``file_name`` relative to the run directory, then
``job_id`` and the image's ``index``); it can always be rebuilt from the state file
(:func:`rebuild_metadata`).  Nothing is ever written outside the run directory:
job IDs and formats are validated first.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import re
import struct
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal

from batchgen.errors import BatchgenError
from batchgen.manifest.inputs import sniff_format as _sniff_any_format
from batchgen.store.queries import legacy_image
from batchgen.store.records import DONE, ImageRecord, JobRecord, ResultInfo
from batchgen.store.state import StateStore

__all__ = [
    "EXTENSIONS",
    "ImageCheckError",
    "ImageFile",
    "ImageInfo",
    "OutputDir",
    "check_image",
    "check_image_bytes",
    "image_file_stem",
    "metadata_record",
    "open_atomic",
    "rebuild_metadata",
    "sniff_format",
]

#: Image formats batchgen writes, and the file extension each gets.
EXTENSIONS: dict[str, str] = {"png": "png", "jpeg": "jpg", "webp": "webp"}
_EXTS = frozenset(EXTENSIONS.values())
_FORMAT_ALIASES = {"png": "png", "jpeg": "jpeg", "jpg": "jpeg", "webp": "webp"}
_JOB_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")
_PNG_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"
_HEAD = 65536
_RUN_TEMP_RE = re.compile(r"\.(metadata\.jsonl|metrics\.prom)\.[0-9]+\.tmp")
METADATA_NAME = "metadata.jsonl"
IMAGES_DIR = "images"


class ImageCheckError(BatchgenError):
    """A downloaded file is not a complete image of an allowed format."""


@dataclass(frozen=True)
class ImageInfo:
    """What the checks learnt about an image file."""

    format: str  # "png" | "jpeg" | "webp"
    width: int | None
    height: int | None
    bytes: int


def _check_job_id(job_id: str) -> str:
    if not _JOB_ID_RE.fullmatch(job_id):
        raise ValueError(f"unsafe job id {job_id[:40]!r}")
    return job_id


def normalize_format(fmt: str | None) -> str | None:
    """The canonical name of an allowed format (``jpg`` → ``jpeg``), or ``None``."""
    if fmt is None:
        return None
    return _FORMAT_ALIASES.get(fmt.strip().lower())


def sniff_format(head: bytes) -> str | None:
    """The image format from its first bytes (``png``, ``jpeg``, ``webp``) or ``None`` (any
    other format, even one :func:`batchgen.manifest.inputs.sniff_format` knows)."""
    fmt = _sniff_any_format(head)
    return fmt if fmt in EXTENSIONS else None


def _png_size(head: bytes) -> tuple[int | None, int | None]:
    if len(head) >= 24 and head[12:16] == b"IHDR":
        w, h = struct.unpack(">II", head[16:24])
        return int(w), int(h)
    return None, None


def _jpeg_size(head: bytes) -> tuple[int | None, int | None]:
    i = 2
    n = len(head)
    while i + 9 < n:
        if head[i] != 0xFF:
            i += 1
            continue
        marker = head[i + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7 or marker == 0xFF:
            i += 1 if marker == 0xFF else 2
            continue
        (length,) = struct.unpack(">H", head[i + 2 : i + 4])
        if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE):
            h, w = struct.unpack(">HH", head[i + 5 : i + 9])
            return int(w), int(h)
        i += 2 + length
    return None, None


def _webp_size(head: bytes) -> tuple[int | None, int | None]:
    chunk = head[12:16]
    if chunk == b"VP8X" and len(head) >= 30:
        w = int.from_bytes(head[24:27], "little") + 1
        h = int.from_bytes(head[27:30], "little") + 1
        return w, h
    if chunk == b"VP8 " and len(head) >= 30 and head[23:26] == b"\x9d\x01\x2a":
        w, h = struct.unpack("<HH", head[26:30])
        return int(w) & 0x3FFF, int(h) & 0x3FFF
    if chunk == b"VP8L" and len(head) >= 25 and head[20] == 0x2F:
        b = int.from_bytes(head[21:25], "little")
        return (b & 0x3FFF) + 1, ((b >> 14) & 0x3FFF) + 1
    return None, None


def check_image(path: str | os.PathLike[str], *, expected_bytes: int | None = None) -> ImageInfo:
    """Check that ``path`` is a complete PNG, JPEG or WEBP file; raise :class:`ImageCheckError`.

    Checks the length (against ``expected_bytes`` when given), the magic bytes
    and the trailer; reads only the head and the tail of the file.
    """
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(_HEAD)
        f.seek(max(size - 16, 0))
        tail = f.read(16)
    return check_image_bytes(head, tail, size, expected_bytes=expected_bytes)


def check_image_bytes(
    head: bytes, tail: bytes, size: int, *, expected_bytes: int | None = None
) -> ImageInfo:
    """:func:`check_image` on what it reads: the first 64 KiB, the last 16 bytes, the size."""
    if expected_bytes is not None and size != expected_bytes:
        raise ImageCheckError(f"file has {size} bytes, expected {expected_bytes}")
    if size < 16:
        raise ImageCheckError(f"file too short to be an image ({size} bytes)")
    fmt = sniff_format(head)
    if fmt == "png":
        if not tail.endswith(_PNG_IEND):
            raise ImageCheckError("PNG is truncated (no IEND trailer)")
        w, h = _png_size(head)
    elif fmt == "jpeg":
        if not tail.endswith(b"\xff\xd9"):
            raise ImageCheckError("JPEG is truncated (no FFD9 end marker)")
        w, h = _jpeg_size(head)
    elif fmt == "webp":
        (riff,) = struct.unpack("<I", head[4:8])
        if riff + 8 != size:
            raise ImageCheckError(f"WEBP is truncated (RIFF says {riff + 8} bytes, file {size})")
        w, h = _webp_size(head)
    else:
        raise ImageCheckError(f"not a PNG, JPEG or WEBP image (starts with {head[:8].hex()})")
    return ImageInfo(format=fmt, width=w, height=h, bytes=size)


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return _dt.datetime.fromtimestamp(ts, _dt.timezone.utc).isoformat(timespec="milliseconds")


def image_file_stem(job_id: str, index: int | None) -> str:
    """The file name (without extension) of a job's image: ``<job_id>`` for a task's only
    image (``index`` ``None``), else ``<job_id>-<index>``."""
    _check_job_id(job_id)
    return job_id if index is None else f"{job_id}-{int(index)}"


def metadata_record(job: JobRecord, image: ImageRecord | None = None) -> dict[str, Any]:
    """The ``metadata.jsonl`` line of one image of a done job (``file_name`` first, as
    imagefolder wants); without ``image``, the image the job's own row records."""
    image = image if image is not None else legacy_image(job)
    record: dict[str, Any] = {
        "file_name": image.path if image else job.result_path,
        "job_id": job.job_id,
        "index": image.index if image else 0,
    }
    record["prompt"] = job.body.get("prompt")
    for key, value in job.body.items():
        record.setdefault(key, value)
    record.update(
        {
            "model": job.model,
            "task_id": (image.task_id if image else None) or job.task_id,
            "sha256": image.sha256 if image else job.sha256,
            "width": image.width if image else job.width,
            "height": image.height if image else job.height,
            "bytes": image.bytes if image else job.bytes,
            "submitted_at": _iso(job.submitted_at),
            "finished_at": _iso(job.finished_at),
        }
    )
    return record


def _line(record: Mapping[str, Any]) -> bytes:
    return (json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ImageFile:
    """A download on its way to ``images/``: the open temp file and what the checks need.

    :meth:`write` takes the body as it arrives and keeps its head and tail, so
    :meth:`check` never reads the file back; :meth:`OutputDir.commit` makes it durable
    under its final name; :meth:`discard` removes it.
    """

    def __init__(self, job_id: str, path: str, index: int | None = None) -> None:
        self.job_id = _check_job_id(job_id)
        self.index = index
        self.stem = image_file_stem(job_id, index)
        self.path = path
        self.size = 0
        self._head = bytearray()
        self._tail = b""
        self._fd: int | None = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)

    def write(self, data: bytes) -> int:
        """Append ``data`` to the file (all of it; ``OSError`` such as ENOSPC propagates)."""
        if self._fd is None:
            raise ValueError("write to a closed image file")
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]
        if len(self._head) < _HEAD:
            self._head += data[: _HEAD - len(self._head)]
        self._tail = (self._tail + data[-16:])[-16:]
        self.size += len(data)
        return len(data)

    def check(self, *, expected_bytes: int | None = None, sha256: str) -> ResultInfo:
        """Check the bytes written (see :func:`check_image`); return what to record once
        the file is committed.  The format comes from the bytes, never from a declaration."""
        info = check_image_bytes(
            bytes(self._head), self._tail, self.size, expected_bytes=expected_bytes
        )
        return ResultInfo(
            result_path=f"{IMAGES_DIR}/{self.stem}.{EXTENSIONS[info.format]}",
            sha256=sha256,
            bytes=info.bytes,
            format=info.format,
            width=info.width,
            height=info.height,
        )

    def place(self, final: str) -> None:
        """fsync the file, close it and rename it to ``final`` (the folder is not fsynced)."""
        if self._fd is None:
            raise ValueError("image file already closed")
        fd, self._fd = self._fd, None
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(self.path, final)

    def discard(self) -> None:
        """Close and remove the temp file (nothing happens when it is already gone)."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


class OutputDir:
    """The ``images/`` folder and ``metadata.jsonl`` of one run directory."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.images = self.run_dir / IMAGES_DIR
        self.metadata_path = self.run_dir / METADATA_NAME
        self._meta: IO[bytes] | None = None
        self._unsynced = 0
        self._dir_fd: int | None = None
        self._pid = os.getpid()
        self._run_dir_str = os.fspath(self.run_dir)
        self._images_str = os.fspath(self.images)

    # ------------------------------------------------------------------ start
    def prepare(self, store: StateStore | None = None) -> dict[str, int]:
        """Make ``images/``; remove leftover temp files; with ``store``, remove image files of
        jobs that are not done (a crash between rename and commit) and rebuild
        ``metadata.jsonl`` when it does not have one complete line per done job."""
        self.images.mkdir(mode=0o700, parents=True, exist_ok=True)
        removed_tmp = removed_stray = 0
        # Temp files of a killed run: rewrites of metadata.jsonl / metrics.prom (the caller
        # holds the run lock, so no live process is writing them).
        for name in os.listdir(self.run_dir):
            if _RUN_TEMP_RE.fullmatch(name):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.run_dir / name)
                removed_tmp += 1
        names = os.listdir(self.images)
        for name in names:
            if name.startswith(".") and name.endswith(".tmp"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.images / name)
                removed_tmp += 1
        rebuilt = 0
        if store is not None:
            done = store.done_result_paths()  # recorded images, also of jobs not done yet
            for name in names:
                stem, _, ext = name.rpartition(".")
                if ext not in _EXTS or not _JOB_ID_RE.fullmatch(stem):
                    continue  # not a file batchgen writes: leave it
                if f"{IMAGES_DIR}/{name}" not in done:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(self.images / name)
                    removed_stray += 1
            if self._metadata_lines() != store.image_counts()["done"]:
                rebuilt = rebuild_metadata(store, self.run_dir)
        return {"temp_files": removed_tmp, "stray_images": removed_stray, "rebuilt": rebuilt}

    def _metadata_lines(self) -> int:
        try:
            with open(self.metadata_path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return 0
        if data and not data.endswith(b"\n"):
            return -1  # a torn last line: rebuild
        return data.count(b"\n")

    # -------------------------------------------------------------- downloads
    def temp_path(self, job_id: str, index: int | None = None) -> Path:
        """The temporary download file of ``job_id`` (image ``index``) for this process."""
        return self.images / self._temp_name(job_id, index)

    def _temp_name(self, job_id: str, index: int | None) -> str:
        return f".{image_file_stem(job_id, index)}.{self._pid}.tmp"

    def new_image(self, job_id: str, index: int | None = None) -> ImageFile:
        """A fresh temporary file (mode 0600) for the download of ``job_id``: its only image
        (``index`` ``None``) or image ``index`` of several."""
        # Plain strings: a pathlib join per image cost more than the file's creation in Python.
        return ImageFile(
            job_id, os.path.join(self._images_str, self._temp_name(job_id, index)), index
        )

    def commit(self, images: Sequence[tuple[ImageFile, ResultInfo]]) -> list[OSError | None]:
        """Make checked downloads durable under their final names; blocks (run it off the loop).

        Each file is fsynced and renamed to its ``result_path``, then ``images/`` is fsynced
        once for the whole batch.  Returns, in order, ``None`` for each image now durable or
        the ``OSError`` that stopped it; a failed image's temp file is removed, and when the
        folder's fsync fails every image of the batch gets that error (their files stay, and
        :meth:`prepare` removes them on the next run unless their jobs were marked done).

        Another format's file of the same job is not looked for: after :meth:`prepare`, no job
        that is not done has an image file.
        """
        outcomes: list[OSError | None] = []
        placed = False
        for image, result in images:
            try:
                image.place(os.path.join(self._run_dir_str, result.result_path))
            except OSError as exc:
                image.discard()
                outcomes.append(exc)
            else:
                outcomes.append(None)
                placed = True
        if placed:
            try:
                os.fsync(self._images_fd())
            except OSError as exc:
                return [exc] * len(outcomes)
        return outcomes

    def _images_fd(self) -> int:
        if self._dir_fd is None:
            self._dir_fd = os.open(self.images, os.O_RDONLY | os.O_DIRECTORY)
        return self._dir_fd

    # --------------------------------------------------------------- metadata
    def append_metadata(self, job: JobRecord, images: Sequence[ImageRecord] = ()) -> None:
        """Append the lines of a done job, one per image (default: the one its row records), to
        ``metadata.jsonl`` in one write (written through at once: a process kill loses
        nothing; :meth:`sync` / :meth:`close` fsync it)."""
        if self._meta is None:
            fd = os.open(self.metadata_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            self._meta = os.fdopen(fd, "ab", buffering=0)
        if images:
            self._meta.write(b"".join(_line(metadata_record(job, image)) for image in images))
        else:
            self._meta.write(_line(metadata_record(job)))
        self._unsynced += 1

    def sync(self) -> None:
        """fsync ``metadata.jsonl`` if lines were appended since the last sync."""
        if self._meta is not None and self._unsynced:
            os.fsync(self._meta.fileno())
            self._unsynced = 0

    def close(self) -> None:
        """fsync and close ``metadata.jsonl`` (and the folder handle :meth:`commit` keeps)."""
        if self._meta is not None:
            self.sync()
            self._meta.close()
            self._meta = None
        if self._dir_fd is not None:
            os.close(self._dir_fd)
            self._dir_fd = None


@contextlib.contextmanager
def open_atomic(
    path: Path, mode: Literal["w", "wb"], *, perms: int, fsync: bool = True
) -> Iterator[IO[Any]]:
    """A file written in full or not at all: a temp file next to ``path`` (created with
    ``perms``), flushed, fsynced (unless ``fsync`` is false) and renamed over ``path`` when the
    block ends without error, removed otherwise.  Text mode ``"w"`` writes UTF-8 without newline
    translation."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, perms)
    try:
        f = os.fdopen(fd, "w", encoding="utf-8", newline="") if mode == "w" else os.fdopen(fd, "wb")
        with f:
            yield f
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def rebuild_metadata(store: StateStore, run_dir: Path) -> int:
    """Rewrite ``metadata.jsonl`` from the state file (atomically); returns the line count."""
    run_dir = Path(run_dir)
    n = 0
    with open_atomic(run_dir / METADATA_NAME, "wb", perms=0o600) as f:
        for job in store.iter_jobs([DONE]):
            for image in store.job_images(job.job_id):
                f.write(_line(metadata_record(job, image)))
                n += 1
    _fsync_dir(run_dir)
    return n
