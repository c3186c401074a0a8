"""The pieces every subcommand shares: global options, config file, database and errors."""

from __future__ import annotations

import functools
import logging
import os
import re
import sys
import tomllib
from pathlib import Path
from typing import Any

import click
from sqlalchemy import URL, Engine
from sqlalchemy.exc import SQLAlchemyError

from cronledger.errors import InvalidDatabaseURLError
from cronledger.recorder import Recorder, get_recorder, utc_now
from cronledger.settings import Config, ConfigError, load_config
from cronledger.spool import ENV_SPOOL_DIR
from cronledger.store import migrate
from cronledger.store.engine import get_engine
from cronledger.store.services import sync_services
from cronledger.store.urls import (
    ENV_DATABASE_URL,
    display_url,
    mask_password,
    parse_database_url,
    resolve_database_url,
)

log = logging.getLogger("cronledger")

ENV_CONFIG = "CRONLEDGER_CONFIG"
DEFAULT_CONFIG_FILE = "cronledger.toml"

DATABASE_URL_HELP = (
    "Database to record runs in: postgresql://USER:PASSWORD@HOST:PORT/DB or "
    f"sqlite:///PATH. Default: ${ENV_DATABASE_URL}, else database_url in the config "
    "file, else ./cronledger.db."
)
SPOOL_DIR_HELP = (
    "Directory where run events wait while the database is unreachable. "
    f"Default: ${ENV_SPOOL_DIR}, else ~/.local/state/cronledger/spool."
)


CONFIG_HELP = (
    "Config file that declares the services. Default: $CRONLEDGER_CONFIG, else "
    "./cronledger.toml when it exists."
)


class Settings:
    """Options shared by every subcommand."""

    def __init__(
        self, database_url: str | None, spool_dir: str | None, config_path: str | None
    ) -> None:
        self._database_url = database_url
        self.spool_dir = spool_dir
        self._config_path = config_path
        self._config: Config | None = None
        self._config_loaded = False

    @property
    def config_path(self) -> Path | None:
        """The config file to read, or None when none was named and none exists."""
        if self._config_path:
            return Path(self._config_path)
        from_env = os.environ.get(ENV_CONFIG, "").strip()
        if from_env:
            return Path(from_env)
        default = Path(DEFAULT_CONFIG_FILE)
        return default if default.exists() else None

    def config(self) -> Config | None:
        """Load the config file once; raises ConfigError for an invalid one."""
        if not self._config_loaded:
            path = self.config_path
            self._config = load_config(path) if path is not None else None
            self._config_loaded = True
        return self._config

    @functools.cached_property
    def database_url(self) -> str | None:
        """The URL from the option, the environment, or the config file, in that order.

        Worked out once, so a config file's problem is reported once.
        """
        if self._database_url or os.environ.get(ENV_DATABASE_URL, "").strip():
            return self._database_url
        try:
            config = self.config()
        except ConfigError as error:
            # Recording a run must not depend on a valid config file, but a
            # mistake in a service table must not send runs elsewhere either:
            # the file's database_url is used whenever the TOML parses.
            fallback = _raw_database_url(self.config_path)
            where = mask_password(fallback or resolve_database_url(None))
            if fallback is None:
                where = f"the default database {where}"
            problems = str(error).splitlines()
            if len(problems) > 1:
                more = len(problems) - 1
                noun = "problem" if more == 1 else "problems"
                where += f" ({more} more {noun}: 'cronledger services sync' lists all)"
            log.warning("%s; using %s", problems[0], where)
            return fallback
        return config.database_url if config is not None else None


def _raw_database_url(path: Path | None) -> str | None:
    """Return the top-level database_url of a config file that may be invalid."""
    if path is None:
        return None
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return None
    value = document.get("database_url")
    return value if isinstance(value, str) and value.strip() else None


