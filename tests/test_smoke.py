from sqlalchemy import text

from cronledger.store.engine import get_engine
from cronledger.tracking import track


def test_track_records_run(database_url: str) -> None:
    with track("smoke", database_url=database_url) as run:
        run.items_processed += 2
    with get_engine(database_url).connect() as connection:
        row = connection.execute(text("SELECT status, items_processed FROM cron_executions")).one()
    assert row.status == "completed"
    assert row.items_processed == 2


def test_private_server_restarts(private_postgres) -> None:  # type: ignore[no-untyped-def]
    with track("smoke", database_url=private_postgres.url):
        pass
    private_postgres.stop()
    private_postgres.start()
    with track("smoke", database_url=private_postgres.url):
        pass
