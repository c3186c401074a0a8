"""Fire claims on SQLite and PostgreSQL: one winner per fire time, overlap and pause."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, select

from cronledger.scheduler.claims import Fire, claim_fires, finish_claim
from cronledger.settings import JobSettings
from cronledger.store.engine import get_engine
from cronledger.store.migrate import ensure_schema
from cronledger.store.services import set_paused
from cronledger.store.tables import cron_fire_claims, cron_services, cron_skipped_runs

NOW = datetime(2026, 12, 4, 10, 0, 5, tzinfo=UTC)
FIRE = datetime(2026, 12, 4, 10, 0, 5, tzinfo=UTC)
KILL_DELAY = timedelta(seconds=10)
JOBS = {
    "skipper": JobSettings("skipper", command=("true",), timeout=timedelta(seconds=30)),
    "allower": JobSettings("allower", command=("true",), overlap="allow"),
}


def engine_for(database_url: str) -> Engine:
    engine = get_engine(database_url)
    ensure_schema(engine)
    return engine


def test_second_claim_loses(database_url: str) -> None:
    engine = engine_for(database_url)
    fire = Fire("skipper", FIRE)

    first = claim_fires(engine, [fire], JOBS, NOW, KILL_DELAY, {})
    second = claim_fires(engine, [fire], JOBS, NOW, KILL_DELAY, {})

    assert [won for won, _ in first.run] == [fire]
    assert second.run == []
    assert second.lost == [fire]
    with engine.connect() as connection:
        rows = connection.execute(select(cron_fire_claims)).all()
    assert len(rows) == 1
    assert rows[0].scheduled_at.isoformat() == FIRE.isoformat()
    assert rows[0].run_key == first.run[0][1]


def test_unfinished_run_skips_next(database_url: str) -> None:
    engine = engine_for(database_url)
    first = Fire("skipper", FIRE)
    following = Fire("skipper", FIRE + timedelta(seconds=1))
    claim_fires(engine, [first], JOBS, NOW, KILL_DELAY, {})

    result = claim_fires(engine, [following], JOBS, NOW + timedelta(seconds=1), KILL_DELAY, {})

    assert result.skipped == [following]
    assert result.run == []
    with engine.connect() as connection:
        skipped = connection.execute(select(cron_skipped_runs)).all()
    assert [row.scheduled_at.isoformat() for row in skipped] == [following.scheduled_at.isoformat()]
    assert "still running" in skipped[0].reason


def test_finished_run_lets_next_run(database_url: str) -> None:
    engine = engine_for(database_url)
    first = Fire("skipper", FIRE)
    following = Fire("skipper", FIRE + timedelta(seconds=1))
    claim_fires(engine, [first], JOBS, NOW, KILL_DELAY, {})
    finish_claim(engine, first, NOW + timedelta(milliseconds=500))

    result = claim_fires(engine, [following], JOBS, NOW + timedelta(seconds=1), KILL_DELAY, {})

    assert [won for won, _ in result.run] == [following]


def test_stale_claim_does_not_block(database_url: str) -> None:
    engine = engine_for(database_url)
    claim_fires(engine, [Fire("skipper", FIRE)], JOBS, NOW, KILL_DELAY, {})
    # timeout 30 s + kill delay 10 s + margin 1 min: the claimer died long ago.
    later = NOW + timedelta(minutes=2)
    following = Fire("skipper", later)

    result = claim_fires(engine, [following], JOBS, later, KILL_DELAY, {})

    assert [won for won, _ in result.run] == [following]


def test_local_run_skips_next(database_url: str) -> None:
    engine = engine_for(database_url)
    fire = Fire("skipper", FIRE)

    result = claim_fires(engine, [fire], JOBS, NOW, KILL_DELAY, {"skipper": 1})

    assert result.skipped == [fire]


def test_overlap_allow_runs_both(database_url: str) -> None:
    engine = engine_for(database_url)
    first = Fire("allower", FIRE)
    following = Fire("allower", FIRE + timedelta(seconds=1))

    result = claim_fires(engine, [first, following], JOBS, NOW, KILL_DELAY, {"allower": 1})

    assert [won for won, _ in result.run] == [first, following]


def test_one_pass_runs_first_skips_second(database_url: str) -> None:
    engine = engine_for(database_url)
    first = Fire("skipper", FIRE)
    following = Fire("skipper", FIRE + timedelta(seconds=1))

    result = claim_fires(engine, [first, following], JOBS, NOW, KILL_DELAY, {})

    assert [won for won, _ in result.run] == [first]
    assert result.skipped == [following]


def test_paused_service_not_claimed(database_url: str) -> None:
    engine = engine_for(database_url)
    with engine.begin() as connection:
        connection.execute(cron_services.insert().values(name="skipper", created_at=NOW))
    set_paused(engine, "skipper", True, NOW)
    fire = Fire("skipper", FIRE)

    result = claim_fires(engine, [fire], JOBS, NOW, KILL_DELAY, {})

    assert result.paused == [fire]
    with engine.connect() as connection:
        assert connection.execute(select(cron_fire_claims)).all() == []
