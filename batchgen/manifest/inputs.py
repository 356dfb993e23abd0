"""Input images: ``file:`` references to local files, checked at load, sent as data URIs.

A body field that takes images (the model's ``x-batchgen.image_inputs``) accepts
https URLs and local files written ``file:relative/path.png`` (relative to the
manifest). :class:`InputChecker` checks a reference once per file (exists, readable,
format by magic bytes, size within the model's limit, the model accepts base64) and
rewrites it to ``file:<absolute path>#sha256=<hex>``: that text is what a job body
and the state file hold (never the bytes), and :func:`batchgen.manifest.types.job_id_for`
hashes the content hash only, so changing the file's bytes makes a new job while moving
the project does not. :func:`materialize_body` turns the references into base64 data
URIs at submit time, through a cache bounded in bytes.
"""

from __future__ import annotations

import base64
import hashlib
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from batchgen.manifest.catalogue import FieldProblem
from batchgen.manifest.extension import ImageInputSpec
from batchgen.manifest.types import FILE_PREFIX, HASH_MARK

__all__ = [
    "FILE_PREFIX",
    "InputChecker",
    "materialize_body",
    "sniff_format",
]

_MIME = {
    "png": "image/png",
    "jpeg": "image/jpeg",
    "webp": "image/webp",
    "gif": "image/gif",
    "bmp": "image/bmp",
    "tiff": "image/tiff",
}
DEFAULT_CACHE_BYTES = 64 << 20


def sniff_format(head: bytes) -> str | None:
    """The image format from a file's first bytes (png, jpeg, webp, gif, bmp, tiff)."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if head.startswith(b"BM"):
        return "bmp"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    return None


@dataclass(frozen=True)
class _Checked:
    path: Path
    size: int
    fmt: str | None
    sha256: str


class InputChecker:
    """Checks ``file:`` references relative to ``base_dir``; each file is read once."""

    def __init__(self, base_dir: Path) -> None:
        self.base_dir = base_dir
        self._seen: dict[Path, _Checked | FieldProblem] = {}
        self.files: dict[Path, None] = {}  # every file checked, in order

    def check_value(
        self, model: str, spec: ImageInputSpec, value: Any
    ) -> tuple[Any, list[FieldProblem]]:
        """``value`` with its references resolved, and the problems of those that fail."""
        if isinstance(value, str):
            resolved, problems = self._check_one(model, spec, value)
            return resolved, problems
        if isinstance(value, list):
            out: list[Any] = []
            problems = []
            for item in value:
                resolved, found = self._check_one(model, spec, item)
                out.append(resolved)
                problems += found
            return out, problems
        return value, []

    def _check_one(
        self, model: str, spec: ImageInputSpec, item: Any
    ) -> tuple[Any, list[FieldProblem]]:
        if not isinstance(item, str) or not item.startswith(FILE_PREFIX) or HASH_MARK in item:
            return item, []
        if not spec.data_uri:
            return item, [
                FieldProblem(
                    f"{model} takes only https URLs in '{spec.field}', not local files",
                    hint="upload the file and give its https URL, or use a model that "
                    "accepts base64 images (batchgen models lists them)",
                )
            ]
        raw = item[len(FILE_PREFIX) :]
        path = Path(raw).expanduser()
        if not path.is_absolute():
            path = self.base_dir / path
        path = path.resolve()
        checked = self._seen.get(path)
        if checked is None:
            checked = self._read(raw, path)
            self._seen[path] = checked
        if isinstance(checked, FieldProblem):
            return item, [checked]
        self.files[path] = None
        problems = []
        if spec.formats is not None and checked.fmt not in spec.formats:
            problems.append(
                FieldProblem(
                    f"{raw} is {checked.fmt or 'not an image format batchgen knows'}",
                    expected=f"{' or '.join(spec.formats)} for {model} '{spec.field}'",
                )
            )
        elif checked.fmt is None:
            problems.append(FieldProblem(f"{raw} is not a PNG, JPEG, WEBP, GIF, BMP or TIFF"))
        if spec.max_bytes is not None and checked.size > spec.max_bytes:
            problems.append(
                FieldProblem(
                    f"{raw} is {checked.size:,} bytes",
                    expected=f"at most {spec.max_bytes:,} bytes for {model} '{spec.field}'",
                )
            )
        return f"{FILE_PREFIX}{path}{HASH_MARK}{checked.sha256}", problems

    @staticmethod
    def _read(raw: str, path: Path) -> _Checked | FieldProblem:
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return FieldProblem(
                f"input image {raw} not found", hint="paths are relative to the manifest"
            )
        except IsADirectoryError:
            return FieldProblem(f"input image {raw} is a directory")
        except OSError as exc:
            return FieldProblem(f"cannot read input image {raw}: {exc.strerror or exc}")
        return _Checked(path, len(data), sniff_format(data[:16]), hashlib.sha256(data).hexdigest())


class _DataUriCache:
    """Encoded data URIs by (path, sha256), least recently used out past a byte budget."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, str] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, ref: str) -> str | None:
        with self._lock:
            found = self._items.get(ref)
            if found is not None:
                self._items.move_to_end(ref)
            return found

    def put(self, ref: str, uri: str) -> None:
        with self._lock:
            if ref in self._items or len(uri) > self.max_bytes:
                return
            self._items[ref] = uri
            self._bytes += len(uri)
            while self._bytes > self.max_bytes:
                _, old = self._items.popitem(last=False)
                self._bytes -= len(old)

    @property
    def size(self) -> int:
        """Bytes held now (never more than ``max_bytes``)."""
        return self._bytes


_CACHE = _DataUriCache(DEFAULT_CACHE_BYTES)


def _data_uri(ref: str, base_dir: Path | None, cache: _DataUriCache) -> str:
    found = cache.get(ref)
    if found is not None:
        return found
    raw = ref[len(FILE_PREFIX) :].split(HASH_MARK, 1)[0]
    path = Path(raw).expanduser()
    if not path.is_absolute():
        path = (base_dir or Path.cwd()) / path
    data = path.read_bytes()
    mime = _MIME.get(sniff_format(data[:16]) or "", "application/octet-stream")
    uri = f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"
    cache.put(ref, uri)
    return uri


def materialize_body(
    body: Mapping[str, Any], base_dir: Path | None = None, *, cache: _DataUriCache | None = None
) -> dict[str, Any]:
    """``body`` with every ``file:`` reference (top level, or in a top-level list) replaced
    by a base64 data URI of the file's bytes; a body without one is returned as it is.

    Relative references resolve against ``base_dir`` (default: the current directory);
    those in manifest bodies are absolute already. Encoded files are shared through a
    cache bounded in bytes, so many jobs over few images hold each encoding once.
    """
    cache = cache or _CACHE
    out: dict[str, Any] | None = None
    for key, value in body.items():
        if isinstance(value, str) and value.startswith(FILE_PREFIX):
            out = out if out is not None else dict(body)
            out[key] = _data_uri(value, base_dir, cache)
        elif isinstance(value, list) and any(
            isinstance(v, str) and v.startswith(FILE_PREFIX) for v in value
        ):
            out = out if out is not None else dict(body)
            out[key] = [
                _data_uri(v, base_dir, cache)
                if isinstance(v, str) and v.startswith(FILE_PREFIX)
                else v
                for v in value
            ]
    if out is not None:
        return out
    return body if isinstance(body, dict) else dict(body)
