"""The durable local spool for run events the database could not take.

When a start or finish cannot be written, it is saved as one JSON file in a
directory (one per database, so events never land in the wrong one), and
replayed later in the order written. Replays are idempotent by run key, so
two processes replaying the same file at once, or a crash between the write
and the delete, never duplicate a run.

Each file is written to a temporary name, flushed to disk and renamed, so a
crash leaves either a whole event or none. A file that cannot be parsed is
moved to ``rejected/`` beside the events instead of being deleted.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Any

import platformdirs

from cronledger.store.executions import FinishEvent, StartEvent

log = logging.getLogger(__name__)

ENV_SPOOL_DIR = "CRONLEDGER_SPOOL_DIR"

Event = StartEvent | FinishEvent


class EventRejected(Exception):
    """Raised by a replay callback when the database refuses an event for good."""


def default_spool_root() -> Path:
    """Return the spool root from the environment or the user's state directory."""
    configured = os.environ.get(ENV_SPOOL_DIR, "").strip()
    if configured:
        return Path(configured).expanduser()
    return platformdirs.user_state_path("cronledger") / "spool"


class Spool:
    """The spool directory of one database."""

    def __init__(self, root: Path, database_label: str) -> None:
        # The label is the URL without its password; its hash names the folder.
        digest = hashlib.sha256(database_label.encode()).hexdigest()[:16]
        self.directory = root / digest
        self.database_label = database_label

    def save(self, event: Event) -> Path:
        """Write ``event`` durably and return the path of its file."""
        self.directory.mkdir(parents=True, exist_ok=True)
        label_file = self.directory / "DATABASE"
        if not label_file.exists():
            label_file.write_text(self.database_label + "\n")

        kind = "finish" if isinstance(event, FinishEvent) else "start"
        run_key = event.start.run_key if isinstance(event, FinishEvent) else event.run_key
        # time_ns first, so a sorted listing is the order of writing.
        name = f"{time.time_ns():020d}-{run_key}-{kind}.json"
        final = self.directory / name
        temporary = self.directory / f".{name}.tmp"

        payload = json.dumps(_encode(event), ensure_ascii=True)
        with open(temporary, "w", encoding="ascii") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, final)
        _fsync_directory(self.directory)
        return final

    def pending(self) -> list[Path]:
        """Return the event files waiting for replay, oldest first."""
        try:
            names = [
                entry.name for entry in os.scandir(self.directory) if entry.name.endswith(".json")
            ]
        except FileNotFoundError:
            return []
        return [self.directory / name for name in sorted(names)]

    def replay(self, apply: Callable[[Event], None]) -> int:
        """Apply every pending event in order and delete it; return how many.

        Stops at the first event that ``apply`` fails on, because the
        database is presumably gone again and later events must not overtake
        it. Events that cannot be read, or that ``apply`` rejects with
        ``EventRejected``, are set aside in ``rejected/``, never dropped.
        """
        replayed = 0
        for path in self.pending():
            try:
                event = _decode(json.loads(path.read_text(encoding="ascii")))
            except FileNotFoundError:
                continue  # another process replayed it first
            except (ValueError, KeyError, TypeError) as error:
                self._reject(path, error)
                continue

            try:
                apply(event)
            except EventRejected as error:
                self._reject(path, error)
                continue
            try:
                path.unlink()
            except FileNotFoundError:
                pass
            replayed += 1
        return replayed

    def _reject(self, path: Path, error: Exception) -> None:
        # A person can inspect the file and move it back to replay it.
        rejected = self.directory / "rejected"
        rejected.mkdir(exist_ok=True)
        try:
            os.replace(path, rejected / path.name)
        except FileNotFoundError:
            return
        log.error(
            "spooled event %s cannot be read and was moved to %s: %s", path.name, rejected, error
        )


def _fsync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _encode(event: Event) -> dict[str, Any]:
    data = asdict(event)
    if isinstance(event, FinishEvent):
        data["kind"] = "finish"
        data["start"]["started_at"] = event.start.started_at.isoformat()
        data["finished_at"] = event.finished_at.isoformat()
    else:
        data["kind"] = "start"
        data["started_at"] = event.started_at.isoformat()
    return data


def _decode_start(data: dict[str, Any]) -> StartEvent:
    started_at = datetime.fromisoformat(data["started_at"])
    if started_at.tzinfo is None:
        raise ValueError("started_at has no time zone")
    return StartEvent(
        run_key=str(data["run_key"]),
        service_name=str(data["service_name"]),
        started_at=started_at,
        host=data.get("host"),
        pid=data.get("pid"),
    )


def _decode(data: dict[str, Any]) -> Event:
    if data["kind"] == "start":
        return _decode_start(data)
    if data["kind"] != "finish":
        raise ValueError(f"unknown event kind {data['kind']!r}")
    finished_at = datetime.fromisoformat(data["finished_at"])
    if finished_at.tzinfo is None:
        raise ValueError("finished_at has no time zone")
    return FinishEvent(
        start=_decode_start(data["start"]),
        status=str(data["status"]),
        finished_at=finished_at,
        duration_ms=int(data["duration_ms"]),
        items_processed=int(data["items_processed"]),
        error_message=data.get("error_message"),
        exit_code=data.get("exit_code"),
        output_tail=data.get("output_tail"),
    )
