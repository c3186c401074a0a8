"""Alembic environment for cronledger's own schema.

cronledger keeps its revision in its own version table, so it can share a
database with an application that runs Alembic for its own tables.
"""

from __future__ import annotations

from alembic import context

from cronledger.store.migrate import VERSION_TABLE

config = context.config

if context.is_offline_mode():
    context.configure(
        dialect_name=config.attributes["dialect_name"],
        literal_binds=True,
        # The named paramstyle keeps a literal % single in the printed SQL;
        # the psycopg dialect's default "pyformat" would print it as %%.
        dialect_opts={"paramstyle": "named"},
        version_table=VERSION_TABLE,
        transactional_ddl=True,
    )
    with context.begin_transaction():
        context.run_migrations()
else:
    context.configure(
        connection=config.attributes["connection"],
        version_table=VERSION_TABLE,
        transactional_ddl=True,
    )
    with context.begin_transaction():
        context.run_migrations()
