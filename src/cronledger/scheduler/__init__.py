"""The scheduler: run the jobs declared in ``cronledger.toml``, each run recorded.

- ``planner``: pure fire-time decisions.
- ``claims``: exactly-once fire claims in the database.
- ``runner``: one run of a command or a callable.
- ``loop``: the scheduler itself.
- ``lock``: one scheduler per SQLite file.
- ``changes``: the changes that a reload logs.
- ``supervisor``: several components in one process, for ``cronledger up``.
- ``commands``: the bodies of the ``scheduler`` and ``up`` commands.
"""
