"""``cronledger run`` under the real cron daemon (Debian's ``cron`` package).

The test installs an entry in /etc/cron.d that runs every minute. It starts
``cron -f`` as its own child, or uses a cron daemon that is already running,
and waits for two minute boundaries. Then it checks that each minute's run
is recorded exactly once, with the environment that cron gives a job: Debian
cron's default PATH, which does not reach the virtual environment, and no
terminal.

Cleanup is layered so that a failing or killed test leaves nothing behind:
a ``finally`` removes the file and stops the daemon, the daemon gets SIGTERM
from the kernel when the test process dies (PR_SET_PDEATHSIG), and the
entry itself deletes its file at the next minute once the test process is gone.

NOTE: while it runs, the daemon also runs the system's own entries
(/etc/crontab, /etc/cron.d) that fall due in those minutes, as any cron would.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import shutil
import signal
import sqlite3
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.commands import CRONLEDGER

# Up to two other sessions may hold the daemon before this one gets it.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

CRON_D = Path("/etc/cron.d")
LOCK_FILE = Path("/tmp/cronledger-test-cron-daemon.lock")
SERVICE = "cron-daemon-check"

# Debian's cron gives jobs PATH=/usr/bin:/bin unless the crontab sets PATH
# (observed with cron 3.0pl1-162 of Debian 12).
CRON_DEFAULT_PATH = "/usr/bin:/bin"

# The job prints cron's environment into its output, which cronledger
# stores in output_tail. No "%" may appear in a crontab line, so the date
# format sits in this script.
JOB_SCRIPT = """\
#!/bin/sh
echo "minute=$(date -u +%Y-%m-%dT%H:%M)"
echo "PATH=$PATH"
echo "TERM=${TERM-unset}"
echo "tty=$(tty 2>&1)"
echo "cronledger_on_path=$(command -v cronledger || echo no)"
echo 1 > "$CRONLEDGER_ITEMS_FILE"
"""

PR_SET_PDEATHSIG = 1


def find_cron() -> str:
    """Return the path of the cron daemon, or skip (fail under CI=true)."""
    found = shutil.which("cron", path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin")
    problem = None
    if found is None:
        problem = "the cron daemon is not installed: apt-get install -y cron"
    elif os.geteuid() != 0:
        problem = "writing /etc/cron.d needs root"
    if problem is not None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{problem} (CI=true: the cron daemon test must run)")
        pytest.skip(problem)
    assert found is not None
    return found


def running_cron_pid() -> int | None:
    """Return the pid of a cron daemon that is already running, from its pid file."""
    try:
        pid = int(Path("/run/crond.pid").read_text().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    comm = Path(f"/proc/{pid}/comm")
    return pid if comm.exists() and comm.read_text().strip() == "cron" else None


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: the kernel sends SIGTERM to
    # the daemon when the test process dies, even by SIGKILL.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class CronEntry:
    """An installed /etc/cron.d entry and the files its job writes."""

    path: Path
    database: Path
    log: Path


@pytest.fixture
def cron_entry(tmp_path: Path) -> Iterator[CronEntry]:
    """Install the entry, run a cron daemon, and remove both afterwards, whatever happens."""
    cron = find_cron()

    # One cron daemon serves the whole machine, so test sessions that run
    # at the same time take turns. Otherwise one session could stop the
    # daemon while another still waits for its runs. The kernel releases
    # the lock when the process dies.
    with LOCK_FILE.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield from _installed_entry(cron, tmp_path)


def _installed_entry(cron: str, tmp_path: Path) -> Iterator[CronEntry]:
    workdir = tmp_path / "cron"
    workdir.mkdir()
    # cron runs the job as root, but a test may run with a private umask.
    workdir.chmod(0o755)
    job = workdir / "job.sh"
    job.write_text(JOB_SCRIPT)
    entry = CronEntry(
        path=CRON_D / f"cronledger-test-{uuid.uuid4().hex[:12]}",
        database=workdir / "cronledger.db",
        log=workdir / "cron.log",
    )

    # Debian cron reads only files in /etc/cron.d whose names have no dot,
    # that root owns and that others cannot write.
    command = (
        f"if kill -0 {os.getpid()} 2>/dev/null; then "
        f"{CRONLEDGER} run {SERVICE} -- /bin/sh {job} >> {entry.log} 2>&1; "
        f"else rm -f {entry.path}; fi"
    )
    daemon: subprocess.Popen[bytes] | None = None
    daemon_log = workdir / "daemon.log"
    try:
        entry.path.write_text(
            "SHELL=/bin/sh\n"
            f"CRONLEDGER_DATABASE_URL=sqlite:///{entry.database}\n"
            f"CRONLEDGER_SPOOL_DIR={workdir / 'spool'}\n"
            f"* * * * * root {command}\n"
        )
        entry.path.chmod(0o644)

        # A daemon that is already running is the system's, because the lock
        # keeps other runs of this test out; it is used and left running.
        if running_cron_pid() is None:
            with daemon_log.open("wb") as stderr:
                daemon = subprocess.Popen(
                    [cron, "-f"],
                    stdout=subprocess.DEVNULL,
                    stderr=stderr,
                    preexec_fn=_die_with_parent,
                )
            time.sleep(1)
            assert daemon.poll() is None, (
                f"cron -f exited {daemon.returncode}: {daemon_log.read_text()}"
            )
        yield entry
    finally:
        entry.path.unlink(missing_ok=True)
        if daemon is not None and daemon.poll() is None:
            daemon.terminate()
            try:
                daemon.wait(timeout=10)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()


def recorded_runs(database: Path) -> list[tuple[str, str, int, int | None, str | None]]:
    if not database.exists():
        return []
    connection = sqlite3.connect(database, timeout=30)
    try:
        return connection.execute(
            "SELECT execution_time, status, items_processed, exit_code, output_tail"
            " FROM cron_executions WHERE service_name = ? ORDER BY id",
            (SERVICE,),
        ).fetchall()
    except sqlite3.OperationalError:
        return []  # the first run is still creating the schema
    finally:
        connection.close()


def minute_of(stamp: str) -> datetime:
    started = datetime.fromisoformat(stamp).replace(tzinfo=UTC)
    return started.replace(second=0, microsecond=0)


def test_cron_runs_recorded_once(cron_entry: CronEntry) -> None:
    installed = datetime.now(UTC)
    # cron reads new entries when it wakes at a minute boundary, so a
    # boundary only a few seconds away may or may not run the job.
    first = (installed + timedelta(seconds=5)).replace(second=0, microsecond=0) + timedelta(
        minutes=1
    )
    expected = [first, first + timedelta(minutes=1)]
    uncertain = first - timedelta(minutes=1)

    # Wait until both expected runs have finished, with a margin for a slow
    # machine. If they did not finish, the checks below report what is missing.
    deadline = expected[-1] + timedelta(seconds=60)
    while datetime.now(UTC) < deadline:
        finished = [
            run for run in recorded_runs(cron_entry.database) if minute_of(run[0]) in expected
        ]
        if len(finished) >= len(expected) and all(run[1] != "started" for run in finished):
            break
        time.sleep(2)
    # Stop before the next boundary, so that the record can be compared
    # with the exact set of minutes that passed.
    cron_entry.path.unlink()
    runs = recorded_runs(cron_entry.database)
    log = cron_entry.log.read_text() if cron_entry.log.exists() else "(no output)"

    per_minute = Counter(minute_of(run[0]) for run in runs)
    for minute in expected:
        assert per_minute[minute] == 1, (
            f"minute {minute:%H:%M} has {per_minute[minute]} runs; runs: {runs}; output: {log}"
        )
    unexpected = set(per_minute) - {*expected, uncertain}
    assert not unexpected, f"runs at minutes that were not due: {sorted(unexpected)}"
    for execution_time, status, items, exit_code, output in runs:
        assert (status, items, exit_code) == ("completed", 1, 0), (
            f"run at {execution_time}: {status}, {items} items, exit {exit_code}; output: {log}"
        )
        assert output is not None, f"run at {execution_time} stored no output"
        assert f"PATH={CRON_DEFAULT_PATH}\n" in output, f"not cron's PATH: {output}"
        assert "TERM=unset\n" in output, f"cron set TERM: {output}"
        assert "tty=not a tty\n" in output, f"the job had a terminal: {output}"
        assert "cronledger_on_path=no\n" in output, f"cronledger was on PATH: {output}"
        minute_line = f"minute={minute_of(execution_time):%Y-%m-%dT%H:%M}\n"
        assert minute_line in output, f"the job ran in another minute: {output}"
