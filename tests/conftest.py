"""Fixtures shared by the whole suite.

``database_url`` runs a test once on SQLite and once on PostgreSQL, each
with a database of its own. PostgreSQL is the server named by
``CRONLEDGER_TEST_POSTGRES_URL`` (default: the local test database). When
it is unreachable the PostgreSQL cases are skipped, except under ``CI=true``,
where they fail.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner, Result
from sqlalchemy.engine import make_url

from cronledger.cli import cli
from cronledger.recorder import forget_recorders
from cronledger.store.engine import dispose_engines
from cronledger.store.migrate import forget_schema_checks
from tests.pgserver import PostgresServer

DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"


def postgres_admin_url() -> str:
    return os.environ.get("CRONLEDGER_TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL)


@pytest.fixture(scope="session")
def postgres_server_url() -> str:
    """Return the URL of the shared PostgreSQL server, or skip (fail in CI)."""
    url = postgres_admin_url()
    try:
        with psycopg.connect(url, connect_timeout=5):
            pass
    except psycopg.Error as error:
        message = f"PostgreSQL at {url} is unreachable: {error}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message + " (CI=true: PostgreSQL tests must run)")
        pytest.skip(message)
    return url


@pytest.fixture
def postgres_url(postgres_server_url: str) -> Iterator[str]:
    """Create an empty PostgreSQL database for one test and drop it after."""
    name = f"cronledger_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_server_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = make_url(postgres_server_url).set(database=name).render_as_string(hide_password=False)
    yield url
    dispose_engines()
    with psycopg.connect(postgres_server_url, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'cronledger.db'}"


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> str:
    """Run the test on each supported database, with a fresh database each time."""
    if request.param == "sqlite":
        return str(request.getfixturevalue("sqlite_url"))
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture(autouse=True)
def isolated_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Give each test its own spool and forget pooled engines afterwards."""
    spool = tmp_path / "spool"
    monkeypatch.setenv("CRONLEDGER_SPOOL_DIR", str(spool))
    monkeypatch.delenv("CRONLEDGER_DATABASE_URL", raising=False)
    yield spool
    forget_recorders()
    forget_schema_checks()
    dispose_engines()


@pytest.fixture
def private_postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL server of the test's own, which the test may stop and start."""
    # Not under pytest's tmp_path: the postgres user cannot enter root's
    # private pytest directory.
    directory = Path(tempfile.mkdtemp(prefix="cronledger-pg-"))
    server = PostgresServer(directory)
    server.init()
    server.start()
    yield server
    dispose_engines()
    try:
        server.stop("immediate")
    except subprocess.CalledProcessError:
        pass  # the test left it stopped
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def invoke() -> Iterator[Callable[..., Result]]:
    """Run the CLI in process, and put back the root logger it reconfigures."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level

    def run(*args: str) -> Result:
        return CliRunner().invoke(cli, list(args))

    yield run
    root.handlers[:] = handlers
    root.setLevel(level)
