"""When cronledger itself is blind, and what it does about it.

cronledger is blind when it cannot tell a late job from its own lack of
sight. Two cases, both measured against ``[alerts] blind_after`` (default
5 minutes):

- ``monitor_down``: the previous alert planning pass (one per monitor pass)
  is older than ``blind_after``. The monitor was stopped, could not reach
  the database, or its host was down. The gap runs from that pass to now
  and ends now.
- ``no_runs``: no run start from any service has reached the database for
  longer than ``blind_after``, while at least ``MIN_LATE_SERVICES``
  services are late for a start that was due after the newest run start.
  Many jobs falling silent at once points at a broken job host or network
  path rather than at each job. The gap starts at the newest run start (or
  the end of the previous gap, when later) and
  lasts until a run arrives again. A service that was already late when
  some run still arrived counts as late, not as a sign of blindness. Both
  times count from the end of the previous gap when that is later, so a
  monitor coming back is not mistaken for a silence of the jobs.

For each gap one message goes to the default channels, in place of one late
alert per service. Late alerts are held while blind and in the pass that
ends a gap. A held alert is sent only if the service is still late when its
lateness is judged again from the end of the gap (``sight_since``), as if
the service had been resumed then. Failing and stuck alerts are not held:
a failed run is a fact the job reported itself.

``judge_sight`` is a pure function of the stored state and ``now``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

# A single late service is just late; two or more silent at once, with no
# run from anywhere, is treated as blindness.
MIN_LATE_SERVICES = 2


class BlindReason(StrEnum):
    """The cause of a blind gap."""

    MONITOR_DOWN = "monitor_down"
    NO_RUNS = "no_runs"


@dataclass(frozen=True)
class SightState:
    """The stored state of sight, as of the previous pass."""

    previous_pass: datetime | None = None
    blind_since: datetime | None = None
    blind_reason: str | None = None
    sight_since: datetime | None = None


@dataclass(frozen=True)
class Gap:
    """A new blind gap to announce: its reason and start, and its end if it is over."""

    reason: BlindReason
    start: datetime
    end: datetime | None


@dataclass(frozen=True)
class Sight:
    """The result of ``judge_sight``: what to store and what to do in this pass.

    ``hold_late`` is true when late alerts of this pass must be held.
    ``new_gap`` is a gap to announce, or None.
    """

    blind_since: datetime | None
    blind_reason: BlindReason | None
    sight_since: datetime | None
    hold_late: bool
    new_gap: Gap | None


def judge_sight(
    state: SightState,
    *,
    now: datetime,
    newest_start: datetime | None,
    overdue_since: Sequence[datetime],
    blind_after: timedelta,
) -> Sight:
    """Decide whether cronledger is blind at ``now`` and whether a gap starts or ends.

    ``overdue_since`` has, for each late service, the missed start that
    made it late.
    """
    # A monitor that was down cannot tell what the jobs did meanwhile, so
    # this case comes first and restarts the judgement from now.
    if state.previous_pass is not None and now - state.previous_pass > blind_after:
        return Sight(
            blind_since=None,
            blind_reason=None,
            sight_since=now,
            hold_late=True,
            new_gap=Gap(BlindReason.MONITOR_DOWN, state.previous_pass, now),
        )

    seen = [moment for moment in (newest_start, state.sight_since) if moment is not None]
    last_seen = max(seen) if seen else None
    silent = 0
    if last_seen is not None and now - last_seen > blind_after:
        silent = sum(1 for moment in overdue_since if moment > last_seen)
    # A database that never had a run is new, not blind.
    if silent >= MIN_LATE_SERVICES and last_seen is not None and newest_start is not None:
        ongoing = state.blind_reason == BlindReason.NO_RUNS and state.blind_since is not None
        start = state.blind_since if ongoing and state.blind_since is not None else last_seen
        return Sight(
            blind_since=start,
            blind_reason=BlindReason.NO_RUNS,
            sight_since=state.sight_since,
            hold_late=True,
            new_gap=None if ongoing else Gap(BlindReason.NO_RUNS, start, None),
        )

    if state.blind_since is not None:
        # Runs arrive again: lateness is judged from now on, and late alerts
        # found in this same pass are still held.
        return Sight(None, None, sight_since=now, hold_late=True, new_gap=None)

    return Sight(None, None, sight_since=state.sight_since, hold_late=False, new_gap=None)
