"""The OpenAPI document at /api/schema/: valid, complete, and true to what the API answers."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from typing import Any

import pytest
from django.core.management import call_command
from django.test import Client
from jsonschema import Draft202012Validator

ERROR_REF = "#/components/schemas/Error"

# Every call of the contract (DESIGN.md, "API contract"): path -> documented methods.
CONTRACT = {
    "/api/v1/keys/{key}": {"get", "head", "put", "patch", "delete"},
    "/api/v1/keys/{key}/incr": {"post"},
    "/api/v1/batch/get": {"post"},
    "/api/v1/batch/set": {"post"},
    "/api/v1/batch/delete": {"post"},
    "/api/v1/stats": {"get"},
    "/api/v1/flush": {"post"},
    "/api/v1/ratelimit/hit": {"post"},
    "/api/v1/cluster/ring": {"get"},
    "/api/v1/cluster/nodes": {"get"},
    "/health": {"get"},
    "/metrics": {"get"},
    "/set": {"post"},
    "/get": {"get"},
    "/delete": {"delete"},
    "/batch_get": {"post"},
    "/batch_set": {"post"},
    "/sync": {"post"},
}


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    response = Client().get("/api/schema/", HTTP_ACCEPT="application/json")
    assert response.status_code == 200
    return json.loads(response.content)


def operations(schema: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            yield path, method, operation


def test_generation_is_valid_openapi_without_warnings(tmp_path):
    # Raises CommandError on any warning or error, or if the document fails validation.
    call_command(
        "spectacular", "--validate", "--fail-on-warn", "--file", str(tmp_path / "schema.yaml")
    )
    assert (tmp_path / "schema.yaml").read_text().startswith("openapi: 3.0")


def test_every_call_of_the_contract_is_documented_with_its_methods(schema):
    assert schema["openapi"].startswith("3.0")
    documented = {path: set(item) for path, item in schema["paths"].items()}
    assert documented == CONTRACT


def test_operation_ids_are_unique_and_readable(schema):
    ids = [operation["operationId"] for _, _, operation in operations(schema)]
    assert len(ids) == len(set(ids))
    by_call = {(m, p): o["operationId"] for p, m, o in operations(schema)}
    assert by_call[("get", "/api/v1/keys/{key}")] == "keys_get"
    assert by_call[("post", "/api/v1/keys/{key}/incr")] == "keys_incr"
    assert by_call[("post", "/api/v1/batch/get")] == "batch_get"
    assert by_call[("post", "/batch_get")] == "seed_batch_get"


def test_the_key_is_a_plain_string_path_parameter_on_both_key_routes(schema):
    for path in ("/api/v1/keys/{key}", "/api/v1/keys/{key}/incr"):
        for method, operation in schema["paths"][path].items():
            (key,) = [p for p in operation["parameters"] if p["in"] == "path"]
            assert key["name"] == "key", (method, path)
            assert key["required"] is True
            assert key["schema"] == {"type": "string"}


def test_error_responses_carry_the_error_envelope(schema):
    envelope = schema["components"]["schemas"]["Error"]
    assert envelope["required"] == ["error"]
    detail = envelope["properties"]["error"]["$ref"].rsplit("/", 1)[-1]
    assert schema["components"]["schemas"][detail]["required"] == ["code", "message"]
    checked = 0
    for path, method, operation in operations(schema):
        for status, response in operation["responses"].items():
            if not status.startswith("4") or method == "head":  # HEAD answers have no body
                continue
            assert response["content"] == {"application/json": {"schema": {"$ref": ERROR_REF}}}, (
                method,
                path,
                status,
            )
            checked += 1
    assert checked > 50


@pytest.mark.parametrize(
    ("method", "path", "statuses"),
    [
        ("get", "/api/v1/keys/{key}", {"401", "403", "404"}),
        ("put", "/api/v1/keys/{key}", {"400", "412", "413", "415"}),
        ("patch", "/api/v1/keys/{key}", {"400", "404"}),
        ("delete", "/api/v1/keys/{key}", {"404"}),
        ("post", "/api/v1/keys/{key}/incr", {"404", "409"}),
        ("post", "/api/v1/batch/set", {"400", "413"}),
        ("post", "/api/v1/flush", {"403"}),
        ("get", "/get", {"400", "404"}),
        ("post", "/set", {"412", "413"}),
    ],
)
def test_each_call_lists_the_errors_it_can_give(schema, method, path, statuses):
    assert statuses <= set(schema["paths"][path][method]["responses"])


def test_authentication_is_described(schema):
    schemes = schema["components"]["securitySchemes"]
    api_key = schemes["ApiKeyAuth"]
    assert (api_key["type"], api_key["in"], api_key["name"]) == ("apiKey", "header", "X-API-Key")
    assert "Authorization: Api-Key <key>" in api_key["description"]
    assert "security" not in schema  # per operation, not one global requirement
    paths = schema["paths"]
    assert {"ApiKeyAuth": []} in paths["/api/v1/keys/{key}"]["get"]["security"]
    assert paths["/sync"]["post"]["security"] == [{"ClusterSecret": []}]
    for open_call in (paths["/health"]["get"], paths["/metrics"]["get"]):
        assert open_call["security"] == [{}]


def test_key_operations_document_headers_and_raw_bytes(schema):
    key = schema["paths"]["/api/v1/keys/{key}"]
    get, put = key["get"], key["put"]
    assert set(get["responses"]["200"]["content"]) == {
        "application/json",
        "application/octet-stream",
    }
    assert {"ETag", "X-TTL"} <= set(get["responses"]["200"]["headers"])
    assert set(key["head"]["responses"]["200"]["headers"]) >= {"ETag", "X-TTL"}
    assert set(put["requestBody"]["content"]) == {"application/json", "application/octet-stream"}
    put_params = {(p["in"], p["name"]) for p in put["parameters"]}
    assert {("header", "If-Match"), ("header", "If-None-Match"), ("query", "ttl")} <= put_params
    assert "ETag" in put["responses"]["200"]["headers"]
    assert "format" not in {name for _, name in put_params}  # the API reads only Accept
    for path in ("/get", "/delete"):
        (operation,) = schema["paths"][path].values()
        assert {(p["in"], p["name"], p["required"]) for p in operation["parameters"]} == {
            ("query", "key", True)
        }
    assert key["patch"]["requestBody"]["required"] is True


def test_schema_generation_leaves_the_real_views_alone(schema):
    from cacheapi.api import views

    for action in ("retrieve", "update", "incr"):
        assert not hasattr(getattr(views.KeyViewSet, action), "kwargs")
    assert "schema" not in views.KeyViewSet.__dict__


# What the API really answers must match what the document says.
def _json_schema(schema: dict[str, Any], component: str) -> Draft202012Validator:
    """A validator for one component; OpenAPI 3.0's ``nullable`` becomes a JSON Schema type."""

    def convert(node: Any) -> Any:
        if isinstance(node, dict):
            node = {k: convert(v) for k, v in node.items()}
            if node.pop("nullable", False) and "type" in node:
                node["type"] = [node["type"], "null"]
            return node
        if isinstance(node, list):
            return [convert(v) for v in node]
        return node

    components = convert(copy.deepcopy(schema["components"]))
    return Draft202012Validator(
        {"$ref": f"#/components/schemas/{component}", "components": components}
    )


