"""With API keys set, the documentation routes need the key unless COVIDSEG_DOCS_PUBLIC, and nothing else
changes: open routes stay open, unknown paths stay 404, the pages are the same with the key."""

from __future__ import annotations

import pytest

from tests.conftest import make_client

DOCS = ["/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect"]
KEY = {"X-API-Key": "key1"}


@pytest.fixture(scope="module")
def closed():
    return make_client(api_keys="key1,key2")  # the default: docs_public false


@pytest.fixture(scope="module")
def public():
    return make_client(api_keys="key1,key2", docs_public=True)


@pytest.mark.parametrize("path", DOCS)
def test_docs_need_the_key_by_default(closed, path):
    r = closed.get(path)
    assert r.status_code == 401 and r.headers["www-authenticate"] == "ApiKey"
    body = r.json()
    assert body["code"] == "unauthorized" and body["request_id"] == r.headers["x-request-id"]
    assert closed.get(path, headers={"X-API-Key": "wrong"}).status_code == 401


@pytest.mark.parametrize("path", DOCS)
def test_docs_with_the_key_are_the_public_pages(closed, public, path):
    r = closed.get(path, headers=KEY)
    assert r.status_code == 200
    assert r.content == public.get(path).content and r.headers["content-type"] == public.get(path).headers[
        "content-type"]


@pytest.mark.parametrize("path", DOCS)
def test_docs_public_serves_them_without_a_key(public, path):
    assert public.get(path).status_code == 200


def test_the_schema_is_the_same_and_describes_the_api_either_way(closed, public):
    schema = closed.get("/openapi.json", headers=KEY).json()
    assert schema == public.get("/openapi.json").json()
    assert "/segment" in schema["paths"] and not set(DOCS) & set(schema["paths"])
    assert schema["components"]["securitySchemes"]["APIKeyHeader"]["name"] == "X-API-Key"


def test_only_the_docs_are_closed(closed):
    # Open routes stay open, and a path the service does not have stays a 404 (not a 401).
    assert closed.get("/health").status_code == 200
    assert closed.get("/no-such-page").status_code == 404
    assert closed.get("/static/no-such-file.js").status_code == 404
    assert closed.get("/model").status_code == 401  # the API routes keep their own check


def test_without_keys_the_docs_are_open():
    assert make_client().get("/docs").status_code == 200
