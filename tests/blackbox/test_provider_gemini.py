"""The `gemini` provider, black-box: the official OpenAI SDK -> Conduit -> a mock Gemini API.

This module starts its own gateway (make_target()) with the acceptance config shape
(``[providers.google] kind = "gemini"``) pointing at mock_gemini.MockGemini, which answers from
the recorded Gemini payloads and checks what it receives (key header, Gemini body shape).
"""
from __future__ import annotations

import base64
import json

import httpx
import openai
import pytest

import openapi
from conftest import MASTER_KEY
from helpers import assert_error_body, assert_sdk_error, auth, data_payloads, stream_raw
from mock_gemini import GEMINI_KEY, PNG_1x1, MockGemini, fixture
from targets import make_target

MODELS = {
    "g-text": "gemini-text",
    "g-tools": "gemini-tools",
    "g-blocked": "gemini-blocked",
    "g-429": "gemini-429",
    "g-400": "gemini-400",
    "g-cut": "gemini-cut",
    "g-embed": "gemini-embed",
}

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "weather",
        "description": "Current weather in a city",
        "parameters": {"type": "object", "properties": {"location": {"type": "string"}},
                       "required": ["location"], "additionalProperties": False},
    },
}


def config(mock_url: str) -> str:
    models = "".join(
        f'\n[models."{alias}"]\ndeployments = [{{ provider = "google", model = "{m}" }}]\n'
        for alias, m in MODELS.items()
    )
    return f"""
[providers.google]
kind = "gemini"
base_url = "{mock_url}"   # {{base_url}}/v1beta/models/{{model}}:generateContent
api_key_env = "GEMINI_API_KEY"
{models}
[models."g-drop"]
deployments = [{{ provider = "google", model = "gemini-text", drop_unsupported_params = true }}]

[gateway]
upstream_timeout_ms = 5000
image_fetch_allow_private = true
"""


@pytest.fixture(scope="module")
def gmock():
    m = MockGemini().start()
    yield m
    m.stop()


@pytest.fixture(scope="module")
def gw(gmock):
    t = make_target()
    base = t.start(config(gmock.url), {"CONDUIT_MASTER_KEY": MASTER_KEY, "GEMINI_API_KEY": GEMINI_KEY})
    yield base
    t.stop()


@pytest.fixture(scope="module")
def key(gw) -> str:
    r = httpx.post(gw + "/admin/keys", json={"name": "gemini"}, headers=auth(MASTER_KEY), timeout=10)
    assert r.status_code == 201, r.text
    return r.json()["key"]


@pytest.fixture(scope="module")
def client(gw, key):
    c = openai.OpenAI(base_url=gw + "/v1", api_key=key, max_retries=0, timeout=15)
    yield c
    c.close()


@pytest.fixture(autouse=True)
def no_problems(gmock):
    """Every request the mock got during the test was one Gemini would accept."""
    start = len(gmock.problems)
    yield
    assert gmock.problems[start:] == [], gmock.problems[start:]


def dump(obj) -> dict:
    return obj.to_dict(mode="json", exclude_unset=True)


def sent_headers_ok(r) -> None:
    assert r.headers["x-goog-api-key"] == GEMINI_KEY
    assert "key" not in r.query and GEMINI_KEY not in r.path


# ---------------------------------------------------------------------------------------------
# chat
# ---------------------------------------------------------------------------------------------
def test_chat_text_non_stream(client, gmock):
    resp = client.chat.completions.create(
        model="g-text",
        messages=[{"role": "system", "content": "Answer in one line."},
                  {"role": "user", "content": "Weather in Paris?"},
                  {"role": "user", "content": [{"type": "text", "text": "In Celsius."}]}],
        temperature=0.3, top_p=0.8, max_tokens=50, stop=["\n\n"], seed=42, user="user-1",
    )
    body = dump(resp)
    openapi.validate(openapi.CHAT_COMPLETION, body)
    assert body["model"] == "g-text"
    choice = body["choices"][0]
    assert choice["message"]["content"] == "The temperature in Paris is 30°C."
    assert choice["finish_reason"] == "stop"
    assert body["usage"]["prompt_tokens"] == 63
    assert body["usage"]["completion_tokens"] == 11
    assert body["usage"]["total_tokens"] == 74
    assert body["usage"]["prompt_tokens_details"]["cached_tokens"] == 20

    r = gmock.last("gemini-text")
    sent_headers_ok(r)
    assert r.path == "/v1beta/models/gemini-text:generateContent"
    assert r.body["systemInstruction"] == {"parts": [{"text": "Answer in one line."}]}
    # Two user messages in a row: one user turn.
    assert r.body["contents"] == [{"role": "user", "parts": [{"text": "Weather in Paris?"}, {"text": "In Celsius."}]}]
    assert r.body["generationConfig"] == {"temperature": 0.3, "topP": 0.8, "maxOutputTokens": 50,
                                          "seed": 42, "stopSequences": ["\n\n"]}


