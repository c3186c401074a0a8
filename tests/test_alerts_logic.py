"""Pure alert logic with a frozen clock: message text, blindness, reminders, retries, config."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from cronledger.alerts.blind import BlindReason, Gap, SightState, judge_sight
from cronledger.alerts.config import (
    AlertConfig,
    Channel,
    MissingVariableError,
    expand_url,
    load_alert_config,
    mask_url,
)
from cronledger.alerts.delivery import retry_delay
from cronledger.alerts.messages import (
    GapFacts,
    Kind,
    ServiceFacts,
    alert_message,
    format_instant,
    gap_message,
    message_for_test,
)
from cronledger.alerts.planner import reminder_due
from cronledger.settings import ConfigError, load_config

NOW = datetime(2025, 3, 30, 1, 30, tzinfo=UTC)
MINUTE = timedelta(minutes=1)
BLIND_AFTER = timedelta(minutes=5)


def facts(**changes: object) -> ServiceFacts:
    values: dict[str, object] = {
        "name": "export",
        "display_name": "Nightly export",
        "timezone": "Europe/Berlin",
        "state": "failing",
        "reason": "last run failed at 03:00",
        "since": NOW - 10 * MINUTE,
        "previous_state": "healthy",
        "last_error": "disk full",
    }
    values.update(changes)
    return ServiceFacts(**values)  # type: ignore[arg-type]


# Messages


def test_alert_message_fields() -> None:
    message = alert_message(Kind.ALERT, facts(), "https://cron.example.com/", NOW)

    assert message.title == "[cronledger] Nightly export (export) is failing"
    assert message.notify_type == "failure"
    assert message.body.splitlines() == [
        "Service: Nightly export (export)",
        "State: failing (was healthy)",
        "Reason: last run failed at 03:00",
        "Since: 2025-03-30 01:20:00 UTC (2025-03-30 03:20:00 CEST, Europe/Berlin), 10 min ago",
        "Last error: disk full",
        "Details: https://cron.example.com/services/export",
    ]


def test_since_after_dst_change() -> None:
    # Berlin moved from CET (+01:00) to CEST (+02:00) at 01:00 UTC on 2025-03-30.
    before = format_instant(datetime(2025, 3, 30, 0, 59, tzinfo=UTC), "Europe/Berlin")
    after = format_instant(datetime(2025, 3, 30, 1, 0, tzinfo=UTC), "Europe/Berlin")

    assert before == "2025-03-30 00:59:00 UTC (2025-03-30 01:59:00 CET, Europe/Berlin)"
    assert after == "2025-03-30 01:00:00 UTC (2025-03-30 03:00:00 CEST, Europe/Berlin)"


def test_utc_service_shows_one_time() -> None:
    assert format_instant(NOW, "UTC") == "2025-03-30 01:30:00 UTC"


def test_late_alert_is_warning() -> None:
    message = alert_message(Kind.ALERT, facts(state="late", last_error=None), None, NOW)

    assert message.notify_type == "warning"
    assert "Last error" not in message.body
    assert "Details" not in message.body


def test_name_alone_when_no_display_name() -> None:
    message = alert_message(Kind.ALERT, facts(display_name="export"), None, NOW)

    assert message.title == "[cronledger] export is failing"
    assert "Service: export\n" in message.body


def test_recovery_drops_last_error() -> None:
    message = alert_message(
        Kind.RECOVERY, facts(state="healthy", previous_state="failing"), None, NOW
    )

    assert message.title == "[cronledger] Nightly export (export) recovered: healthy"
    assert message.notify_type == "success"
    assert "disk full" not in message.body


def test_reminder_title() -> None:
    message = alert_message(Kind.REMINDER, facts(previous_state=None), None, NOW)

    assert message.title == "[cronledger] Reminder: Nightly export (export) is still failing"
    assert "State: failing\n" in message.body


def test_long_error_is_cut() -> None:
    message = alert_message(Kind.ALERT, facts(last_error="x" * 5000), None, NOW)

    error_line = next(line for line in message.body.splitlines() if line.startswith("Last"))
    assert error_line.endswith("x [...]")
    assert len(error_line) < 1100


def test_gap_message_names_services() -> None:
    gap = GapFacts("no_runs", NOW - 20 * MINUTE, None, ("a", "b"))
    message = gap_message(gap, "https://cron.example.com", NOW)

    assert message.title == "[cronledger] No run reaches the database; late alerts are held"
    assert "since 2025-03-30 01:10:00 UTC (20 min ago)" in message.body
    assert "Due or late now: a, b" in message.body
    assert "Dashboard: https://cron.example.com/" in message.body


def test_monitor_gap_message() -> None:
    gap = GapFacts("monitor_down", NOW - 90 * MINUTE, NOW, ())

    message = gap_message(gap, None, NOW)

    assert message.title.startswith("[cronledger] The monitor could not check for a while")
    assert "from 2025-03-30 00:00:00 UTC to 2025-03-30 01:30:00 UTC (1 h 30 min)" in message.body


def test_test_message_without_service() -> None:
    message = message_for_test(None, None, NOW)

    assert message.title == "[cronledger] Test message"
    assert "2025-03-30 01:30:00 UTC" in message.body


# Blindness


def test_not_blind_on_first_pass() -> None:
    sight = judge_sight(
        SightState(), now=NOW, newest_start=NOW - MINUTE, overdue_since=[], blind_after=BLIND_AFTER
    )

    assert sight.new_gap is None
    assert sight.hold_late is False


def test_monitor_gap_boundary() -> None:
    def judge(previous: datetime) -> bool:
        sight = judge_sight(
            SightState(previous_pass=previous),
            now=NOW,
            newest_start=NOW - MINUTE,
            overdue_since=[],
            blind_after=BLIND_AFTER,
        )
        return sight.new_gap is not None

    assert judge(NOW - BLIND_AFTER) is False, "exactly blind_after is not a gap"
    assert judge(NOW - BLIND_AFTER - timedelta(seconds=1)) is True


def test_monitor_gap_restarts_judgement() -> None:
    previous = NOW - 40 * MINUTE
    sight = judge_sight(
        SightState(previous_pass=previous),
        now=NOW,
        newest_start=NOW - 50 * MINUTE,
        overdue_since=[NOW - 20 * MINUTE] * 3,
        blind_after=BLIND_AFTER,
    )

    assert sight.new_gap == Gap(BlindReason.MONITOR_DOWN, previous, NOW)
    assert sight.sight_since == NOW
    assert sight.hold_late is True
    assert sight.blind_since is None


def test_no_runs_needs_two_late() -> None:
    def judge(late: int) -> Gap | None:
        return judge_sight(
            SightState(previous_pass=NOW - MINUTE),
            now=NOW,
            newest_start=NOW - 20 * MINUTE,
            overdue_since=[NOW - 10 * MINUTE] * late,
            blind_after=BLIND_AFTER,
        ).new_gap

    assert judge(1) is None
    assert judge(2) == Gap(BlindReason.NO_RUNS, NOW - 20 * MINUTE, None)


def test_no_runs_boundary() -> None:
    def judge(newest_start: datetime) -> Gap | None:
        return judge_sight(
            SightState(previous_pass=NOW - MINUTE),
            now=NOW,
            newest_start=newest_start,
            overdue_since=[NOW - timedelta(seconds=1)] * 2,
            blind_after=BLIND_AFTER,
        ).new_gap

    assert judge(NOW - BLIND_AFTER) is None, "exactly blind_after is not a gap"
    assert judge(NOW - BLIND_AFTER - timedelta(seconds=1)) is not None


def test_late_before_last_run_is_not_blind() -> None:
    # Two services were already late when a run of another service arrived.
    sight = judge_sight(
        SightState(previous_pass=NOW - MINUTE),
        now=NOW,
        newest_start=NOW - 20 * MINUTE,
        overdue_since=[NOW - 30 * MINUTE, NOW - 25 * MINUTE],
        blind_after=BLIND_AFTER,
    )

    assert sight.new_gap is None
    assert sight.hold_late is False


def test_no_runs_gap_announced_once() -> None:
    state = SightState(
        previous_pass=NOW - MINUTE, blind_since=NOW - 20 * MINUTE, blind_reason="no_runs"
    )
    sight = judge_sight(
        state,
        now=NOW,
        newest_start=NOW - 20 * MINUTE,
        overdue_since=[NOW - 10 * MINUTE] * 3,
        blind_after=BLIND_AFTER,
    )

    assert sight.new_gap is None
    assert sight.blind_since == NOW - 20 * MINUTE
    assert sight.hold_late is True


def test_runs_return_end_gap() -> None:
    state = SightState(
        previous_pass=NOW - MINUTE, blind_since=NOW - 20 * MINUTE, blind_reason="no_runs"
    )
    sight = judge_sight(
        state,
        now=NOW,
        newest_start=NOW - 30 * timedelta(seconds=1),
        overdue_since=[NOW - 10 * MINUTE] * 3,
        blind_after=BLIND_AFTER,
    )

    assert sight.blind_since is None
    assert sight.sight_since == NOW
    assert sight.hold_late is True, "late alerts of the pass that ends a gap are held"


def test_silence_after_gap_counts_from_it() -> None:
    sight = judge_sight(
        SightState(previous_pass=NOW - MINUTE, sight_since=NOW - 4 * MINUTE),
        now=NOW,
        newest_start=NOW - 60 * MINUTE,
        overdue_since=[NOW - 2 * MINUTE] * 3,
        blind_after=BLIND_AFTER,
    )

    assert sight.new_gap is None


# Reminders and retries


def test_reminder_due_boundary() -> None:
    every = timedelta(hours=1)

    assert reminder_due(NOW - every + timedelta(seconds=1), every, NOW) is False
    assert reminder_due(NOW - every, every, NOW) is True
    assert reminder_due(NOW - 10 * every, None, NOW) is False


def test_retry_delay_doubles_to_cap() -> None:
    delays = [retry_delay(attempt) for attempt in range(1, 11)]

    assert delays[:4] == [timedelta(seconds=s) for s in (30, 60, 120, 240)]
    assert delays[-1] == timedelta(hours=1)
    assert retry_delay(1000) == timedelta(hours=1)


# Config


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_alert_keys_parsed(tmp_path: Path) -> None:
    config = load_config(
        write(
            tmp_path / "cronledger.toml",
            """
