"""Secret scrubbing: every secret value the process resolved is removed from what gets archived."""

from __future__ import annotations

import os
import re
import threading

_lock = threading.Lock()
_secrets: set[str] = set()
MASK = "***"

# Secret values this short would mask ordinary words; refuse to rely on them silently.
MIN_SECRET_LEN = 4


def register_secret(value: str) -> None:
    """Remember a secret value so that :func:`scrub` masks it."""
    if value and len(value) >= MIN_SECRET_LEN:
        with _lock:
            _secrets.add(value)


def registered() -> list[str]:
    with _lock:
        return sorted(_secrets, key=len, reverse=True)


def scrub(text: str, extra: list[str] | None = None, paths: list[str] | None = None) -> str:
    """Mask registered secrets (and `extra` values) in text, and replace `paths` by placeholders.

    `paths` maps absolute local paths (the repository, the home directory) to short names so that
    archived notebooks do not leak a machine's layout.
    """
    values = registered() + [v for v in (extra or []) if v and len(v) >= MIN_SECRET_LEN]
    for v in sorted(set(values), key=len, reverse=True):
        text = text.replace(v, MASK)
    for p in sorted(paths or [], key=len, reverse=True):
        if p and p != "/":
            text = re.sub(re.escape(p.rstrip("/")) + r"(?=/|\b|$)", _placeholder(p), text)
    return text


def _placeholder(p: str) -> str:
    home = os.path.expanduser("~")
    if p.rstrip("/") == home.rstrip("/"):
        return "~"
    return "<" + os.path.basename(p.rstrip("/")) + ">"
