"""Run several long-running components in one process with one shared stop event.

``cronledger up`` runs the scheduler and the monitor this way, and
``cronledger scheduler`` runs the scheduler alone. Each component runs in a
thread of its own until the stop event is set. SIGTERM and SIGINT set it,
SIGHUP calls each component's ``reload``, and a component that fails or
returns early stops the others, so the process never runs half of itself.

A server with its own start and stop methods joins with one line::

    supervisor.add(ServerComponent("server", server.start, server.stop))
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType
from typing import Protocol

log = logging.getLogger(__name__)

# Seconds a stopped component gets to finish before the process exits
# without it. The scheduler's own stop timeout comes on top (see ``add``).
JOIN_GRACE = 30.0


class Component(Protocol):
    """A part of the process that runs until the shared stop event is set."""

    name: str

    def run(self, stop: threading.Event) -> None: ...


@dataclass
class FunctionComponent:
    """A component made of a function that takes the stop event."""

    name: str
    target: Callable[[threading.Event], None]

    def run(self, stop: threading.Event) -> None:
        self.target(stop)


@dataclass
class ServerComponent:
    """A component made of a start and a stop function, such as a web server."""

    name: str
    start: Callable[[], None]
    stop: Callable[[], None]

    def run(self, stop: threading.Event) -> None:
        self.start()
        try:
            stop.wait()
        finally:
            self.stop()


class Supervisor:
    """Starts components, relays signals to them and stops them together."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.components: list[Component] = []
        self._join_seconds: dict[str, float] = {}
        self._failed: list[str] = []
        # Signal numbers recorded by the handlers, acted on by the run loop.
        self._signals: list[int] = []

    def add(self, component: Component, *, stop_seconds: float = 0.0) -> None:
        """Add a component; ``stop_seconds`` is how long its own graceful stop may take."""
        self.components.append(component)
        self._join_seconds[component.name] = JOIN_GRACE + stop_seconds

    def run(self) -> int:
        """Run every component until a signal or a failure; return the exit status."""
        self._install_signal_handlers()
        threads = [
            threading.Thread(
                target=self._run_component,
                args=(component,),
                name=f"cronledger-{component.name}",
                daemon=True,
            )
            for component in self.components
        ]
        for thread in threads:
            thread.start()

        # Wake up regularly, because a signal handler runs only when the main
        # thread executes Python code, and Event.wait without a timeout
        # would block it for good. The handlers only record the signal; the
        # loop acts on it (see _install_signal_handlers).
        while not self.stop.wait(0.5):
            self._act_on_signals()

        for component, thread in zip(self.components, threads, strict=True):
            thread.join(self._join_seconds[component.name])
            if thread.is_alive():
                log.error("%s did not stop in time; exiting without it", component.name)
                self._failed.append(component.name)
        self._ignore_further_signals()
        return 1 if self._failed else 0

    def reload(self) -> None:
        """Call ``reload`` of every component that has one."""
        for component in self.components:
            reload = getattr(component, "reload", None)
            if reload is not None:
                reload()

    def _run_component(self, component: Component) -> None:
        try:
            component.run(self.stop)
        except Exception:
            log.exception("%s failed; stopping everything", component.name)
            self._failed.append(component.name)
        else:
            if not self.stop.is_set():
                log.error("%s ended unexpectedly; stopping everything", component.name)
                self._failed.append(component.name)
        self.stop.set()

    def _install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return

        # The handlers only append to a list. A handler that called
        # Event.set itself could run again, on a second signal, inside the
        # first call's Event.set, and then wait forever for the lock that
        # its own thread holds.
        def record(signum: int, _frame: FrameType | None) -> None:
            self._signals.append(signum)

        signal.signal(signal.SIGTERM, record)
        signal.signal(signal.SIGINT, record)
        signal.signal(signal.SIGHUP, record)

    def _ignore_further_signals(self) -> None:
        """Ignore stop signals once everything has stopped.

        Python restores the default action of its handled signals while the
        interpreter shuts down, so one more Ctrl-C there would end a clean
        exit with status 130 instead of 0.
        """
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, signal.SIG_IGN)

    def _act_on_signals(self) -> None:
        """Stop or reload for the signals received since the last call."""
        while self._signals:
            signum = self._signals.pop(0)
            if signum == signal.SIGHUP:
                log.info("received SIGHUP; reloading")
                self.reload()
            elif not self.stop.is_set():
                log.info("received %s; stopping", signal.Signals(signum).name)
                self.stop.set()
