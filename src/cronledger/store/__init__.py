"""The store: engines, schema, migrations and the queries on runs."""
