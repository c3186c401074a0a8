"""Add dashboard users and API tokens.

Passwords and tokens are stored only as hashes: argon2id for passwords
(slow on purpose), SHA-256 for API tokens, which are 32 random bytes and
so cannot be guessed, and are checked on every API request.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

TABLES = """
CREATE TABLE IF NOT EXISTS cron_users (
    id {id_type},
    name VARCHAR(100) NOT NULL UNIQUE,
    role VARCHAR(10) NOT NULL,
    password_hash VARCHAR(255) NOT NULL,
    created_at {ts} NOT NULL,
    last_login_at {ts}
);
CREATE TABLE IF NOT EXISTS cron_api_tokens (
    id {id_type},
    name VARCHAR(100) NOT NULL UNIQUE,
    role VARCHAR(10) NOT NULL,
    token_hash VARCHAR(64) NOT NULL UNIQUE,
    created_at {ts} NOT NULL,
    last_used_at {ts}
)
"""


def upgrade() -> None:
    postgresql = op.get_context().dialect.name == "postgresql"
    tables = TABLES.format(
        id_type="BIGSERIAL PRIMARY KEY" if postgresql else "INTEGER PRIMARY KEY AUTOINCREMENT",
        ts="TIMESTAMPTZ" if postgresql else "DATETIME",
    )
    for statement in tables.split(";"):
        if statement.strip():
            op.execute(statement)


def downgrade() -> None:
    raise NotImplementedError("cronledger does not downgrade its schema")
