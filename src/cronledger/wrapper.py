"""``cronledger run NAME -- CMD``: run any command and record it as one run.

The command's stdout and stderr pass through unchanged while a bounded tail
of each is kept for the record. SIGTERM, SIGINT, SIGHUP and SIGQUIT sent to
cronledger are forwarded to the command, and cronledger exits with the
command's exit status (128 + N when signal N killed it, as shells report).

The command runs in its own process group, so a forwarded signal reaches
every process it started, and a Ctrl-C in a terminal arrives once, through
cronledger, rather than twice.

Items processed reach the record through a file: the command finds its path
in ``CRONLEDGER_ITEMS_FILE`` and writes a non-negative integer to it.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import BinaryIO

from cronledger.recorder import Recorder, new_start, utc_now
from cronledger.store.executions import FinishEvent, StartEvent
from cronledger.store.tables import COMPLETED, FAILED
from cronledger.text import MAX_ERROR_CHARS, MAX_OUTPUT_TAIL_CHARS, clean_text, last_lines
from cronledger.validation import MAX_ITEMS

log = logging.getLogger(__name__)

ENV_ITEMS_FILE = "CRONLEDGER_ITEMS_FILE"
ENV_RUN_KEY = "CRONLEDGER_RUN_KEY"
ENV_SERVICE = "CRONLEDGER_SERVICE"

FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)

# Lines of stderr stored as the error message of a failed run.
ERROR_LINES = 20

# Bytes of stderr kept in memory to find those lines.
STDERR_TAIL_BYTES = 64 * 1024

EXIT_NOT_FOUND = 127
EXIT_NOT_EXECUTABLE = 126


@dataclass
class _Tail:
    """The last ``limit`` bytes written to a stream."""

    limit: int
    data: bytearray = field(default_factory=bytearray)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, chunk: bytes) -> None:
        with self.lock:
            self.data += chunk
            if len(self.data) > self.limit:
                del self.data[: len(self.data) - self.limit]


@dataclass
class CommandResult:
    """The outcome of one ``run_command`` call, as recorded."""

    exit_code: int
    status: str
    error_message: str | None
    items_processed: int
    duration_ms: int
    start: StartEvent


def run_command(
    recorder: Recorder | None,
    service_name: str,
    argv: Sequence[str],
    *,
    stdout: BinaryIO | None = None,
    stderr: BinaryIO | None = None,
) -> CommandResult:
    """Run ``argv``, stream its output, and record the run with ``recorder``.

    ``recorder`` may be None when the database URL was unusable: the command
    still runs, because monitoring must never stop the job.
    """
    out = stdout or sys.stdout.buffer
    err = stderr or sys.stderr.buffer
    start = new_start(service_name)
    started = time.monotonic()

    # The start goes to the database in the background, so a slow or
    # unreachable database does not delay the command.
    start_writer = threading.Thread(
        target=_record_start, args=(recorder, start), name="cronledger-start", daemon=True
    )
    _start_without_signals(start_writer)

    items_fd, items_path = tempfile.mkstemp(prefix="cronledger-items-", suffix=".txt")
    os.close(items_fd)
    env = dict(os.environ)
    env[ENV_ITEMS_FILE] = items_path
    env[ENV_RUN_KEY] = start.run_key
    env[ENV_SERVICE] = service_name

    output_tail = _Tail(MAX_OUTPUT_TAIL_CHARS)
    stderr_tail = _Tail(STDERR_TAIL_BYTES)
    try:
        exit_code, error = _execute(argv, env, out, err, output_tail, stderr_tail)
        items, items_warning = _read_items(items_path)
    finally:
        _remove(items_path)

    if items_warning:
        _warn(err, items_warning)

    duration_ms = round((time.monotonic() - started) * 1000)
    status = COMPLETED if exit_code == 0 else FAILED
    if status == FAILED and error is None:
        error = _failure_message(exit_code, stderr_tail)

    result = CommandResult(
        exit_code=exit_code,
        status=status,
        error_message=clean_text(error, MAX_ERROR_CHARS),
        items_processed=items,
        duration_ms=duration_ms,
        start=start,
    )
    start_writer.join()
    if recorder is not None:
        recorder.finish(
            FinishEvent(
                start=start,
                status=status,
                finished_at=utc_now(),
                duration_ms=duration_ms,
                items_processed=items,
                error_message=result.error_message,
                exit_code=exit_code,
                output_tail=clean_text(bytes(output_tail.data), MAX_OUTPUT_TAIL_CHARS),
            )
        )
    return result


def _record_start(recorder: Recorder | None, start: StartEvent) -> None:
    if recorder is not None:
        recorder.start(start)


def _execute(
    argv: Sequence[str],
    env: dict[str, str],
    out: BinaryIO,
    err: BinaryIO,
    output_tail: _Tail,
    stderr_tail: _Tail,
) -> tuple[int, str | None]:
    """Run the command to its end; return its exit status and a start error."""
    try:
        process = subprocess.Popen(
            list(argv),
            stdin=None,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            process_group=0,
        )
    except FileNotFoundError:
        message = f"command not found: {argv[0]}"
        _warn(err, message)
        return EXIT_NOT_FOUND, message
    except PermissionError:
        message = f"permission denied: {argv[0]} is not executable"
        _warn(err, message)
        return EXIT_NOT_EXECUTABLE, message
    except OSError as error:
        message = f"cannot execute {argv[0]}: {error.strerror or error}"
        _warn(err, message)
        return EXIT_NOT_EXECUTABLE, message

    previous = _forward_signals(process)
    try:
        assert process.stdout is not None and process.stderr is not None
        pumps = [
            threading.Thread(target=_pump, args=(process.stdout, out, (output_tail,)), daemon=True),
            threading.Thread(
                target=_pump, args=(process.stderr, err, (output_tail, stderr_tail)), daemon=True
            ),
        ]
        for pump in pumps:
            _start_without_signals(pump)
        returncode = _wait(process)
        for pump in pumps:
            pump.join()
    finally:
        _restore_signals(previous)

    # Popen reports death by signal N as -N; shells report 128 + N.
    exit_code = returncode if returncode >= 0 else 128 - returncode
    return exit_code, None


def _wait(process: subprocess.Popen[bytes]) -> int:
    while True:
        try:
            return process.wait()
        except InterruptedError:
            continue


def _forward_signals(process: subprocess.Popen[bytes]) -> dict[int, object]:
    def forward(signum: int, _frame: FrameType | None) -> None:
        try:
            os.killpg(process.pid, signum)
        except ProcessLookupError:
            pass

    previous: dict[int, object] = {}
    if threading.current_thread() is not threading.main_thread():
        return previous
    for signum in FORWARDED_SIGNALS:
        # A signal ignored when cronledger started (SIGHUP under nohup) stays
        # ignored, as the command inherited it, and a shell would keep it.
        if signal.getsignal(signum) is signal.SIG_IGN:
            continue
        previous[signum] = signal.signal(signum, forward)
    return previous


def _start_without_signals(thread: threading.Thread) -> None:
    """Start ``thread`` with the forwarded signals blocked in it.

    The kernel may deliver a signal to any thread that does not block it, and
    Python runs the handler only when the main thread next executes bytecode.
    A signal that landed in a helper thread would wait until the main thread's
    waitpid() returns, that is until the command ends on its own. A new thread
    inherits the signal mask of the thread that starts it.
    """
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED_SIGNALS)
    try:
        thread.start()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _restore_signals(previous: dict[int, object]) -> None:
    for signum, handler in previous.items():
        signal.signal(signum, handler)  # type: ignore[arg-type]


def _pump(source: BinaryIO, sink: BinaryIO, tails: Sequence[_Tail]) -> None:
    """Copy ``source`` to ``sink`` chunk by chunk, feeding the tails."""
    fd = source.fileno()
    sink_open = True
    while True:
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        for tail in tails:
            tail.add(chunk)
        if sink_open:
            try:
                sink.write(chunk)
                sink.flush()
            except (BrokenPipeError, ValueError, OSError):
                # Our reader went away; keep draining so the command is not
                # blocked on a full pipe, and keep the tail for the record.
                sink_open = False
    source.close()


def _read_items(path: str) -> tuple[int, str | None]:
    """Return the item count the command wrote, and a warning if it is invalid."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read(256)
    except OSError:
        return 0, None
    text = raw.decode("utf-8", errors="replace").strip()
    if not text:
        return 0, None
    try:
        value = int(text)
    except ValueError:
        value = -1
    if 0 <= value <= MAX_ITEMS:
        return value, None
    return 0, (
        f"ignored invalid item count {text[:40]!r} in ${ENV_ITEMS_FILE}: "
        f"write one integer from 0 to {MAX_ITEMS}, such as 12; the run is recorded with 0 items"
    )


def _failure_message(exit_code: int, stderr_tail: _Tail) -> str:
    if exit_code > 128 and exit_code - 128 in signal.valid_signals():
        summary = f"killed by {signal.Signals(exit_code - 128).name}"
    else:
        summary = f"exited with status {exit_code}"
    lines = last_lines(bytes(stderr_tail.data).decode("utf-8", errors="replace"), ERROR_LINES)
    return f"{summary}\n{lines}" if lines else summary


def _warn(err: BinaryIO, message: str) -> None:
    try:
        err.write(f"cronledger: {message}\n".encode())
        err.flush()
    except (OSError, ValueError):
        log.warning("%s", message)


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
