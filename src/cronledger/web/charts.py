"""Charts of a service's runs over time, as geometry for inline SVG.

Rendered on the server with no chart library, so pages work offline and
under a CSP without inline script. Colours come from CSS classes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cronledger.terminal import format_milliseconds
from cronledger.web.data import Bucket

WIDTH = 720
HEIGHT = 160
LEFT = 64  # room for the axis labels
BOTTOM = 24
TOP = 16

# Stacking order of the runs chart, bottom first, with the CSS class of each.
STATUS_LAYERS = (
    ("completed", "completed"),
    ("failed", "failed"),
    ("timed_out", "timed-out"),
    ("in_progress", "started"),
)


@dataclass(frozen=True)
class Rect:
    x: float
    y: float
    width: float
    height: float
    css_class: str
    title: str


@dataclass
class Chart:
    """One chart: bars, an optional line, axis labels and a caption."""

    title: str
    maximum_label: str
    rects: list[Rect] = field(default_factory=list)
    line_points: str = ""
    line_title: str = ""
    x_labels: list[tuple[float, str]] = field(default_factory=list)
    width: int = WIDTH
    height: int = HEIGHT
    empty: bool = True
    empty_message: str = "No runs in this range."


def _plot_width(count: int) -> float:
    return (WIDTH - LEFT) / max(count, 1)


def _y(value: float, maximum: float) -> float:
    usable = HEIGHT - TOP - BOTTOM
    return HEIGHT - BOTTOM - (value / maximum * usable if maximum else 0)


def _label(bucket: Bucket, hourly: bool) -> str:
    return bucket.start.strftime("%H:%M" if hourly else "%m-%d")


def _x_labels(buckets: list[Bucket], hourly: bool) -> list[tuple[float, str]]:
    step = _plot_width(len(buckets))
    every = max(1, len(buckets) // 4)
    return [
        (LEFT + index * step + step / 2, _label(bucket, hourly) + (" UTC" if index == 0 else ""))
        for index, bucket in enumerate(buckets)
        if index % every == 0
    ]


def runs_chart(buckets: list[Bucket], hourly: bool) -> Chart:
    """Return a chart of runs per bucket, stacked by status."""
    maximum = max((b.stats.total for b in buckets if b.stats), default=0)
    chart = Chart(title="Runs by status", maximum_label=str(maximum))
    chart.x_labels = _x_labels(buckets, hourly)
    step = _plot_width(len(buckets))
    for index, bucket in enumerate(buckets):
        if bucket.stats is None or bucket.stats.total == 0:
            continue
        chart.empty = False
        base = 0
        for attribute, css_class in STATUS_LAYERS:
            value = int(getattr(bucket.stats, attribute))
            if not value:
                continue
            top = _y(base + value, maximum)
            bottom = _y(base, maximum)
            title = f"{_label(bucket, hourly)} UTC: {value} {attribute.replace('_', ' ')}"
            chart.rects.append(
                Rect(LEFT + index * step + 1, top, max(step - 2, 1), bottom - top, css_class, title)
            )
            base += value
    return chart


def duration_chart(buckets: list[Bucket], hourly: bool) -> Chart:
    """Return a chart of the average duration per bucket (bars) and its p95 (line)."""
    averages = [b.stats.avg_duration_ms if b.stats else None for b in buckets]
    p95s = [b.stats.p95_duration_ms if b.stats else None for b in buckets]
    maximum = float(max([v for v in [*averages, *p95s] if v is not None], default=0))
    chart = Chart(title="Duration: average (bars) and p95 (line)", maximum_label=_ms(maximum))
    chart.x_labels = _x_labels(buckets, hourly)
    step = _plot_width(len(buckets))
    points = []
    for index, (bucket, average, p95) in enumerate(zip(buckets, averages, p95s, strict=True)):
        if average is not None:
            chart.empty = False
            top = _y(average, maximum)
            title = f"{_label(bucket, hourly)} UTC: average {_ms(average)}, p95 {_ms(p95)}"
            chart.rects.append(
                Rect(
                    LEFT + index * step + 1,
                    top,
                    max(step - 2, 1),
                    _y(0, maximum) - top,
                    "duration",
                    title,
                )
            )
        if p95 is not None:
            points.append(f"{LEFT + index * step + step / 2:.1f},{_y(p95, maximum):.1f}")
    chart.line_points = " ".join(points)
    chart.line_title = "p95 duration"
    return chart


def items_chart(buckets: list[Bucket], hourly: bool) -> Chart:
    """Return a chart of items processed per bucket."""
    maximum = max((b.stats.items_processed for b in buckets if b.stats), default=0)
    chart = Chart(
        title="Items processed",
        maximum_label=str(maximum),
        empty_message="No items processed in this range.",
    )
    chart.x_labels = _x_labels(buckets, hourly)
    step = _plot_width(len(buckets))
    for index, bucket in enumerate(buckets):
        if bucket.stats is None or not bucket.stats.items_processed:
            continue
        chart.empty = False
        value = bucket.stats.items_processed
        top = _y(value, maximum)
        chart.rects.append(
            Rect(
                LEFT + index * step + 1,
                top,
                max(step - 2, 1),
                _y(0, maximum) - top,
                "items",
                f"{_label(bucket, hourly)} UTC: {value} items",
            )
        )
    return chart


def _ms(value: float | None) -> str:
    return format_milliseconds(value)
