"""Tests of ``cronledger run`` with real subprocesses, signals and databases.

Each test starts the installed ``cronledger`` console script, lets it run a
real command, and then reads the row it wrote, on SQLite and on PostgreSQL.
Signal tests first wait until cronledger has installed its forwarding
handlers (read from /proc), so a signal never reaches it too early.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from cronledger.store.engine import get_engine
from cronledger.store.tables import cron_executions
from cronledger.text import MAX_OUTPUT_TAIL_CHARS
from cronledger.wrapper import ERROR_LINES, FORWARDED_SIGNALS
from tests.commands import CRONLEDGER
from tests.pgserver import free_port

pytestmark = pytest.mark.timeout(120)

# Seconds to wait for a process state that normally arrives within milliseconds.
WAIT_SECONDS = 30


@dataclass
class Finished:
    """The outcome of one cronledger process."""

    returncode: int
    stdout: bytes
    stderr: bytes
    pid: int
    elapsed_ms: float


def _default_signal_dispositions() -> None:
    # A shell that starts the test run in the background may leave SIGINT and
    # SIGQUIT ignored, nohup leaves SIGHUP ignored, and an ignored disposition
    # survives exec.
    for signum in (signal.SIGINT, signal.SIGQUIT, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)


def start_run(database_url: str, *args: str) -> subprocess.Popen[bytes]:
    """Start ``cronledger --database-url URL run ARGS...``."""
    return subprocess.Popen(
        [CRONLEDGER, "--database-url", database_url, "run", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=_default_signal_dispositions,
        # faulthandler prints every thread's stack on SIGABRT, which
        # wait_run sends to a process that hangs.
        env={**os.environ, "PYTHONFAULTHANDLER": "1"},
    )


def wait_run(process: subprocess.Popen[bytes], started: float, timeout: float = 60) -> Finished:
    """Collect the output of ``process``, and fail the test if it hangs."""
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        # SIGABRT first, so the failure shows where each thread was waiting.
        process.send_signal(signal.SIGABRT)
        try:
            stdout, stderr = process.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            stdout, stderr = process.communicate()
        pytest.fail(f"cronledger did not exit within {timeout} s; stderr: {stderr[-6000:]!r}")
    return Finished(
        returncode=process.returncode,
        stdout=stdout,
        stderr=stderr,
        pid=process.pid,
        elapsed_ms=(time.monotonic() - started) * 1000,
    )


def run(database_url: str, *args: str) -> Finished:
    """Run ``cronledger run ARGS...`` to its end."""
    started = time.monotonic()
    return wait_run(start_run(database_url, *args), started)


def python_command(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def fetch_rows(database_url: str) -> list[Any]:
    with get_engine(database_url).connect() as connection:
        return list(
            connection.execute(select(cron_executions).order_by(cron_executions.c.id)).all()
        )


def only_row(database_url: str) -> Any:
    rows = fetch_rows(database_url)
    assert len(rows) == 1, f"expected one row in cron_executions, found {len(rows)}: {rows}"
    return rows[0]


def wait_for_forwarding(process: subprocess.Popen[bytes]) -> None:
    """Wait until cronledger catches every signal that it forwards."""
    forwarded_mask = 0
    for signum in FORWARDED_SIGNALS:
        forwarded_mask |= 1 << (signum - 1)
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"cronledger exited early with {process.returncode}")
        status = Path(f"/proc/{process.pid}/status").read_text()
        caught_line = next(line for line in status.splitlines() if line.startswith("SigCgt:"))
        if int(caught_line.split()[1], 16) & forwarded_mask == forwarded_mask:
            return
        time.sleep(0.01)
    pytest.fail(f"cronledger did not install its signal handlers within {WAIT_SECONDS} s")


def wait_for_file(path: Path) -> str:
    """Wait until ``path`` has content, and return it."""
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        if path.exists():
            content = path.read_text()
            if content.endswith("\n"):
                return content.strip()
        time.sleep(0.01)
    pytest.fail(f"{path} was not written within {WAIT_SECONDS} s")


def is_running(pid: int) -> bool:
    """Return True if ``pid`` is a live process. A zombie counts as ended."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    state = stat.rsplit(")", 1)[1].split()[0]
    return state not in ("Z", "X")


