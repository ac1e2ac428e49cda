"""Self-checks of the test harness (no gateway needed): the mock provider behaves like the real
OpenAI / Azure APIs (driven with the official SDK), and the OpenAPI helper is strict where it must be.
If these fail, the gateway tests cannot be trusted."""
from __future__ import annotations

import json
import time

import openai
import pytest

import openapi
from helpers import chunk_dicts, user_msg
from mock_upstream import AZURE_KEY, OPENAI_KEY


@pytest.fixture(scope="module")
def oai(mock):
    c = openai.OpenAI(base_url=mock.url + "/v1", api_key=OPENAI_KEY, max_retries=0, timeout=10)
    yield c
    c.close()


@pytest.fixture(scope="module")
def azure(mock):
    c = openai.AzureOpenAI(azure_endpoint=mock.url, api_key=AZURE_KEY, api_version="2024-10-21",
                           max_retries=0, timeout=10)
    yield c
    c.close()


def test_openapi_helper_nullable_and_strictness():
    chunk = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
             "choices": [{"index": 0, "delta": {"content": "x"}, "logprobs": None, "finish_reason": None}],
             "usage": None}
    openapi.validate(openapi.CHAT_COMPLETION_CHUNK, chunk)  # T1: nullable handled
    bad = json.loads(json.dumps(chunk))
    bad["choices"][0]["finish_reason"] = "bogus"
    assert not openapi.is_valid(openapi.CHAT_COMPLETION_CHUNK, bad)
    bad = dict(chunk, object="")
    assert not openapi.is_valid(openapi.CHAT_COMPLETION_CHUNK, bad)  # T4 first Azure chunk
    legacy = {"id": "c", "object": "text_completion", "created": 1, "model": "m",
              "choices": [{"text": "a", "index": 0, "logprobs": None, "finish_reason": None}]}
    openapi.validate(openapi.COMPLETION_CHUNK, legacy)
    assert not openapi.is_valid(openapi.COMPLETION, legacy)
    assert not openapi.is_valid(openapi.COMPLETION_CHUNK, dict(legacy, usage=None))  # T2: strict
    assert not openapi.is_valid(openapi.ERROR, {"error": {"message": "m", "type": "t", "param": None}})
    openapi.validate(openapi.ERROR, {"error": {"message": "m", "type": "t", "param": None, "code": None}})


def test_mock_chat_like_openai(mock, oai, marker):
    r = oai.chat.completions.create(model="gpt-4o-mini", messages=user_msg(marker))
    assert r.choices[0].message.content == "The capital of the UK is London."
    assert r.usage.total_tokens == 87
    openapi.validate(openapi.CHAT_COMPLETION, r.to_dict(mode="json", exclude_unset=True))
    rec = mock.with_marker(marker)[-1]
    assert rec.api == "openai" and rec.endpoint == "chat" and rec.model == "gpt-4o-mini"
    assert rec.headers["authorization"] == f"Bearer {OPENAI_KEY}"


def test_mock_stream_usage_only_when_asked(oai):
    plain = chunk_dicts(oai.chat.completions.create(model="m", messages=user_msg("x"), stream=True))
    assert all("usage" not in c for c in plain)
    assert all(c["choices"] for c in plain)
    withu = chunk_dicts(oai.chat.completions.create(model="m", messages=user_msg("x"), stream=True,
                                                    stream_options={"include_usage": True}))
    assert withu[-1]["choices"] == [] and withu[-1]["usage"]["total_tokens"] == 87
    assert all(c["usage"] is None for c in withu[:-1])
    for c in plain + withu:
        openapi.validate(openapi.CHAT_COMPLETION_CHUNK, c)


def test_mock_mistral_usage_on_finish_chunk(oai):
    ch = chunk_dicts(oai.chat.completions.create(model="mock-mistral", messages=user_msg("x"), stream=True))
    assert ch[-1]["choices"][0]["finish_reason"] == "stop" and ch[-1]["usage"]["total_tokens"] == 146
    for c in ch:
        openapi.validate(openapi.CHAT_COMPLETION_CHUNK, c)


def test_mock_legacy_completion_chunks_carry_usage_null(oai):
    ch = chunk_dicts(oai.completions.create(model="m", prompt="x", stream=True,
                                            stream_options={"include_usage": True}))
    assert ch[0]["usage"] is None  # the real-API quirk the gateway must clean up (T2)
    assert ch[-1]["choices"] == [] and ch[-1]["usage"]["total_tokens"] == 30


def test_mock_azure_route(mock, azure, marker):
    r = azure.chat.completions.create(model="dep-x", messages=user_msg(marker))
    assert r.choices[0].message.content
    rec = mock.with_marker(marker)[-1]
    assert rec.api == "azure" and rec.path == "/openai/deployments/dep-x/chat/completions"
    assert rec.query["api-version"] == ["2024-10-21"] and rec.headers["api-key"] == AZURE_KEY
    ch = chunk_dicts(azure.chat.completions.create(model="dep-x", messages=user_msg("x"), stream=True))
    assert ch[0]["choices"] == [] and ch[0]["id"] == "" and "prompt_filter_results" in ch[0]  # T4


