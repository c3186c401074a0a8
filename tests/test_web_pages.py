"""Dashboard pages and the in-process server, through the ASGI app and uvicorn."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sqlalchemy import Engine, text

from cronledger.alerts.config import Channel
from cronledger.alerts.messages import Message
from cronledger.alerts.outbox import claim, due_ids, enqueue, record_outcome
from cronledger.bucket_cache import cache_for, read_states
from cronledger.recorder import utc_now
from cronledger.scheduler.claims import Fire, claim_fires
from cronledger.settings import JobSettings, ServerSettings
from cronledger.stats import cache_key, split_window
from cronledger.store.engine import get_engine
from cronledger.store.migrate import ensure_schema
from cronledger.web import DashboardOptions, DashboardServer, create_app
from cronledger.web.commands import build_server
from cronledger.web.data import OverviewCache
from tests.commands import run_cli
from tests.web_seed import Seeded, counts_in_database, seed_runs


def make_client(database_url: str) -> httpx.AsyncClient:
    engine = get_engine(database_url)
    ensure_schema(engine)
    app = create_app(engine, DashboardOptions(overview_max_age=0))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1")


@pytest.fixture
def seeded(database_url: str) -> Seeded:
    return seed_runs(database_url)


@pytest.fixture
async def client(database_url: str, seeded: Seeded) -> AsyncIterator[httpx.AsyncClient]:
    async with make_client(database_url) as client:
        yield client


def row_figures(page: str, service: str) -> dict[str, str]:
    """Return the data-field cells of one service's overview row."""
    match = re.search(rf'<tr data-service="{re.escape(service)}".*?</tr>', page, re.S)
    assert match, f"no row for {service}"
    return dict(re.findall(r'data-field="([a-z_0-9]+)">([^<]*)<', match.group(0)))


