"""Alerts end to end: the `cronledger alerts` commands and real monitor processes.

Receivers run on 127.0.0.1 in the test process: an HTTP server for
``json://`` and ``form://`` URLs and an aiosmtpd server for ``mailto://``.
Monitor processes are the installed console script, killed with SIGKILL
and started again. Tests wait for a message or a row with a deadline; none
asserts how fast.
"""

from __future__ import annotations

import signal
import subprocess
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from email import message_from_bytes
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from sqlalchemy import Engine, select

from cronledger.recorder import get_recorder, utc_now
from cronledger.store.engine import get_engine
from cronledger.store.executions import FinishEvent, StartEvent
from cronledger.store.migrate import ensure_schema
from cronledger.store.tables import cron_monitor_sight, cron_notifications
from tests.alert_receivers import (
    HttpReceiver,
    SmtpReceiver,
    closed_port_url,
    wait_until,
)
from tests.commands import CRONLEDGER

pytestmark = pytest.mark.timeout(240)

DEADLINE = 60.0


@pytest.fixture
def http_receiver() -> Iterator[HttpReceiver]:
    receiver = HttpReceiver()
    yield receiver
    receiver.close()


@pytest.fixture
def smtp_receiver() -> Iterator[SmtpReceiver]:
    receiver = SmtpReceiver()
    yield receiver
    receiver.close()


def write_config(path: Path, channels: list[str], services: str = "") -> Path:
    quoted = ", ".join(f'"{url}"' for url in channels)
    path.write_text(f"[alerts]\nchannels = [{quoted}]\n\n{services}", encoding="utf-8")
    return path


def mail_subjects(receiver: SmtpReceiver) -> list[str]:
    messages = [message_from_bytes(m.original_content or b"") for m in receiver.messages]
    return [str(message["Subject"]) for message in messages]


# cronledger alerts test


def test_alerts_test_reaches_each_channel(
    invoke: Callable[..., Result],
    sqlite_url: str,
    tmp_path: Path,
    http_receiver: HttpReceiver,
    smtp_receiver: SmtpReceiver,
) -> None:
    config = write_config(
        tmp_path / "cronledger.toml",
        [
            http_receiver.url("/json"),
            http_receiver.url("/form", scheme="form"),
            smtp_receiver.url(),
        ],
    )

    result = invoke("--database-url", sqlite_url, "--config", str(config), "alerts", "test")

    assert result.exit_code == 0, result.output
    assert result.output.count("delivered  ") == 3, result.output
    assert http_receiver.received("/json")[0].json()["title"] == "[cronledger] Test message"
    assert "application/x-www-form-urlencoded" in http_receiver.received("/form")[0].content_type
    assert mail_subjects(smtp_receiver) == ["[cronledger] Test message"]
    assert smtp_receiver.messages[0].rcpt_tos == ["ops@example.com"]

    listed = invoke("--database-url", sqlite_url, "--config", str(config), "alerts", "list")

    assert listed.exit_code == 0, listed.output
    assert listed.output.count(" test ") == 3, listed.output
    assert listed.output.count(" sent") == 3, listed.output


def test_alerts_test_reports_failures(
    invoke: Callable[..., Result], sqlite_url: str, tmp_path: Path, http_receiver: HttpReceiver
) -> None:
    http_receiver.failing.add("/broken")
    closed = closed_port_url()
    config = write_config(
        tmp_path / "cronledger.toml",
        [closed, http_receiver.url("/broken"), http_receiver.url("/ok")],
    )

    result = invoke("--database-url", sqlite_url, "--config", str(config), "alerts", "test")

    assert result.exit_code == 1, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"FAILED     {closed}: "), lines
    assert lines[1].startswith(f"FAILED     {http_receiver.url('/broken')}: "), lines
    assert "error=500" in lines[1]
    assert lines[2] == f"delivered  {http_receiver.url('/ok')}"
    assert "2 of 3 channels failed" in result.output
    assert len(http_receiver.received("/ok")) == 1