def wait_until_ended(pid: int) -> bool:
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        if not is_running(pid):
            return True
        time.sleep(0.02)
    return False


def spooled_files(spool_root: Path) -> list[Path]:
    return sorted(spool_root.glob("*/*.json"))


# Exit codes, output and the row.


@pytest.mark.parametrize("exit_code", [0, 1, 3])
def test_exit_code_passes_through(database_url: str, exit_code: int) -> None:
    command = ["sh", "-c", f"echo out; echo err >&2; exit {exit_code}"]
    result = run(database_url, "nightly-report", "--", *command)
    row = only_row(database_url)

    assert result.returncode == exit_code, f"cronledger exited {result.returncode}"
    assert result.stdout == b"out\n", f"stdout changed: {result.stdout!r}"
    assert result.stderr == b"err\n", f"stderr changed: {result.stderr!r}"
    assert row.service_name == "nightly-report", f"service_name is {row.service_name!r}"
    assert row.exit_code == exit_code, f"exit_code column is {row.exit_code}"
    expected_status = "completed" if exit_code == 0 else "failed"
    assert row.status == expected_status, f"status is {row.status!r}"
    if exit_code == 0:
        assert row.error_message is None, f"error_message of a success: {row.error_message!r}"
    else:
        assert row.error_message == f"exited with status {exit_code}\nerr", (
            f"error_message is {row.error_message!r}"
        )
    assert row.items_processed == 0, f"items_processed is {row.items_processed}"
    assert row.pid == result.pid, f"pid column {row.pid} is not cronledger's pid {result.pid}"
    assert row.host == socket.gethostname(), f"host column is {row.host!r}"
    assert row.run_key, "run_key is empty"
    assert row.finished_at is not None, "finished_at is missing"
    assert row.finished_at >= row.execution_time, "finished_at is before execution_time"
    assert row.duration_ms is not None, "duration_ms is missing"
    assert row.duration_ms >= 0, f"duration_ms is negative: {row.duration_ms}"


def test_error_message_last_stderr_lines(database_url: str) -> None:
    code = "import sys\nfor i in range(1, 31): print(f'problem {i}', file=sys.stderr)\nsys.exit(3)"
    result = run(database_url, "importer", "--", *python_command(code))
    lines = only_row(database_url).error_message.splitlines()

    assert result.returncode == 3, f"cronledger exited {result.returncode}"
    assert lines[0] == "exited with status 3", f"first line is {lines[0]!r}"
    assert len(lines) == ERROR_LINES + 1, f"expected {ERROR_LINES} stderr lines, got {lines}"
    assert lines[1] == "problem 11", f"oldest kept line is {lines[1]!r}"
    assert lines[-1] == "problem 30", f"newest line is {lines[-1]!r}"


def test_binary_output_unchanged(database_url: str) -> None:
    stdout_bytes = bytes(range(256)) * 8 + b"\xff\xfe\x00no newline at the end"
    stderr_bytes = b"\x80\x81 not utf-8 \xc3\x28\x00\r\n" * 3
    code = (
        "import sys\n"
        f"sys.stdout.buffer.write({stdout_bytes!r})\n"
        f"sys.stderr.buffer.write({stderr_bytes!r})\n"
    )
    result = run(database_url, "binary", "--", *python_command(code))

    assert result.returncode == 0, f"cronledger exited {result.returncode}: {result.stderr!r}"
    assert result.stdout == stdout_bytes, "stdout bytes changed on the way through"
    assert result.stderr == stderr_bytes, "stderr bytes changed on the way through"
    assert only_row(database_url).status == "completed", "the run is not completed"


