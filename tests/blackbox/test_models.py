"""GET /v1/models and /v1/models/{id} (only aliases the key may use), GET /health, x-request-id."""
from __future__ import annotations

import openai
import pytest

import openapi
from conftest import ALIASES
from helpers import assert_error_response, assert_sdk_error, auth


def _listed(client) -> dict[str, dict]:
    page = client.models.with_raw_response.list()
    body = page.http_response.json()
    openapi.validate(openapi.MODEL_LIST, body)
    assert body["object"] == "list"
    for m in body["data"]:
        openapi.validate(openapi.MODEL, m)
        assert m["object"] == "model" and isinstance(m["created"], int)
    ids = [m["id"] for m in body["data"]]
    assert len(ids) == len(set(ids)), f"duplicate ids: {ids}"
    return {m["id"]: m for m in body["data"]}


def test_health_without_auth(http):
    r = http.get("/health")
    assert r.status_code == 200 and r.json() == {"status": "ok"}
    assert r.headers.get("x-request-id")


def test_models_list_unrestricted_key(client):
    models = _listed(client)
    assert set(models) == set(ALIASES), f"extra {set(models) - set(ALIASES)}, missing {set(ALIASES) - set(models)}"
    for alias, (provider, _) in ALIASES.items():
        assert models[alias]["owned_by"] == provider, models[alias]


def test_models_list_exact_allowed(admin, make_client):
    c = make_client(admin.create_key(allowed_models=["chat", "embed"])["key"])
    assert set(_listed(c)) == {"chat", "embed"}


def test_models_list_prefix_allowed(admin, make_client):
    c = make_client(admin.create_key(allowed_models=["fam-*", "azure-chat"])["key"])
    assert set(_listed(c)) == {"fam-alpha", "fam-beta", "azure-chat"}


def test_models_retrieve(client):
    raw = client.models.with_raw_response.retrieve("azure-chat")
    body = raw.http_response.json()
    openapi.validate(openapi.MODEL, body)
    assert body["id"] == "azure-chat" and body["object"] == "model" and body["owned_by"] == "az"
    assert raw.headers.get("x-request-id")


def test_models_retrieve_unknown(client):
    with pytest.raises(openai.NotFoundError) as ei:
        client.models.retrieve("no-such-alias")
    assert_sdk_error(ei.value, 404, type_="invalid_request_error", code="model_not_found")


def test_models_retrieve_not_allowed(admin, make_client):
    c = make_client(admin.create_key(allowed_models=["fam-*"])["key"])
    assert c.models.retrieve("fam-beta").id == "fam-beta"
    with pytest.raises(openai.APIStatusError) as ei:
        c.models.retrieve("other-gamma")
    # either hidden (404 model_not_found) or refused (403 model_not_allowed), never served
    st = ei.value.status_code
    assert st in (403, 404), st
    assert_sdk_error(ei.value, st, type_="invalid_request_error",
                     code="model_not_allowed" if st == 403 else "model_not_found")


def test_models_require_key(http):
    assert_error_response(http.get("/v1/models"), 401, type_="invalid_request_error", code="invalid_api_key")
    assert_error_response(http.get("/v1/models", headers=auth("condt_not_a_real_key")), 401,
                          type_="invalid_request_error", code="invalid_api_key")
    assert_error_response(http.get("/v1/models/chat"), 401, type_="invalid_request_error", code="invalid_api_key")