def test_alerts_test_service_channels(
    invoke: Callable[..., Result], sqlite_url: str, tmp_path: Path, http_receiver: HttpReceiver
) -> None:
    config = write_config(
        tmp_path / "cronledger.toml",
        [http_receiver.url("/default")],
        f'[services.export]\ndisplay_name = "Export"\nalerts = ["{http_receiver.url("/own")}"]\n',
    )

    result = invoke(
        "--database-url", sqlite_url, "--config", str(config), "alerts", "test", "export"
    )

    assert result.exit_code == 0, result.output
    assert http_receiver.received("/default") == []
    [request] = http_receiver.received("/own")
    assert request.json()["title"] == "[cronledger] Test message for export"


def test_alerts_test_missing_variable(
    invoke: Callable[..., Result],
    sqlite_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    http_receiver: HttpReceiver,
) -> None:
    monkeypatch.delenv("CL_HOOK_PATH", raising=False)
    config = write_config(tmp_path / "cronledger.toml", [http_receiver.url("/${CL_HOOK_PATH}")])

    missing = invoke("--database-url", sqlite_url, "--config", str(config), "alerts", "test")

    assert missing.exit_code == 2, missing.output
    assert "alerts.channels[0]" in missing.output
    assert "environment variable CL_HOOK_PATH is not set" in missing.output

    monkeypatch.setenv("CL_HOOK_PATH", "from-env")
    present = invoke("--database-url", sqlite_url, "--config", str(config), "alerts", "test")

    assert present.exit_code == 0, present.output
    assert len(http_receiver.received("/from-env")) == 1


def test_alerts_test_without_channels(
    invoke: Callable[..., Result], sqlite_url: str, tmp_path: Path
) -> None:
    config = write_config(tmp_path / "cronledger.toml", [])

    result = invoke("--database-url", sqlite_url, "--config", str(config), "alerts", "test")

    assert result.exit_code == 2, result.output
    assert "no alert channels for the default set" in result.output


def test_alerts_list_when_empty(invoke: Callable[..., Result], sqlite_url: str) -> None:
    upgraded = invoke("--database-url", sqlite_url, "db", "upgrade")
    assert upgraded.exit_code == 0, upgraded.output

    result = invoke("--database-url", sqlite_url, "alerts", "list")

    assert result.exit_code == 0, result.output
    assert "no notifications yet" in result.output


# Real monitor processes