def csrf_of(page: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert match, "no CSRF token in the page"
    return match.group(1)


async def test_overview_counts_match(client: httpx.AsyncClient, database_url: str) -> None:
    expected = counts_in_database(database_url)

    response = await client.get("/", params={"window": "all"})

    assert response.status_code == 200
    for name, counts in expected.items():
        figures = row_figures(response.text, name)
        for field in ("total", "completed", "failed", "timed_out", "items_processed"):
            assert figures[field] == str(counts[field]), f"{name} {field}"


async def test_overview_row_details(client: httpx.AsyncClient) -> None:
    page = (await client.get("/")).text

    assert "API Key Sync" in page
    assert "<code>*/10 * * * *</code>" in page
    assert 'class="badge state-failing"' in page
    assert 'href="/runs/' in page, "no strip of recent runs"
    assert "<script>window.hacked" not in page, "an error message was not escaped"
    assert "&lt;script&gt;window.hacked" in page


async def test_fresh_install_shows_first_run(sqlite_url: str) -> None:
    async with make_client(sqlite_url) as client:
        page = (await client.get("/")).text

    assert 'data-testid="first-run"' in page
    assert "cronledger run hello -- echo hello" in page
    assert 'with track("flow-sync") as run:' in page


async def test_fragment_is_table_body(client: httpx.AsyncClient) -> None:
    response = await client.get("/fragments/overview", params={"window": "7d"})

    assert response.status_code == 200
    assert (
        response.text.lstrip().startswith("<tbody") or '<tbody id="overview-body"' in response.text
    )
    assert "<html" not in response.text


async def test_run_page_escapes_error(client: httpx.AsyncClient, seeded: Seeded) -> None:
    page = (await client.get(f"/runs/{seeded.failed_run_id}")).text

    assert "<script>window.hacked" not in page
    assert "&lt;script&gt;window.hacked = 1&lt;/script&gt; connection refused &amp; retried" in page
    for label in (
        "Started",
        "Finished",
        "Duration",
        "Items processed",
        "Host",
        "Process id",
        "Exit code",
    ):
        assert f"<dt>{label}</dt>" in page, label


async def test_run_page_folds_long_output(database_url: str) -> None:
    script = "for i in $(seq 1 40); do echo line $i; done; echo broken >&2; exit 3"
    result = run_cli("--database-url", database_url, "run", "noisy", "--", "sh", "-c", script)
    assert result.returncode == 3, result.stderr

    async with make_client(database_url) as client:
        runs = (await client.get("/api/v1/services/noisy/runs")).json()["runs"]
        page = (await client.get(f"/runs/{runs[0]['id']}")).text

    assert "<details><summary>Show the output" in page
    assert "line 40" in page
    assert "<dt>Exit code</dt><dd>3</dd>" in page


async def test_service_page_sections(client: httpx.AsyncClient) -> None:
    page = (await client.get("/services/payment-checker")).text

    assert '<svg viewBox="0 0 720 160"' in page, "no chart"
    assert 'class="bar completed"' in page
    assert "<h2>Health history</h2>" in page
    assert "stuck" in page
    assert "<h2>Declared settings</h2>" in page
    assert 'data-testid="pause"' in page


async def test_service_page_daily_chart(client: httpx.AsyncClient) -> None:
    page = (await client.get("/services/flow-sync", params={"chart": "30d"})).text

    assert "last 30 days, by day" in page
    assert 'class="bar failed"' in page


async def test_service_runs_filter(client: httpx.AsyncClient) -> None:
    page = (await client.get("/services/flow-sync", params={"status": "failed"})).text

    statuses = re.findall(r'<tr data-run="\d+" data-status="([a-z_]+)">', page)
    assert statuses == ["failed"]


async def test_service_missed_times(client: httpx.AsyncClient) -> None:
    page = (await client.get("/services/api-key-sync")).text

    section = page.split("<h2>Missed fire times</h2>", 1)[1]
    assert '<ul class="missed">' in section.split("</section>", 1)[0]


async def test_unknown_service_page_404(client: httpx.AsyncClient) -> None:
    response = await client.get("/services/not-there")

    assert response.status_code == 404
    assert "not-there" in response.text


async def test_pause_form_needs_csrf(client: httpx.AsyncClient) -> None:
    page = (await client.get("/services/flow-sync")).text
    token = csrf_of(page)

    forged = await client.post("/services/flow-sync/pause", data={"csrf_token": "forged"})
    paused = await client.post("/services/flow-sync/pause", data={"csrf_token": token})
    after_pause = (await client.get("/services/flow-sync")).text
    resumed = await client.post("/services/flow-sync/resume", data={"csrf_token": token})
    after_resume = (await client.get("/services/flow-sync")).text

    assert forged.status_code == 403
    assert paused.status_code == 303
    assert '<dd data-testid="paused">yes</dd>' in after_pause
    assert resumed.status_code == 303
    assert '<dd data-testid="paused">no</dd>' in after_resume


async def test_mark_failed_form(client: httpx.AsyncClient, seeded: Seeded) -> None:
    page = (await client.get(f"/runs/{seeded.open_run_id}")).text
    assert 'data-testid="mark-failed"' in page

    response = await client.post(
        f"/runs/{seeded.open_run_id}/mark-failed", data={"csrf_token": csrf_of(page)}
    )
    after = (await client.get(f"/runs/{seeded.open_run_id}")).text

    assert response.status_code == 303
    assert 'data-testid="run-status">failed<' in after
    assert 'data-testid="mark-failed"' not in after


def test_server_starts_and_stops(sqlite_url: str) -> None:
    engine = get_engine(sqlite_url)
    ensure_schema(engine)
    server = DashboardServer(create_app(engine), "127.0.0.1", 0)

    server.start()
    try:
        health = httpx.get(server.url + "/healthz", timeout=10)
        script = httpx.get(server.url + "/static/app.js", timeout=10)
    finally:
        server.stop()

    assert server.port > 0
    assert health.json() == {"status": "ok", "database": "ok"}
    assert "localizeTimes" in script.text
    with pytest.raises(httpx.ConnectError):
        httpx.get(server.url + "/healthz", timeout=5)


async def test_service_page_shows_skips_and_notifications(
    client: httpx.AsyncClient, database_url: str
) -> None:
    engine = get_engine(database_url)
    now = utc_now()
    fire_time = now.replace(microsecond=0) - timedelta(minutes=3)
    # The scheduler's own claim step, with a run of flow-sync still going here.
    claim_fires(
        engine,
        [Fire("flow-sync", fire_time)],
        {"flow-sync": JobSettings("flow-sync", command=("true",))},
        now,
        timedelta(seconds=10),
        {"flow-sync": 1},
    )
    channel = Channel("json://127.0.0.1:9/hook", "json://127.0.0.1:9/hook")
    with engine.begin() as connection:
        enqueue(
            connection,
            dedupe_key="page-test",
            kind="change",
            service_name="flow-sync",
            event_id=None,
            health_state="failing",
            channels=(channel,),
            message=Message("flow-sync is failing", "body", "failure"),
            now=now,
        )
    with engine.begin() as connection:
        (row_id,) = due_ids(connection, now, 10)
        assert claim(connection, row_id, "page-test", now, timedelta(minutes=2)) is not None
        record_outcome(
            connection, row_id, "page-test", status="failed", now=now, error="connection refused"
        )

    page = (await client.get("/services/flow-sync")).text

    skipped = page.split("<h2>Skipped fire times</h2>", 1)[1].split("</section>", 1)[0]
    assert '<ul class="skipped">' in skipped
    assert "the previous run was still running" in skipped
    sent = page.split("<h2>Notifications</h2>", 1)[1].split("</section>", 1)[0]
    assert '<tr data-outcome="failed">' in sent
    assert "json://127.0.0.1:9/hook" in sent
    assert "connection refused" in sent


def test_overview_cache_never_serves_twice_max_age(sqlite_url: str) -> None:
    engine = get_engine(sqlite_url)
    ensure_schema(engine)
    cache = OverviewCache(engine, max_age=0.2)
    first = cache.get("all")

    again = cache.get("all")
    time.sleep(0.5)  # an idle spell longer than twice max_age
    after_idle = cache.get("all")

    assert again is first, "a fresh entry was recomputed"
    assert after_idle is not first, "an entry older than twice max_age was served"
    assert after_idle.computed_at > first.computed_at


def insert_finished_run(engine: Engine, service: str, started_at: datetime) -> None:
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO cron_executions (service_name, execution_time, status,"
                " duration_ms, finished_at, run_key) VALUES (:service, :start, 'completed',"
                " 250, :start, :key)"
            ),
            {"service": service, "start": started_at, "key": uuid.uuid4().hex},
        )