@pytest.mark.timeout(180)
def test_large_output_no_deadlock(database_url: str) -> None:
    # 5 MiB on each stream, written in alternation, so a wrapper that reads
    # one pipe to its end before the other would block on the full pipe.
    chunks = 80
    chunk_size = 64 * 1024
    code = (
        "import random, sys\n"
        "out, err = random.Random(1), random.Random(2)\n"
        f"for _ in range({chunks}):\n"
        f"    sys.stdout.buffer.write(out.randbytes({chunk_size}))\n"
        "    sys.stdout.buffer.flush()\n"
        f"    sys.stderr.buffer.write(err.randbytes({chunk_size}))\n"
        "    sys.stderr.buffer.flush()\n"
    )
    expected_out, expected_err = random.Random(1), random.Random(2)
    expected_stdout = b"".join(expected_out.randbytes(chunk_size) for _ in range(chunks))
    expected_stderr = b"".join(expected_err.randbytes(chunk_size) for _ in range(chunks))

    result = run(database_url, "bulk-export", "--", *python_command(code))
    row = only_row(database_url)

    assert result.returncode == 0, f"cronledger exited {result.returncode}"
    assert len(result.stdout) == chunks * chunk_size, f"stdout has {len(result.stdout)} bytes"
    assert result.stdout == expected_stdout, "stdout bytes changed on the way through"
    assert result.stderr == expected_stderr, "stderr bytes changed on the way through"
    assert len(row.output_tail) <= MAX_OUTPUT_TAIL_CHARS, (
        f"output_tail has {len(row.output_tail)} characters"
    )
    assert "\x00" not in row.output_tail, "output_tail keeps NUL characters"


def test_output_tail_keeps_end(database_url: str) -> None:
    lines = [f"record {i:06d} exported" for i in range(10_000)] + ["export finished"]
    expected = ("\n".join(lines) + "\n").encode()
    code = (
        "import sys\n"
        "for i in range(10_000): print(f'record {i:06d} exported')\n"
        "print('export finished')\n"
    )
    result = run(database_url, "export", "--", *python_command(code))
    tail = only_row(database_url).output_tail

    assert result.stdout == expected, "stdout changed on the way through"
    assert len(expected) > MAX_OUTPUT_TAIL_CHARS, "the test output is too short to be cut"
    assert len(tail) == MAX_OUTPUT_TAIL_CHARS, f"output_tail has {len(tail)} characters"
    assert tail.endswith("export finished\n"), f"output_tail ends with {tail[-40:]!r}"
    assert tail == expected.decode()[-MAX_OUTPUT_TAIL_CHARS:], "output_tail is not the end"


def test_stderr_nul_cleaned(database_url: str) -> None:
    stderr_bytes = b"first\x00line\n\xff\xfe broken \xc3\x28 utf-8\nlast line\n"
    code = f"import sys\nsys.stderr.buffer.write({stderr_bytes!r})\nsys.exit(2)"
    result = run(database_url, "dirty", "--", *python_command(code))
    row = only_row(database_url)

    assert result.returncode == 2, f"cronledger exited {result.returncode}"
    assert result.stderr == stderr_bytes, "stderr bytes changed on the way through"
    assert row.status == "failed", f"status is {row.status!r}"
    assert row.error_message.startswith("exited with status 2\n"), (
        f"error_message is {row.error_message!r}"
    )
    assert "\x00" not in row.error_message, "error_message keeps a NUL character"
    assert "firstline" in row.error_message, f"error_message is {row.error_message!r}"
    assert "\ufffd broken" in row.error_message, "invalid UTF-8 is not replaced by U+FFFD"
    assert row.error_message.endswith("last line"), f"error_message is {row.error_message!r}"
    assert "\x00" not in row.output_tail, "output_tail keeps a NUL character"


# Items, run key and environment.


