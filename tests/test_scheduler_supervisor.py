"""The supervisor of ``cronledger up``: shared stop, failure of one component, reload."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator

import pytest

from cronledger.scheduler.supervisor import FunctionComponent, ServerComponent, Supervisor

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(autouse=True)
def restore_signal_handlers() -> Iterator[None]:
    """Put back the handlers that Supervisor.run installs in the test process."""
    saved = {
        signum: signal.getsignal(signum)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    }
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)


def test_failing_component_stops_all() -> None:
    stopped = threading.Event()

    def waits(stop: threading.Event) -> None:
        stop.wait()
        stopped.set()

    def fails(_stop: threading.Event) -> None:
        raise RuntimeError("the database vanished")

    supervisor = Supervisor()
    supervisor.add(FunctionComponent("waiter", waits))
    supervisor.add(FunctionComponent("failer", fails))

    assert supervisor.run() == 1
    assert stopped.is_set(), "the other component was not stopped"


def test_sigterm_stops_server_component() -> None:
    events: list[str] = []
    supervisor = Supervisor()
    supervisor.add(
        ServerComponent("server", lambda: events.append("start"), lambda: events.append("stop"))
    )
    threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGTERM)).start()

    assert supervisor.run() == 0
    assert events == ["start", "stop"]


def test_sighup_calls_reload() -> None:
    reloaded = threading.Event()

    class Reloadable:
        name = "reloadable"

        def run(self, stop: threading.Event) -> None:
            stop.wait()

        def reload(self) -> None:
            reloaded.set()

    supervisor = Supervisor()
    supervisor.add(Reloadable())
    threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGHUP)).start()
    threading.Timer(0.2, lambda: reloaded.wait(10) and supervisor.stop.set()).start()

    assert supervisor.run() == 0
    assert reloaded.is_set()


def test_early_return_is_failure() -> None:
    supervisor = Supervisor()
    supervisor.add(FunctionComponent("quitter", lambda _stop: None))

    assert supervisor.run() == 1
