"""contrib/openapi.yaml: a valid OpenAPI document that describes exactly the routes the API serves."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from optimizer.api import ROUTES

schemathesis = pytest.importorskip("schemathesis", reason="schemathesis is in the test extras")

SPEC = Path(__file__).resolve().parents[2] / "contrib" / "openapi.yaml"
HTTP_METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}
PATH_PARAM = re.compile(r"{([^}]+)}")


def load_spec() -> dict[str, Any]:
    """The spec as plain data."""
    data = yaml.safe_load(SPEC.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def operations(spec: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    """Every (METHOD, path) of the spec with its operation object."""
    return {
        (method.upper(), path): op
        for path, item in spec["paths"].items()
        for method, op in item.items()
        if method in HTTP_METHODS
    }


def routes() -> set[tuple[str, str]]:
    """Every (METHOD, path) the API registers."""
    return {(method, path) for method, path, _ in ROUTES}


def test_spec_and_routes_list_the_same_operations() -> None:
    """The spec's (method, path) set equals optimizer.api.ROUTES, in both directions."""
    described = set(operations(load_spec()))
    served = routes()
    assert sorted(served - described) == [], "routes missing from contrib/openapi.yaml"
    assert sorted(described - served) == [], "operations in contrib/openapi.yaml that the API does not serve"


def test_spec_is_valid_openapi() -> None:
    """The document validates against the OpenAPI meta-schema and every operation (with its $refs) loads."""
    schema = schemathesis.openapi.from_path(str(SPEC))
    schema.validate()
    loaded = [result.ok() for result in schema.get_all_operations()]
    assert sorted((op.method.upper(), op.path) for op in loaded) == sorted(routes())


def test_writes_need_the_bearer_scheme_and_reads_do_not() -> None:
    """Every POST declares bearerAuth and documents 401; no GET declares security."""
    spec = load_spec()
    assert spec["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http",
        "scheme": "bearer",
        "description": spec["components"]["securitySchemes"]["bearerAuth"]["description"],
    }
    assert "security" not in spec, "a global security requirement would cover the open reads"
    for (method, path), op in operations(spec).items():
        if method == "POST":
            assert op.get("security") == [{"bearerAuth": []}], f"{method} {path}"
            assert "401" in op["responses"], f"{method} {path}"
        else:
            assert "security" not in op, f"{method} {path}"


def test_every_error_response_uses_the_error_shape() -> None:
    """Each 4xx/5xx response of every JSON operation refers to the one error schema (health's 503 excepted)."""
    spec = load_spec()
    error = spec["components"]["schemas"]["Error"]
    assert error["required"] == ["error"]
    assert error["properties"]["error"]["required"] == ["code", "message"]
    shared = spec["components"]["responses"]
    checked = 0
    for (method, path), op in operations(spec).items():
        for status, response in op["responses"].items():
            if int(status) < 400 or (method, path, status) == ("GET", "/health", "503"):
                continue
            resolved = shared[response["$ref"].rsplit("/", 1)[1]] if "$ref" in response else response
            schema = resolved["content"]["application/json"]["schema"]
            assert schema == {"$ref": "#/components/schemas/Error"}, f"{method} {path} {status}"
            checked += 1
    assert checked >= 15


def test_path_parameters_are_declared() -> None:
    """Every {placeholder} in a path has a required path parameter of that name."""
    spec = load_spec()
    shared = spec["components"]["parameters"]
    for (method, path), op in operations(spec).items():
        params = [shared[p["$ref"].rsplit("/", 1)[1]] if "$ref" in p else p for p in op.get("parameters", [])]
        declared = {p["name"] for p in params if p["in"] == "path" and p.get("required") is True}
        assert declared == set(PATH_PARAM.findall(path)), f"{method} {path}"


def test_text_endpoints_declare_their_media_types() -> None:
    """GET /metrics is text/plain and GET / is text/html; the other 200 answers are JSON."""
    ops = operations(load_spec())
    assert list(ops[("GET", "/metrics")]["responses"]["200"]["content"]) == ["text/plain"]
    assert list(ops[("GET", "/")]["responses"]["200"]["content"]) == ["text/html"]
    for key, op in ops.items():
        if key not in {("GET", "/metrics"), ("GET", "/")}:
            assert list(op["responses"]["200"]["content"]) == ["application/json"], key
