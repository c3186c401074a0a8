"""Tests of runs ended by real SIGTERM and SIGINT, in subprocesses.

Each script prints "inside" once it is in the tracked block. The test then
sends the signal with os.kill and reads the row the run left behind.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Row, select

from cronledger.store.engine import get_engine
from cronledger.store.tables import cron_executions

pytestmark = pytest.mark.timeout(120)

SYNC_SCRIPT = """
import sys
import time

from cronledger.tracking import track

with track("signal-job", database_url=sys.argv[1]) as run:
    run.items_processed = 2
    print("inside", flush=True)
    time.sleep(60)
print("not interrupted", flush=True)
"""

ASYNC_SCRIPT = """
import asyncio
import sys

from cronledger.tracking import track


async def main():
    async with track("signal-job", database_url=sys.argv[1]) as run:
        run.items_processed = 2
        print("inside", flush=True)
        await asyncio.sleep(60)
    print("not interrupted", flush=True)


asyncio.run(main())
"""

# The inner run completes before the signal, which arrives while only the outer run is active.
SYNC_NESTED_SCRIPT = """
import sys
import time

from cronledger.tracking import track

with track("signal-job", database_url=sys.argv[1]) as run:
    run.items_processed = 2
    with track("signal-job-step", database_url=sys.argv[1]):
        pass
    print("inside", flush=True)
    time.sleep(60)
print("not interrupted", flush=True)
"""

ASYNC_NESTED_SCRIPT = """
import asyncio
import sys

from cronledger.tracking import track


async def main():
    async with track("signal-job", database_url=sys.argv[1]) as run:
        run.items_processed = 2
        async with track("signal-job-step", database_url=sys.argv[1]):
            await asyncio.sleep(0)
        print("inside", flush=True)
        await asyncio.sleep(60)
    print("not interrupted", flush=True)


asyncio.run(main())
"""

SYNC_HANDLER_SCRIPT = """
import signal
import sys
import time

from cronledger.tracking import track

received = []


def on_sigterm(signum, frame):
    print("handler called", flush=True)
    received.append(signum)


signal.signal(signal.SIGTERM, on_sigterm)
with track("signal-job", database_url=sys.argv[1]) as run:
    print("inside", flush=True)
    deadline = time.monotonic() + 60
    while not received and time.monotonic() < deadline:
        time.sleep(0.01)
    run.items_processed = 5
print("finished", flush=True)
"""

ASYNC_HANDLER_SCRIPT = """
import asyncio
import signal
import sys

from cronledger.tracking import track


async def main():
    stop = asyncio.Event()

    def on_sigterm():
        print("handler called", flush=True)
        stop.set()

    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, on_sigterm)
    async with track("signal-job", database_url=sys.argv[1]) as run:
        print("inside", flush=True)
        await asyncio.wait_for(stop.wait(), 60)
        run.items_processed = 5
    print("finished", flush=True)