def configure_logging(verbose: int) -> None:
    level = logging.WARNING - 10 * min(verbose, 2)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("cronledger: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Alembic reports every step at INFO; keep it for -vv.
    logging.getLogger("alembic").setLevel(logging.WARNING if verbose < 2 else logging.INFO)
    # Apprise logs each failed send, which cronledger reports itself with
    # the channel; keep Apprise's own lines for -vv.
    apprise_log = logging.getLogger("apprise")
    apprise_log.propagate = verbose >= 2
    if not apprise_log.handlers:
        apprise_log.addHandler(logging.NullHandler())


def fail(message: str, code: int = 1) -> None:
    click.echo(f"cronledger: error: {message}", err=True)
    sys.exit(code)


def sync_config(settings: Settings, engine: Engine, *, exit_on_error: bool = True) -> None:
    """Sync the config file's services, if there is a config file."""
    try:
        config = settings.config()
    except ConfigError as error:
        if exit_on_error:
            fail(str(error), 2)
        # A bad edit while running keeps the services as they were.
        log.error("config not reloaded, services unchanged: %s", error)
        return
    if config is None:
        return
    try:
        result = sync_services(engine, config, utc_now())
    except SQLAlchemyError as error:
        log.warning("services not synced from %s: %s", config.path, str(error).splitlines()[0])
        return
    log.info(
        "synced %s: %d added, %d updated",
        config.path,
        len(result.added),
        len(result.updated),
    )


def config_or_fail(settings: Settings, *, required: bool = False) -> Config | None:
    try:
        config = settings.config()
    except ConfigError as error:
        fail(str(error), 2)
    if config is None and required:
        fail(
            f"no config file: create {DEFAULT_CONFIG_FILE} or name one with --config PATH "
            f"(or ${ENV_CONFIG})",
            2,
        )
    return config


def new_sqlite_file(url: URL) -> Path | None:
    """Return the SQLite file ``url`` names if it does not exist yet, else None."""
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    path = Path(url.database).resolve()
    return None if path.exists() else path


def engine_or_fail(settings: Settings, *, existing: bool = False) -> Engine:
    """Return the engine with the schema current, or exit with the reason.

    ``existing``: a command that only reads fails on a SQLite file that does
    not exist, instead of creating it and reporting an empty database, which
    would hide a mistyped path.
    """
    named = settings.config_path
    if named is not None and not named.exists():
        # Only ``run`` goes on without it, so that the job still runs.
        # Elsewhere the default database would pass for the one the file names.
        fail(f"config file {named} not found: check --config or ${ENV_CONFIG}", 2)
    url = url_or_fail(settings)
    missing = new_sqlite_file(url) if existing else None
    if missing is not None:
        fail(
            f"no database at {missing}: check --database-url or "
            "$CRONLEDGER_DATABASE_URL, or record a first run with "
            "'cronledger run NAME -- COMMAND'"
        )
    engine = get_engine(url)
    try:
        migrate.ensure_schema(engine)
    except SQLAlchemyError as error:
        fail_unreachable(display_url(url), error)
    return engine


def url_or_fail(settings: Settings) -> Any:
    try:
        return parse_database_url(resolve_database_url(settings.database_url))
    except InvalidDatabaseURLError as error:
        fail(str(error), 2)


def recorder_or_fail(settings: Settings) -> Recorder:
    try:
        return get_recorder(settings.database_url, settings.spool_dir)
    except InvalidDatabaseURLError as error:
        fail(str(error), 2)
        raise


def fail_unreachable(label: str, error: SQLAlchemyError) -> None:
    reason = str(getattr(error, "orig", None) or error).strip().splitlines()
    first = reason[0] if reason else type(error).__name__
    fix = "Check that the server is running and that the URL, user and password are right."
    if re.search(r'database ".*" does not exist', first):
        # The server replied, so only the database is missing.
        fix = "Create it (CREATE DATABASE, or createdb), or correct the name in the URL."
    fail(f"cannot use the database {label}: {first}. {fix}")