def _response_schema(schema: dict[str, Any], method: str, path: str, status: int) -> str:
    content = schema["paths"][path][method]["responses"][str(status)]["content"]
    return content["application/json"]["schema"]["$ref"].rsplit("/", 1)[-1]


def test_real_answers_match_the_documented_bodies(schema, api):
    def check(method: str, path: str, response: Any, status: int = 200) -> None:
        assert response.status_code == status, response.content
        component = _response_schema(schema, method, path, status)
        _json_schema(schema, component).validate(json.loads(response.content))

    keys, incr = "/api/v1/keys/{key}", "/api/v1/keys/{key}/incr"
    check("put", keys, api.put("/api/v1/keys/n", {"value": 1, "ttl": 60}, "application/json"))
    check("get", keys, api.get("/api/v1/keys/n"))
    check("patch", keys, api.patch("/api/v1/keys/n", {"ttl": None}, "application/json"))
    check("post", incr, api.post("/api/v1/keys/n/incr", {"delta": 2}, "application/json"))
    check("get", keys, api.get("/api/v1/keys/absent"), 404)
    check(
        "put",
        keys,
        api.put("/api/v1/keys/n", {"value": 1}, "application/json", HTTP_IF_NONE_MATCH="*"),
        412,
    )
    check("post", incr, api.post("/api/v1/keys/n/incr", {"delta": "x"}, "application/json"), 400)
    check(
        "post",
        "/api/v1/batch/set",
        api.post(
            "/api/v1/batch/set",
            {"items": [{"key": "b", "value": {"b64": "AAE="}}]},
            "application/json",
        ),
    )
    check(
        "post",
        "/api/v1/batch/get",
        api.post("/api/v1/batch/get", {"keys": ["b", "n", "z"]}, "application/json"),
    )
    check(
        "post",
        "/api/v1/batch/delete",
        api.post("/api/v1/batch/delete", {"keys": ["b"]}, "application/json"),
    )
    check("post", "/set", api.post("/set", {"key": "s", "value": [1]}, "application/json"))
    check("get", "/get", api.get("/get", {"key": "s"}))
    check("get", "/api/v1/stats", api.get("/api/v1/stats"))
    check("get", "/api/v1/cluster/ring", api.get("/api/v1/cluster/ring"))
    check("get", "/api/v1/cluster/nodes", api.get("/api/v1/cluster/nodes"))
    check("post", "/api/v1/flush", api.post("/api/v1/flush"))
    check("get", "/health", Client().get("/health"))
    check("get", keys, Client().get("/api/v1/keys/n"), 401)
