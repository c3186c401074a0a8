"""The shared status assembly, the dashboard's tables and its [server] settings."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import inspect, text

from cronledger.monitor import current_health, recent_runs
from cronledger.recorder import utc_now
from cronledger.settings import ConfigError, load_config
from cronledger.status import (
    RecentRunsCache,
    collect_status,
    evaluate_services,
    finished_runs_needed,
    recent_runs_by_service,
)
from cronledger.store.engine import get_engine
from cronledger.store.migrate import ensure_schema
from cronledger.store.services import load_services
from cronledger.store.tables import cron_api_tokens, cron_users
from cronledger.tracking import track
from tests.web_seed import seed_runs


def test_batched_runs_match_monitor(database_url: str) -> None:
    seed_runs(database_url)
    engine = get_engine(database_url)

    with engine.connect() as connection:
        records = load_services(connection)
        batched = recent_runs_by_service(connection, records)
        for record in records:
            name = record.settings.name
            expected = recent_runs(connection, name, finished_runs_needed(record))
            assert batched[name] == expected, name


def test_health_matches_monitor(database_url: str) -> None:
    seed_runs(database_url)
    engine = get_engine(database_url)
    now = utc_now() + timedelta(minutes=30)

    statuses = {status.name: status for status in collect_status(engine, now=now)}

    with engine.connect() as connection:
        for record in load_services(connection):
            expected = current_health(connection, record, now)
            assert statuses[record.settings.name].health == expected, record.settings.name


def test_cached_runs_follow_every_change(database_url: str) -> None:
    # The dashboard keeps each service's recent runs between evaluations
    # (PostgreSQL); after each change they must equal a fresh read.
    seed_runs(database_url)
    engine = get_engine(database_url)
    cache = RecentRunsCache()

    def assert_fresh(step: str) -> None:
        now = utc_now() + timedelta(minutes=30)
        cached = evaluate_services(engine, now, runs_cache=cache)
        fresh = evaluate_services(engine, now)
        assert cached.keys() == fresh.keys(), step
        for name, evaluation in fresh.items():
            assert cached[name].runs == evaluation.runs, f"{step}: runs of {name}"
            assert cached[name].health == evaluation.health, f"{step}: health of {name}"

    assert_fresh("first read")
    assert_fresh("nothing changed")
    with track("flow-sync", database_url=database_url):
        assert_fresh("a run started")
    assert_fresh("the run finished")
    with engine.begin() as connection:
        connection.execute(
            text(
                "UPDATE cron_executions SET status = 'timed_out' WHERE status = 'started'"
                " AND service_name = 'payment-checker'"
            )
        )
    assert_fresh("a run timed out")
    with track("new-service", database_url=database_url):
        pass
    assert_fresh("a new service")


def test_one_service_status(database_url: str) -> None:
    seed_runs(database_url)
    engine = get_engine(database_url)

    only = collect_status(engine, now=utc_now(), service_name="flow-sync")
    unknown = collect_status(engine, now=utc_now(), service_name="nope")

    assert [status.name for status in only] == ["flow-sync"]
    assert only[0].health is not None
    assert only[0].stats.total == 5
    assert unknown == []


def test_dashboard_tables_migrated(database_url: str) -> None:
    engine = get_engine(database_url)
    ensure_schema(engine)
    inspector = inspect(engine)

    for table in (cron_users, cron_api_tokens):
        migrated = [column["name"] for column in inspector.get_columns(table.name)]
        declared = [column.name for column in table.columns]
        assert migrated == declared, f"{table.name}: migrated {migrated}, tables.py {declared}"


def test_server_table_read(tmp_path: Path) -> None:
    path = tmp_path / "cronledger.toml"
    path.write_text(
        '[server]\nhost = "127.0.0.2"\nport = 9090\npublic_url = "https://cron.example.org"\n'
    )

    server = load_config(path).server

    assert server.host == "127.0.0.2"
    assert server.port == 9090
    assert server.public_url == "https://cron.example.org"
    assert server.session_secret is None


def test_server_defaults(tmp_path: Path) -> None:
    path = tmp_path / "cronledger.toml"
    path.write_text("")

    server = load_config(path).server

    assert server.host == "127.0.0.1"
    assert server.port == 8080


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("port = 0", "server.port = 0 is invalid: a port is a whole number from 1 to 65535"),
        ('port = "80"', 'server.port = "80" is invalid'),
        ('host = ""', 'server.host = "" is invalid: it must not be empty'),
        ("listen = 1", "unknown key server.listen = 1"),
    ],
)
def test_server_table_rejects(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "cronledger.toml"
    path.write_text(f"[server]\n{line}\n")

    with pytest.raises(ConfigError) as caught:
        load_config(path)

    assert message in str(caught.value)
    assert "line 2" in str(caught.value)
