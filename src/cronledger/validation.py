"""Checks on values that callers hand to the tracking API.

Each check raises ``InvalidValueError`` naming the value and the rule before
anything is written, so a bad call never leaves a partial row behind.
"""

from __future__ import annotations

import unicodedata

from cronledger.errors import InvalidValueError

# The origin schema declares service_name VARCHAR(100).
MAX_SERVICE_NAME_LENGTH = 100

# PostgreSQL's INTEGER column, which the origin schema uses for items_processed.
MAX_ITEMS = 2**31 - 1


def validate_service_name(name: object) -> str:
    """Return ``name`` if it is a usable service name, else raise."""
    if not isinstance(name, str):
        raise InvalidValueError(
            f"invalid service name {name!r}: expected a string such as 'flow-sync'"
        )
    if not name or not name.strip():
        raise InvalidValueError(
            "invalid service name '': give a non-empty name such as 'flow-sync'"
        )
    if len(name) > MAX_SERVICE_NAME_LENGTH:
        raise InvalidValueError(
            f"invalid service name {name[:40]!r}... ({len(name)} characters): "
            f"use at most {MAX_SERVICE_NAME_LENGTH} characters"
        )
    if name != name.strip():
        raise InvalidValueError(
            f"invalid service name {name!r}: remove the leading or trailing whitespace"
        )
    if any(unicodedata.category(char) == "Cc" for char in name):
        raise InvalidValueError(f"invalid service name {name!r}: remove the control characters")
    return name


def validate_items(value: object) -> int:
    """Return ``value`` if it is a valid count of processed items, else raise."""
    # bool is an int subclass, and True items is almost always a bug.
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidValueError(
            f"invalid items_processed {value!r}: expected a non-negative integer such as 0 or 12"
        )
    if value < 0:
        raise InvalidValueError(
            f"invalid items_processed {value}: the count of processed items cannot be negative"
        )
    if value > MAX_ITEMS:
        raise InvalidValueError(f"invalid items_processed {value}: the maximum is {MAX_ITEMS}")
    return value
