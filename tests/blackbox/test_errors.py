"""Every row of the error table in README.md (Errors): status, exact envelope
{"error":{"message","type","param","code"}}, type and code; the SDK's exception classes; upstream
timeout (504) and mid-stream upstream failure (final error event, SDK raises)."""
from __future__ import annotations

import json
import time

import httpx
import openai
import pytest

from conftest import MAX_BODY_BYTES, UPSTREAM_TIMEOUT_MS
from helpers import (assert_error_body, assert_error_response, assert_sdk_error, auth, chat_body,
                     stream_raw, user_msg)
from mock_upstream import HANG_SECONDS

IRE = "invalid_request_error"


# ---- 400 -----------------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions", "/v1/embeddings"])
def test_malformed_json(http, api_key, path):
    r = http.post(path, content=b'{"model": "chat", "messages": [', headers={
        **auth(api_key), "Content-Type": "application/json"})
    assert_error_response(r, 400, type_=IRE, code="invalid_request")


def test_body_not_an_object(http, api_key):
    r = http.post("/v1/chat/completions", content=b"[1,2,3]", headers={**auth(api_key),
                                                                        "Content-Type": "application/json"})
    assert_error_response(r, 400, type_=IRE, code="invalid_request")


@pytest.mark.parametrize("path,body,missing", [
    ("/v1/chat/completions", {"messages": user_msg("hi")}, "model"),
    ("/v1/chat/completions", {"model": "chat"}, "messages"),
    ("/v1/completions", {"prompt": "hi"}, "model"),
    ("/v1/embeddings", {"input": "hi"}, "model"),
    ("/v1/embeddings", {"model": "embed"}, "input"),
])
def test_missing_field(http, api_key, mock, path, body, missing):
    before = len(mock.requests)
    r = http.post(path, json=body, headers=auth(api_key))
    assert_error_response(r, 400, type_=IRE, code="invalid_request", param=missing)
    assert len(mock.requests) == before, "an invalid request must not reach the provider"


def test_missing_messages_sdk(client):
    with pytest.raises(openai.BadRequestError) as ei:
        client.chat.completions.create(model="chat", messages=openai.omit)
    err = assert_sdk_error(ei.value, 400, type_=IRE, code="invalid_request", param="messages")
    assert ei.value.code == "invalid_request" and err["param"] == "messages"


# ---- 401 -----------------------------------------------------------------------------------
def test_missing_key(http, mock):
    before = len(mock.requests)
    r = http.post("/v1/chat/completions", json=chat_body("chat"))
    assert_error_response(r, 401, type_=IRE, code="invalid_api_key")
    assert len(mock.requests) == before


@pytest.mark.parametrize("key", ["condt_doesnotexist0000000000000000", "sk-not-a-conduit-key", "condt_"])
def test_unknown_key_sdk(make_client, key):
    with pytest.raises(openai.AuthenticationError) as ei:
        make_client(key).chat.completions.create(model="chat", messages=user_msg("x"))
    assert_sdk_error(ei.value, 401, type_=IRE, code="invalid_api_key")


def test_master_key_is_not_a_virtual_key(make_client):
    from conftest import MASTER_KEY
    with pytest.raises(openai.AuthenticationError):
        make_client(MASTER_KEY).chat.completions.create(model="chat", messages=user_msg("x"))


# ---- 403 / 404 -------------------------------------------------------------------------------
def test_model_not_allowed(admin, make_client, mock, marker):
    c = make_client(admin.create_key(allowed_models=["chat"])["key"])
    with pytest.raises(openai.PermissionDeniedError) as ei:
        c.chat.completions.create(model="fam-alpha", messages=user_msg(marker))
    assert_sdk_error(ei.value, 403, type_=IRE, code="model_not_allowed")
    with pytest.raises(openai.PermissionDeniedError):
        c.embeddings.create(model="embed", input="x")
    assert mock.with_marker(marker) == []
    assert c.chat.completions.create(model="chat", messages=user_msg("x")).model == "chat"


def test_unknown_alias(client, mock, marker):
    with pytest.raises(openai.NotFoundError) as ei:
        client.chat.completions.create(model="gpt-4o-mini", messages=user_msg(marker))
    assert_sdk_error(ei.value, 404, type_=IRE, code="model_not_found")
    assert mock.with_marker(marker) == [], "an unknown alias must not be sent upstream as-is"


def test_unknown_alias_stream(client):
    with pytest.raises(openai.NotFoundError) as ei:
        client.chat.completions.create(model="no-such-alias", messages=user_msg("x"), stream=True)
    assert_sdk_error(ei.value, 404, type_=IRE, code="model_not_found")


# ---- 405 / unknown path ------------------------------------------------------------------------
@pytest.mark.parametrize("method,path", [
    ("GET", "/v1/chat/completions"),
    ("GET", "/v1/embeddings"),
    ("PUT", "/v1/completions"),
    ("DELETE", "/v1/chat/completions"),
    ("POST", "/v1/models"),
])
def test_wrong_method(http, api_key, method, path):
    r = http.request(method, path, headers=auth(api_key))
    assert_error_response(r, 405, type_=IRE, code="method_not_allowed")


@pytest.mark.parametrize("method,path", [
    ("POST", "/v1/chat/completion"),
    ("GET", "/v1/nope"),
    ("POST", "/v2/chat/completions"),
    ("GET", "/v1/"),  # (GET / redirects to the web UI: test_ui.py)
])
def test_unknown_path(http, api_key, method, path):
    r = http.request(method, path, headers=auth(api_key), json={} if method == "POST" else None)
    assert_error_response(r, 404, type_=IRE, code="not_found")


