"""Image checks, atomic commits of downloads and metadata.jsonl."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import stat
import struct
import tempfile
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from batchgen.store.outputs import (
    EXTENSIONS,
    ImageCheckError,
    ImageInfo,
    OutputDir,
    check_image,
    rebuild_metadata,
    sniff_format,
)
from batchgen.store.state import ResultInfo, StateStore


def png(width: int = 3, height: int = 2) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    raw = b"".join(b"\x00" + b"\x10\x20\x30" * width for _ in range(height))
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def jpeg(width: int = 5, height: int = 4) -> bytes:
    app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, height, width, 1) + b"\x01\x11\x00"
    return (
        b"\xff\xd8"
        + app0
        + sof
        + b"\xff\xda\x00\x08\x01\x01\x00\x00\x3f\x00"
        + b"\x00" * 10
        + b"\xff\xd9"
    )


def webp(width: int = 7, height: int = 6) -> bytes:
    vp8x = b"VP8X" + struct.pack("<I", 10) + b"\x00\x00\x00\x00"
    vp8x += (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    payload = b"WEBP" + vp8x
    return b"RIFF" + struct.pack("<I", len(payload)) + payload


@pytest.mark.parametrize(
    ("data", "fmt", "size"),
    [(png(3, 2), "png", (3, 2)), (jpeg(5, 4), "jpeg", (5, 4)), (webp(7, 6), "webp", (7, 6))],
)
def test_complete_images_pass_with_their_format_and_size(
    tmp_path: Path, data: bytes, fmt: str, size: tuple[int, int]
) -> None:
    path = tmp_path / "x"
    path.write_bytes(data)
    info = check_image(path, expected_bytes=len(data))
    assert (info.format, (info.width, info.height), info.bytes) == (fmt, size, len(data))
    assert sniff_format(data[:16]) == fmt


@pytest.mark.parametrize("data", [png(), jpeg(), webp()])
def test_truncated_images_fail(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "x"
    path.write_bytes(data[:-3])
    with pytest.raises(ImageCheckError, match="truncated"):
        check_image(path)


def test_length_mismatch_and_non_images_fail(tmp_path: Path) -> None:
    path = tmp_path / "x"
    path.write_bytes(png())
    with pytest.raises(ImageCheckError, match="expected"):
        check_image(path, expected_bytes=len(png()) + 1)
    path.write_bytes(b"<html>not an image at all</html>")
    with pytest.raises(ImageCheckError, match="not a PNG"):
        check_image(path)


def big_png() -> bytes:
    """A PNG past the 64 KiB head the checks keep (a large ancillary chunk in the middle)."""
    small = png(4, 3)
    pad = b"x" * 70_000
    chunk = struct.pack(">I", len(pad)) + b"teXt" + pad + struct.pack(">I", zlib.crc32(pad))
    return small[:33] + chunk + small[33:]


def _outcome(check: Callable[[], ImageInfo | ResultInfo]) -> tuple[object, ...]:
    try:
        info = check()
    except ImageCheckError as exc:
        return ("refused", str(exc))
    return (info.format, info.width, info.height, info.bytes)


@settings(max_examples=60, deadline=None)
@given(
    data=st.sampled_from([png(), jpeg(), webp(), big_png(), b"GIF89a not allowed here..."]),
    cut=st.integers(min_value=0, max_value=40),
    extra=st.binary(max_size=20),
    splits=st.lists(st.integers(min_value=0, max_value=80_000), max_size=6),
)
def test_image_file_checks_the_bytes_written_as_check_image_checks_the_file(
    data: bytes, cut: int, extra: bytes, splits: list[int]
) -> None:
    """However the body arrives in chunks, the in-stream check agrees with reading the file."""
    body = (data[: len(data) - cut] if cut else data) + extra
    bounds = sorted({0, len(body), *(min(x, len(body)) for x in splits)})
    with tempfile.TemporaryDirectory() as tmp:
        out = OutputDir(Path(tmp))
        out.prepare()
        image = out.new_image("j1")
        for a, b in itertools.pairwise(bounds):
            image.write(body[a:b])
        assert image.size == len(body)
        from_file = _outcome(lambda: check_image(image.path, expected_bytes=len(body)))
        from_stream = _outcome(lambda: image.check(expected_bytes=len(body), sha256="0" * 64))
        assert from_stream == from_file
        if from_file[0] in EXTENSIONS:
            path = image.check(sha256="0" * 64).result_path
            assert path == f"images/j1.{EXTENSIONS[str(from_file[0])]}"
        image.discard()
        assert os.listdir(out.images) == []


def test_commit_places_each_image_and_removes_only_the_one_that_failed(tmp_path: Path) -> None:
    out = OutputDir(tmp_path)
    out.prepare()
    batch = []
    for job_id, data in (("a1", png()), ("b2", jpeg()), ("c3", webp())):
        image = out.new_image(job_id)
        image.write(data)
        batch.append((image, image.check(sha256=hashlib.sha256(data).hexdigest())))
    # b2's final name is taken by a folder: its rename fails, the others go through.
    (tmp_path / "images" / "b2.jpg").mkdir()
    outcomes = out.commit(batch)
    out.close()
    assert [type(o).__name__ for o in outcomes] == ["NoneType", "IsADirectoryError", "NoneType"]
    assert sorted(os.listdir(tmp_path / "images")) == ["a1.png", "b2.jpg", "c3.webp"]
    assert (tmp_path / "images" / "a1.png").read_bytes() == png()
    assert (tmp_path / "images" / "c3.webp").read_bytes() == webp()
    assert stat.S_IMODE(os.stat(tmp_path / "images" / "c3.webp").st_mode) == 0o600


def make_done_job(store: StateStore, out: OutputDir, job_id: str, data: bytes) -> None:
    store.mark_submitting(job_id)
    store.mark_running(job_id, f"task-{job_id}", None)
    store.mark_downloading(job_id)
    image = out.new_image(job_id)
    image.write(data)
    result = image.check(expected_bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
    assert out.commit([(image, result)]) == [None]
    store.mark_done(job_id, result)
    out.append_metadata(store.get(job_id))


class Job:
    def __init__(self, job_id: str, prompt: str) -> None:
        self.job_id = job_id
        self.model = "openai/gpt-image-1.5"
        self.body = {"prompt": prompt, "size": "1024x1024", "quality": "low"}
        self.repeat_index = 0
        self.group = "jobs[0]"


def test_committed_images_are_in_place_and_metadata_lines_match(tmp_path: Path) -> None:
    run = tmp_path / "run"
    with StateStore.open(run) as store:
        store.add_jobs([Job("a1", "a fox"), Job("b2", "a teacup")])
        out = OutputDir(run)
        out.prepare(store)
        make_done_job(store, out, "a1", png(4, 4))
        make_done_job(store, out, "b2", jpeg(8, 6))
        out.close()
        assert sorted(os.listdir(run / "images")) == ["a1.png", "b2.jpg"]
        assert stat.S_IMODE(os.stat(run / "images" / "a1.png").st_mode) == 0o600
        lines = [json.loads(x) for x in (run / "metadata.jsonl").read_text().splitlines()]
        assert [x["file_name"] for x in lines] == ["images/a1.png", "images/b2.jpg"]
        first = lines[0]
        assert first["prompt"] == "a fox"
        assert (first["size"], first["quality"], first["task_id"]) == (
            "1024x1024",
            "low",
            "task-a1",
        )
        assert (first["width"], first["height"], first["bytes"]) == (4, 4, len(png(4, 4)))
        assert first["sha256"] == store.get("a1").sha256
        assert first["submitted_at"].endswith("+00:00")
        before = (run / "metadata.jsonl").read_bytes()
        (run / "metadata.jsonl").unlink()
        assert rebuild_metadata(store, run) == 2
        assert (run / "metadata.jsonl").read_bytes() == before


def test_a_bad_download_is_refused_from_the_bytes_written_and_discarded(tmp_path: Path) -> None:
    out = OutputDir(tmp_path)
    out.prepare()
    image = out.new_image("j1")
    image.write(png()[:-5])
    with pytest.raises(ImageCheckError, match="truncated"):
        image.check(sha256="0" * 64)
    assert os.listdir(tmp_path / "images") == [os.path.basename(image.path)]
    image.discard()
    assert os.listdir(tmp_path / "images") == []


def test_unsafe_job_ids_are_refused(tmp_path: Path) -> None:
    out = OutputDir(tmp_path)
    out.prepare()
    for bad in ("../evil", "a/b", "", ".hidden", "x" * 200):
        with pytest.raises(ValueError, match="unsafe"):
            out.temp_path(bad)
    assert not (tmp_path.parent / "evil").exists()


def test_prepare_cleans_temp_files_stray_images_and_torn_metadata(tmp_path: Path) -> None:
    run = tmp_path / "run"
    with StateStore.open(run) as store:
        store.add_jobs([Job("a1", "a fox"), Job("b2", "a teacup")])
        out = OutputDir(run)
        out.prepare(store)
        make_done_job(store, out, "a1", png())
        out.close()
        (run / "images" / ".b2.999.tmp").write_bytes(b"partial")
        (run / "images" / "b2.png").write_bytes(png())  # renamed, but the commit was lost
        (run / "images" / "notes.txt").write_text("user file")
        with open(run / "metadata.jsonl", "ab") as f:
            f.write(b'{"file_name": "images/b2.pn')  # torn line
        report = OutputDir(run).prepare(store)
        assert report == {"temp_files": 1, "stray_images": 1, "rebuilt": 1}
        assert sorted(os.listdir(run / "images")) == ["a1.png", "notes.txt"]
        assert len((run / "metadata.jsonl").read_text().splitlines()) == 1
