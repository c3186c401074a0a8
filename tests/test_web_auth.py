"""Logins, sessions, roles, tokens and the address guard of the dashboard."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable

import httpx
import pytest
from click.testing import Result
from sqlalchemy import select

from cronledger.errors import InvalidValueError
from cronledger.recorder import utc_now
from cronledger.settings import ServerSettings
from cronledger.store.engine import get_engine
from cronledger.store.migrate import ensure_schema
from cronledger.store.tables import cron_api_tokens, cron_users
from cronledger.web import DashboardOptions, create_app, is_loopback_host
from cronledger.web.auth import add_user, delete_user
from cronledger.web.commands import UnsafeAddressError, build_server
from tests.web_seed import seed_runs

PASSWORD = "correct horse battery"


@pytest.fixture
def seeded(sqlite_url: str) -> None:
    seed_runs(sqlite_url)


@pytest.fixture
async def client(sqlite_url: str, seeded: None) -> AsyncIterator[httpx.AsyncClient]:
    engine = get_engine(sqlite_url)
    ensure_schema(engine)
    add_user(engine, "ops", "admin", PASSWORD, utc_now())
    add_user(engine, "viewer", "reader", PASSWORD, utc_now())
    app = create_app(engine, DashboardOptions(overview_max_age=0))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1"
    ) as client:
        yield client


async def log_in(client: httpx.AsyncClient, name: str, password: str) -> httpx.Response:
    page = (await client.get("/login")).text
    token = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert token, "no CSRF token on the login page"
    return await client.post(
        "/login",
        data={"username": name, "password": password, "csrf_token": token.group(1), "next": "/"},
    )


async def test_pages_redirect_to_login(client: httpx.AsyncClient) -> None:
    response = await client.get("/services/flow-sync", params={"window": "7d"})

    assert response.status_code == 303
    assert response.headers["location"] == "/login?next=%2Fservices%2Fflow-sync%3Fwindow%3D7d"


async def test_wrong_password_rejected(client: httpx.AsyncClient) -> None:
    response = await log_in(client, "ops", "wrong password")

    assert response.status_code == 401
    assert "Wrong user name or password." in response.text
    assert (await client.get("/")).status_code == 303


async def test_unknown_user_rejected(client: httpx.AsyncClient) -> None:
    response = await log_in(client, "nobody", PASSWORD)

    assert response.status_code == 401


async def test_login_sets_safe_cookie(client: httpx.AsyncClient) -> None:
    response = await log_in(client, "ops", PASSWORD)

    cookie = response.headers["set-cookie"].lower()
    assert response.status_code == 303
    assert "httponly" in cookie
    assert "samesite=lax" in cookie
    assert "secure" not in cookie, "Secure on plain HTTP would drop the cookie"
    assert PASSWORD not in response.headers["set-cookie"]


async def test_login_then_logout(client: httpx.AsyncClient) -> None:
    await log_in(client, "ops", PASSWORD)
    page = (await client.get("/")).text
    token = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert token

    assert 'data-testid="who">ops (admin)' in page
    logout = await client.post("/logout", data={"csrf_token": token.group(1)})
    assert logout.status_code == 303
    assert (await client.get("/")).status_code == 303


async def test_login_needs_csrf(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/login", data={"username": "ops", "password": PASSWORD, "csrf_token": "x"}
    )

    assert response.status_code == 403


async def test_reader_cannot_pause(client: httpx.AsyncClient) -> None:
    await log_in(client, "viewer", PASSWORD)
    page = (await client.get("/services/flow-sync")).text
    token = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert token

    response = await client.post("/services/flow-sync/pause", data={"csrf_token": token.group(1)})

    assert 'data-testid="pause"' not in page, "a reader was offered the pause button"
    assert response.status_code == 403


async def test_session_reads_api(client: httpx.AsyncClient) -> None:
    await log_in(client, "viewer", PASSWORD)

    response = await client.get("/api/v1/services")

    assert response.status_code == 200


async def test_deleted_user_loses_session(client: httpx.AsyncClient, sqlite_url: str) -> None:
    await log_in(client, "viewer", PASSWORD)
    delete_user(get_engine(sqlite_url), "viewer")

    assert (await client.get("/")).status_code == 303


async def test_next_stays_on_server(client: httpx.AsyncClient) -> None:
    page = (await client.get("/login", params={"next": "//elsewhere.example/x"})).text

    assert 'name="next" value="/"' in page


def test_secure_cookie_behind_tls(sqlite_url: str) -> None:
    engine = get_engine(sqlite_url)
    ensure_schema(engine)
    settings = ServerSettings(public_url="https://cron.example.org")
    server = build_server(engine, settings, host="127.0.0.1", port=0)
    try:
        options = server.config.app.state.options  # type: ignore[union-attr]
        assert options.secure_cookies is True
    finally:
        server.socket.close()


def test_password_stored_hashed(sqlite_url: str) -> None:
    engine = get_engine(sqlite_url)
    ensure_schema(engine)
    add_user(engine, "ops", "admin", PASSWORD, utc_now())

    with engine.connect() as connection:
        stored = connection.execute(select(cron_users.c.password_hash)).scalar_one()

    assert stored.startswith("$argon2id$")
    assert PASSWORD not in stored


def test_short_password_rejected(sqlite_url: str) -> None:
    engine = get_engine(sqlite_url)
    ensure_schema(engine)

    with pytest.raises(InvalidValueError, match="at least 8"):
        add_user(engine, "ops", "admin", "short", utc_now())


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.0.0.2", True),
        ("localhost", True),
        ("::1", True),
        ("[::1]", True),
        ("0.0.0.0", False),
        ("::", False),
        ("cron.example.org", False),
    ],
)
def test_loopback_detection(host: str, loopback: bool) -> None:
    assert is_loopback_host(host) is loopback


def test_public_address_refused(sqlite_url: str) -> None:
    engine = get_engine(sqlite_url)
    ensure_schema(engine)

    with pytest.raises(UnsafeAddressError, match="--insecure-no-auth-on-public-address"):
        build_server(engine, ServerSettings(host="0.0.0.0", port=0))


def test_cli_users_and_tokens(invoke: Callable[..., Result], sqlite_url: str) -> None:
    from click.testing import CliRunner

    from cronledger.cli import cli

    runner = CliRunner()
    added = runner.invoke(
        cli,
        ["--database-url", sqlite_url, "users", "add", "ops", "--role", "admin"],
        input=PASSWORD + "\n",
    )
    listed = invoke("--database-url", sqlite_url, "users", "list")
    created = invoke("--database-url", sqlite_url, "tokens", "create", "grafana")
    tokens = invoke("--database-url", sqlite_url, "tokens", "list")
    duplicate = invoke("--database-url", sqlite_url, "tokens", "create", "grafana")
    revoked = invoke("--database-url", sqlite_url, "tokens", "revoke", "grafana")

    assert added.exit_code == 0, added.output
    assert "ops  admin  last login: never" in listed.output
    assert created.exit_code == 0, created.output
    token = created.stdout.splitlines()[0]
    assert token.startswith("clt_")
    assert token not in tokens.output
    assert "grafana  reader" in tokens.output
    assert duplicate.exit_code == 2
    assert "exists already" in duplicate.output
    assert revoked.exit_code == 0
    with get_engine(sqlite_url).connect() as connection:
        assert connection.execute(select(cron_api_tokens)).all() == []


def test_cli_short_password_fails(sqlite_url: str) -> None:
    from click.testing import CliRunner

    from cronledger.cli import cli

    result = CliRunner().invoke(
        cli, ["--database-url", sqlite_url, "users", "add", "ops"], input="short\n"
    )

    assert result.exit_code == 2
    assert "too short" in result.output