asyncio.run(main())
"""

SCRIPTS = {
    "sync": SYNC_SCRIPT,
    "async": ASYNC_SCRIPT,
    "sync-nested": SYNC_NESTED_SCRIPT,
    "async-nested": ASYNC_NESTED_SCRIPT,
    "sync-handler": SYNC_HANDLER_SCRIPT,
    "async-handler": ASYNC_HANDLER_SCRIPT,
}


def fetch_runs(database_url: str) -> list[Row[Any]]:
    with get_engine(database_url).connect() as connection:
        return list(
            connection.execute(select(cron_executions).order_by(cron_executions.c.id)).all()
        )


def signal_inside_run(
    script: str, database_url: str, tmp_path: Path, signum: int
) -> subprocess.CompletedProcess[str]:
    """Run ``script``, send ``signum`` once it is inside the run, and wait for it to exit."""
    path = tmp_path / "job.py"
    path.write_text(textwrap.dedent(script))
    process = subprocess.Popen(
        [sys.executable, str(path), database_url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        first_line = process.stdout.readline()
        if first_line != "inside\n":
            process.kill()
            _, stderr = process.communicate()
            pytest.fail(f"the script did not reach the run: {first_line!r}\n{stderr}")
        os.kill(process.pid, signum)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def job_row(database_url: str) -> Row[Any]:
    rows = [row for row in fetch_runs(database_url) if row.service_name == "signal-job"]
    assert len(rows) == 1, f"expected one signal-job row, got {rows}"
    return rows[0]


@pytest.mark.parametrize("mode", ["sync", "async", "sync-nested", "async-nested"])
def test_sigterm_marks_run_failed(database_url: str, tmp_path: Path, mode: str) -> None:
    result = signal_inside_run(SCRIPTS[mode], database_url, tmp_path, signal.SIGTERM)

    assert result.returncode == 143, f"exit status {result.returncode}: {result.stderr}"
    assert "not interrupted" not in result.stdout, "the job ran on after SIGTERM"
    row = job_row(database_url)
    assert row.status == "failed", f"status {row.status!r}"
    assert row.error_message == "terminated by SIGTERM", repr(row.error_message)
    assert row.items_processed == 2, f"items_processed {row.items_processed}"
    assert row.finished_at is not None, "finished_at is NULL"
    assert row.duration_ms is not None, "duration_ms is NULL"
    if mode.endswith("nested"):
        steps = [row for row in fetch_runs(database_url) if row.service_name != "signal-job"]
        assert [step.status for step in steps] == ["completed"], f"inner run: {steps}"


@pytest.mark.parametrize("mode", ["sync", "async", "sync-nested", "async-nested"])
def test_sigint_marks_run_failed(database_url: str, tmp_path: Path, mode: str) -> None:
    result = signal_inside_run(SCRIPTS[mode], database_url, tmp_path, signal.SIGINT)

    # Since Python 3.8 an uncaught KeyboardInterrupt ends the process by SIGINT itself.
    assert result.returncode == -signal.SIGINT, f"exit status {result.returncode}"
    assert "KeyboardInterrupt" in result.stderr, result.stderr
    assert "not interrupted" not in result.stdout, "the job ran on after SIGINT"
    row = job_row(database_url)
    assert row.status == "failed", f"status {row.status!r}"
    assert "SIGINT" in row.error_message, repr(row.error_message)
    assert row.items_processed == 2, f"items_processed {row.items_processed}"
    assert row.finished_at is not None, "finished_at is NULL"


@pytest.mark.parametrize("mode", ["sync-handler", "async-handler"])
def test_application_sigterm_handler_kept(database_url: str, tmp_path: Path, mode: str) -> None:
    result = signal_inside_run(SCRIPTS[mode], database_url, tmp_path, signal.SIGTERM)

    assert result.returncode == 0, f"exit status {result.returncode}: {result.stderr}"
    assert "handler called" in result.stdout, "the application's handler was not called"
    assert "finished" in result.stdout, "the job did not finish normally"
    row = job_row(database_url)
    assert row.status == "completed", f"status {row.status!r}: {row.error_message}"
    assert row.items_processed == 5, f"items_processed {row.items_processed}"
    assert row.error_message is None, repr(row.error_message)


GATHER_SCRIPT = """
import asyncio
import sys

from cronledger.tracking import track


async def job(index, entered):
    async with track(f"gather-job-{index}", database_url=sys.argv[1]) as run:
        run.items_processed = index
        entered.release()
        await asyncio.sleep(60)


async def main():
    entered = asyncio.Semaphore(0)
    tasks = [asyncio.create_task(job(index, entered)) for index in range(5)]
    for _ in tasks:
        await entered.acquire()
    print("inside", flush=True)
    await asyncio.gather(*tasks)
    print("not interrupted", flush=True)


asyncio.run(main())
"""


@pytest.mark.parametrize(
    ("signum", "returncode", "message"),
    [
        (signal.SIGTERM, 143, "terminated by SIGTERM"),
        (signal.SIGINT, -signal.SIGINT, "interrupted by SIGINT (KeyboardInterrupt)"),
    ],
    ids=["SIGTERM", "SIGINT"],
)
def test_signal_ends_every_gathered_run(
    database_url: str, tmp_path: Path, signum: int, returncode: int, message: str
) -> None:
    result = signal_inside_run(GATHER_SCRIPT, database_url, tmp_path, signum)

    assert result.returncode == returncode, f"exit status {result.returncode}: {result.stderr}"
    assert "not interrupted" not in result.stdout, "the job ran on after the signal"
    assert "Task exception was never retrieved" not in result.stderr, result.stderr
    rows = fetch_runs(database_url)
    assert len(rows) == 5, f"expected 5 rows, got {len(rows)}"
    assert sorted(row.items_processed for row in rows) == list(range(5))
    for row in rows:
        assert row.status == "failed", f"{row.service_name}: status {row.status!r}"
        assert row.error_message == message, f"{row.service_name}: {row.error_message!r}"
