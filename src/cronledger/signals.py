"""Record runs as failed when SIGTERM or SIGINT ends the process.

Python's default SIGTERM action kills the process without unwinding, so a
tracked run would stay ``started`` forever. While at least one run is
tracked, SIGTERM raises ``RunTerminated`` (a ``SystemExit`` with the shell's
exit status 128 + signal number) in the main thread. The run records the
signal on its way out and the process still exits. SIGINT already raises
``KeyboardInterrupt`` in the main thread.

Under asyncio, raising from a signal handler would land in the event loop's
own code, so both signals instead cancel the tasks of the tracked runs; the
run records the signal and re-raises it as ``RunTerminated`` or
``KeyboardInterrupt``.

A handler the application installed itself is left in place: the
application has taken charge of shutdown, and a run that finishes normally
is recorded as such.

NOTE: a sync run tracked in a thread other than the main thread is not
reached by signals (Python delivers them to the main thread only); it is
timed out by the monitor instead.
"""

from __future__ import annotations

import asyncio
import signal
import threading
import weakref
from collections.abc import Callable
from types import FrameType
from typing import Any

Handler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None


class RunTerminated(SystemExit):
    """The process received a signal that ends it while a run was tracked."""

    def __init__(self, signum: int) -> None:
        super().__init__(128 + signum)
        self.signum = signum
        self.signal_name = signal.Signals(signum).name


class _SyncGuard:
    """Raise ``RunTerminated`` on SIGTERM while sync runs are active."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._depth = 0

    def enter(self) -> bool:
        if threading.current_thread() is not threading.main_thread():
            return False
        with self._lock:
            if self._depth == 0:
                if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
                    return False
                signal.signal(signal.SIGTERM, _raise_terminated)
            self._depth += 1
            return True

    def leave(self) -> None:
        with self._lock:
            self._depth -= 1
            if self._depth == 0 and signal.getsignal(signal.SIGTERM) is _raise_terminated:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _raise_terminated(signum: int, _frame: FrameType | None) -> None:
    raise RunTerminated(signum)


class AsyncGuard:
    """Cancel tracked tasks on SIGTERM or SIGINT and remember which signal."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        # Each task has one list per tracked run, innermost last, because runs
        # can nest in one task.
        self.tasks: dict[asyncio.Task[Any], list[list[int]]] = {}
        self.previous: dict[int, Handler] = {}

    def enter(self, task: asyncio.Task[Any]) -> list[int]:
        """Register ``task``; the returned list receives the signal number."""
        if not self.tasks:
            self._install()
        received: list[int] = []
        self.tasks.setdefault(task, []).append(received)
        return received

    def leave(self, task: asyncio.Task[Any]) -> None:
        """Unregister the innermost run of ``task``, and the handlers after the last run."""
        runs = self.tasks.get(task)
        if runs:
            runs.pop()
        if not runs:
            self.tasks.pop(task, None)
        if not self.tasks:
            self._uninstall()

    def signalled_runs(self) -> int:
        """Return how many registered runs have received a signal."""
        return sum(1 for runs in self.tasks.values() for received in runs if received)

    def _install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in (signal.SIGTERM, signal.SIGINT):
            current = signal.getsignal(signum)
            if not _is_default(signum, current):
                continue
            try:
                self.loop.add_signal_handler(signum, self._on_signal, signum)
            except (NotImplementedError, RuntimeError):
                continue
            self.previous[signum] = current

    def _uninstall(self) -> None:
        for signum, previous in self.previous.items():
            self.loop.remove_signal_handler(signum)
            # remove_signal_handler resets SIGINT to Python's default, which
            # would drop asyncio.run's own handler; put back what was there.
            signal.signal(signum, previous)
        self.previous.clear()

    def _on_signal(self, signum: int) -> None:
        for task, runs in self.tasks.items():
            for received in runs:
                received.append(signum)
            task.cancel()


def _is_default(signum: int, handler: Handler) -> bool:
    if signum == signal.SIGTERM:
        return handler is signal.SIG_DFL
    # For SIGINT both Python's own handler and the one asyncio.run installs
    # only turn Ctrl-C into KeyboardInterrupt, which is what we do too.
    if handler is signal.default_int_handler:
        return True
    owner = getattr(getattr(handler, "func", None), "__self__", None)
    return isinstance(owner, asyncio.Runner)


sync_guard = _SyncGuard()
_async_guards: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncGuard] = (
    weakref.WeakKeyDictionary()
)


def async_guard(loop: asyncio.AbstractEventLoop) -> AsyncGuard:
    """Return the guard of ``loop``, creating it on first use."""
    guard = _async_guards.get(loop)
    if guard is None:
        guard = AsyncGuard(loop)
        _async_guards[loop] = guard
    return guard


def signal_name(signum: int) -> str:
    """Return the conventional name of a signal, such as SIGTERM."""
    return signal.Signals(signum).name