@pytest.mark.parametrize(
    ("content", "exit_code", "expected"),
    [("42\n", 0, 42), (" 7 ", 1, 7), ("0", 0, 0)],
    ids=["success", "failure", "zero"],
)
def test_items_file_counts(database_url: str, content: str, exit_code: int, expected: int) -> None:
    script = f'printf %s "$1" > "$CRONLEDGER_ITEMS_FILE"; exit {exit_code}'
    result = run(database_url, "loader", "--", "sh", "-c", script, "sh", content)

    assert result.returncode == exit_code, f"cronledger exited {result.returncode}"
    assert result.stderr == b"", f"unexpected stderr: {result.stderr!r}"
    assert only_row(database_url).items_processed == expected, "wrong items_processed"


@pytest.mark.parametrize("content", ["twelve", "-5", "2147483648"])
def test_items_file_invalid_warns(database_url: str, content: str) -> None:
    script = 'printf %s "$1" > "$CRONLEDGER_ITEMS_FILE"'
    result = run(database_url, "loader", "--", "sh", "-c", script, "sh", content)
    row = only_row(database_url)
    stderr = result.stderr.decode()

    assert result.returncode == 0, f"cronledger exited {result.returncode}"
    assert f"invalid item count '{content}'" in stderr, f"no warning naming the value: {stderr}"
    assert "CRONLEDGER_ITEMS_FILE" in stderr, f"the warning does not name the file: {stderr}"
    assert row.items_processed == 0, f"items_processed is {row.items_processed}"
    assert row.status == "completed", f"an invalid count changed the status: {row.status}"


def test_run_key_matches_row(database_url: str) -> None:
    script = 'printf "%s\\n%s\\n" "$CRONLEDGER_RUN_KEY" "$CRONLEDGER_SERVICE"'
    result = run(database_url, "keyed", "--", "sh", "-c", script)
    row = only_row(database_url)
    run_key, service = result.stdout.decode().splitlines()

    assert run_key == row.run_key, f"$CRONLEDGER_RUN_KEY {run_key} is not the row's run_key"
    assert service == "keyed", f"$CRONLEDGER_SERVICE is {service!r}"


# Commands that cannot start, and --shell.


@pytest.mark.parametrize("command", ["cronledger-test-no-such-command", "/nonexistent/bin/job"])
def test_command_not_found(database_url: str, command: str) -> None:
    result = run(database_url, "missing", "--", command, "--flag")
    row = only_row(database_url)

    assert result.returncode == 127, f"cronledger exited {result.returncode}"
    assert f"command not found: {command}" in result.stderr.decode(), "no reason on stderr"
    assert row.status == "failed", f"status is {row.status!r}"
    assert row.exit_code == 127, f"exit_code column is {row.exit_code}"
    assert row.error_message == f"command not found: {command}", (
        f"error_message is {row.error_message!r}"
    )


def test_not_executable_file(database_url: str, tmp_path: Path) -> None:
    script = tmp_path / "job.sh"
    script.write_text("#!/bin/sh\necho this must not run\n")
    script.chmod(0o644)
    result = run(database_url, "no-exec", "--", str(script))
    row = only_row(database_url)

    assert result.returncode == 126, f"cronledger exited {result.returncode}"
    assert result.stdout == b"", f"the script ran: {result.stdout!r}"
    assert row.status == "failed", f"status is {row.status!r}"
    assert row.exit_code == 126, f"exit_code column is {row.exit_code}"
    assert str(script) in row.error_message, f"error_message is {row.error_message!r}"
    assert "not executable" in row.error_message, f"error_message is {row.error_message!r}"


def test_shell_runs_pipe(database_url: str) -> None:
    result = run(database_url, "--shell", "piped", "--", "printf 'b\\na\\nc\\n' | sort; exit 4")
    row = only_row(database_url)

    assert result.returncode == 4, f"cronledger exited {result.returncode}: {result.stderr!r}"
    assert result.stdout == b"a\nb\nc\n", f"the pipe did not run: {result.stdout!r}"
    assert row.status == "failed", f"status is {row.status!r}"
    assert row.exit_code == 4, f"exit_code column is {row.exit_code}"


