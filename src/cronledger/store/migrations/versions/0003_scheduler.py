"""Add the scheduler's fire claims and skipped fire times.

``cron_fire_claims`` has one row per fire time of a service that a
scheduler took on. Every scheduler inserts the row with ON CONFLICT DO
NOTHING before it runs the job, so with several schedulers on one database
the unique key (service_name, scheduled_at) lets exactly one of them run
each fire time. The row keeps the run key of the run it started, so the
lateness of a start is ``cron_executions.execution_time - scheduled_at``.

``cron_skipped_runs`` has one row per fire time that was not run because
the previous run of the service was still running (overlap = "skip").

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

TABLES = """
CREATE TABLE IF NOT EXISTS cron_fire_claims (
    id {id_type},
    service_name VARCHAR(100) NOT NULL,
    scheduled_at {ts} NOT NULL,
    claimed_at {ts} NOT NULL,
    outcome VARCHAR(10) NOT NULL,
    run_key VARCHAR(64),
    host VARCHAR(255),
    pid INTEGER,
    finished_at {ts},
    UNIQUE (service_name, scheduled_at)
);
-- The overlap check of every fire time looks for the unfinished runs of a
-- service, and this partial index contains only those few rows.
CREATE INDEX IF NOT EXISTS ix_cron_fire_claims_unfinished
    ON cron_fire_claims (service_name)
    WHERE outcome = 'run' AND finished_at IS NULL;
CREATE INDEX IF NOT EXISTS ix_cron_fire_claims_run_key
    ON cron_fire_claims (run_key);
CREATE TABLE IF NOT EXISTS cron_skipped_runs (
    id {id_type},
    service_name VARCHAR(100) NOT NULL,
    scheduled_at {ts} NOT NULL,
    skipped_at {ts} NOT NULL,
    reason TEXT NOT NULL,
    host VARCHAR(255),
    UNIQUE (service_name, scheduled_at)
);
"""


def upgrade() -> None:
    postgresql = op.get_context().dialect.name == "postgresql"
    tables = TABLES.format(
        id_type="BIGSERIAL PRIMARY KEY" if postgresql else "INTEGER PRIMARY KEY AUTOINCREMENT",
        ts="TIMESTAMPTZ" if postgresql else "DATETIME",
    )
    # The statements are split at ";", so the SQL comments contain none.
    for statement in tables.split(";"):
        if statement.strip():
            op.execute(statement)


def downgrade() -> None:
    raise NotImplementedError("cronledger does not downgrade its schema")
