"""Schema fuzzing of the HTTP API: schemathesis generates requests from the app's own OpenAPI
document and sends them to a real server over a tiny reward model. No request may get a 5xx, and
every documented answer must match its schema. Bounded: a few examples per operation."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

schemathesis = pytest.importorskip("schemathesis")

from hypothesis import HealthCheck, settings  # noqa: E402  (after the skip: hypothesis comes with it)
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import response_schema_conformance  # noqa: E402

from rewardserve.config import Settings  # noqa: E402
from rewardserve.testing.server_thread import ServerThread  # noqa: E402


@pytest.fixture(scope="module")
def fuzzed_server(tiny_llama: Path) -> Iterator[ServerThread]:
    with ServerThread(Settings(model=tiny_llama, port=0, max_input_tokens=256)) as srv:
        yield srv


def _openapi() -> dict[str, object]:
    """The app's OpenAPI document (the same one /openapi.json serves; building it needs no model)."""
    from rewardserve.api.http import build_http_app
    from rewardserve.metrics import Metrics
    from rewardserve.runtime import Runtime

    return build_http_app(Runtime(Settings(), Metrics())).openapi()


schema = schemathesis.openapi.from_dict(_openapi())


@schema.parametrize()
@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck), database=None)
def test_no_server_errors_and_answers_match_the_schema(
    case: schemathesis.Case, fuzzed_server: ServerThread
) -> None:
    checks = [not_a_server_error, response_schema_conformance]
    case.call_and_validate(base_url=fuzzed_server.http_url, checks=checks, timeout=30)


def test_the_fuzzer_reached_the_server(fuzzed_server: ServerThread) -> None:
    """Runs after the fuzzing above (same module, same server): it really sent requests, to many routes."""
    samples = fuzzed_server.server.runtime.metrics.requests.collect()[0].samples
    endpoints = {s.labels["endpoint"] for s in samples if s.name.endswith("_total") and s.value > 0}
    total = sum(s.value for s in samples if s.name.endswith("_total"))
    assert total >= 50 and len(endpoints) >= 10, (total, endpoints)
