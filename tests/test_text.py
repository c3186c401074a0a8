"""Tests of ``clean_text`` and of storing hostile error messages in both databases."""

from __future__ import annotations

import re
from typing import Any

import pytest
from sqlalchemy import Row, select

from cronledger.store.engine import get_engine
from cronledger.store.tables import cron_executions
from cronledger.text import MAX_ERROR_CHARS, clean_text
from cronledger.tracking import CronExecutionLogger, track

TEN_MEGABYTES = 10 * 1024 * 1024
MARKER = re.compile(r"\n\[\.\.\. (\d+) characters truncated by cronledger \.\.\.\]\n")
# Bytes that are not valid UTF-8: a Latin-1 e-acute, a lone continuation
# byte, an overlong encoding of "/" and a truncated 3-byte sequence.
INVALID_UTF8 = b"caf\xe9 \x80 \xc0\xaf \xe2\x82 end"


def fetch_runs(database_url: str) -> list[Row[Any]]:
    with get_engine(database_url).connect() as connection:
        return list(
            connection.execute(select(cron_executions).order_by(cron_executions.c.id)).all()
        )


def huge_text(size: int) -> str:
    """Return ``size`` characters with a recognisable head and tail."""
    head = "HEAD: first line of the error\n"
    tail = "\nTAIL: last line of the error"
    return head + "x" * (size - len(head) - len(tail)) + tail


def assert_strict_utf8(value: str) -> None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:
        pytest.fail(f"text is not valid UTF-8: {error}")


# clean_text on its own


def test_clean_text_keeps_none_and_short_text() -> None:
    assert clean_text(None, 100) is None
    assert clean_text("plain message", 100) == "plain message"
    assert clean_text("x" * 100, 100) == "x" * 100, "text of exactly the limit was changed"
    assert clean_text("Zahlungsprüfung 日本 ✓", 100) == "Zahlungsprüfung 日本 ✓"


def test_clean_text_removes_nul() -> None:
    assert clean_text("before\x00after\x00", 100) == "beforeafter"
    assert clean_text(b"before\x00after", 100) == "beforeafter"


def test_clean_text_replaces_invalid_bytes() -> None:
    cleaned = clean_text(INVALID_UTF8, 100)

    assert cleaned is not None
    assert cleaned.startswith("caf\ufffd "), f"cleaned {cleaned!r}"
    assert cleaned.endswith(" end"), f"cleaned {cleaned!r}"
    assert "\ufffd" in cleaned, "invalid bytes were not replaced by U+FFFD"
    assert_strict_utf8(cleaned)


def test_clean_text_replaces_surrogateescape() -> None:
    decoded = INVALID_UTF8.decode("utf-8", errors="surrogateescape")

    cleaned = clean_text(decoded, 100)

    assert cleaned is not None
    assert cleaned.startswith("caf"), f"cleaned {cleaned!r}"
    assert cleaned.endswith(" end"), f"cleaned {cleaned!r}"
    assert not re.search("[\ud800-\udfff]", cleaned), f"surrogates remain in {cleaned!r}"
    assert_strict_utf8(cleaned)


def test_clean_text_truncates_middle() -> None:
    original = huge_text(TEN_MEGABYTES)

    cleaned = clean_text(original, MAX_ERROR_CHARS)

    assert cleaned is not None
    assert len(cleaned) <= MAX_ERROR_CHARS, f"{len(cleaned)} characters kept"
    match = MARKER.search(cleaned)
    assert match is not None, "no truncation marker"
    head, tail = cleaned[: match.start()], cleaned[match.end() :]
    assert head.startswith("HEAD: first line of the error\n"), "head lost"
    assert tail.endswith("\nTAIL: last line of the error"), "tail lost"
    assert original.startswith(head), "head is not the start of the original"
    assert original.endswith(tail), "tail is not the end of the original"
    dropped = int(match.group(1))
    assert dropped == len(original) - len(head) - len(tail), f"marker counts {dropped}"


