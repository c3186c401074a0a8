"""Exceptions raised by cronledger.

Every error that a user can cause names the bad value and how to fix it.
All of them derive from ``CronledgerError``, so a caller can catch the family.
"""

from __future__ import annotations


class CronledgerError(Exception):
    """Base class of every error cronledger raises on purpose."""


class InvalidValueError(CronledgerError, ValueError):
    """An argument such as a service name or an item count is invalid."""


class InvalidDatabaseURLError(CronledgerError, ValueError):
    """A database URL cannot be parsed or names an unsupported database."""
