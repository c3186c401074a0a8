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


SERVICE_NAME_RULE = (
    f"a service name has 1 to {MAX_SERVICE_NAME_LENGTH} characters, "
    "no leading or trailing whitespace and no control characters, such as 'flow-sync'"
)


def service_name_problem(name: object) -> str | None:
    """Return what is wrong with ``name`` as a service name, or None if it is valid."""
    if not isinstance(name, str):
        return f"a service name is a string; {SERVICE_NAME_RULE}"
    if not 1 <= len(name) <= MAX_SERVICE_NAME_LENGTH:
        return f"it has {len(name)} characters; {SERVICE_NAME_RULE}"
    if name != name.strip():
        return f"it has leading or trailing whitespace; {SERVICE_NAME_RULE}"
    if any(unicodedata.category(char) == "Cc" for char in name):
        return f"it contains a control character; {SERVICE_NAME_RULE}"
    return None


def validate_service_name(name: object) -> str:
    """Return ``name`` unchanged if it is a valid service name, else raise."""
    problem = service_name_problem(name)
    if problem is not None:
        shown = name if not isinstance(name, str) or len(name) <= 120 else name[:120] + "..."
        raise InvalidValueError(f"invalid service name {shown!r}: {problem}")
    assert isinstance(name, str)
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