def test_chat_text_stream(client, gmock):
    stream = client.chat.completions.create(
        model="g-text", messages=[{"role": "user", "content": "Weather in Paris?"}],
        stream=True, stream_options={"include_usage": True}, max_completion_tokens=40,
    )
    chunks = [dump(c) for c in stream]
    for c in chunks:
        openapi.validate(openapi.CHAT_COMPLETION_CHUNK, c)
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == "The temperature in Paris is 30°C."
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert finishes[-1] == "stop" and all(f is None for f in finishes[:-1])
    assert len({c["id"] for c in chunks}) == 1
    # T13: the last recorded usage counts (the prompt count changed 169 -> 63 mid-stream).
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["prompt_tokens"] == 63
    assert chunks[-1]["usage"]["completion_tokens"] == 11
    r = gmock.last("gemini-text")
    sent_headers_ok(r)
    assert r.path == "/v1beta/models/gemini-text:streamGenerateContent"
    assert r.query == {"alt": ["sse"]}
    assert r.body["generationConfig"] == {"maxOutputTokens": 40}


def test_stream_without_usage_request_has_no_usage_chunk(gw, key):
    with httpx.Client(base_url=gw, timeout=15) as http:
        r, _, events = stream_raw(http, "/v1/chat/completions", key,
                                  {"model": "g-text", "stream": True,
                                   "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 200
    assert events[-1].is_done
    payloads = data_payloads(events)
    assert all(p["choices"] for p in payloads)
    assert all("usage" not in p or p["usage"] is None for p in payloads)


# ---------------------------------------------------------------------------------------------
# tools
# ---------------------------------------------------------------------------------------------
def test_tool_call_round_trip(client, gmock):
    messages = [{"role": "user", "content": "What is the weather in San Francisco?"}]
    first = client.chat.completions.create(model="g-tools", messages=messages, tools=[WEATHER_TOOL],
                                           tool_choice="auto")
    body = dump(first)
    openapi.validate(openapi.CHAT_COMPLETION, body)
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    (call,) = choice["message"]["tool_calls"]
    assert call["type"] == "function"
    assert call["function"]["name"] == "weather"
    assert json.loads(call["function"]["arguments"]) == {"location": "San Francisco"}
    assert call["id"].startswith("call_")
    assert body["usage"]["completion_tokens"] == 15 + 893
    assert body["usage"]["completion_tokens_details"]["reasoning_tokens"] == 893

    r1 = gmock.last("gemini-tools")
    decl = r1.body["tools"][0]["functionDeclarations"][0]
    assert decl["name"] == "weather" and decl["description"] == "Current weather in a city"
    assert decl["parametersJsonSchema"] == WEATHER_TOOL["function"]["parameters"]
    assert r1.body["toolConfig"] == {"functionCallingConfig": {"mode": "AUTO"}}

    messages += [first.choices[0].message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call["id"], "content": json.dumps({"temp_c": 18})}]
    second = client.chat.completions.create(model="g-tools", messages=messages, tools=[WEATHER_TOOL])
    openapi.validate(openapi.CHAT_COMPLETION, dump(second))
    assert second.choices[0].finish_reason == "stop"
    assert second.choices[0].message.content

    r2 = gmock.last("gemini-tools")
    contents = r2.body["contents"]
    assert [c["role"] for c in contents] == ["user", "model", "user"]
    (fc,) = contents[1]["parts"]
    assert fc["functionCall"] == {"name": "weather", "args": {"location": "San Francisco"}}
    # Gemini 3's signature on the call went out in the id and came back with it.
    recorded = json.loads(fixture("generateContent.functionCall.json"))
    assert fc["thoughtSignature"] == recorded["candidates"][0]["content"]["parts"][0]["thoughtSignature"]
    assert contents[2]["parts"] == [{"functionResponse": {"name": "weather", "response": {"temp_c": 18}}}]


def test_parallel_tool_results_share_one_turn(client, gmock):
    messages = [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_a", "type": "function", "function": {"name": "weather", "arguments": '{"location":"Paris"}'}},
            {"id": "call_b", "type": "function", "function": {"name": "time", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_a", "content": "sunny"},
        {"role": "tool", "tool_call_id": "call_b", "content": "noon"},
    ]
    resp = client.chat.completions.create(model="g-tools", messages=messages, tools=[WEATHER_TOOL])
    assert resp.choices[0].finish_reason == "stop"
    contents = gmock.last("gemini-tools").body["contents"]
    assert [c["role"] for c in contents] == ["user", "model", "user"]
    assert [p["functionCall"]["name"] for p in contents[1]["parts"]] == ["weather", "time"]
    assert contents[2]["parts"] == [
        {"functionResponse": {"name": "weather", "response": {"result": "sunny"}}},
        {"functionResponse": {"name": "time", "response": {"result": "noon"}}},
    ]


def test_tool_call_stream(client, gmock):
    stream = client.chat.completions.create(
        model="g-tools", messages=[{"role": "user", "content": "Weather in SF?"}], tools=[WEATHER_TOOL],
        tool_choice={"type": "function", "function": {"name": "weather"}}, stream=True,
        stream_options={"include_usage": True})
    chunks = [dump(c) for c in stream]
    for c in chunks:
        openapi.validate(openapi.CHAT_COMPLETION_CHUNK, c)
    deltas = [c["choices"][0]["delta"].get("tool_calls") for c in chunks if c["choices"]]
    deltas = [d[0] for d in deltas if d]
    head = deltas[0]
    assert head["index"] == 0 and head["type"] == "function" and head["id"].startswith("call_")
    assert head["function"] == {"name": "weather", "arguments": ""}
    assert all("id" not in d and "name" not in d.get("function", {}) for d in deltas[1:])
    args = "".join(d["function"].get("arguments", "") for d in deltas)
    assert json.loads(args) == {"location": "San Francisco"}
    # T11: the finish reason arrives on a later chunk with only empty text.
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "tool_calls"
    assert chunks[-1]["usage"]["completion_tokens_details"]["reasoning_tokens"] == 45
    r = gmock.last("gemini-tools")
    assert r.body["toolConfig"] == {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["weather"]}}

    # The SDK's own stream helper reassembles the call.
    with client.beta.chat.completions.stream(
            model="g-tools", messages=[{"role": "user", "content": "Weather in SF?"}],
            tools=[WEATHER_TOOL]) as s:
        final = s.get_final_completion()
    tc = final.choices[0].message.tool_calls[0]
    assert tc.function.name == "weather" and json.loads(tc.function.arguments) == {"location": "San Francisco"}


def test_tool_choice_none_and_required(client, gmock):
    for choice, mode in (("none", "NONE"), ("required", "ANY")):
        client.chat.completions.create(model="g-text", messages=[{"role": "user", "content": "hi"}],
                                       tools=[WEATHER_TOOL], tool_choice=choice)
        assert gmock.last("gemini-text").body["toolConfig"] == {"functionCallingConfig": {"mode": mode}}


# ---------------------------------------------------------------------------------------------
# response_format, images, unsupported parameters
# ---------------------------------------------------------------------------------------------
def test_response_format(client, gmock):
    client.chat.completions.create(model="g-text", messages=[{"role": "user", "content": "json"}],
                                   response_format={"type": "json_object"})
    assert gmock.last("gemini-text").body["generationConfig"] == {"responseMimeType": "application/json"}
    schema = {"type": "object", "properties": {"temp": {"type": "number"}}, "required": ["temp"],
              "additionalProperties": False}
    client.chat.completions.create(
        model="g-text", messages=[{"role": "user", "content": "json"}],
        response_format={"type": "json_schema", "json_schema": {"name": "w", "strict": True, "schema": schema}})
    assert gmock.last("gemini-text").body["generationConfig"] == {
        "responseMimeType": "application/json", "responseJsonSchema": schema}


def test_images_data_and_http(client, gmock):
    data_url = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAE="
    client.chat.completions.create(model="g-text", messages=[{"role": "user", "content": [
        {"type": "text", "text": "What is in these?"},
        {"type": "image_url", "image_url": {"url": data_url}},
        {"type": "image_url", "image_url": {"url": gmock.url + "/image.png", "detail": "low"}},
    ]}])
    parts = gmock.last("gemini-text").body["contents"][0]["parts"]
    assert parts[0] == {"text": "What is in these?"}
    assert parts[1] == {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgoAAAANSUhEUgAAAAE="}}
    assert parts[2]["inlineData"]["mimeType"] == "image/png"
    assert base64.b64decode(parts[2]["inlineData"]["data"]) == PNG_1x1


def test_unsupported_parameter_is_named(client, gmock):
    before = len(gmock.received)
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="g-text", messages=[{"role": "user", "content": "hi"}], logprobs=True)
    assert_sdk_error(e.value, 400, type_="invalid_request_error", param="logprobs")
    assert len(gmock.received) == before  # refused before any upstream call
    # With drop_unsupported_params the deployment ignores it.
    resp = client.chat.completions.create(model="g-drop", messages=[{"role": "user", "content": "hi"}],
                                          logprobs=True, top_logprobs=2)
    assert resp.choices[0].finish_reason == "stop"
    assert "generationConfig" not in gmock.last("gemini-text").body


# ---------------------------------------------------------------------------------------------
# blocks, errors, cut streams
# ---------------------------------------------------------------------------------------------
def test_prompt_blocked(client):
    resp = client.chat.completions.create(model="g-blocked", messages=[{"role": "user", "content": "x"}])
    body = dump(resp)
    openapi.validate(openapi.CHAT_COMPLETION, body)
    assert body["choices"][0]["finish_reason"] == "content_filter"
    assert body["choices"][0]["message"]["content"] == ""
    assert body["usage"]["prompt_tokens"] == 9
    chunks = [dump(c) for c in client.chat.completions.create(
        model="g-blocked", messages=[{"role": "user", "content": "x"}], stream=True)]
    for c in chunks:
        openapi.validate(openapi.CHAT_COMPLETION_CHUNK, c)
    assert chunks[-1]["choices"][0]["finish_reason"] == "content_filter"


def test_rate_limit_429_with_retry_after(client):
    with pytest.raises(openai.RateLimitError) as e:
        client.chat.completions.create(model="g-429", messages=[{"role": "user", "content": "hi"}])
    err = assert_sdk_error(e.value, 429, type_="rate_limit_error", code="rate_limit_exceeded")
    assert err["message"] == "You exceeded your current quota, please check your plan."
    # RetryInfo.retryDelay "34.4s" in Gemini's body -> Retry-After: 35.
    assert e.value.response.headers["retry-after"] == "35"


def test_invalid_argument_400(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="g-400", messages=[{"role": "user", "content": "hi"}],
                                       presence_penalty=0.5)
    err = assert_sdk_error(e.value, 400, type_="invalid_request_error", code="invalid_argument")
    assert err["message"] == "Penalty is not enabled for models/gemini-2.5-flash"


def test_stream_errors_and_cut(gw, key):
    http = httpx.Client(base_url=gw, timeout=15)
    r = http.post("/v1/chat/completions", headers=auth(key),
                  json={"model": "g-429", "stream": True, "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 429 and r.headers["retry-after"] == "35"
    assert_error_body(r.json(), type_="rate_limit_error")
    # No finishReason before EOF: the stream ends with an error event, not [DONE].
    r, _, events = stream_raw(http, "/v1/chat/completions", key,
                              {"model": "g-cut", "stream": True, "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 200
    assert not any(e.is_done for e in events)
    last = events[-1].json()
    assert_error_body(last, type_="api_error")
    first = events[0].json()
    assert first["choices"][0]["delta"]["content"] == "The temperature in"
    http.close()


# ---------------------------------------------------------------------------------------------
# embeddings and legacy completions
# ---------------------------------------------------------------------------------------------
def test_embeddings(client, gmock):
    one = client.embeddings.create(model="g-embed", input="hello", encoding_format="float", dimensions=4)
    body = dump(one)
    openapi.validate(openapi.EMBEDDINGS, body)
    assert body["data"][0]["embedding"] == [0.1, -0.2, 0.3, 0.4]
    r = gmock.last("gemini-embed")
    sent_headers_ok(r)
    assert r.path == "/v1beta/models/gemini-embed:embedContent"
    assert r.body == {"model": "models/gemini-embed", "content": {"parts": [{"text": "hello"}]},
                      "outputDimensionality": 4}
    # The SDK's default asks for base64 and accepts floats back.
    many = client.embeddings.create(model="g-embed", input=["a", "b", "c"])
    assert [d.index for d in many.data] == [0, 1, 2]
    assert list(many.data[2].embedding) == [2.0, 0.5, -0.5, 1.0]
    r = gmock.last("gemini-embed")
    assert r.path == "/v1beta/models/gemini-embed:batchEmbedContents"
    assert [q["content"]["parts"][0]["text"] for q in r.body["requests"]] == ["a", "b", "c"]


def test_legacy_completions(client, gmock):
    resp = client.completions.create(model="g-text", prompt="Weather in Paris?", max_tokens=30)
    body = dump(resp)
    openapi.validate(openapi.COMPLETION, body)
    assert body["object"] == "text_completion"
    assert body["choices"][0]["text"] == "The temperature in Paris is 30°C."
    assert body["usage"]["total_tokens"] == 74
    r = gmock.last("gemini-text")
    assert r.body["contents"] == [{"role": "user", "parts": [{"text": "Weather in Paris?"}]}]
    assert r.body["generationConfig"] == {"maxOutputTokens": 30}
    chunks = [dump(c) for c in client.completions.create(model="g-text", prompt="Weather?", stream=True,
                                                         stream_options={"include_usage": True})]
    for c in chunks:
        openapi.validate(openapi.COMPLETION_CHUNK, c)
    assert "".join(c["choices"][0]["text"] for c in chunks if c["choices"]) == "The temperature in Paris is 30°C."
    assert chunks[-1]["usage"]["total_tokens"] == 74
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="g-text", prompt="x", echo=True)
    assert_sdk_error(e.value, 400, param="echo")
