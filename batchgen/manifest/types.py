"""The manifest's public value types and the stable job identity.

:class:`Limits` holds a manifest's run limits, :class:`Job` one request to send.
:func:`job_id_for` is the job identity: the same model, canonical body and repeat
index give the same ID in every run and on every machine (resume depends on it).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from json.encoder import c_make_encoder, encode_basestring  # type: ignore[attr-defined]
from types import MappingProxyType
from typing import Any

__all__ = [
    "FILE_PREFIX",
    "HASH_MARK",
    "NO_VARIABLES",
    "Job",
    "Limits",
    "canonical_json",
    "encode_canonical",
    "identity_view",
    "job_id_for",
]

FILE_PREFIX = "file:"
HASH_MARK = "#sha256="
#: The variables of a job that has none (shared, read-only).
NO_VARIABLES: Mapping[str, Any] = MappingProxyType({})


@dataclass(frozen=True)
class Limits:
    """Run limits from the manifest's ``limits`` mapping."""

    concurrency: int = 16  # remote tasks in flight
    rate: float = 4.0  # submissions per second ("4/s", "240/m" in YAML)
    retries: int = 4  # retries per job after the first attempt
    timeout: float = 1800.0  # seconds per task from submit to end ("30m", "90s", "2h")
    resubmit_unknown: bool = True  # resubmit a submit whose outcome is unknown
    submits_in_flight: int = 1  # submit requests awaiting their answer at once (kill window)
    max_tasks: int | None = None  # accepted submissions of the run directory, every attempt
    max_cost: float | None = None  # estimated USD of the run directory's accepted submissions


@dataclass(frozen=True)
class Job:
    """One request to send: a complete, valid body and its stable ID.

    ``variables`` are the template variables that made the body: matrix keys that are not
    body fields and prompts-file columns that are not body fields (``prompt`` excluded),
    with their values as the manifest or file gives them, row columns first, then matrix
    keys in manifest order.  They describe the job (the gallery's axes, export columns) and
    are not part of its identity.  Jobs of one combination share one read-only mapping.
    """

    job_id: str  # job_id_for(model, body, repeat_index)
    model: str  # "openai/gpt-image-1.5"
    body: dict[str, Any]  # complete API body (schema defaults, manifest defaults, group)
    repeat_index: int  # 0..repeat-1
    group: str  # "jobs[0]"
    variables: Mapping[str, Any] = field(default_factory=lambda: NO_VARIABLES, compare=False)


_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)
_C_ENCODER: Any = None
if c_make_encoder is not None:  # the C encoder, built once (json.dumps builds one per call)
    _C_ENCODER = c_make_encoder(
        None, _ENCODER.default, encode_basestring, None, ":", ",", True, False, True
    )


def encode_canonical(body: Mapping[str, Any]) -> str:
    if _C_ENCODER is not None:
        return "".join(_C_ENCODER(body, 0))
    return _ENCODER.encode(body)  # pragma: no cover - CPython has the C encoder


def canonical_json(body: Mapping[str, Any]) -> str:
    """The body as JSON with sorted keys and no spaces: the input of :func:`job_id_for`."""
    return encode_canonical(body)


def _identity(value: Any) -> Any:
    if isinstance(value, str) and value.startswith(FILE_PREFIX) and HASH_MARK in value:
        return "sha256:" + value.rsplit(HASH_MARK, 1)[1]
    if isinstance(value, list):
        return [_identity(v) for v in value]
    return value


def identity_view(body: Mapping[str, Any]) -> dict[str, Any]:
    """The body as the job ID sees it: each checked local input image
    (``file:<path>#sha256=<hex>``) replaced by ``sha256:<hex>``, its content alone."""
    return {key: _identity(value) for key, value in body.items()}


def has_file_refs(body: Mapping[str, Any]) -> bool:
    """True when the body holds a checked local input image reference."""
    return HASH_MARK in encode_canonical(body)


def job_id_for(model: str, body: Mapping[str, Any], repeat_index: int) -> str:
    """Stable job ID: first 16 hex digits of sha256(model, canonical JSON body, repeat index).

    Local input images count by their content hash (:func:`identity_view`).
    """
    if has_file_refs(body):
        body = identity_view(body)
    text = f"{model}\n{canonical_json(body)}\n{repeat_index}"
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