def test_overview_reads_the_next_hour_ahead(postgres_url: str) -> None:
    # A sliding window's start passes an hour every hour, and its statistics
    # then get a new cache key. A background refresh shortly before reads
    # that key ahead, so the first refresh after the hour reads little.
    engine = get_engine(postgres_url)
    ensure_schema(engine)
    now = datetime(2026, 3, 8, 9, 59, 40, tzinfo=UTC)
    for hours in (1, 30, 100):
        insert_finished_run(engine, "nightly", now - timedelta(hours=hours))
    next_key = cache_key(split_window(datetime(2026, 3, 1, 10, 0, 1, tzinfo=UTC), None))

    def next_window_stale() -> list[str]:
        with engine.connect() as connection:
            versions = read_states(connection, None).versions
        return cache_for(engine).lookup(next_key, ("buckets", True), versions)[1]

    early = OverviewCache(engine, max_age=5, clock=lambda: now - timedelta(minutes=10))
    early.warm("7d")
    assert early.get("7d").statuses, "no service in the early snapshot"
    assert next_window_stale() == ["nightly"], "read ahead ten minutes before the hour"

    cache = OverviewCache(engine, max_age=5, clock=lambda: now)
    cache.warm("7d")
    deadline = time.monotonic() + 30
    while next_window_stale() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert next_window_stale() == [], "the window after the hour was not read ahead"


def test_server_reads_statistics_at_start(postgres_url: str) -> None:
    # The server reads the figures when it starts, so the first viewer's
    # request reads only what changed since. That request still computes
    # its own snapshot and shows a run recorded after the start.
    engine = get_engine(postgres_url)
    ensure_schema(engine)
    insert_finished_run(engine, "nightly", utc_now() - timedelta(hours=1))
    all_time = cache_key(split_window(None, None))

    def stale_services() -> list[str]:
        with engine.connect() as connection:
            versions = read_states(connection, None).versions
        return cache_for(engine).lookup(all_time, ("buckets", True), versions)[1]

    server = build_server(engine, ServerSettings(), host="127.0.0.1", port=0)
    try:
        deadline = time.monotonic() + 30
        while stale_services() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert stale_services() == [], "the all-time figures were not read at start"

        insert_finished_run(engine, "hourly", utc_now() - timedelta(minutes=5))
        cache = server.config.app.state.cache  # type: ignore[union-attr]
        names = [status.name for status in cache.get("all").statuses]
        assert names == ["hourly", "nightly"], f"first snapshot {names}"
    finally:
        server.socket.close()