[alerts]
channels = ["json://127.0.0.1:9000/hook", "mailto://127.0.0.1:2525?to=ops@example.com"]
remind_every = "2h"
dashboard_url = "https://cron.example.com/"
blind_after = "10m"

[services.export]
alerts = ["json://127.0.0.1:9000/export"]

[services.quiet]
alerts = []
""",
        )
    )

    assert config.alerts.channels == (
        "json://127.0.0.1:9000/hook",
        "mailto://127.0.0.1:2525?to=ops@example.com",
    )
    assert config.alerts.remind_every == timedelta(hours=2)
    assert config.alerts.dashboard_url == "https://cron.example.com"
    assert config.alerts.blind_after == timedelta(minutes=10)
    assert config.service_alerts == {"export": ("json://127.0.0.1:9000/export",), "quiet": ()}


def test_alert_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path / "cronledger.toml", "[services.export]\n"))

    assert config.alerts.channels == ()
    assert config.alerts.remind_every is None
    assert config.alerts.blind_after == timedelta(minutes=5)
    assert config.service_alerts == {}


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('channels = "json://h/x"', "it must be an array of Apprise URLs"),
        ('channels = ["no-scheme"]', "'no-scheme' is not an Apprise URL"),
        ('channels = ["json://h/${TOKEN"]', "unclosed or invalid ${...}"),
        ('remind_every = "0s"', "it must be longer than 0s"),
        ('blind_after = "soon"', "blind_after"),
        ('dashboard_url = "cron.example.com"', "it must start with http:// or https://"),
        ('channel = ["json://h/x"]', "unknown key alerts.channel"),
    ],
)
def test_invalid_alert_values(tmp_path: Path, line: str, expected: str) -> None:
    path = write(tmp_path / "cronledger.toml", f"[alerts]\n{line}\n")

    with pytest.raises(ConfigError) as raised:
        load_config(path)

    assert expected in str(raised.value)
    assert f"{path} line 2" in str(raised.value)


def test_expand_url_from_environment() -> None:
    environ = {"HOOK_TOKEN": "abc123"}

    assert expand_url("json://127.0.0.1/${HOOK_TOKEN}/x", environ) == "json://127.0.0.1/abc123/x"
    with pytest.raises(MissingVariableError) as raised:
        expand_url("json://127.0.0.1/${OTHER}", environ)
    assert "environment variable OTHER is not set" in str(raised.value)


def test_missing_variable_is_config_error(tmp_path: Path) -> None:
    path = write(
        tmp_path / "cronledger.toml",
        '[alerts]\nchannels = ["json://127.0.0.1:9/ok", "json://127.0.0.1:9/${CL_TEST_HOOK}"]\n',
    )
    config = load_config(path)

    with pytest.raises(ConfigError) as raised:
        load_alert_config(config, environ={})

    message = str(raised.value)
    assert "alerts.channels[1]" in message
    assert "environment variable CL_TEST_HOOK is not set" in message
    resolved = load_alert_config(config, environ={"CL_TEST_HOOK": "hook"})
    assert [c.url for c in resolved.default_channels][1] == "json://127.0.0.1:9/${CL_TEST_HOOK}"


def test_unsupported_scheme_is_config_error(tmp_path: Path) -> None:
    path = write(tmp_path / "cronledger.toml", '[alerts]\nchannels = ["nosuchservice://x"]\n')

    with pytest.raises(ConfigError) as raised:
        load_alert_config(load_config(path), environ={})

    assert "is not a URL that Apprise supports" in str(raised.value)


def test_mask_url_hides_secrets() -> None:
    masked = mask_url("json://admin:hunter2@127.0.0.1:8080/hook?token=abc")

    assert "hunter2" not in masked
    assert masked.startswith("json://admin:")
    assert masked.endswith("@127.0.0.1:8080/hook")


def test_service_channels_override() -> None:
    default = (Channel("json://127.0.0.1/a", "json://127.0.0.1/a"),)
    own = (Channel("json://127.0.0.1/b", "json://127.0.0.1/b"),)
    config = AlertConfig(default, {"export": own, "quiet": ()})

    assert config.channels_for("export") == own
    assert config.channels_for("quiet") == ()
    assert config.channels_for("other") == default
    assert config.channels_for(None) == default
