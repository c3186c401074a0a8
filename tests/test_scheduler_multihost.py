"""Three schedulers on one PostgreSQL database run each fire time exactly once.

The schedulers run as separate processes, as they would on three hosts, for
about two minutes with per-second schedules. Every fire time between the
first and the last claimed one must have exactly one recorded run: none
twice, none missing.
"""

from __future__ import annotations

import signal
import time
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest

from cronledger.schedule import IntervalSchedule
from cronledger.scheduler.planner import next_fire_after
from tests.test_scheduler_processes import (
    SchedulerProcess,
    claims,
    runs,
    start_scheduler,
    write_config,
)

__all__ = ["start_scheduler"]  # the fixture, imported for this module's tests

WINDOW_SECONDS = 120
SERVICES = ("every-second", "every-second-b", "every-two-seconds")


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_three_schedulers_exactly_once(
    tmp_path: Path, postgres_url: str, start_scheduler: Callable[..., SchedulerProcess]
) -> None:
    write_config(
        tmp_path,
        """
[services.every-second]
interval = "1s"
command = ["true"]

[services.every-second-b]
interval = "1s"
command = ["sh", "-c", "sleep 0.3"]

[services.every-two-seconds]
interval = "2s"
command = ["true"]
""",
    )
    schedulers = [start_scheduler(postgres_url)]
    schedulers[0].wait_log("scheduler started")
    # The others join while the first one runs, as a new host would.
    for _ in range(2):
        time.sleep(1.5)
        schedulers.append(start_scheduler(postgres_url))

    time.sleep(WINDOW_SECONDS)
    for scheduler in schedulers:
        scheduler.send(signal.SIGTERM)
    statuses = [scheduler.process.wait(timeout=60) for scheduler in schedulers]

    assert statuses == [0, 0, 0], [scheduler.log[-2000:] for scheduler in schedulers]
    intervals = {
        "every-second": timedelta(seconds=1),
        "every-second-b": timedelta(seconds=1),
        "every-two-seconds": timedelta(seconds=2),
    }
    for service in SERVICES:
        schedule = IntervalSchedule(intervals[service])
        claimed = claims(postgres_url, service)
        recorded = runs(postgres_url, service)

        expected = []
        fire = claimed[0].scheduled_at
        while fire <= claimed[-1].scheduled_at:
            expected.append(fire)
            fire = next_fire_after(schedule, fire)
        claimed_fires = [row.scheduled_at for row in claimed]
        assert len(expected) >= WINDOW_SECONDS // intervals[service].seconds - 5, service
        missing = sorted(set(expected) - set(claimed_fires))
        assert missing == [], f"{service}: fire times never claimed: {missing}"
        assert all(row.outcome == "run" for row in claimed), f"{service}: a fire time skipped"

        runs_per_key = Counter(row.run_key for row in recorded)
        fire_by_key = {row.run_key: row.scheduled_at for row in claimed}
        twice = [key for key, count in runs_per_key.items() if count > 1]
        assert twice == [], f"{service}: run keys recorded twice: {twice}"
        unclaimed = [key for key in runs_per_key if key not in fire_by_key]
        assert unclaimed == [], f"{service}: runs without a claim: {unclaimed}"
        runs_per_fire = Counter(fire_by_key[row.run_key] for row in recorded)
        not_once = {at: count for at, count in runs_per_fire.items() if count != 1}
        assert not_once == {}, f"{service}: fire times not run exactly once: {not_once}"
        assert set(runs_per_fire) == set(expected), f"{service}: claimed fire times without a run"
        assert all(row.status == "completed" for row in recorded), service

    winners = {row.pid for service in SERVICES for row in claims(postgres_url, service)}
    assert len(winners) >= 2, f"one scheduler won every fire time: {winners}"
