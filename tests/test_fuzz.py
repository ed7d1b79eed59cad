"""Schemathesis over the node's own OpenAPI schema, against a live node: every documented
operation gets generated requests, valid and invalid ones (bounded: this runs in CI), and no
answer may be a 5xx or disagree with the schema (status codes, content types, bodies)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode, checks

from tests.processes import NodeProcess, Registry, running_node

pytestmark = pytest.mark.integration

EXAMPLES = 50  # per operation
# What each answer must do. Not "positive data acceptance": the schema cannot say everything the
# API refuses (a key's 250 bytes are of UTF-8; keys without whitespace), and a clear 400 for
# such input is right.
CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
    checks.response_headers_conformance,
]
SKIPPED = {"/api/v1/flush"}  # empties the node under the other operations' feet


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[NodeProcess, Registry]]:
    directory = tmp_path_factory.mktemp("fuzz")
    registry = Registry(f"sqlite:///{directory / 'registry.sqlite3'}")
    with running_node(registry, "f1", Path(directory)) as node:
        yield node, registry


def operations(node: NodeProcess) -> list[Any]:
    raw = requests.get(
        f"{node.url}/api/schema/",
        headers={"Accept": "application/vnd.oai.openapi+json"},
        timeout=10,
    ).json()
    schema = schemathesis.openapi.from_dict(raw)
    found = [result.ok() for result in schema.get_all_operations()]
    return [op for op in found if op.path not in SKIPPED]


def test_no_server_error_and_every_answer_matches_the_schema(
    fuzzed: tuple[NodeProcess, Registry],
) -> None:
    node, registry = fuzzed
    ops = operations(node)
    assert len(ops) >= 20
    failures: list[str] = []

    def fuzz_one(op: Any, mode: GenerationMode) -> None:
        @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
        @given(data=st.data())
        def fuzz(data: Any) -> None:
            case = data.draw(op.as_strategy(generation_mode=mode))
            response = case.call(base_url=node.url, headers={"X-API-Key": registry.api_key})
            if response.status_code >= 500:
                failures.append(f"{op.method.upper()} {op.path}: {response.status_code}")
            try:
                case.validate_response(response, checks=CHECKS)
            except Exception as exc:  # schemathesis reports what disagreed
                failures.append(f"{op.method.upper()} {op.path}: {str(exc)[:400]}")

        try:
            fuzz()
        except Unsatisfiable:
            if mode is GenerationMode.POSITIVE:
                raise
            # Nothing invalid can be sent to this operation (no parameters, no body).

    for op in ops:
        for mode in GenerationMode:  # requests the schema allows, and ones it does not
            fuzz_one(op, mode)
    assert failures == []
