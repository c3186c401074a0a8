"""Tests of the cronledger command line: help, usage errors, spool, version.

Every test runs the installed ``cronledger`` console script as a subprocess,
the way cron and operators run it.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import click
import pytest
from sqlalchemy.engine import make_url

import cronledger
from cronledger.cli import cli
from cronledger.validation import MAX_SERVICE_NAME_LENGTH
from tests.commands import run_cli

pytestmark = pytest.mark.timeout(120)


def command_paths(group: click.Group = cli, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """List the argument paths of the group and of every command below it."""
    paths = [prefix]
    for name, command in sorted(group.commands.items()):
        if isinstance(command, click.Group):
            paths.extend(command_paths(command, (*prefix, name)))
        else:
            paths.append((*prefix, name))
    return paths


def find_command(path: tuple[str, ...]) -> click.Command:
    command: click.Command = cli
    for name in path:
        assert isinstance(command, click.Group), f"{command.name} has no subcommands"
        command = command.commands[name]
    return command


def squeeze(text: str) -> str:
    """Remove all whitespace, because click rewraps help text to the terminal width."""
    return "".join(text.split())


@pytest.mark.parametrize("path", command_paths(), ids=lambda path: " ".join(("cronledger", *path)))
def test_help_describes_every_option(path: tuple[str, ...], tmp_path: Path) -> None:
    command = find_command(path)
    result = run_cli(*path, "--help", cwd=tmp_path)

    assert result.returncode == 0, f"--help exited {result.returncode}: {result.stderr}"
    assert result.stdout.startswith("Usage: cronledger"), f"no usage line:\n{result.stdout}"
    assert result.stderr == "", f"--help wrote to stderr: {result.stderr}"
    assert command.help, f"{' '.join(path) or 'cronledger'} has no description"
    first_line = command.help.strip().splitlines()[0]
    assert squeeze(first_line) in squeeze(result.stdout), f"description missing: {first_line}"

    for param in command.params:
        if isinstance(param, click.Option):
            for flag in (*param.opts, *param.secondary_opts):
                assert flag in result.stdout, f"option {flag} missing from --help"
            assert param.help, f"option {param.opts[0]} has no help text"
            assert squeeze(param.help) in squeeze(result.stdout), (
                f"help text of {param.opts[0]} missing from --help"
            )
        elif isinstance(param, click.Argument):
            assert param.make_metavar(click.Context(command)) in result.stdout, (
                f"argument {param.name} missing from the usage line"
            )

    if isinstance(command, click.Group):
        for name in command.commands:
            assert name in result.stdout, f"subcommand {name} missing from --help"


def test_short_help_option_works(tmp_path: Path) -> None:
    result = run_cli("run", "-h", cwd=tmp_path)

    assert result.returncode == 0, f"-h exited {result.returncode}: {result.stderr}"
    assert "Usage: cronledger run" in result.stdout, f"unexpected output:\n{result.stdout}"


def test_version_matches_package(tmp_path: Path) -> None:
    result = run_cli("--version", cwd=tmp_path)

    assert result.returncode == 0, f"--version exited {result.returncode}: {result.stderr}"
    assert result.stdout.strip() == f"cronledger, version {cronledger.__version__}", (
        f"unexpected output: {result.stdout!r}"
    )
    assert cronledger.__version__ == importlib.metadata.version("cronledger"), (
        "__version__ differs from the installed distribution's version"
    )


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ((), "Missing argument 'NAME'"),
        (("nightly",), "Missing argument 'COMMAND...'"),
        (("nightly", "--"), "no command given"),
    ],
    ids=["no name", "no command", "only separator"],
)
def test_run_without_command_rejected(
    args: tuple[str, ...], expected: str, tmp_path: Path, sqlite_url: str
) -> None:
    result = run_cli("--database-url", sqlite_url, "run", *args, cwd=tmp_path)

    assert result.returncode == 2, f"exit code {result.returncode}, stderr: {result.stderr}"
    assert expected in result.stderr, f"stderr lacks {expected!r}: {result.stderr}"
    assert "Traceback" not in result.stderr, f"traceback on a usage error:\n{result.stderr}"


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("", ["invalid service name ''"]),
        (" ", ["invalid service name ' '"]),
        (
            "n" * (MAX_SERVICE_NAME_LENGTH + 1),
            [
                "invalid service name 'nnnnnnnnnnnnnnnnnnnnnnnnnnnnnn",
                f"{MAX_SERVICE_NAME_LENGTH + 1} characters",
                f"{MAX_SERVICE_NAME_LENGTH} characters",
            ],
        ),
    ],
    ids=["empty", "blank", "too long"],
)
def test_run_invalid_name_not_recorded(
    name: str, expected: list[str], tmp_path: Path, sqlite_url: str
) -> None:
    # A monitoring mistake must not stop the job: the command runs, its exit
    # status passes through, and nothing is recorded.
    marker = tmp_path / "command-ran"
    result = run_cli(
        "--database-url",
        sqlite_url,
        "run",
        name,
        "--",
        "sh",
        "-c",
        f"touch {marker}; exit 3",
        cwd=tmp_path,
    )

    assert result.returncode == 3, f"exit code {result.returncode}, stderr: {result.stderr}"
    for fragment in expected:
        assert fragment in result.stderr, f"stderr lacks {fragment!r}: {result.stderr}"
    assert "the command runs but is not recorded" in result.stderr, result.stderr
    assert marker.exists(), "the command did not run"
    assert not Path(sqlite_url.removeprefix("sqlite:///")).exists(), (
        "the database was created although the service name is invalid"
    )


def test_run_longest_name_accepted(tmp_path: Path, sqlite_url: str) -> None:
    name = "n" * MAX_SERVICE_NAME_LENGTH
    result = run_cli("--database-url", sqlite_url, "run", name, "--", "true", cwd=tmp_path)

    assert result.returncode == 0, f"exit code {result.returncode}, stderr: {result.stderr}"


def test_named_config_missing_rejected(tmp_path: Path) -> None:
    # Reading the default database instead would show the wrong runs.
    result = run_cli("--config", "typo.toml", "status", cwd=tmp_path)

    assert result.returncode == 2, f"exit code {result.returncode}, stderr: {result.stderr}"
    assert "config file typo.toml not found" in result.stderr, result.stderr
    assert not (tmp_path / "cronledger.db").exists(), "a default database was created"


def test_invalid_config_reported_once(tmp_path: Path) -> None:
    (tmp_path / "cronledger.toml").write_text(
        '[services.a]\nschedule = "61 * * * *"\n[services.b]\ntimezone = "Mars/Base"\n'
    )

    result = run_cli("status", cwd=tmp_path)

    default = tmp_path / "cronledger.db"
    assert result.stderr.count("minute 61 is out of range") == 1, result.stderr
    assert f"using the default database sqlite:///{default}" in result.stderr, result.stderr
    assert "1 more problem: 'cronledger services sync' lists all" in result.stderr, result.stderr


def test_file_path_as_url_gets_sqlite_hint(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"

    result = run_cli("--database-url", str(path), "status", cwd=tmp_path)

    assert result.returncode == 2, f"exit code {result.returncode}, stderr: {result.stderr}"
    assert f"write sqlite:///{path}" in result.stderr, result.stderr


def test_missing_postgres_database_named(tmp_path: Path, postgres_server_url: str) -> None:
    url = make_url(postgres_server_url).set(database="cronledger_no_such_db")
    url_text = url.render_as_string(hide_password=False)

    result = run_cli("--database-url", url_text, "status", cwd=tmp_path)

    assert result.returncode == 1, f"exit code {result.returncode}, stderr: {result.stderr}"
    assert '"cronledger_no_such_db" does not exist' in result.stderr, result.stderr
    assert "Create it (CREATE DATABASE, or createdb)" in result.stderr, result.stderr


def test_run_with_missing_config_still_runs(tmp_path: Path) -> None:
    # A monitoring mistake never stops the job: it runs, with a warning.
    result = run_cli("--config", "typo.toml", "run", "job", "--", "true", cwd=tmp_path)

    assert result.returncode == 0, f"exit code {result.returncode}, stderr: {result.stderr}"
    assert "typo.toml not found" in result.stderr, result.stderr


@pytest.mark.parametrize("subcommand", ["status", "flush"])
def test_empty_spool_nothing_to_do(subcommand: str, tmp_path: Path, sqlite_url: str) -> None:
    result = run_cli("--database-url", sqlite_url, "spool", subcommand, cwd=tmp_path)

    assert result.returncode == 0, f"exit code {result.returncode}, stderr: {result.stderr}"
    assert "nothing to do" in result.stdout, f"unexpected output: {result.stdout!r}"
    assert result.stderr == "", f"unexpected stderr: {result.stderr!r}"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("not-a-url", "'not-a-url'"),
        (
            "postgresql://cron:secret@127.0.0.1:notaport/ledger",
            "postgresql://cron:***@127.0.0.1:notaport/ledger",
        ),
        ("mysql://cron:secret@127.0.0.1/ledger", "mysql://cron:***@127.0.0.1/ledger"),
        ("cron:secret@127.0.0.1/ledger", "'cron:***@127.0.0.1/ledger'"),
    ],
    ids=["no scheme", "port not a number", "unsupported database", "credentials without scheme"],
)
def test_db_upgrade_invalid_url_rejected(url: str, shown: str, tmp_path: Path) -> None:
    result = run_cli("--database-url", url, "db", "upgrade", cwd=tmp_path)

    assert result.returncode == 2, f"exit code {result.returncode}, stderr: {result.stderr}"
    assert shown in result.stderr, f"stderr does not name the URL as {shown!r}: {result.stderr}"
    assert "secret" not in result.stderr, f"the password leaked: {result.stderr}"
    assert "Traceback" not in result.stderr, f"traceback on an invalid URL:\n{result.stderr}"
