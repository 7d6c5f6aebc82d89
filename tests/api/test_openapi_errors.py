"""The OpenAPI schema lists every error a route may answer, each with the one error body."""

from __future__ import annotations

import pytest

from tests.conftest import make_client


@pytest.fixture(scope="module")
def schema() -> dict:
    with make_client() as client:
        return client.get("/openapi.json").json()


def operations(schema: dict):
    for path, methods in schema["paths"].items():
        for method, operation in methods.items():
            yield path, method, operation


def test_every_route_documents_the_services_own_errors_with_the_error_body(schema):
    assert set(schema["components"]["schemas"]["ErrorBody"]["required"]) == {"detail", "code"}
    for path, method, operation in operations(schema):
        for status in ("408", "500", "503"):
            answer = operation["responses"].get(status)
            assert answer, f"{method} {path} does not document {status}"
            if (path, status) == ("/ready", "503"):
                continue  # not ready: the readiness body of its own, which says what is loading
            assert answer["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorBody"}


def test_the_keyed_routes_document_401_and_the_open_ones_do_not(schema):
    for path, method, operation in operations(schema):
        assert ("401" in operation["responses"]) == (path not in ("/health", "/ready")), (method, path)


def test_the_segmentation_routes_document_the_input_errors(schema):
    for path in ("/segment", "/segment/batch"):
        responses = schema["paths"][path]["post"]["responses"]
        assert {"400", "413", "415", "422"} <= set(responses)
        assert "COVIDSEG_WORK_MEMORY_MB" in responses["413"]["description"]