# Signals.


def test_sigterm_reaches_trap(database_url: str, tmp_path: Path) -> None:
    marker = tmp_path / "got-term"
    ready = tmp_path / "ready"
    script = tmp_path / "trap.sh"
    # Short foreground sleeps rather than one long background sleep: a
    # background child forked just before the signal could miss it and keep
    # the output pipes open for its whole run.
    script.write_text(
        "\n".join(
            [
                "trap 'echo TERM > \"$1\"; exit 143' TERM",
                'echo ready > "$2"',
                "while :; do sleep 0.1; done",
                "",
            ]
        )
    )
    started = time.monotonic()
    process = start_run(database_url, "trapper", "--", "sh", str(script), str(marker), str(ready))
    wait_for_forwarding(process)
    wait_for_file(ready)
    os.kill(process.pid, signal.SIGTERM)
    result = wait_run(process, started)
    row = only_row(database_url)

    assert result.returncode == 143, f"cronledger exited {result.returncode}"
    assert marker.read_text() == "TERM\n", "the command's TERM trap did not run"
    assert row.status == "failed", f"status is {row.status!r}"
    assert row.exit_code == 143, f"exit_code column is {row.exit_code}"
    assert row.error_message.startswith("killed by SIGTERM"), (
        f"error_message is {row.error_message!r}"
    )


@pytest.mark.parametrize(
    "signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP], ids=lambda signum: signum.name
)
def test_signal_forwarded_to_sleep(database_url: str, signum: signal.Signals) -> None:
    started = time.monotonic()
    process = start_run(database_url, "sleeper", "--", "sleep", "60")
    wait_for_forwarding(process)
    os.kill(process.pid, signum)
    result = wait_run(process, started)
    row = only_row(database_url)

    assert result.returncode == 128 + signum, f"cronledger exited {result.returncode}"
    assert row.status == "failed", f"status is {row.status!r}"
    assert row.exit_code == 128 + signum, f"exit_code column is {row.exit_code}"
    assert row.error_message == f"killed by {signum.name}", (
        f"error_message is {row.error_message!r}"
    )


def test_signal_reaches_grandchild(database_url: str, tmp_path: Path) -> None:
    pid_file = tmp_path / "grandchild.pid"
    script = 'sleep 100 & echo $! > "$1"; wait'
    started = time.monotonic()
    process = start_run(database_url, "parent", "--", "sh", "-c", script, "sh", str(pid_file))
    wait_for_forwarding(process)
    grandchild = int(wait_for_file(pid_file))
    assert is_running(grandchild), "the grandchild sleep is not running before the signal"

    os.kill(process.pid, signal.SIGTERM)
    result = wait_run(process, started)

    assert result.returncode == 143, f"cronledger exited {result.returncode}"
    assert wait_until_ended(grandchild), f"grandchild {grandchild} survived the forwarded SIGTERM"
    assert only_row(database_url).status == "failed", "the run is not failed"


