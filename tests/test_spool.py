"""Tests of the spool: its files, replay into real databases, corrupt files, races."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Row, select

from cronledger.recorder import get_recorder
from cronledger.spool import Spool
from cronledger.store.engine import get_engine
from cronledger.store.executions import FinishEvent, StartEvent
from cronledger.store.tables import cron_executions
from tests.commands import run_together

CLI = [sys.executable, "-c", "from cronledger.cli import main; main()"]


def fetch_runs(database_url: str) -> list[Row[Any]]:
    with get_engine(database_url).connect() as connection:
        return list(
            connection.execute(select(cron_executions).order_by(cron_executions.c.id)).all()
        )


def start_event(service: str, started_at: datetime) -> StartEvent:
    return StartEvent(
        run_key=uuid.uuid4().hex,
        service_name=service,
        started_at=started_at,
        host="batch-07",
        pid=4242,
    )


def finish_event(start: StartEvent, items: int, *, error: str | None = None) -> FinishEvent:
    return FinishEvent(
        start=start,
        status="failed" if error else "completed",
        finished_at=start.started_at + timedelta(milliseconds=1500),
        duration_ms=1500,
        items_processed=items,
        error_message=error,
    )


def hours_ago(hours: float) -> datetime:
    # A fixed microsecond value, which a round trip through either database must keep.
    return (datetime.now(UTC) - timedelta(hours=hours)).replace(microsecond=123456)


# The spool's own files


def test_spool_save_and_replay_roundtrip(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", "postgresql+psycopg://jobs@127.0.0.1:5432/jobs")
    start = start_event("flow-sync", hours_ago(1))
    finish = finish_event(start, 12, error="partial: \x00 ünïcode")

    start_path = spool.save(start)
    finish_path = spool.save(finish)

    assert spool.pending() == [start_path, finish_path], "pending is not in write order"
    assert start_path.name.endswith(f"-{start.run_key}-start.json"), start_path.name
    assert finish_path.name.endswith(f"-{start.run_key}-finish.json"), finish_path.name
    for path in (start_path, finish_path):
        raw = path.read_bytes()
        assert raw.isascii(), f"{path.name} is not ASCII"
        assert json.loads(raw)["kind"] in ("start", "finish"), f"{path.name} has no kind"
    leftovers = [p.name for p in spool.directory.iterdir() if p.name.endswith(".tmp")]
    assert leftovers == [], f"temporary files left behind: {leftovers}"

    replayed: list[object] = []
    count = spool.replay(replayed.append)

    assert count == 2, f"replay returned {count}"
    assert replayed == [start, finish], "decoded events differ from the saved ones"
    assert spool.pending() == [], "replayed files were not deleted"


def test_spool_replay_stops_at_failure(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", "sqlite+pysqlite:////var/lib/jobs.db")
    events = [start_event("flow-sync", hours_ago(1)) for _ in range(3)]
    paths = [spool.save(event) for event in events]

    def apply(event: object) -> None:
        if event == events[1]:
            raise ConnectionError("database went away again")

    with pytest.raises(ConnectionError):
        spool.replay(apply)

    assert spool.pending() == paths[1:], "a later event overtook the failed one"


def test_spool_directory_per_database(tmp_path: Path) -> None:
    first = get_recorder("postgresql://jobs:S3cretPw@127.0.0.1:5999/jobs", tmp_path)
    second = get_recorder("postgresql://jobs:S3cretPw@127.0.0.1:5999/other", tmp_path)

    first.spool.save(start_event("flow-sync", hours_ago(1)))

    assert first.spool.directory != second.spool.directory, "two databases share a spool"
    assert first.spool.directory.parent == tmp_path, "spool is outside the given directory"
    label = (first.spool.directory / "DATABASE").read_text()
    assert "127.0.0.1:5999/jobs" in label, f"label {label!r} does not name the database"
    assert "S3cret" not in label, f"label {label!r} contains the password"
    for path in first.spool.directory.iterdir():
        if path.is_file():
            assert "S3cret" not in path.read_text(), f"{path.name} contains the password"


# Replay into real databases


def test_flush_spool_keeps_original_times(database_url: str) -> None:
    recorder = get_recorder(database_url)
    start = start_event("flow-sync", hours_ago(3))
    recorder.spool.save(start)
    recorder.spool.save(finish_event(start, 8))

    assert recorder.flush_spool() == 2, "flush did not replay both events"
    assert recorder.flush_spool() == 0, "a second flush replayed something"

    rows = fetch_runs(database_url)
    assert len(rows) == 1, f"expected one row, got {len(rows)}"
    row = rows[0]
    assert row.run_key == start.run_key
    assert row.execution_time == start.started_at, f"execution_time {row.execution_time}"
    assert row.finished_at == start.started_at + timedelta(milliseconds=1500)
    assert row.duration_ms == 1500, f"duration_ms {row.duration_ms}"
    assert row.items_processed == 8, f"items_processed {row.items_processed}"
    assert row.host == "batch-07", f"host {row.host!r}"
    assert row.pid == 4242, f"pid {row.pid}"


def corrupt_payloads() -> dict[str, bytes]:
    valid = json.loads(json.dumps({"kind": "start", "run_key": "k", "service_name": "s"}))
    return {
        "not-json": b"{ this is not JSON",
        "empty": b"",
        "list": b"[1, 2, 3]",
        "null": b"null",
        "missing-kind": json.dumps({"run_key": "k"}).encode(),
        "unknown-kind": json.dumps({**valid, "kind": "pause"}).encode(),
        "naive-time": json.dumps({**valid, "started_at": "2026-12-04T10:00:00"}).encode(),
        "bad-time": json.dumps({**valid, "started_at": "yesterday"}).encode(),
        "non-ascii": '{"kind": "start", "service_name": "ü"}'.encode("latin-1"),
        "bad-duration": json.dumps(
            {
                "kind": "finish",
                "start": {**valid, "started_at": "2026-12-04T10:00:00+00:00"},
                "status": "completed",
                "finished_at": "2026-12-04T10:00:01+00:00",
                "duration_ms": "fast",
                "items_processed": 1,
            }
        ).encode(),
    }


def test_corrupt_spool_file_rejected(database_url: str) -> None:
    recorder = get_recorder(database_url)
    spool = recorder.spool
    first = start_event("flow-sync", hours_ago(2))
    spool.save(first)
    corrupt_names = []
    for label, payload in corrupt_payloads().items():
        name = f"{time.time_ns():020d}-{label}-start.json"
        (spool.directory / name).write_bytes(payload)
        corrupt_names.append(name)
    spool.save(finish_event(first, 3))
    second = start_event("flow-sync", hours_ago(1))
    spool.save(second)
    spool.save(finish_event(second, 4, error="upstream 503"))

    replayed = recorder.flush_spool()

    assert replayed == 4, f"replayed {replayed} events, expected the 4 valid ones"
    assert spool.pending() == [], f"files left: {spool.pending()}"
    rejected = sorted(path.name for path in (spool.directory / "rejected").iterdir())
    assert rejected == sorted(corrupt_names), f"rejected/ holds {rejected}"
    rows = {row.run_key: row for row in fetch_runs(database_url)}
    assert set(rows) == {first.run_key, second.run_key}, f"rows {list(rows)}"
    assert rows[first.run_key].status == "completed"
    assert rows[first.run_key].items_processed == 3
    assert rows[second.run_key].status == "failed"
    assert rows[second.run_key].error_message == "upstream 503"


def test_spool_event_refused_by_postgres(postgres_url: str) -> None:
    recorder = get_recorder(postgres_url)
    too_long = start_event("x" * 150, hours_ago(2))
    good = start_event("flow-sync", hours_ago(1))
    refused_path = recorder.spool.save(too_long)
    recorder.spool.save(good)
    recorder.spool.save(finish_event(good, 5))

    replayed = recorder.flush_spool()

    assert replayed == 2, f"replayed {replayed} events, expected 2"
    rejected = recorder.spool.directory / "rejected" / refused_path.name
    assert rejected.exists(), "the refused event was not moved to rejected/"
    assert recorder.spool.pending() == [], f"files left: {recorder.spool.pending()}"
    rows = fetch_runs(postgres_url)
    assert [row.run_key for row in rows] == [good.run_key], "wrong rows replayed"


def test_cli_spool_status_reports_rejected(sqlite_url: str) -> None:
    recorder = get_recorder(sqlite_url)
    recorder.spool.save(start_event("flow-sync", hours_ago(1)))
    (recorder.spool.directory / f"{time.time_ns():020d}-broken-start.json").write_text("{")

    before = subprocess.run(
        [*CLI, "--database-url", sqlite_url, "spool", "status"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    flush = subprocess.run(
        [*CLI, "--database-url", sqlite_url, "spool", "flush"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    after = subprocess.run(
        [*CLI, "--database-url", sqlite_url, "spool", "status"],
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert before.returncode == 0, before.stderr
    assert before.stdout.startswith("2 events waiting in"), before.stdout
    # The unreadable event was set aside, so the flush reports it and fails.
    assert flush.returncode == 1, flush.stderr
    assert "replayed 1 of 2 spooled events" in flush.stdout, flush.stdout
    assert "1 event was set aside" in flush.stderr, flush.stderr
    assert after.returncode == 0, after.stderr
    assert "1 events set aside in" in after.stdout, after.stdout


# Replay by two processes at once

REPLAY_SCRIPT = """
import sys
import time
from pathlib import Path