# ---- 413 ------------------------------------------------------------------------------------
def test_body_too_large(client, mock, marker):
    big = marker + "x" * (MAX_BODY_BYTES + 1024)
    with pytest.raises(openai.APIStatusError) as ei:
        client.chat.completions.create(model="chat", messages=user_msg(big))
    assert_sdk_error(ei.value, 413, type_=IRE, code="request_too_large")
    assert mock.with_marker(marker) == []


def test_body_too_large_chunked(http, api_key, mock, marker):
    """Same limit when the client streams the body without Content-Length (chunked)."""
    def gen():
        yield b'{"model": "chat", "messages": [{"role": "user", "content": "' + marker.encode()
        for _ in range(MAX_BODY_BYTES // 65536 + 2):
            yield b"z" * 65536
        yield b'"}]}'
    try:
        r = http.post("/v1/chat/completions", content=gen(), headers={**auth(api_key),
                                                                      "Content-Type": "application/json"})
    except httpx.TransportError as e:  # the gateway may answer and close before reading everything
        pytest.fail(f"gateway dropped the connection instead of answering 413: {e!r}")
    assert_error_response(r, 413, type_=IRE, code="request_too_large")
    assert mock.with_marker(marker) == []


def test_body_just_under_limit_is_accepted(client, mock, marker):
    envelope = len(json.dumps({"model": "chat", "messages": user_msg("")}).encode())
    text = marker + "y" * (MAX_BODY_BYTES - envelope - len(marker) - 64)
    r = client.chat.completions.create(model="chat", messages=user_msg(text))
    assert r.model == "chat"
    assert len(mock.with_marker(marker)) == 1


# ---- 502 / 504 -------------------------------------------------------------------------------
@pytest.mark.parametrize("alias", ["fail-500", "garbage", "stream-cut", "azure-fail-500"])
def test_upstream_failure_is_502(client, alias):
    with pytest.raises(openai.InternalServerError) as ei:
        client.chat.completions.create(model=alias, messages=user_msg("x"))
    assert_sdk_error(ei.value, 502, type_="api_error", code="upstream_error")


def test_upstream_failure_before_stream_is_502(client):
    with pytest.raises(openai.InternalServerError) as ei:
        client.chat.completions.create(model="fail-500", messages=user_msg("x"), stream=True)
    assert_sdk_error(ei.value, 502, type_="api_error", code="upstream_error")


def test_upstream_error_embeddings_and_completions_502(client):
    with pytest.raises(openai.InternalServerError) as ei:
        client.completions.create(model="fail-500", prompt="x")
    assert_sdk_error(ei.value, 502, type_="api_error", code="upstream_error")


@pytest.mark.parametrize("stream", [False, True])
def test_upstream_timeout_is_504(client, stream):
    t0 = time.monotonic()
    with pytest.raises(openai.InternalServerError) as ei:
        r = client.chat.completions.create(model="hang", messages=user_msg("x"), stream=stream)
        if stream:
            list(r)
    elapsed = time.monotonic() - t0
    assert_sdk_error(ei.value, 504, type_="api_error", code="upstream_timeout")
    # the gateway gave up on its own timeout, not after the provider finally answered
    assert UPSTREAM_TIMEOUT_MS / 1000 * 0.9 <= elapsed < HANG_SECONDS - 0.5, elapsed


# ---- provider 4xx passthrough -------------------------------------------------------------------
def test_provider_400_passthrough(client, mock):
    with pytest.raises(openai.BadRequestError) as ei:
        client.chat.completions.create(model="fail-400", messages=user_msg("x"))
    fx = mock.fx.error_400["error"]
    err = assert_sdk_error(ei.value, 400, type_=fx["type"], code=fx["code"], message=fx["message"])
    assert err["param"] == fx["param"] == "max_tokens"


def test_provider_429_passthrough(client):
    with pytest.raises(openai.RateLimitError) as ei:
        client.chat.completions.create(model="fail-429", messages=user_msg("x"))
    err = assert_sdk_error(ei.value, 429, type_="requests", code="rate_limit_exceeded")
    assert err["message"].startswith("Rate limit reached for gpt-4o-mini")


def test_provider_4xx_passthrough_stream(client, mock):
    with pytest.raises(openai.BadRequestError) as ei:
        client.chat.completions.create(model="fail-400", messages=user_msg("x"), stream=True)
    assert_sdk_error(ei.value, 400, type_=mock.fx.error_400["error"]["type"],
                     code=mock.fx.error_400["error"]["code"])


# ---- mid-stream failure -----------------------------------------------------------------------
def test_mid_stream_failure_sdk_raises(client):
    got = []
    with pytest.raises(openai.APIError) as ei:
        for chunk in client.chat.completions.create(model="stream-cut", messages=user_msg("x"), stream=True):
            got.append(chunk)
    assert not isinstance(ei.value, openai.APIConnectionError), \
        "expected an in-stream error event, got a broken connection instead"
    assert got, "the chunks sent before the failure should have been delivered"
    assert isinstance(ei.value.body, dict) and ei.value.body.get("message")


def test_mid_stream_failure_raw(http, api_key):
    r, text, events = stream_raw(http, "/v1/chat/completions", api_key, chat_body("stream-cut", stream=True))
    assert r.status_code == 200
    payloads = [e for e in events if not e.is_done]
    assert payloads, text
    last = payloads[-1].json()
    assert "error" in last, f"last event is not an error event: {payloads[-1].data[:300]}"
    assert_error_body(last)
    assert not any(e.is_done for e in events), "no [DONE] after a failed stream (it must not look complete)"
    assert all("error" not in p.json() for p in payloads[:-1])
    assert len(payloads) >= 3, "chunks received before the failure must be forwarded"