def test_sigkill_child_recorded(database_url: str, tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    started = time.monotonic()
    script = 'echo $$ > "$1"; exec sleep 60'
    process = start_run(database_url, "victim", "--", "sh", "-c", script, "sh", str(pid_file))
    child = int(wait_for_file(pid_file))
    os.kill(child, signal.SIGKILL)
    result = wait_run(process, started)
    row = only_row(database_url)

    assert result.returncode == 137, f"cronledger exited {result.returncode}"
    assert row.status == "failed", f"status is {row.status!r}"
    assert row.exit_code == 137, f"exit_code column is {row.exit_code}"
    assert row.error_message == "killed by SIGKILL", f"error_message is {row.error_message!r}"


def test_duration_covers_sleep(database_url: str) -> None:
    result = run(database_url, "napper", "--", "sleep", "0.5")
    row = only_row(database_url)

    assert result.returncode == 0, f"cronledger exited {result.returncode}"
    assert row.duration_ms >= 500, f"duration_ms {row.duration_ms} is shorter than the sleep"
    # An upper bound that holds on any machine: the wrapper's own measurement
    # cannot exceed the time the test saw the whole process take.
    assert row.duration_ms <= result.elapsed_ms, (
        f"duration_ms {row.duration_ms} exceeds the process's {result.elapsed_ms:.0f} ms"
    )


# Databases that cannot be used.


def test_unreachable_database_spools(isolated_state: Path, tmp_path: Path) -> None:
    port = free_port()
    url = f"postgresql://cron:secret@127.0.0.1:{port}/ledger"
    result = run(url, "offline", "--", "sh", "-c", "echo ran; exit 5")
    stderr = result.stderr.decode()
    files = spooled_files(isolated_state)

    assert result.returncode == 5, f"cronledger exited {result.returncode}: {stderr}"
    assert result.stdout == b"ran\n", f"the command did not run: {result.stdout!r}"
    assert f"127.0.0.1:{port}" in stderr, f"stderr does not name the database: {stderr}"
    assert "secret" not in stderr, f"the password leaked: {stderr}"
    assert [path.name.rsplit("-", 1)[1] for path in files] == ["start.json", "finish.json"], (
        f"spooled files: {files}"
    )

    start = json.loads(files[0].read_text())
    finish = json.loads(files[1].read_text())
    assert start["run_key"] == finish["start"]["run_key"], "start and finish differ in run key"
    assert start["service_name"] == "offline", f"spooled service is {start['service_name']!r}"
    assert finish["status"] == "failed", f"spooled status is {finish['status']!r}"
    assert finish["exit_code"] == 5, f"spooled exit_code is {finish['exit_code']}"

    status = subprocess.run(
        [CRONLEDGER, "--database-url", url, "spool", "status"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        check=False,
    )
    assert status.returncode == 0, f"spool status exited {status.returncode}: {status.stderr}"
    assert status.stdout.startswith("2 events waiting"), f"spool status: {status.stdout!r}"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("not-a-url", "'not-a-url'"),
        (
            "postgresql://cron:secret@127.0.0.1:notaport/ledger",
            "'postgresql://cron:***@127.0.0.1:notaport/ledger'",
        ),
    ],
    ids=["no scheme", "port not a number"],
)
def test_malformed_url_still_runs(isolated_state: Path, url: str, shown: str) -> None:
    result = run(url, "typo", "--", "sh", "-c", "echo ran; exit 5")
    stderr = result.stderr.decode()

    assert result.returncode == 5, f"cronledger exited {result.returncode}: {stderr}"
    assert result.stdout == b"ran\n", f"the command did not run: {result.stdout!r}"
    assert f"invalid database URL {shown}" in stderr, f"stderr does not name the URL: {stderr}"
    assert "not recorded" in stderr, f"stderr does not say the run is lost: {stderr}"
    assert "secret" not in stderr, f"the password leaked: {stderr}"
    assert "Traceback" not in stderr, f"traceback for a malformed URL:\n{stderr}"
    assert spooled_files(isolated_state) == [], "events were spooled for an unusable URL"


def _ignore_hangup() -> None:
    _default_signal_dispositions()
    signal.signal(signal.SIGHUP, signal.SIG_IGN)


def test_ignored_sighup_stays_ignored(sqlite_url: str) -> None:
    # Under nohup, SIGHUP is ignored when cronledger starts; it keeps it
    # ignored, as the command does, so a hangup ends neither.
    process = subprocess.Popen(
        [CRONLEDGER, "--database-url", sqlite_url, "run", "nohup-job", "--", "sleep", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=_ignore_hangup,
    )
    time.sleep(0.5)
    process.send_signal(signal.SIGHUP)
    finished = wait_run(process, time.monotonic())

    assert finished.returncode == 0, f"exit {finished.returncode}: {finished.stderr!r}"
    assert only_row(sqlite_url).status == "completed", "a hangup ended the run"