def test_mock_embeddings_float_and_base64(oai):
    f = oai.embeddings.create(model="e", input=["a", "b", "c"], encoding_format="float")
    assert [d.index for d in f.data] == [0, 1, 2]
    b = oai.embeddings.create(model="e", input=["a", "b"])  # SDK default: base64 on the wire
    assert b.data[0].embedding == pytest.approx(f.data[0].embedding, rel=1e-6)


@pytest.mark.parametrize("model,exc,status", [
    ("mock-error-500", openai.InternalServerError, 500),
    ("mock-error-400", openai.BadRequestError, 400),
    ("mock-error-429", openai.RateLimitError, 429),
])
def test_mock_errors(oai, model, exc, status):
    with pytest.raises(exc) as ei:
        oai.chat.completions.create(model=model, messages=user_msg("x"))
    assert ei.value.status_code == status
    openapi.validate(openapi.ERROR, ei.value.response.json())


def test_mock_close_delimited_stream(mock):
    import socket
    with socket.create_connection((mock.host, mock.port), timeout=5) as sk:
        body = json.dumps({"model": "mock-close-delimited", "stream": True, "messages": user_msg("x")}).encode()
        sk.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + OPENAI_KEY.encode()
                   + b"\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        data = b""
        while chunk := sk.recv(65536):
            data += chunk
    head, _, payload = data.partition(b"\r\n\r\n")
    assert b"chunked" not in head.lower() and b"content-length" not in head.lower()
    assert payload.rstrip().endswith(b"data: [DONE]")


def test_mock_stream_fail_and_slow(oai):
    with pytest.raises(openai.APIConnectionError):
        list(oai.chat.completions.create(model="mock-stream-fail", messages=user_msg("x"), stream=True))
    t0 = time.monotonic()
    times = [time.monotonic() - t0 for _ in oai.chat.completions.create(
        model="mock-slow-stream", messages=user_msg("x"), stream=True)]
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert min(gaps) >= 0.1, gaps


def test_mock_rejects_wrong_credentials(mock):
    bad = openai.OpenAI(base_url=mock.url + "/v1", api_key="nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.chat.completions.create(model="m", messages=user_msg("x"))
    bad_az = openai.AzureOpenAI(azure_endpoint=mock.url, api_key="nope", api_version="2024-10-21", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad_az.chat.completions.create(model="d", messages=user_msg("x"))


def test_mock_fault_and_delay_models(mock, oai):
    mock.set_faults("fm-x", "503:ra=2", "429", "context", then="500")
    with pytest.raises(openai.InternalServerError) as ei:
        oai.with_options(max_retries=0).chat.completions.create(model="fm-x", messages=user_msg("x"))
    assert ei.value.status_code == 503 and ei.value.response.headers["retry-after"] == "2"
    with pytest.raises(openai.RateLimitError) as ei:
        oai.chat.completions.create(model="fm-x", messages=user_msg("x"))
    assert ei.value.response.headers["retry-after"] == "1"
    with pytest.raises(openai.BadRequestError) as ei:
        oai.chat.completions.create(model="fm-x", messages=user_msg("x"))
    assert ei.value.code == "context_length_exceeded"
    for _ in range(2):  # `then` applies to every later request
        with pytest.raises(openai.InternalServerError):
            oai.chat.completions.create(model="fm-x", messages=user_msg("x"))
    mock.set_faults("fm-x")
    assert oai.chat.completions.create(model="fm-x", messages=user_msg("x")).choices[0].message.content
    # stream faults: error event first, then a stall before the first event
    mock.set_faults("fm-s", "stream-error-first", "stream-stall-first=0.3")
    with pytest.raises(openai.APIError):
        list(oai.chat.completions.create(model="fm-s", messages=user_msg("x"), stream=True))
    t0 = time.monotonic()
    chunks = list(oai.chat.completions.create(model="fm-s", messages=user_msg("x"), stream=True))
    assert chunks and time.monotonic() - t0 >= 0.3
    with pytest.raises(ValueError):
        mock.set_faults("fm-x", "teapot")
    # delays: programmed and by name
    mock.set_delay("fm-d", 0.2)
    t0 = time.monotonic()
    oai.chat.completions.create(model="fm-d", messages=user_msg("x"))
    assert time.monotonic() - t0 >= 0.2
    mock.set_delay("fm-d", 0)
    t0 = time.monotonic()
    oai.chat.completions.create(model="mock-delay-150", messages=user_msg("x"))
    assert time.monotonic() - t0 >= 0.15
    assert [r.model for r in mock.for_model("fm-d")] == ["fm-d"]
