"""Property-based requests from the OpenAPI document: no input makes a server error."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from cronledger.store.engine import get_engine
from cronledger.web import DashboardServer, create_app
from tests.web_seed import seed_runs

EXAMPLES_PER_OPERATION = 25


@pytest.fixture
def live_url(database_url: str) -> Iterator[str]:
    seed_runs(database_url)
    server = DashboardServer(create_app(get_engine(database_url)), "127.0.0.1", 0)
    server.start()
    yield server.url
    server.stop()


def test_api_conforms(live_url: str) -> None:
    # NOTE: schemathesis's own pytest plugin (from_fixture) fails on this
    # pytest version, so each operation runs its strategy under @given here.
    schema = schemathesis.openapi.from_url(live_url + "/api/v1/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 9, f"operations: {[op.label for op in operations]}"

    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            database=None,
        )
        def check(case: schemathesis.Case) -> None:
            case.call_and_validate()

        check()
