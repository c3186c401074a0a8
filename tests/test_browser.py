"""The dashboard in real Chromium: counts, a failed run, pause and resume, login.

Debian's chromium (/usr/bin/chromium) driven by Playwright; Playwright's own
browser downloads are never used. Screenshots of each page go to
test-artifacts/. Without the browser the test is skipped, except under
CI=true, where it fails.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.commands import CRONLEDGER, run_cli
from tests.web_seed import HOSTILE_ERROR, Seeded, counts_in_database, seed_runs

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
PASSWORD = "correct horse battery"

playwright_sync = pytest.importorskip("playwright.sync_api")


def require_browser() -> None:
    if CHROMIUM.exists():
        return
    message = f"{CHROMIUM} is missing: apt-get install -y chromium"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message + " (CI=true: browser tests must run)")
    pytest.skip(message)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def live_server(database_url: str, tmp_path: Path) -> Iterator[str]:
    """Start ``cronledger serve`` as a user would, on a free loopback port."""
    port = free_port()
    log_path = tmp_path / "serve.log"
    with log_path.open("w") as log_file:
        process = subprocess.Popen(
            [CRONLEDGER, "--database-url", database_url, "serve", "--port", str(port)],
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"cronledger serve did not start: {log_path.read_text()}")
            time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def seeded(database_url: str) -> Seeded:
    # Before the browser starts: Playwright's sync API runs an event loop
    # in this thread, and the seed uses asyncio.run.
    return seed_runs(database_url)


@pytest.fixture
def page(live_server: str, seeded: Seeded) -> Iterator[object]:
    require_browser()
    ARTIFACTS.mkdir(exist_ok=True)
    with playwright_sync.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu"]
        )
        context = browser.new_context(base_url=live_server, timezone_id="Europe/Berlin")
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))

        def on_console(message: object) -> None:
            text = getattr(message, "text", "")
            # The failed login returns 401 on purpose, and Chromium logs it.
            if getattr(message, "type", "") == "error" and "status of 401" not in text:
                errors.append(text)

        page.on("console", on_console)
        yield page
        browser.close()
        assert errors == [], f"the browser reported errors: {errors}"


@pytest.mark.slow
def test_dashboard_in_chromium(
    page: object, seeded: Seeded, database_url: str, live_server: str
) -> None:
    from playwright.sync_api import Page, expect

    assert isinstance(page, Page)
    expected = counts_in_database(database_url)
    name = "sqlite" if database_url.startswith("sqlite") else "postgresql"

    # Overview: each displayed count equals the database's.
    page.goto("/?window=all")
    for service, counts in expected.items():
        row = page.locator(f'tr[data-service="{service}"]')
        for field in ("total", "completed", "failed", "timed_out", "items_processed"):
            cell = row.locator(f'td[data-field="{field}"]')
            assert cell.inner_text() == str(counts[field]), f"{service} {field}"
    # The script ran under the CSP: times are in the viewer's zone, not UTC text.
    first_time = page.locator("tr[data-service='flow-sync'] time").first
    expect(first_time).not_to_contain_text("UTC")
    page.screenshot(path=ARTIFACTS / f"overview-{name}.png", full_page=True)

    # Filter by state and search by name.
    page.select_option("#state-filter", "failing")
    expect(page.locator('tr[data-service="api-key-sync"]')).to_be_hidden()
    expect(page.locator('tr[data-service="flow-sync"]')).to_be_visible()
    page.select_option("#state-filter", "")
    page.fill("#search", "payment")
    expect(page.locator('tr[data-service="flow-sync"]')).to_be_hidden()
    expect(page.locator('tr[data-service="payment-checker"]')).to_be_visible()
    page.fill("#search", "")

    # A service, then its failed run and the error it recorded.
    page.click('tr[data-service="flow-sync"] td.name a')
    expect(page.get_by_test_id("service-name")).to_have_text("flow-sync")
    page.screenshot(path=ARTIFACTS / f"service-{name}.png", full_page=True)
    page.click(f'tr[data-run="{seeded.failed_run_id}"] a')
    expect(page.get_by_test_id("run-status")).to_have_text("failed")
    expect(page.get_by_test_id("error-message")).to_contain_text(HOSTILE_ERROR)
    assert page.evaluate("window.hacked") is None, "the error message ran as script"
    page.screenshot(path=ARTIFACTS / f"run-{name}.png", full_page=True)

    # Pause and resume.
    page.goto("/services/flow-sync")
    page.get_by_test_id("pause").click()
    expect(page.get_by_test_id("paused")).to_have_text("yes")
    expect(page.locator(".toolbar .badge")).to_have_text("paused")
    page.screenshot(path=ARTIFACTS / f"paused-{name}.png", full_page=True)
    page.get_by_test_id("resume").click()
    expect(page.get_by_test_id("paused")).to_have_text("no")

    # Once a user exists, a login is needed; then log out.
    added = subprocess.run(
        [CRONLEDGER, "--database-url", database_url, "users", "add", "ops", "--role", "admin"],
        input=PASSWORD + "\n",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert added.returncode == 0, added.stderr
    page.goto("/services/flow-sync")
    expect(page).to_have_url(f"{live_server}/login?next=%2Fservices%2Fflow-sync")
    page.fill("input[name=username]", "ops")
    page.fill("input[name=password]", "wrong password")
    page.click("button[type=submit]")
    expect(page.locator("p.error")).to_have_text("Wrong user name or password.")
    page.fill("input[name=username]", "ops")
    page.fill("input[name=password]", PASSWORD)
    page.screenshot(path=ARTIFACTS / f"login-{name}.png", full_page=True)
    page.click("button[type=submit]")
    expect(page.get_by_test_id("service-name")).to_have_text("flow-sync")
    expect(page.get_by_test_id("who")).to_contain_text("ops (admin)")
    page.get_by_test_id("logout").click()
    expect(page).to_have_url(f"{live_server}/login")
    page.goto("/")
    expect(page).to_have_url(f"{live_server}/login?next=%2F")


def test_cli_is_installed() -> None:
    assert run_cli("serve", "--help").returncode == 0
