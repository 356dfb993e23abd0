"""Parsers for the manifest's units: rates ("4/s", "240/m") and durations ("30m", "1h30m").

Both return a positive, finite float (per second, or seconds) or raise ValueError
whose text says what was found.
"""

from __future__ import annotations

import math
import re
from typing import Any

from batchgen.manifest.catalogue import type_name
from batchgen.manifest.diagnostics import quoted, short

__all__ = ["parse_duration", "parse_rate"]


_RATE_RE = re.compile(
    r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(?:/\s*(s|sec|second|m|min|minute|h|hr|hour))?\s*$"
)
_RATE_UNITS = {"s": 1, "sec": 1, "second": 1, "m": 60, "min": 60, "minute": 60}
_RATE_UNITS |= {"h": 3600, "hr": 3600, "hour": 3600}
_DURATION_PART = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h|d)?\s*")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


def parse_rate(value: Any) -> float:
    """``4``, ``"4/s"``, ``"240/m"``, ``"1/h"`` -> submissions per second; ValueError if not."""
    if isinstance(value, bool):
        raise ValueError("found a boolean")
    if isinstance(value, (int, float)):
        rate = float(value)
    elif isinstance(value, str) and (match := _RATE_RE.match(value)):
        rate = float(match.group(1)) / _RATE_UNITS[match.group(2) or "s"]
    else:
        raise ValueError(f"found {type_name(value)}")
    if not math.isfinite(rate) or rate <= 0:
        raise ValueError(f"found {short(value)}, which is not more than zero")
    return rate


def parse_duration(value: Any) -> float:
    """``30``, ``"90s"``, ``"30m"``, ``"2h"``, ``"1h30m"`` -> seconds; ValueError if not."""
    if isinstance(value, bool):
        raise ValueError("found a boolean")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str) and value.strip():
        seconds, pos = 0.0, 0
        while pos < len(value):
            match = _DURATION_PART.match(value, pos)
            if not match or match.end() == pos:
                raise ValueError(f"found {quoted(value)}")
            seconds += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
            pos = match.end()
    else:
        raise ValueError(f"found {type_name(value)}")
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"found {short(value)}, which is not more than zero")
    return seconds


# Limits given as text: the parser of each and what it expects.