from cronledger.recorder import get_recorder

database_url, start_file = sys.argv[1], Path(sys.argv[2])
recorder = get_recorder(database_url)
print("ready", flush=True)
while not start_file.exists():
    time.sleep(0.001)
print(recorder.flush_spool(), flush=True)
"""


@pytest.mark.timeout(120)
def test_spool_replay_two_processes(database_url: str, tmp_path: Path) -> None:
    spool = get_recorder(database_url).spool
    runs: list[StartEvent] = []
    for index in range(40):
        start = start_event(f"worker-{index % 3}", hours_ago(5) + timedelta(seconds=index))
        runs.append(start)
        if index < 35:
            spool.save(start)
        if index < 30 or index >= 35:
            spool.save(finish_event(start, index, error="boom" if index % 7 == 0 else None))
    saved = len(spool.pending())
    script = tmp_path / "replay.py"
    script.write_text(textwrap.dedent(REPLAY_SCRIPT))
    start_file = tmp_path / "start"

    command = [sys.executable, str(script), database_url, str(start_file)]
    outputs = run_together([command, command], start_file, timeout=90)

    replayed = sum(int(stdout.strip()) for stdout, _ in outputs)
    assert saved == 70, f"test setup spooled {saved} events"
    assert replayed >= saved, f"only {replayed} of {saved} events replayed"
    assert spool.pending() == [], f"files left: {spool.pending()}"
    assert not (spool.directory / "rejected").exists(), "events were rejected"

    rows = fetch_runs(database_url)
    by_key = {row.run_key: row for row in rows}
    assert len(rows) == 40, f"expected 40 rows, got {len(rows)}"
    assert len(by_key) == 40, "a run key has more than one row"
    for index, start in enumerate(runs):
        row = by_key[start.run_key]
        if 30 <= index < 35:
            expected = "started"
        elif index % 7 == 0:
            expected = "failed"
        else:
            expected = "completed"
        assert row.status == expected, f"run {index}: status {row.status!r}"
        assert row.execution_time == start.started_at, f"run {index}: {row.execution_time}"
        if expected != "started":
            assert row.items_processed == index, f"run {index}: items {row.items_processed}"
            assert row.duration_ms == 1500, f"run {index}: duration_ms {row.duration_ms}"


def test_spool_files_survive_unreadable_database(tmp_path: Path) -> None:
    # A directory where the database file should be makes SQLite fail to open it.
    database_path = tmp_path / "cronledger.db"
    database_path.mkdir()
    url = f"sqlite:///{database_path}"
    recorder = get_recorder(url)
    start = start_event("flow-sync", hours_ago(1))
    recorder.spool.save(start)

    assert recorder.start(start_event("flow-sync", hours_ago(0.5))) is None, "write succeeded"
    assert len(recorder.spool.pending()) == 2, "the failed start was not spooled"
    assert os.listdir(database_path) == [], "something was written into the directory"
