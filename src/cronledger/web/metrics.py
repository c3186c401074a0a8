"""Prometheus metrics read from the database at scrape time.

Nothing is counted in process memory: every scrape reads the statistics
(through the overview cache, all-time window) and the all-time duration
bins. So any number of dashboard replicas report the same values, and a
restart loses nothing.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry
from sqlalchemy import Engine, select

from cronledger.health import HealthState
from cronledger.stats import BINS_PER_DOUBLING
from cronledger.store.tables import cron_duration_bins, cron_rollups
from cronledger.web.data import OverviewCache

# Histogram bucket bounds in seconds. Durations are stored in logarithmic
# bins; a bin is counted under the first bound at or above its upper edge.
DURATION_BOUNDS = (0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 600.0, 1800.0, 3600.0)


def bin_upper_edge_ms(index: int) -> float:
    """Return the upper edge of a duration bin in ms: bin = floor(4 * log2(ms + 1))."""
    return float(2 ** ((index + 1) / BINS_PER_DOUBLING) - 1)


class StatisticsCollector(Collector):
    """Collects cronledger's metrics from the database on each scrape."""

    def __init__(self, engine: Engine, cache: OverviewCache) -> None:
        self.engine = engine
        self.cache = cache

    def collect(self) -> Iterator[Metric]:
        snapshot = self.cache.get("all")

        executions = CounterMetricFamily(
            "cronledger_executions",
            "Runs recorded, by service and status (all time; runs in progress as started)",
            labels=["service", "status"],
        )
        in_progress = GaugeMetricFamily(
            "cronledger_runs_in_progress", "Runs started and not yet finished", labels=["service"]
        )
        last_success = GaugeMetricFamily(
            "cronledger_last_success_timestamp_seconds",
            "Start of the newest completed run, as a Unix time",
            labels=["service"],
        )
        health = GaugeMetricFamily(
            "cronledger_health_state",
            "1 for the service's current health state, 0 for the others",
            labels=["service", "state"],
        )
        missed = CounterMetricFamily(
            "cronledger_missed_runs", "Expected fire times that never started", labels=["service"]
        )
        for status in snapshot.statuses:
            stats = status.stats
            name = stats.service_name
            for label, value in (
                ("started", stats.in_progress),
                ("completed", stats.completed),
                ("failed", stats.failed),
                ("timed_out", stats.timed_out),
            ):
                executions.add_metric([name, label], value)
            in_progress.add_metric([name], stats.in_progress)
            missed.add_metric([name], stats.missed)
            if stats.last_success_at is not None:
                last_success.add_metric([name], stats.last_success_at.timestamp())
            if status.health is not None:
                for state in HealthState:
                    health.add_metric([name, state.value], 1 if status.health.state == state else 0)
        yield from (executions, in_progress, last_success, health, missed)
        yield self._durations()

    def _durations(self) -> HistogramMetricFamily:
        """Return the all-time duration histogram per service from the duration bins.

        NOTE: a bin that straddles a bound is counted under the next bound, so
        a bucket may undercount by the runs of one bin (within 19 % of the bound).
        """
        bins = cron_duration_bins.c
        rollups = cron_rollups.c
        counts: dict[str, list[int]] = defaultdict(lambda: [0] * len(DURATION_BOUNDS))
        with self.engine.connect() as connection:
            rows = connection.execute(
                select(bins.service_name, bins.bin, bins.runs).where(
                    bins.granularity == "all", bins.runs > 0
                )
            ).all()
            sums = {
                name: (int(count), int(total))
                for name, count, total in connection.execute(
                    select(
                        rollups.service_name, rollups.duration_count, rollups.duration_sum_ms
                    ).where(rollups.granularity == "all")
                )
            }
        for name, index, runs in rows:
            edge_seconds = bin_upper_edge_ms(int(index)) / 1000
            for position, bound in enumerate(DURATION_BOUNDS):
                if edge_seconds <= bound:
                    counts[name][position] += int(runs)
                    break

        histogram = HistogramMetricFamily(
            "cronledger_run_duration_seconds",
            "Duration of finished runs (all time), from logarithmic duration bins",
            labels=["service"],
        )
        for name, (count, total_ms) in sorted(sums.items()):
            cumulative = 0
            buckets: list[tuple[str, float]] = []
            for bound, value in zip(DURATION_BOUNDS, counts[name], strict=True):
                cumulative += value
                buckets.append((_bound_label(bound), cumulative))
            buckets.append(("+Inf", count))
            histogram.add_metric([name], buckets, sum_value=total_ms / 1000)
        return histogram


def _bound_label(bound: float) -> str:
    return f"{bound:g}" if bound < 1 else f"{bound:.1f}"


def build_registry(engine: Engine, cache: OverviewCache) -> CollectorRegistry:
    """Return a registry holding only cronledger's collector, not the process metrics."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatisticsCollector(engine, cache))
    return registry
