"""Make arbitrary job output safe to store in a TEXT column.

Job output and error messages may be huge, contain NUL bytes (PostgreSQL's
TEXT rejects them) or bytes that are not UTF-8. Nothing here raises: the
value is cleaned and, when too long, cut in the middle so that both the
start (the exception type) and the end (the last lines) survive.
"""

from __future__ import annotations

# The defaults keep one row well below a page of PostgreSQL TOAST storage
# per kilobyte of output while still holding a full Python traceback.
MAX_ERROR_CHARS = 16_384
MAX_OUTPUT_TAIL_CHARS = 16_384

TRUNCATION_MARKER = "\n[... {count} characters truncated by cronledger ...]\n"


def clean_text(value: str | bytes | None, max_chars: int) -> str | None:
    """Return ``value`` as valid UTF-8 without NUL, cut to ``max_chars``.

    Bytes are decoded as UTF-8 with invalid sequences replaced by U+FFFD.
    A lone surrogate in a ``str`` (as produced by ``surrogateescape``) is
    replaced too, because no database driver can encode it.
    """
    if value is None:
        return None

    if isinstance(value, bytes):
        text = value.decode("utf-8", errors="replace")
    else:
        text = value.encode("utf-8", errors="replace").decode("utf-8")

    text = text.replace("\x00", "")

    if len(text) <= max_chars:
        return text

    # Keep the head and the tail, because the head names the error and the
    # tail contains the last thing the job did before it stopped.
    marker_room = len(TRUNCATION_MARKER) + 12
    keep = max(max_chars - marker_room, 2)
    head = keep // 2
    tail = keep - head
    dropped = len(text) - head - tail
    return text[:head] + TRUNCATION_MARKER.format(count=dropped) + text[-tail:]


def last_lines(text: str, count: int) -> str:
    """Return the last ``count`` non-empty lines of ``text``."""
    lines = [line for line in text.splitlines() if line.strip()]
    return "\n".join(lines[-count:])
