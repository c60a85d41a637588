"""Property tests of `cutq serve` from its own OpenAPI schema (schemathesis): whatever a client sends, the
server answers with a status below 500, over real HTTP to a real server process."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from .serve_util import running_server


@pytest.fixture(scope="module")
def served(u2netp_path) -> Iterator[str]:
    with running_server("--model", "u2netp", "--max-upload-mb", "1", "--threads", "1") as server:
        yield server.url


def test_no_request_gets_a_server_error(served: str) -> None:
    """Every operation, 30 generated requests each (schemathesis strategies run by hypothesis)."""
    schema = schemathesis.openapi.from_url(f"{served}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/cutout", "/api/remove", "/v1/models", "/readyz", "/metrics"}
    statuses: list[int] = []
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def check(case) -> None:
            response = case.call(base_url=served, timeout=60)
            statuses.append(response.status_code)
            assert response.status_code < 500, f"{case.method} {case.path}: {response.status_code} {response.text[:300]}"

        check()
    assert 200 in statuses and {400, 413, 415, 422} & set(statuses), sorted(set(statuses))  # both kinds were generated
