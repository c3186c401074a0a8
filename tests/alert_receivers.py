"""Local receivers for alert tests: an HTTP server and an SMTP server on 127.0.0.1.

Both run in threads of the test process and record what they receive, so a
test can point Apprise at them with ``json://``, ``form://`` or
``mailto://`` URLs and count the messages. Nothing leaves the loopback
interface.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session


@dataclass(frozen=True)
class HttpRequest:
    """One POST the HTTP receiver got: its path, content type and decoded body."""

    path: str
    content_type: str
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class HttpReceiver:
    """Responds to POSTs with 200, or with 500 on the paths in ``failing``."""

    def __init__(self) -> None:
        self.requests: list[HttpRequest] = []
        self.failing: set[str] = set()
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                path = self.path.split("?", 1)[0]
                fail = path in receiver.failing
                with receiver._lock:
                    if not fail:
                        receiver.requests.append(
                            HttpRequest(path, self.headers.get("Content-Type", ""), body)
                        )
                self.send_response(500 if fail else 200)
                self.end_headers()
                self.wfile.write(b"failing on purpose" if fail else b"ok")

            def log_message(self, format: str, *args: Any) -> None:
                pass  # keep the test output clean

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str, scheme: str = "json") -> str:
        return f"{scheme}://127.0.0.1:{self.port}{path}"

    def received(self, path: str | None = None) -> list[HttpRequest]:
        with self._lock:
            return [r for r in self.requests if path is None or r.path == path]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class _MailHandler:
    def __init__(self) -> None:
        self.messages: list[Envelope] = []

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.messages.append(envelope)
        return "250 Message accepted for delivery"


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


class SmtpReceiver:
    """An aiosmtpd server on 127.0.0.1 that accepts every message."""

    def __init__(self) -> None:
        self.handler = _MailHandler()
        # aiosmtpd checks that its server is up by connecting to the port,
        # so the port must be chosen before the start, not left to bind(0).
        self.port = free_port()
        self.controller = Controller(self.handler, hostname="127.0.0.1", port=self.port)
        self.controller.start()

    def url(self, to: str = "ops@example.com") -> str:
        return f"mailto://127.0.0.1:{self.port}?from=cronledger@example.com&to={to}"

    @property
    def messages(self) -> list[Envelope]:
        return list(self.handler.messages)

    def close(self) -> None:
        self.controller.stop()


class HangingReceiver:
    """Accepts TCP connections on 127.0.0.1 and never responds, like a stuck webhook."""

    def __init__(self) -> None:
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(16)
        self.port: int = self.server.getsockname()[1]
        self.connections: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self.server.accept()
            except OSError:
                return  # closed by close()
            self.connections.append(connection)

    def url(self) -> str:
        return f"json://127.0.0.1:{self.port}/hang"

    def close(self) -> None:
        self.server.close()
        for connection in self.connections:
            connection.close()


def closed_port_url() -> str:
    """Return a json:// URL on loopback where no server listens."""
    return f"json://127.0.0.1:{free_port()}/closed"


def wait_until(condition: Callable[[], bool], deadline: float) -> bool:
    """Poll ``condition`` every 0.1 s until it is true or ``deadline`` seconds pass."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.1)
    return condition()