def test_clean_text_cleans_before_cutting() -> None:
    original = "\x00" * 50 + "a" * 90

    assert clean_text(original, 100) == "a" * 90, "NUL bytes counted towards the limit"


# Error messages stored in the database


def test_ten_megabyte_error_stored(database_url: str) -> None:
    with track("log-shipper", database_url=database_url) as run:
        run.fail(huge_text(TEN_MEGABYTES))

    stored = fetch_runs(database_url)[0].error_message
    assert len(stored) <= MAX_ERROR_CHARS, f"{len(stored)} characters stored"
    assert stored.startswith("HEAD: first line of the error\n"), "head not stored"
    assert stored.endswith("\nTAIL: last line of the error"), "tail not stored"
    assert MARKER.search(stored), "truncation marker not stored"


def test_ten_megabyte_exception_stored(database_url: str) -> None:
    with (
        pytest.raises(ValueError),
        track("log-shipper", database_url=database_url),
    ):
        raise ValueError(huge_text(TEN_MEGABYTES))

    row = fetch_runs(database_url)[0]
    stored = row.error_message
    assert row.status == "failed", f"status {row.status!r}"
    assert len(stored) <= MAX_ERROR_CHARS, f"{len(stored)} characters stored"
    assert stored.startswith("ValueError: HEAD: first line of the error\n"), stored[:80]
    assert stored.endswith("\nTAIL: last line of the error"), stored[-80:]
    assert MARKER.search(stored), "truncation marker not stored"


def test_error_with_nul_stored(database_url: str) -> None:
    with track("log-shipper", database_url=database_url) as run:
        run.fail("column\x00value\x00")
    with (
        pytest.raises(RuntimeError),
        track("log-shipper", database_url=database_url),
    ):
        raise RuntimeError("bad row: \x00\x00end")

    rows = fetch_runs(database_url)
    assert rows[0].error_message == "columnvalue", repr(rows[0].error_message)
    assert rows[1].error_message.startswith("RuntimeError: bad row: end\n")
    assert "\x00" not in rows[1].error_message, "NUL stored"


async def test_logger_error_with_nul_stored(database_url: str) -> None:
    logger = CronExecutionLogger("log-shipper", database_url)
    await logger.log_start()
    await logger.log_completion(0, "nul\x00inside")

    row = fetch_runs(database_url)[0]
    assert row.status == "failed", f"status {row.status!r}"
    assert row.error_message == "nulinside", repr(row.error_message)


def test_surrogateescape_error_stored(database_url: str) -> None:
    decoded = INVALID_UTF8.decode("utf-8", errors="surrogateescape")
    with track("log-shipper", database_url=database_url) as run:
        run.fail(decoded)
    with pytest.raises(OSError), track("log-shipper", database_url=database_url):
        raise OSError(f"cannot open {decoded}")

    rows = fetch_runs(database_url)
    assert rows[0].error_message == clean_text(decoded, MAX_ERROR_CHARS)
    assert rows[0].error_message.endswith(" end"), repr(rows[0].error_message)
    assert rows[1].status == "failed", f"status {rows[1].status!r}"
    assert rows[1].error_message.startswith("OSError: cannot open caf")
    for row in rows:
        assert not re.search("[\ud800-\udfff]", row.error_message), "surrogates stored"


def test_invalid_bytes_error_stored(database_url: str) -> None:
    with track("log-shipper", database_url=database_url) as run:
        run.fail(clean_text(INVALID_UTF8 + b"\x00", MAX_ERROR_CHARS))  # type: ignore[arg-type]

    stored = fetch_runs(database_url)[0].error_message
    assert stored == "caf\ufffd \ufffd \ufffd\ufffd \ufffd end", repr(stored)


def test_unicode_service_name_stored(database_url: str) -> None:
    name = "Zahlungsprüfung-日本-✓"
    with track(name, database_url=database_url) as run:
        run.add_items(1)

    row = fetch_runs(database_url)[0]
    assert row.service_name == name, repr(row.service_name)
    assert row.status == "completed", f"status {row.status!r}"
