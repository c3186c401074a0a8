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

The scheduler runs its commands through the same ``CommandRun``, with a
``ProcessControl`` that ends the process group on a timeout (recorded as
``timed_out``) or when the scheduler stops (recorded as ``failed``).
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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import BinaryIO

from cronledger.recorder import Recorder, new_start, utc_now
from cronledger.store.executions import FinishEvent, StartEvent
from cronledger.store.tables import COMPLETED, FAILED, TIMED_OUT
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


# Reasons for which a ProcessControl ends a command.
ENDED_BY_TIMEOUT = "timeout"
ENDED_BY_STOP = "stop"


class ProcessControl:
    """Ends a command's process group on a timeout or on request from another thread.

    Ending sends SIGTERM to the group, then SIGKILL after ``kill_delay``
    seconds to whatever is left of it. The SIGKILL goes to the group even
    when the command itself has exited, because a child that ignores
    SIGTERM would otherwise keep running and keep the output pipes open.
    """

    def __init__(self, timeout: float | None, kill_delay: float) -> None:
        self.timeout = timeout
        self.kill_delay = kill_delay
        # ENDED_BY_TIMEOUT or ENDED_BY_STOP once the command is being ended.
        self.ended_by: str | None = None
        self.killed = False
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._exited = False
        self._spawned = 0.0
        self._timers: list[threading.Timer] = []

    def attach(self, process: subprocess.Popen[bytes]) -> None:
        """Take charge of a command that has just started; ``arm`` starts its timeout."""
        with self._lock:
            self._process = process
            self._spawned = time.monotonic()
            ended_by = self.ended_by
        if ended_by is not None:
            # A stop was requested while the command was being started.
            self._send_sigterm()

    def arm(self) -> None:
        """Start the timeout, counted from the command's start.

        This is separate from ``attach`` because starting the timer thread
        takes a moment, which the scheduler spends after it has started
        every command due at one fire time.
        """
        if self.timeout is None or self._process is None:
            return
        remaining = self.timeout - (time.monotonic() - self._spawned)
        self._start_timer(max(remaining, 0.0), self.end, ENDED_BY_TIMEOUT)

    def end(self, ended_by: str = ENDED_BY_STOP) -> None:
        """Send SIGTERM to the process group, and SIGKILL after the kill delay."""
        with self._lock:
            if self.ended_by is not None or self._exited:
                return
            self.ended_by = ended_by
            attached = self._process is not None
        if attached:
            self._send_sigterm()

    def mark_exited(self) -> None:
        """Note that the command has exited, so a timeout that fires now does nothing."""
        with self._lock:
            self._exited = True

    def detach(self) -> None:
        """Cancel the timers once the command has exited and its output is read."""
        with self._lock:
            timers, self._timers = self._timers, []
        for timer in timers:
            timer.cancel()

    def _send_sigterm(self) -> None:
        self._signal_group(signal.SIGTERM)
        self._start_timer(self.kill_delay, self._send_sigkill)

    def _send_sigkill(self) -> None:
        # NOTE: once the leader is reaped, a new process group could reuse its
        # id within the kill delay. The kernel hands out pids in order, so
        # that needs the pid space to wrap around within seconds.
        if self._signal_group(signal.SIGKILL):
            self.killed = True

    def _signal_group(self, signum: int) -> bool:
        process = self._process
        if process is None:
            return False
        try:
            os.killpg(process.pid, signum)
        except ProcessLookupError:
            return False  # the whole group has exited
        return True

    def _start_timer(self, seconds: float, action: object, *args: object) -> None:
        timer = threading.Timer(seconds, action, args)  # type: ignore[arg-type]
        timer.daemon = True
        with self._lock:
            self._timers.append(timer)
        _start_without_signals(timer)


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
    run_key: str | None = None,
    cwd: Path | None = None,
    environment: Mapping[str, str] | None = None,
    control: ProcessControl | None = None,
) -> CommandResult:
    """Run ``argv``, stream its output, and record the run with ``recorder``.

    ``recorder`` may be None when the database URL was unusable: the command
    still runs, because monitoring must never stop the job. ``environment``
    is added to this process's environment. ``control`` ends the command on
    a timeout (status timed_out) or on request (status failed).
    """
    run = CommandRun(
        recorder,
        service_name,
        argv,
        stdout=stdout,
        stderr=stderr,
        run_key=run_key,
        cwd=cwd,
        environment=environment,
        control=control,
    )
    run.spawn()
    return run.finish()


