"""Text made safe to show: printable, single-line, bounded (messages, snippets of answers)."""

from __future__ import annotations

import re
import unicodedata

__all__ = ["body_snippet", "sanitize"]

_TAG_RE = re.compile(r"<[^>]{0,500}>")
_SNIPPET_CHARS = 200


def sanitize(text: str, limit: int) -> str:
    """Printable, single-line, at most *limit* chars: safe to print to a terminal or log."""
    if len(text) <= limit and text.isascii() and text.isprintable() and " " not in text:
        return text  # the common case (a status word, a content type): nothing to clean
    cleaned = "".join(
        ch if not unicodedata.category(ch).startswith(("C", "Z")) else " "
        for ch in text[: limit * 4]
    )
    cleaned = " ".join(cleaned.split())
    if len(cleaned) > limit:
        cleaned = cleaned[: limit - 1] + "…"
    return cleaned


def body_snippet(body: bytes) -> str:
    text = body[: _SNIPPET_CHARS * 8].decode("utf-8", errors="replace")
    text = _TAG_RE.sub(" ", text)
    return sanitize(text, _SNIPPET_CHARS) or "(empty body)"