class MonitorProcess:
    """One ``cronledger -v monitor --interval 1s`` process with its stderr in a file."""

    def __init__(self, database_url: str, config: Path, directory: Path) -> None:
        self.stderr_path = directory / f"monitor-{uuid.uuid4().hex[:8]}.log"
        with self.stderr_path.open("wb") as stderr:
            self.process = subprocess.Popen(
                [
                    CRONLEDGER,
                    "-v",
                    "--database-url",
                    database_url,
                    "--config",
                    str(config),
                    "monitor",
                    "--interval",
                    "1s",
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                cwd=directory,
            )

    @property
    def log(self) -> str:
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(timeout=30)


@pytest.fixture
def start_monitor(tmp_path: Path) -> Iterator[Callable[[str, Path], MonitorProcess]]:
    started: list[MonitorProcess] = []

    def start(database_url: str, config: Path) -> MonitorProcess:
        monitor = MonitorProcess(database_url, config, tmp_path)
        started.append(monitor)
        return monitor

    yield start
    for monitor in started:
        if monitor.process.poll() is None:
            monitor.kill()


def record_run(database_url: str, service: str, status: str, error: str | None = None) -> None:
    started_at = utc_now() - timedelta(seconds=2)
    start = StartEvent(uuid.uuid4().hex, service, started_at, host=None, pid=None)
    recorder = get_recorder(database_url)
    recorder.start(start)
    finish = FinishEvent(start, status, started_at + timedelta(seconds=1), 1000, 0, error)
    recorder.finish(finish)


def outbox(engine: Engine) -> list[Any]:
    with engine.connect() as connection:
        query = select(cron_notifications).order_by(cron_notifications.c.id)
        return list(connection.execute(query).all())


def passes_after(engine: Engine, count: int) -> Callable[[], bool]:
    """Return a condition that is true once ``count`` more alert planning passes ran."""
    seen: set[Any] = set()

    def condition() -> bool:
        with engine.connect() as connection:
            seen.add(connection.execute(select(cron_monitor_sight.c.pass_at)).scalar())
        return len(seen) > count

    condition()
    return condition


def test_monitor_restart_sends_no_duplicate(
    database_url: str,
    tmp_path: Path,
    http_receiver: HttpReceiver,
    smtp_receiver: SmtpReceiver,
    start_monitor: Callable[[str, Path], MonitorProcess],
) -> None:
    engine = get_engine(database_url)
    ensure_schema(engine)
    config = write_config(
        tmp_path / "cronledger.toml",
        [http_receiver.url("/hook"), smtp_receiver.url()],
        '[services.export]\ndisplay_name = "Nightly export"\n',
    )
    record_run(database_url, "export", "completed")
    monitor = start_monitor(database_url, config)
    assert wait_until(passes_after(engine, 2), DEADLINE), monitor.log

    record_run(database_url, "export", "failed", error="disk full")

    def alert_sent() -> bool:
        rows = outbox(engine)
        return len(rows) == 2 and all(row.status == "sent" for row in rows)

    assert wait_until(alert_sent, DEADLINE), f"{outbox(engine)}\n{monitor.log}"
    [request] = http_receiver.received("/hook")
    assert request.json()["title"] == "[cronledger] Nightly export (export) is failing"
    assert "disk full" in request.json()["message"]
    assert mail_subjects(smtp_receiver) == ["[cronledger] Nightly export (export) is failing"]

    monitor.kill()
    restarted = start_monitor(database_url, config)
    assert wait_until(passes_after(engine, 3), DEADLINE), restarted.log

    assert len(http_receiver.received("/hook")) == 1, "the restart sent the alert again"
    assert len(smtp_receiver.messages) == 1, "the restart mailed the alert again"

    record_run(database_url, "export", "completed")

    def recovery_sent() -> bool:
        rows = outbox(engine)
        return len(rows) == 4 and all(row.status == "sent" for row in rows)

    assert wait_until(recovery_sent, DEADLINE), f"{outbox(engine)}\n{restarted.log}"
    restarted.kill()
    again = start_monitor(database_url, config)
    assert wait_until(passes_after(engine, 3), DEADLINE), again.log

    assert [r.json()["title"] for r in http_receiver.received("/hook")] == [
        "[cronledger] Nightly export (export) is failing",
        "[cronledger] Nightly export (export) recovered: healthy",
    ]
    assert len(smtp_receiver.messages) == 2
    assert "gap" not in {row.kind for row in outbox(engine)}, "a quick restart is no gap"


def test_monitor_once_sends_alert(
    database_url: str, tmp_path: Path, http_receiver: HttpReceiver
) -> None:
    engine = get_engine(database_url)
    ensure_schema(engine)
    config = write_config(tmp_path / "cronledger.toml", [http_receiver.url("/hook")])
    record_run(database_url, "export", "failed", error="boom")

    result = subprocess.run(
        [CRONLEDGER, "--database-url", database_url, "--config", str(config), "monitor", "--once"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    assert f"alert to {http_receiver.url('/hook')}: sent" in result.stdout
    assert [r.json()["title"] for r in http_receiver.received("/hook")] == [
        "[cronledger] export is failing"
    ]


def test_sighup_reloads_channels(
    sqlite_url: str,
    tmp_path: Path,
    http_receiver: HttpReceiver,
    start_monitor: Callable[[str, Path], MonitorProcess],
) -> None:
    engine = get_engine(sqlite_url)
    ensure_schema(engine)
    config = write_config(tmp_path / "cronledger.toml", [http_receiver.url("/before")])
    record_run(sqlite_url, "export", "completed")
    monitor = start_monitor(sqlite_url, config)
    assert wait_until(passes_after(engine, 2), DEADLINE), monitor.log

    write_config(config, [http_receiver.url("/after")])
    monitor.process.send_signal(signal.SIGHUP)
    # The reload syncs the services (logged as "synced") and then swaps the channels.
    assert wait_until(lambda: monitor.log.count("synced ") == 2, DEADLINE), monitor.log
    assert wait_until(passes_after(engine, 2), DEADLINE), monitor.log
    record_run(sqlite_url, "export", "failed", error="boom")

    assert wait_until(lambda: len(http_receiver.received("/after")) == 1, DEADLINE), monitor.log
    assert http_receiver.received("/before") == []
