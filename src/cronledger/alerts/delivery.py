"""Send outbox rows through Apprise, with timeouts, retries and backoff.

Each row is claimed, sent and its outcome stored on its own, so a channel
that fails or hangs delays only its own rows by at most one send timeout
and never stops the other channels or the monitor. A failed send is retried
after a delay that doubles per attempt (``retry_delay``) until
``MAX_ATTEMPTS`` attempts, then the row is marked failed.

``run_monitor`` sends from a thread of its own (``DeliveryThread``), so its
health passes do not wait for a channel. ``monitor --once`` sends after its
pass, in the same thread.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from cronledger.alerts.config import MissingVariableError, expand_url
from cronledger.alerts.messages import Message
from cronledger.alerts.outbox import FAILED, PENDING, SENT, claim, due_ids, record_outcome
from cronledger.recorder import utc_now

log = logging.getLogger(__name__)

# Seconds one send may take before Apprise stops waiting for it. Chat and
# webhook services usually respond within a second, and mail servers take longer.
SEND_TIMEOUT_SECONDS = 15.0

# A claim expires after this long, so a row claimed by a sender that died is
# retried. Longer than a send may take.
CLAIM_LEASE = timedelta(seconds=120)

# The delay before attempt n + 1 is FIRST_RETRY_DELAY * 2 ** (n - 1), at most
# MAX_RETRY_DELAY: 30 s, 1 min, 2 min ... 1 h. Ten attempts span about 3 hours.
FIRST_RETRY_DELAY = timedelta(seconds=30)
MAX_RETRY_DELAY = timedelta(hours=1)
MAX_ATTEMPTS = 10

# Rows claimed per call of deliver_due, and seconds between two calls.
BATCH_SIZE = 50
POLL_SECONDS = 1.0


def retry_delay(attempts: int) -> timedelta:
    """Return the wait after the ``attempts``-th failed attempt (1 for the first)."""
    exponent = min(max(attempts - 1, 0), 20)
    delay: timedelta = FIRST_RETRY_DELAY * (2**exponent)
    return min(delay, MAX_RETRY_DELAY)


@dataclass(frozen=True)
class SendResult:
    """Whether Apprise delivered a message, and its error when not."""

    delivered: bool
    error: str | None = None


def send(
    url: str,
    message: Message,
    *,
    environ: Mapping[str, str] | None = None,
    timeout: float = SEND_TIMEOUT_SECONDS,
) -> SendResult:
    """Send ``message`` to one Apprise URL, expanding ``${VAR}`` from ``environ``."""
    try:
        expanded = expand_url(url, os.environ if environ is None else environ)
    except MissingVariableError as error:
        return SendResult(False, str(error))

    # Imported here because it takes about 0.2 s, which `cronledger run` need not pay.
    import apprise

    notifier = apprise.Apprise()
    if not notifier.add(expanded):
        return SendResult(False, "not a URL that Apprise supports")
    try:
        result = notifier.notify(
            body=message.body,
            title=message.title,
            notify_type=message.notify_type,
            timeout=timeout,
        )
    # Apprise handles each service's own errors; anything that still escapes
    # is a plugin bug, and one channel's bug must not stop the sender.
    except Exception as error:
        return SendResult(False, f"{type(error).__name__}: {error}")
    if result:
        return SendResult(True)
    errors = [entry.message for entry in result.logs() if entry.level in ("ERROR", "WARNING")]
    reason = "; ".join(errors) or f"Apprise reported {result.status.name}"
    return SendResult(False, reason)


@dataclass(frozen=True)
class Delivery:
    """The outcome of one attempt at one outbox row."""

    row_id: int
    channel: str
    status: str
    attempts: int
    error: str | None


class Sender:
    """Claims due outbox rows and sends them; any number may run against one database."""

    def __init__(
        self,
        engine: Engine,
        *,
        sender_id: str | None = None,
        environ: Mapping[str, str] | None = None,
        timeout: float = SEND_TIMEOUT_SECONDS,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self.engine = engine
        self.sender_id = sender_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.environ = environ
        self.timeout = timeout
        self.clock = clock

    def deliver_due(
        self, now: datetime | None = None, *, limit: int = BATCH_SIZE, budget: float = 60.0
    ) -> list[Delivery]:
        """Send the rows due at ``now`` (the clock if omitted); return one Delivery per attempt.

        Stops claiming new rows after ``budget`` seconds, so one call returns
        in about budget plus one send timeout.
        """
        fixed_now = now
        started = time.monotonic()
        with self.engine.connect() as connection:
            ids = due_ids(connection, fixed_now or self.clock(), limit)

        deliveries = []
        for row_id in ids:
            if time.monotonic() - started > budget:
                break
            delivery = self._deliver_one(row_id, fixed_now)
            if delivery is not None:
                deliveries.append(delivery)
        return deliveries

    def _deliver_one(self, row_id: int, fixed_now: datetime | None) -> Delivery | None:
        with self.engine.begin() as connection:
            claimed = claim(
                connection, row_id, self.sender_id, fixed_now or self.clock(), CLAIM_LEASE
            )
        if claimed is None:
            return None  # another sender won it

        result = send(claimed.channel, claimed.message, environ=self.environ, timeout=self.timeout)
        now = fixed_now or self.clock()
        subject = claimed.kind
        if claimed.service_name:
            subject = f"{claimed.kind} for service {claimed.service_name}"

        if result.delivered:
            status, next_attempt_at = SENT, None
            log.info("%s sent to %s (outbox row %s)", subject, claimed.channel_masked, claimed.id)
        elif claimed.attempts >= MAX_ATTEMPTS:
            status, next_attempt_at = FAILED, None
            log.error(
                "%s to %s failed after %d attempts, the last one; giving up (outbox row %s): %s",
                subject,
                claimed.channel_masked,
                claimed.attempts,
                claimed.id,
                result.error,
            )
        else:
            status, next_attempt_at = PENDING, now + retry_delay(claimed.attempts)
            log.warning(
                "%s to %s failed, attempt %d of %d, retrying at %s (outbox row %s): %s",
                subject,
                claimed.channel_masked,
                claimed.attempts,
                MAX_ATTEMPTS,
                next_attempt_at.isoformat(),
                claimed.id,
                result.error,
            )

        with self.engine.begin() as connection:
            recorded = record_outcome(
                connection,
                claimed.id,
                self.sender_id,
                status=status,
                now=now,
                error=result.error,
                next_attempt_at=next_attempt_at,
            )
        if not recorded:
            log.warning(
                "outbox row %s: the claim expired during the send; another sender may repeat it",
                claimed.id,
            )
        return Delivery(claimed.id, claimed.channel_masked, status, claimed.attempts, result.error)


class DeliveryThread(threading.Thread):
    """Calls ``Sender.deliver_due`` every ``poll`` seconds until ``stop`` is set."""

    def __init__(self, sender: Sender, stop: threading.Event, poll: float = POLL_SECONDS) -> None:
        super().__init__(name="cronledger-alerts", daemon=True)
        self.sender = sender
        self.stop = stop
        self.poll = poll

    def run(self) -> None:
        log.info("alert sender %s started", self.sender.sender_id)
        # The first database error of a streak is logged at WARNING, the
        # repeats (one per poll) at DEBUG, and the end of the streak with its count.
        failures = 0
        while not self.stop.is_set():
            try:
                self.sender.deliver_due(budget=self.poll * 30)
            except SQLAlchemyError as error:
                failures += 1
                level = logging.WARNING if failures == 1 else logging.DEBUG
                reason = str(error).splitlines()[0]
                log.log(level, "alert sending failed, will retry: %s", reason)
            else:
                if failures:
                    log.info("alert sending works again after %d failed attempts", failures)
                failures = 0
            self.stop.wait(self.poll)
        log.info("alert sender %s stopped", self.sender.sender_id)
