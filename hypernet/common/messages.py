"""Quoting text and values from untrusted files in one-line error messages."""
from __future__ import annotations

QUOTE_LIMIT = 60


def one_line(text: str, limit: int = 200) -> str:
    """`text` on one line, cut to about `limit` characters: a hostile file must not fill the
    user's screen (or ComfyUI's error box) with what it was refused for."""
    text = " ".join(text.split())
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


def brief(value: object, limit: int = QUOTE_LIMIT) -> str:
    """repr(value), as `one_line` cuts it."""
    return one_line(repr(value), limit)
