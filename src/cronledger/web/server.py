"""Run the dashboard under uvicorn, in this process, with a clean stop."""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
import time

import uvicorn
from fastapi import FastAPI

log = logging.getLogger("cronledger.web")


def is_loopback_host(host: str) -> bool:
    """Return True if ``host`` names only this machine (127.0.0.0/8, ::1, localhost)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


class DashboardServer:
    """A uvicorn server for the dashboard app that another component can stop.

    ``run()`` blocks until ``stop()`` is called (from any thread) or, when
    run in the main thread, until SIGINT or SIGTERM. ``start()`` runs it in
    a thread, for ``cronledger up`` and the tests. The socket is bound in
    the constructor, so ``port`` is known at once, also for port 0.
    """

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 8080) -> None:
        self.config = uvicorn.Config(
            app,
            host=host,
            port=port,
            log_config=None,  # keep cronledger's logging set-up
            access_log=False,
            server_header=False,
            timeout_graceful_shutdown=10,
            # The app has no startup or shutdown hooks. With the lifespan task
            # on, a second Ctrl-C cancelled it and logged a CancelledError
            # traceback on an otherwise clean stop.
            lifespan="off",
            # Longer than uvicorn's 5 s, so a proxy or client that reuses an
            # idle connection rarely races the server closing it.
            timeout_keep_alive=30,
        )
        self.server = uvicorn.Server(self.config)
        family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
        self.socket = socket.socket(family, socket.SOCK_STREAM)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Accepted connections inherit this. Without it, on a socket handed
        # to uvicorn, each response on a keep-alive connection waits about
        # 40 ms for the client's delayed ACK (Nagle's algorithm).
        self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            self.socket.bind((host.strip("[]"), port))
        except OSError:
            self.socket.close()
            raise
        self.host = host
        self.port = int(self.socket.getsockname()[1])
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host.strip('[]')}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def started(self) -> bool:
        return bool(self.server.started)

    def run(self) -> None:
        """Serve until stopped; blocks."""
        log.info("dashboard listening on %s", self.url)
        try:
            self.server.run(sockets=[self.socket])
        finally:
            self.socket.close()
            log.info("dashboard stopped")

    def start(self, timeout: float = 30) -> None:
        """Serve in a background thread; return once it accepts connections."""
        self._thread = threading.Thread(target=self.run, name="cronledger-dashboard", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.started and self._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        if not self.started:
            self.stop()
            raise RuntimeError(f"the dashboard did not start on {self.url} within {timeout} s")

    def stop(self, timeout: float = 30) -> None:
        """Ask the server to finish open requests and exit; wait for its thread."""
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
