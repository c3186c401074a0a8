"""The JSON API, /metrics and /healthz, through the ASGI app on both databases."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text

import cronledger.web
from cronledger import IntervalSchedule, ServiceSettings, track
from cronledger.recorder import utc_now
from cronledger.store.engine import get_engine
from cronledger.store.migrate import ensure_schema
from cronledger.web import DashboardOptions, create_app
from cronledger.web.auth import add_user, create_token
from tests.web_seed import HOSTILE_ERROR, Seeded, counts_in_database, seed_runs

ORIGIN_FIELDS = {
    "name",
    "service",
    "schedule",
    "status",
    "total_executions",
    "successful_executions",
    "failed_executions",
    "total_items_processed",
    "avg_duration_ms",
    "last_execution",
    "next_run",
}


@pytest.fixture
def seeded(database_url: str) -> Seeded:
    return seed_runs(database_url)


@pytest.fixture
async def client(database_url: str, seeded: Seeded) -> AsyncIterator[httpx.AsyncClient]:
    engine = get_engine(database_url)
    ensure_schema(engine)
    app = create_app(engine, DashboardOptions(overview_max_age=0))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        yield client


async def test_services_match_database(client: httpx.AsyncClient, database_url: str) -> None:
    expected = counts_in_database(database_url)

    response = await client.get("/api/v1/services", params={"window": "all"})

    assert response.status_code == 200, response.text
    services = {item["name"]: item for item in response.json()["services"]}
    assert set(services) == set(expected), f"services: {sorted(services)}"
    for name, counts in expected.items():
        shown = services[name]
        assert shown["total"] == counts["total"], f"{name} total"
        assert shown["completed"] == counts["completed"], f"{name} completed"
        assert shown["failed"] == counts["failed"], f"{name} failed"
        assert shown["timed_out"] == counts["timed_out"], f"{name} timed out"
        assert shown["in_progress"] == counts["started"], f"{name} in progress"
        assert shown["items_processed"] == counts["items_processed"], f"{name} items"


async def test_services_carry_health(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/v1/services")

    services = {item["name"]: item for item in response.json()["services"]}
    assert services["flow-sync"]["health"]["state"] == "failing"
    assert HOSTILE_ERROR in services["flow-sync"]["health"]["reason"]
    assert services["payment-checker"]["health"]["state"] == "failing"
    assert services["api-key-sync"]["schedule"] == "*/10 * * * *"
    assert services["api-key-sync"]["schedule_description"], "schedule in words missing"
    assert services["api-key-sync"]["display_name"] == "API Key Sync"
    assert services["api-key-sync"]["health"]["next_expected"] is not None


async def test_window_excludes_older_runs(client: httpx.AsyncClient, database_url: str) -> None:
    # The trigger folds a start moved back in time into the older buckets.
    old = utc_now() - timedelta(days=3)
    with get_engine(database_url).begin() as connection:
        connection.execute(
            text(
                "UPDATE cron_executions SET execution_time = :old WHERE id = "
                "(SELECT MIN(id) FROM cron_executions WHERE service_name = 'flow-sync')"
            ),
            {"old": old if "postgresql" in database_url else old.strftime("%Y-%m-%d %H:%M:%S")},
        )

    day = await client.get("/api/v1/services/flow-sync", params={"window": "24h"})
    week = await client.get("/api/v1/services/flow-sync", params={"window": "7d"})

    assert day.json()["total"] == 4, day.text
    assert week.json()["total"] == 5, week.text


async def test_unknown_service_404(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/v1/services/no-such-job")

    assert response.status_code == 404
    assert "no-such-job" in response.json()["detail"]


async def test_invalid_window_422(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/v1/services", params={"window": "1y"})

    assert response.status_code == 422
    assert "window" in response.json()["detail"]


async def test_runs_paginate_and_filter(client: httpx.AsyncClient) -> None:
    first = await client.get("/api/v1/services/flow-sync/runs", params={"limit": 2})
    second = await client.get("/api/v1/services/flow-sync/runs", params={"limit": 2, "offset": 2})
    failed = await client.get("/api/v1/services/flow-sync/runs", params={"status": "failed"})

    first_ids = [run["id"] for run in first.json()["runs"]]
    second_ids = [run["id"] for run in second.json()["runs"]]
    assert len(first_ids) == 2
    assert len(second_ids) == 2
    assert not set(first_ids) & set(second_ids), "pages overlap"
    assert first_ids == sorted(first_ids, reverse=True), "not newest first"
    assert [run["status"] for run in failed.json()["runs"]] == ["failed"]
    assert failed.json()["runs"][0]["error_message"].startswith("RuntimeError: " + HOSTILE_ERROR)


async def test_runs_time_range(client: httpx.AsyncClient) -> None:
    future = (utc_now() + timedelta(days=1)).isoformat()
    past = (utc_now() - timedelta(days=1)).isoformat()

    none = await client.get("/api/v1/services/flow-sync/runs", params={"since": future})
    everything = await client.get(
        "/api/v1/services/flow-sync/runs", params={"since": past, "until": future}
    )
    naive = await client.get(
        "/api/v1/services/flow-sync/runs", params={"since": "2026-01-01T00:00:00"}
    )

    assert none.json()["runs"] == []
    assert len(everything.json()["runs"]) == 5
    assert naive.status_code == 422
    assert "time zone" in naive.json()["detail"]


async def test_run_has_every_field(client: httpx.AsyncClient, seeded: Seeded) -> None:
    response = await client.get(f"/api/v1/runs/{seeded.failed_run_id}")

    run = response.json()
    assert response.status_code == 200
    assert run["status"] == "failed"
    assert run["service_name"] == "flow-sync"
    assert run["host"], "host missing"
    assert run["pid"], "pid missing"
    assert run["duration_ms"] is not None
    assert run["items_processed"] == 2
    assert run["started_at"].endswith("+00:00")
    assert run["finished_at"].endswith("+00:00")


async def test_unknown_run_404(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/v1/runs/999999")

    assert response.status_code == 404
    assert "999999" in response.json()["detail"]


async def test_health_events_listed(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/v1/services/payment-checker/health-events")

    events = response.json()
    assert response.status_code == 200
    assert events, "no health event recorded by the monitor"
    assert events[0]["state"] == "stuck"
    assert events[0]["changed_at"].endswith("+00:00")


async def test_services_carry_their_computed_at(client: httpx.AsyncClient) -> None:
    listing = (await client.get("/api/v1/services")).json()

    times = {service["computed_at"] for service in listing["services"]}
    assert times == {listing["computed_at"]}, f"{times} against {listing['computed_at']}"


async def test_missed_runs_listed(client: httpx.AsyncClient) -> None:
    # The seed's monitor pass, two hours ahead, found the */10 fire times missed.
    response = await client.get("/api/v1/services/api-key-sync/missed-runs", params={"limit": 5})

    missed = response.json()
    assert response.status_code == 200, response.text
    assert len(missed) == 5, missed
    times = [row["scheduled_at"] for row in missed]
    assert times == sorted(times, reverse=True), "not newest first"
    assert all(time.endswith("+00:00") for time in times), times
    assert missed[0]["detected_at"] > missed[0]["scheduled_at"], missed[0]


async def test_missed_runs_unknown_service(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/v1/services/nosuch/missed-runs")

    assert response.status_code == 404, response.text
    assert "nosuch" in response.json()["detail"], response.text


async def test_origin_cron_status_shape(client: httpx.AsyncClient, database_url: str) -> None:
    expected = counts_in_database(database_url)

    response = await client.get("/api/cron-status")

    rows = {row["service"]: row for row in response.json()}
    for name, counts in expected.items():
        row = rows[name]
        assert set(row) == ORIGIN_FIELDS, f"fields of {name}: {sorted(row)}"
        assert row["total_executions"] == counts["total"]
        assert row["successful_executions"] == counts["completed"]
        assert row["failed_executions"] == counts["failed"] + counts["timed_out"]
        assert row["total_items_processed"] == counts["items_processed"]
    assert rows["api-key-sync"]["name"] == "API Key Sync"


async def test_pause_needs_csrf(client: httpx.AsyncClient) -> None:
    # Open mode: anyone on loopback may act, but not through a forged request.
    forged = await client.post("/api/v1/services/flow-sync/pause")

    assert forged.status_code == 403
    assert "CSRF" in forged.json()["detail"]


async def test_pause_resume_with_token(client: httpx.AsyncClient, database_url: str) -> None:
    token = create_token(get_engine(database_url), "deploy-bot", "admin", utc_now())
    headers = {"Authorization": f"Bearer {token}"}

    paused = await client.post("/api/v1/services/flow-sync/pause", headers=headers)
    while_paused = await client.get("/api/v1/services/flow-sync", headers=headers)
    resumed = await client.post("/api/v1/services/flow-sync/resume", headers=headers)
    after = await client.get("/api/v1/services/flow-sync", headers=headers)

    assert paused.status_code == 200, paused.text
    assert while_paused.json()["paused"] is True
    assert while_paused.json()["health"]["state"] == "paused"
    assert resumed.status_code == 200, resumed.text
    assert after.json()["paused"] is False


async def test_reader_token_cannot_act(client: httpx.AsyncClient, database_url: str) -> None:
    token = create_token(get_engine(database_url), "grafana", "reader", utc_now())
    headers = {"Authorization": f"Bearer {token}"}

    read = await client.get("/api/v1/services", headers=headers)
    act = await client.post("/api/v1/services/flow-sync/pause", headers=headers)

    assert read.status_code == 200
    assert act.status_code == 403
    assert "reader" in act.json()["detail"]


async def test_unknown_token_401(client: httpx.AsyncClient) -> None:
    response = await client.get(
        "/api/v1/services", headers={"Authorization": "Bearer clt_not-a-real-token"}
    )

    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"


async def test_api_locked_once_user_exists(client: httpx.AsyncClient, database_url: str) -> None:
    add_user(get_engine(database_url), "ops", "admin", "correct horse battery", utc_now())

    response = await client.get("/api/v1/services")
    metrics = await client.get("/metrics")

    assert response.status_code == 401
    assert metrics.status_code == 401


async def test_mark_stuck_run_failed(
    client: httpx.AsyncClient, database_url: str, seeded: Seeded
) -> None:
    token = create_token(get_engine(database_url), "ops-bot", "admin", utc_now())
    headers = {"Authorization": f"Bearer {token}"}

    marked = await client.post(f"/api/v1/runs/{seeded.open_run_id}/mark-failed", headers=headers)
    again = await client.post(f"/api/v1/runs/{seeded.open_run_id}/mark-failed", headers=headers)
    finished = await client.post(
        f"/api/v1/runs/{seeded.failed_run_id}/mark-failed", headers=headers
    )
    run = (await client.get(f"/api/v1/runs/{seeded.open_run_id}")).json()

    assert marked.status_code == 200, marked.text
    assert again.status_code == 409
    assert finished.status_code == 409
    assert run["status"] == "failed"
    assert "marked failed by ops-bot" in run["error_message"]
    assert run["duration_ms"] is not None


async def test_metrics_match_database(client: httpx.AsyncClient, database_url: str) -> None:
    expected = counts_in_database(database_url)

    response = await client.get("/metrics")

    assert response.status_code == 200
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    for name, counts in expected.items():
        for status in ("completed", "failed", "timed_out", "started"):
            key = ("cronledger_executions_total", (("service", name), ("status", status)))
            assert samples[key] == counts[status], f"{name} {status}"
        count_key = ("cronledger_run_duration_seconds_count", (("service", name),))
        assert samples[count_key] == counts["with_duration"], f"{name} duration count"
    failing = ("cronledger_health_state", (("service", "payment-checker"), ("state", "failing")))
    assert samples[failing] == 1
    in_progress = ("cronledger_runs_in_progress", (("service", "payment-checker"),))
    assert samples[in_progress] == 1


async def test_healthz_checks_database(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz")

    assert response.status_code == 200
    assert response.json() == {"status": "ok", "database": "ok"}


async def test_security_headers_set(client: httpx.AsyncClient) -> None:
    for path in ("/", "/api/v1/services", "/static/app.js"):
        response = await client.get(path)
        policy = response.headers["content-security-policy"]
        assert "script-src 'self'" in policy, path
        assert "unsafe-inline" not in policy, path
        assert "frame-ancestors 'none'" in policy, path
        assert response.headers["x-content-type-options"] == "nosniff", path
        assert response.headers["x-frame-options"] == "DENY", path
        assert response.headers["referrer-policy"] == "same-origin", path


async def test_static_files_from_memory(client: httpx.AsyncClient) -> None:
    folder = Path(cronledger.web.__file__).parent / "static"
    for name, media_type in (
        ("app.js", "text/javascript"),
        ("style.css", "text/css"),
        ("favicon.svg", "image/svg+xml"),
    ):
        path = f"/static/{name}"
        plain = await client.get(path, headers={"Accept-Encoding": "identity"})
        assert plain.status_code == 200, path
        assert plain.content == (folder / name).read_bytes(), path
        assert plain.headers["content-type"].startswith(media_type), plain.headers
        assert "content-encoding" not in plain.headers, path

        packed = await client.get(path, headers={"Accept-Encoding": "gzip"})
        assert packed.headers["content-encoding"] == "gzip", path
        assert packed.content == plain.content, f"{path}: gzip body differs once decoded"

        etag = plain.headers["etag"]
        assert packed.headers["etag"] != etag, f"{path}: one strong ETag for two encodings"
        again = await client.get(
            path, headers={"If-None-Match": etag, "Accept-Encoding": "identity"}
        )
        assert again.status_code == 304, f"{path} with its ETag: {again.status_code}"
        assert again.content == b"", path
        again = await client.get(
            path, headers={"If-None-Match": packed.headers["etag"], "Accept-Encoding": "gzip"}
        )
        assert again.status_code == 304, f"{path} with its gzip ETag: {again.status_code}"

        head = await client.head(path)
        assert head.status_code == 200, path

    missing = await client.get("/static/nope.js")
    assert missing.status_code == 404, missing.text
    traversal = await client.get("/static/..%2Fapp.py")
    assert traversal.status_code == 404, traversal.text


async def test_runs_rejects_bad_times(client: httpx.AsyncClient) -> None:
    cases = (
        ({"since": "2026-03-01T00:00:00"}, "no time zone"),
        ({"since": "yesterday"}, "'yesterday'"),
        ({"since": "2026-03-01T00:00:00 01:00"}, "%2B"),
        ({"limit": "0"}, "(got '0')"),
    )
    for params, expected in cases:
        response = await client.get("/api/v1/services/flow-sync/runs", params=params)
        assert response.status_code == 422, f"{params}: {response.status_code} {response.text}"
        assert expected in response.json()["detail"], f"{params}: {response.text}"


async def test_runs_empty_time_ranges(client: httpx.AsyncClient) -> None:
    # Valid requests that match no run: past the UTC range, or an empty range.
    cases = (
        {"since": "9999-12-31T23:59:59-05:00"},
        {"until": "0001-01-01T00:00:00+01:00"},
        {"since": "2026-03-02T00:00:00Z", "until": "2026-03-01T00:00:00Z"},
    )
    for params in cases:
        response = await client.get("/api/v1/services/flow-sync/runs", params=params)
        assert response.status_code == 200, f"{params}: {response.status_code} {response.text}"
        assert response.json()["runs"] == [], f"{params}: {response.text}"

    everything = {"since": "0001-01-01T00:00:00+01:00", "until": "9999-12-31T23:59:59-05:00"}
    response = await client.get("/api/v1/services/flow-sync/runs", params=everything)
    assert response.status_code == 200, response.text
    assert len(response.json()["runs"]) == 5, response.text


async def test_health_events_unknown_service(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/v1/services/nosuch/health-events")

    assert response.status_code == 404, response.text
    assert "nosuch" in response.json()["detail"], response.text


async def test_openapi_lists_endpoints(client: httpx.AsyncClient) -> None:
    document = (await client.get("/api/v1/openapi.json")).json()

    paths = set(document["paths"])
    assert "/api/v1/services" in paths
    assert "/api/v1/services/{name}/runs" in paths
    assert "/api/v1/runs/{run_id}" in paths
    assert "/api/v1/services/{name}/health-events" in paths
    assert "/api/v1/services/{name}/missed-runs" in paths
    assert "/api/cron-status" in paths


async def test_interval_schedule_as_written(client: httpx.AsyncClient, database_url: str) -> None:
    settings = ServiceSettings(
        name="cache-warmer", schedule=IntervalSchedule(timedelta(minutes=10))
    )
    with track("cache-warmer", database_url=database_url, settings=settings):
        pass

    response = await client.get("/api/v1/services/cache-warmer")

    assert response.json()["schedule"] == "10m"
    assert response.json()["schedule_description"] == "every 10 minutes"
