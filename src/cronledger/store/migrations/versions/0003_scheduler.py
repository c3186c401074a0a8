"""Add the scheduler's fire claims and skipped fire times.

TODO: filled in by the scheduler work.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04
"""

from __future__ import annotations

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    raise NotImplementedError("cronledger does not downgrade its schema")
