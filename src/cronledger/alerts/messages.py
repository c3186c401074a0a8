"""The text of alert messages: pure functions of the facts and the time.

A message gives a person what they need to act: the service (display name
and name), the new state, the reason, since when (in UTC and in the
service's time zone), the last error and, when ``[alerts] dashboard_url``
is set, a link to the service page.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from cronledger.durations import humanize_duration
from cronledger.schedule import load_time_zone

# Maximum length of the last error quoted in a message, because chat services cut long text.
MAX_ERROR_CHARS = 1000

UNHEALTHY_STATES = frozenset({"late", "failing", "stuck"})


class Kind(StrEnum):
    """The reason a notification is sent."""

    ALERT = "alert"  # a change into late, failing or stuck
    RECOVERY = "recovery"  # back to healthy after an alert
    REMINDER = "reminder"  # still unhealthy after remind_every
    GAP = "gap"  # cronledger itself could not see for a while
    TEST = "test"  # sent by `cronledger alerts test`


@dataclass(frozen=True)
class Message:
    """A notification's title, body and Apprise notify type (info, success, warning, failure)."""

    title: str
    body: str
    notify_type: str


@dataclass(frozen=True)
class ServiceFacts:
    """The facts about one service that a message contains."""

    name: str
    display_name: str
    timezone: str
    state: str
    reason: str
    since: datetime
    previous_state: str | None = None
    last_error: str | None = None


def format_instant(moment: datetime, timezone: str) -> str:
    """Write ``moment`` in UTC and, unless the zone is UTC, in ``timezone`` too."""
    utc = moment.astimezone(UTC)
    text = utc.strftime("%Y-%m-%d %H:%M:%S UTC")
    if timezone in ("UTC", "Etc/UTC"):
        return text
    local = utc.astimezone(load_time_zone(timezone))
    return f"{text} ({local.strftime('%Y-%m-%d %H:%M:%S %Z')}, {timezone})"


def service_link(dashboard_url: str | None, name: str) -> str | None:
    """Return the dashboard page of a service, or None without a dashboard URL."""
    if not dashboard_url:
        return None
    return f"{dashboard_url.rstrip('/')}/services/{name}"


def _label(facts: ServiceFacts) -> str:
    if facts.display_name and facts.display_name != facts.name:
        return f"{facts.display_name} ({facts.name})"
    return facts.name


def _details(facts: ServiceFacts, dashboard_url: str | None, now: datetime) -> list[str]:
    state = facts.state
    if facts.previous_state is not None:
        state = f"{facts.state} (was {facts.previous_state})"
    since = format_instant(facts.since, facts.timezone)
    age = now - facts.since
    # An alert is composed when the change is recorded, so "0 s ago" would
    # add nothing. A reminder shows how long the state has lasted.
    if age >= timedelta(minutes=1):
        since = f"{since}, {humanize_duration(age)} ago"
    lines = [
        f"Service: {_label(facts)}",
        f"State: {state}",
        f"Reason: {facts.reason}",
        f"Since: {since}",
    ]
    if facts.last_error:
        error = facts.last_error.strip()
        if len(error) > MAX_ERROR_CHARS:
            error = error[:MAX_ERROR_CHARS] + " [...]"
        lines.append(f"Last error: {error}")
    link = service_link(dashboard_url, facts.name)
    if link is not None:
        lines.append(f"Details: {link}")
    return lines


def alert_message(
    kind: Kind, facts: ServiceFacts, dashboard_url: str | None, now: datetime
) -> Message:
    """Compose an alert, recovery or reminder message about one service."""
    label = _label(facts)
    if kind is Kind.RECOVERY:
        title = f"[cronledger] {label} recovered: {facts.state}"
        notify_type = "success"
        # The last error belongs to the incident that just ended.
        facts = replace(facts, last_error=None)
    elif kind is Kind.REMINDER:
        title = f"[cronledger] Reminder: {label} is still {facts.state}"
        notify_type = "warning" if facts.state == "late" else "failure"
    else:
        title = f"[cronledger] {label} is {facts.state}"
        notify_type = "warning" if facts.state == "late" else "failure"
    return Message(title, "\n".join(_details(facts, dashboard_url, now)), notify_type)


@dataclass(frozen=True)
class GapFacts:
    """A time in which cronledger could not see runs, and the services due in it."""

    reason: str  # a BlindReason value
    start: datetime
    end: datetime | None  # None while the gap lasts
    due_services: tuple[str, ...]


def gap_message(gap: GapFacts, dashboard_url: str | None, now: datetime) -> Message:
    """Compose the one message about a blind gap, in place of one late alert per service."""
    start = format_instant(gap.start, "UTC")
    if gap.reason == "monitor_down":
        title = "[cronledger] The monitor could not check for a while; lateness is judged again"
        what = (
            f"No monitor pass completed from {start} to {format_instant(now, 'UTC')} "
            f"({humanize_duration(now - gap.start)}). The monitor was stopped, could not "
            "reach the database, or its host was down."
        )
    else:
        title = "[cronledger] No run reaches the database; late alerts are held"
        what = (
            f"No run from any service has reached the database since {start} "
            f"({humanize_duration(now - gap.start)} ago), while services are due. "
            "The jobs, their host or the network path to the database may be down."
        )
    lines = [
        what,
        "Late alerts for this time are not sent one by one. Lateness is judged again "
        "from when runs can be seen, and a service still late after that gets its alert.",
    ]
    if gap.due_services:
        lines.append(f"Due or late now: {', '.join(gap.due_services)}")
    if dashboard_url:
        lines.append(f"Dashboard: {dashboard_url.rstrip('/')}/")
    return Message(title, "\n".join(lines), "warning")


def message_for_test(
    facts: ServiceFacts | None, dashboard_url: str | None, now: datetime
) -> Message:
    """Compose the message of ``cronledger alerts test``."""
    sent = format_instant(now, "UTC")
    if facts is None:
        body = f"A test message from cronledger, sent at {sent}. Alerts reach this channel."
        return Message("[cronledger] Test message", body, "info")
    lines = [f"A test message from cronledger for {_label(facts)}, sent at {sent}."]
    lines.extend(_details(facts, dashboard_url, now))
    return Message(f"[cronledger] Test message for {_label(facts)}", "\n".join(lines), "info")
