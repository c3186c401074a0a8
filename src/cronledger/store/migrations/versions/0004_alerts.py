"""Add the notification outbox and the state that alerts are planned from.

- ``cron_notifications``: the outbox, one row per message and channel. A
  sender claims a pending row with a conditional update and a lease, so one
  sender delivers it; ``dedupe_key`` is unique, so planning the same message
  twice adds no row.
- ``cron_alert_services``: per service, the open incident (the unhealthy
  state last alerted), the last reminder and a late alert held back while
  cronledger was blind.
- ``cron_monitor_sight``: one row with the active monitor's last pass, the
  last health event turned into alerts, and the current or latest blind gap.
  Its ``pass_at`` column is the claim of one alert planning step.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

TABLES = """
CREATE TABLE IF NOT EXISTS cron_notifications (
    id {id_type},
    dedupe_key VARCHAR(200) NOT NULL UNIQUE,
    kind VARCHAR(12) NOT NULL,
    service_name VARCHAR(100),
    event_id BIGINT,
    health_state VARCHAR(20),
    channel TEXT NOT NULL,
    channel_masked TEXT NOT NULL,
    title TEXT NOT NULL,
    body TEXT NOT NULL,
    notify_type VARCHAR(10) NOT NULL,
    status VARCHAR(10) NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at {ts} NOT NULL,
    claimed_by VARCHAR(100),
    claimed_until {ts},
    created_at {ts} NOT NULL,
    sent_at {ts},
    last_error TEXT
);
-- The senders' scan for due rows. It stays small because almost every row
-- is sent or failed.
CREATE INDEX IF NOT EXISTS ix_cron_notifications_pending
    ON cron_notifications (next_attempt_at) WHERE status = 'pending';
-- recent_notifications() and `cronledger alerts list --service NAME`.
CREATE INDEX IF NOT EXISTS ix_cron_notifications_service
    ON cron_notifications (service_name, created_at);
CREATE INDEX IF NOT EXISTS ix_cron_notifications_created
    ON cron_notifications (created_at);
CREATE TABLE IF NOT EXISTS cron_alert_services (
    service_name VARCHAR(100) PRIMARY KEY,
    incident_state VARCHAR(20),
    incident_event_id BIGINT,
    incident_since {ts},
    reminded_at {ts},
    held_event_id BIGINT
);
CREATE TABLE IF NOT EXISTS cron_monitor_sight (
    id INTEGER PRIMARY KEY,
    pass_at {ts},
    previous_pass_at {ts},
    event_cursor BIGINT NOT NULL DEFAULT 0,
    blind_since {ts},
    blind_reason VARCHAR(20),
    sight_since {ts}
);
-- Health events recorded before this migration are history, not news: the
-- cursor starts after them, so an upgrade sends no old alerts.
INSERT INTO cron_monitor_sight (id, event_cursor)
    SELECT 1, COALESCE(MAX(id), 0) FROM cron_health_events
    WHERE NOT EXISTS (SELECT 1 FROM cron_monitor_sight WHERE id = 1)
"""


def upgrade() -> None:
    postgresql = op.get_context().dialect.name == "postgresql"
    tables = TABLES.format(
        id_type="BIGSERIAL PRIMARY KEY" if postgresql else "INTEGER PRIMARY KEY AUTOINCREMENT",
        ts="TIMESTAMPTZ" if postgresql else "DATETIME",
    )
    for statement in tables.split(";"):
        # Drop the SQL comments, which offline output would otherwise split oddly.
        lines = [line for line in statement.splitlines() if not line.strip().startswith("--")]
        if "".join(lines).strip():
            op.execute("\n".join(lines))


def downgrade() -> None:
    raise NotImplementedError("cronledger does not downgrade its schema")
