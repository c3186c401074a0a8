"""Render statistics for a terminal or as JSON."""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime
from typing import Any

from cronledger.health import Health
from cronledger.stats import ServiceStats

HEADERS = (
    "SERVICE",
    "HEALTH",
    "TOTAL",
    "OK",
    "FAILED",
    "TIMED OUT",
    "RUNNING",
    "MISSED",
    "ITEMS",
    "AVG",
    "P95",
    "LAST RUN (UTC)",
    "LAST",
)


def format_milliseconds(value: float | None) -> str:
    """Return a duration in the largest fitting unit: 840ms, 12.5s, 3.2m."""
    if value is None:
        return "-"
    if value < 1000:
        return f"{value:.0f}ms"
    if value < 60_000:
        return f"{value / 1000:.1f}s"
    return f"{value / 60_000:.1f}m"


def _format_percentile(row: ServiceStats) -> str:
    """Return p95, marked with ~ when it is estimated from duration bins."""
    text = format_milliseconds(row.p95_duration_ms)
    if row.p95_duration_ms is None or row.percentiles_exact:
        return text
    # Within 9.1 % plus 1 ms, so a single run can read just below its average.
    return f"~{text}"


def _format_time(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else "never"


def format_stats_table(rows: list[ServiceStats], health: dict[str, Health]) -> str:
    """Return a plain-text table with one line per service, then health reasons."""
    lines = []
    for row in rows:
        name = row.service_name
        if row.display_name != name:
            name = f"{row.display_name} ({name})"
        state = health.get(row.service_name)
        lines.append(
            (
                name,
                state.state.value if state else "-",
                str(row.total),
                str(row.completed),
                str(row.failed),
                str(row.timed_out),
                str(row.in_progress),
                str(row.missed),
                str(row.items_processed),
                format_milliseconds(row.avg_duration_ms),
                _format_percentile(row),
                _format_time(row.last_run_at),
                row.last_status or "-",
            )
        )
    widths = [max(len(cells[i]) for cells in [HEADERS, *lines]) for i in range(len(HEADERS))]
    numeric = range(2, 11)

    def render(cells: tuple[str, ...]) -> str:
        parts = [
            cell.rjust(width) if i in numeric else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(parts).rstrip()

    output = [render(HEADERS), *(render(cells) for cells in lines)]
    reasons = [
        (row.service_name, health[row.service_name].reason)
        for row in rows
        if row.service_name in health
    ]
    if reasons:
        output.append("")
        for name, reason in reasons:
            output.append(f"{name}: {reason}")
    return "\n".join(output)


def stats_as_dict(row: ServiceStats, health: Health | None = None) -> dict[str, Any]:
    """Return ``row`` and its health as JSON-ready values, times in ISO 8601 UTC."""
    data = asdict(row)
    for key, value in data.items():
        if isinstance(value, datetime):
            data[key] = value.isoformat()
    data["success_rate"] = row.success_rate
    data["health"] = health.state.value if health else None
    data["health_reason"] = health.reason if health else None
    data["next_expected"] = (
        health.next_expected.isoformat() if health and health.next_expected else None
    )
    return data
