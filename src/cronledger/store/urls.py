"""Database URLs: where they come from and how they are checked.

People already have plain ``postgresql://user:pass@host:port/db`` URLs (and
the older ``postgres://`` form); those are mapped to the psycopg 3 driver.
SQLite URLs name a file. The URL is taken from, in order: an explicit
argument, the ``CRONLEDGER_DATABASE_URL`` environment variable, and the
default file ``./cronledger.db``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from cronledger.errors import InvalidDatabaseURLError

ENV_DATABASE_URL = "CRONLEDGER_DATABASE_URL"
DEFAULT_SQLITE_FILE = "cronledger.db"

URL_HELP = "use postgresql://USER:PASSWORD@HOST:5432/DATABASE or sqlite:///path/to/cronledger.db"

# Matches "user:" after an optional "scheme://" and then the password up to
# the last "@", because an unencoded "@" may be part of the password.
_CREDENTIALS = re.compile(r"^((?:[^:/@]*://)?[^:/@]*:)(?!//).*@", re.DOTALL)


def mask_password(raw: str) -> str:
    """Hide the password in a URL string that may not even parse.

    When the string does not have the usual "user:password@" shape after its
    scheme, everything before the last "@" is hidden, since a malformed URL
    leaves no safe way to tell the user from the password.
    """
    masked = _CREDENTIALS.sub(r"\1***@", raw)
    if masked != raw or "@" not in raw:
        return masked
    credentials, host = raw.rsplit("@", 1)
    if ":" not in credentials.split("//")[-1].split("/")[-1]:
        return raw  # a user name alone is no secret, and the typo stays visible
    return "***@" + host


def resolve_database_url(explicit: str | None = None) -> str:
    """Pick the database URL from the argument, the environment or the default."""
    if explicit:
        return explicit
    from_env = os.environ.get(ENV_DATABASE_URL, "").strip()
    if from_env:
        return from_env
    return "sqlite:///" + str(Path.cwd() / DEFAULT_SQLITE_FILE)


def _looks_like_file_path(text: str) -> bool:
    """Tell whether ``text`` is a file path, never a URL that lost its scheme.

    Text with an ``@`` may be ``user:password@host/db``, which must not be
    repeated in a message, so it never counts as a path.
    """
    if "://" in text or "@" in text:
        return False
    return text.startswith(("/", "./", "../", "~")) or text.endswith((".db", ".sqlite", ".sqlite3"))


def parse_database_url(raw: str) -> URL:
    """Parse and normalise ``raw`` into a SQLAlchemy URL for a supported driver."""
    if not isinstance(raw, str) or not raw.strip():
        raise InvalidDatabaseURLError(f"the database URL is empty: {URL_HELP}")
    text = raw.strip()

    try:
        url = make_url(text)
    except (ArgumentError, ValueError):
        # make_url raises a plain ValueError for a port that is not a number.
        hint = URL_HELP
        if _looks_like_file_path(text):
            # A file path where a URL belongs: give the URL of that file.
            hint = f"for this SQLite file, write sqlite:///{Path(text).expanduser().absolute()}"
        raise InvalidDatabaseURLError(
            f"invalid database URL '{mask_password(text)}': {hint}"
        ) from None

    backend = url.get_backend_name()
    if backend in ("postgresql", "postgres"):
        # Any PostgreSQL driver name a team already uses (asyncpg, psycopg2)
        # maps to psycopg 3, the one cronledger installs.
        url = url.set(drivername="postgresql+psycopg")
        if not url.database:
            raise InvalidDatabaseURLError(
                f"invalid database URL '{url.render_as_string(hide_password=True)}': "
                f"it names no database; {URL_HELP}"
            )
        return url

    if backend == "sqlite":
        if not url.database or url.database == ":memory:":
            raise InvalidDatabaseURLError(
                f"invalid database URL '{text}': an in-memory SQLite database keeps no "
                "runs after the process exits; name a file, such as sqlite:///cronledger.db"
            )
        if url.database.startswith("file:"):
            raise InvalidDatabaseURLError(
                f"invalid database URL '{text}': URI-style SQLite names are not supported; "
                "name a file, such as sqlite:///cronledger.db"
            )
        path = Path(url.database).expanduser()
        if not path.is_absolute():
            # Pin relative paths now, so a later chdir in the job does not
            # make the next write land in another file.
            path = Path.cwd() / path
        if not path.parent.is_dir():
            raise InvalidDatabaseURLError(
                f"invalid database URL '{text}': the directory {path.parent} does not exist; "
                "create it or point the URL at an existing directory"
            )
        return url.set(drivername="sqlite+pysqlite", database=str(path))

    raise InvalidDatabaseURLError(
        f"unsupported database URL '{mask_password(text)}': cronledger stores runs in "
        f"PostgreSQL or SQLite; {URL_HELP}"
    )


def display_url(url: URL) -> str:
    """Render ``url`` for messages and logs, never with its password.

    The driver cronledger chose (``+psycopg``, ``+pysqlite``) is left out, so
    the URL reads as the user wrote it.
    """
    return url.set(drivername=url.get_backend_name()).render_as_string(hide_password=True)