class CommandRun:
    """One recorded run of a command in two steps: ``spawn``, then ``finish``.

    ``run_command`` takes both steps at once. The scheduler spawns all the
    commands due at one fire time first and finishes each in a thread of its
    own, so the last of 200 commands does not wait for 199 threads to start.
    """

    def __init__(
        self,
        recorder: Recorder | None,
        service_name: str,
        argv: Sequence[str],
        *,
        stdout: BinaryIO | None = None,
        stderr: BinaryIO | None = None,
        run_key: str | None = None,
        cwd: Path | None = None,
        environment: Mapping[str, str] | None = None,
        control: ProcessControl | None = None,
        items_dir: Path | None = None,
    ) -> None:
        self.recorder = recorder
        self.service_name = service_name
        self.argv = list(argv)
        # Fixes the run key now; spawn() takes the start time again.
        self.start = new_start(service_name, run_key)
        self._out = stdout or sys.stdout.buffer
        self._err = stderr or sys.stderr.buffer
        self._cwd = cwd
        self._environment = environment or {}
        self._control = control
        self._items_dir = items_dir
        self._started = 0.0
        self._items_path = ""
        self._process: subprocess.Popen[bytes] | None = None
        self._spawn_failure: tuple[int, str] = (EXIT_NOT_EXECUTABLE, "the command was not started")

    def spawn(self) -> None:
        """Start the command; a command that cannot start is recorded as failed by ``finish``."""
        self.start = new_start(self.service_name, self.start.run_key)
        self._started = time.monotonic()

        if self._items_dir is None:
            items_fd, self._items_path = tempfile.mkstemp(prefix="cronledger-items-", suffix=".txt")
            os.close(items_fd)
        else:
            # A private directory (mode 0700) needs no unpredictable file
            # created in advance, which saves a file creation per run.
            self._items_path = str(self._items_dir / f"{self.start.run_key}.items")
        env = dict(os.environ)
        env.update(self._environment)
        env[ENV_ITEMS_FILE] = self._items_path
        env[ENV_RUN_KEY] = self.start.run_key
        env[ENV_SERVICE] = self.service_name

        try:
            self._process = _spawn(self.argv, env, self._cwd)
        except _SpawnError as error:
            _warn(self._err, error.message)
            self._spawn_failure = (error.exit_code, error.message)
            return
        if self._control is not None:
            self._control.attach(self._process)

    def finish(self) -> CommandResult:
        """Stream the output, wait for the exit, and record the start and the outcome."""
        start = self.start
        recorder = self.recorder
        # The start goes to the database in the background, so a slow or
        # unreachable database does not hold up the command's output.
        start_writer = threading.Thread(
            target=_record_start, args=(recorder, start), name="cronledger-start", daemon=True
        )
        _start_without_signals(start_writer)

        control = self._control
        output_tail = _Tail(MAX_OUTPUT_TAIL_CHARS)
        stderr_tail = _Tail(STDERR_TAIL_BYTES)
        try:
            if self._process is None:
                exit_code, error = self._spawn_failure
            else:
                exit_code = _wait_for(
                    self._process, self._out, self._err, output_tail, stderr_tail, control
                )
                error = None
            items, items_warning = _read_items(self._items_path)
        finally:
            _remove(self._items_path)
            if control is not None:
                control.detach()

        if items_warning:
            _warn(self._err, items_warning)

        duration_ms = round((time.monotonic() - self._started) * 1000)
        status = COMPLETED if exit_code == 0 else FAILED
        if status == FAILED and error is None:
            error = _failure_message(exit_code, stderr_tail)
        if control is not None and control.ended_by is not None:
            # A command may exit 0 after SIGTERM; it was ended all the same.
            status, error = _ending(control, _failure_message(exit_code, stderr_tail))

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


class _SpawnError(Exception):
    """A command that could not be started, with the exit status a shell would give."""

    def __init__(self, exit_code: int, message: str) -> None:
        self.exit_code = exit_code
        self.message = message
        super().__init__(message)


def _spawn(argv: list[str], env: dict[str, str], cwd: Path | None) -> subprocess.Popen[bytes]:
    """Start the command in a process group of its own; raise _SpawnError if it cannot start."""
    try:
        return subprocess.Popen(
            argv,
            stdin=None,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=cwd,
            process_group=0,
        )
    except FileNotFoundError as error:
        message = f"command not found: {argv[0]}"
        if cwd is not None and error.filename == str(cwd):
            message = f"working directory not found: {cwd}; create it or fix working_dir"
        raise _SpawnError(EXIT_NOT_FOUND, message) from None
    except PermissionError:
        message = f"permission denied: {argv[0]} is not executable"
        raise _SpawnError(EXIT_NOT_EXECUTABLE, message) from None
    except OSError as error:
        message = f"cannot execute {argv[0]}: {error.strerror or error}"
        raise _SpawnError(EXIT_NOT_EXECUTABLE, message) from None


def _wait_for(
    process: subprocess.Popen[bytes],
    out: BinaryIO,
    err: BinaryIO,
    output_tail: _Tail,
    stderr_tail: _Tail,
    control: ProcessControl | None,
) -> int:
    """Stream the output of a started command until it exits; return its exit status."""
    if control is not None:
        control.arm()
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
        if control is not None:
            control.mark_exited()
        for pump in pumps:
            pump.join()
    finally:
        _restore_signals(previous)

    # Popen reports death by signal N as -N; shells report 128 + N.
    return returncode if returncode >= 0 else 128 - returncode


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


def _ending(control: ProcessControl, outcome: str) -> tuple[str, str]:
    """Return the status and error message of a command that ``control`` ended."""
    signals = "SIGTERM, then SIGKILL" if control.killed else "SIGTERM"
    if control.ended_by == ENDED_BY_TIMEOUT:
        limit = _seconds(control.timeout or 0)
        return TIMED_OUT, f"timed out after {limit}: sent {signals} to the process group; {outcome}"

    return FAILED, (
        f"stopped by the scheduler's shutdown before it finished: "
        f"sent {signals} to the process group; {outcome}"
    )


def _seconds(seconds: float) -> str:
    return f"{seconds:g} s"


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
