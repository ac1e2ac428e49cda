"""The `anthropic` provider kind, black-box: the official openai SDK -> Conduit -> a mock Messages API.

This module starts its own gateway (targets.make_target()) with the issue's config shape
(``[providers.claude] kind = "anthropic"``, ``base_url``, ``api_key_env = "ANTHROPIC_API_KEY"``),
base_url pointing at mock_anthropic.MockAnthropic, which replays the recorded Anthropic payloads of
tests/fixtures/anthropic/ and checks every request it receives (headers, key, body shape). Every
answer and chunk the client gets is validated against OpenAI's OpenAPI schemas.
"""
from __future__ import annotations

import json

import httpx
import openai
import pytest

import openapi
from conftest import MASTER_KEY
from helpers import assert_error_response, assert_sdk_error, auth, chunk_dicts, data_payloads, stream_raw
from mock_anthropic import ANTHROPIC_KEY, JSON_ANSWER, RETRY_AFTER, MockAnthropic
from targets import make_target

TEXT = "Hello! I'm doing well, thanks for asking. How are you doing today? Is there anything I can help you with?"
TOOL_ARGS = {"location": "San Francisco, CA", "unit": "fahrenheit"}
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather",
    "parameters": {"type": "object", "properties": {"location": {"type": "string"}, "unit": {"type": "string"}},
                   "required": ["location"]}}}
PNG_1PX = ("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==")

ALIASES = {
    "claude": "claude-text",
    "claude-tools": "claude-tools",
    "claude-text-tool": "claude-text-tool",
    "claude-refusal": "claude-refusal",
    "claude-cache": "claude-cache",
    "claude-json": "claude-json",
    "claude-400": "claude-400",
    "claude-429": "claude-429",
    "claude-529": "claude-529",
    "claude-500": "claude-500",
    "claude-stream-error": "claude-stream-error",
}


def config(mock_url: str) -> str:
    lines = [
        "[providers.claude]",
        'kind = "anthropic"',
        f'base_url = "{mock_url}"           # Conduit calls {{base_url}}/v1/messages',
        'api_key_env = "ANTHROPIC_API_KEY"',
        "",
        "[gateway]",
        "upstream_timeout_ms = 5000",
        "",
    ]
    for alias, model in ALIASES.items():
        lines += [f'[models."{alias}"]', f'deployments = [{{ provider = "claude", model = "{model}" }}]', ""]
    lines += ['[models."claude-drop"]',
              'deployments = [{ provider = "claude", model = "claude-text", drop_unsupported_params = true }]', ""]
    return "\n".join(lines)


@pytest.fixture(scope="module")
def amock():
    m = MockAnthropic().start()
    yield m
    m.stop()


@pytest.fixture(scope="module")
def agw(amock):
    t = make_target()
    base = t.start(config(amock.url), {"CONDUIT_MASTER_KEY": MASTER_KEY, "ANTHROPIC_API_KEY": ANTHROPIC_KEY})
    yield base
    t.stop()


@pytest.fixture(scope="module")
def akey(agw) -> dict:
    r = httpx.post(agw + "/admin/keys", json={"name": "anthropic-bb"}, headers=auth(MASTER_KEY), timeout=10)
    assert r.status_code == 201, r.text
    return r.json()


@pytest.fixture(scope="module")
def ac(agw, akey):
    c = openai.OpenAI(base_url=agw + "/v1", api_key=akey["key"], max_retries=0, timeout=20)
    yield c
    c.close()


@pytest.fixture(scope="module")
def ahttp(agw):
    c = httpx.Client(base_url=agw, timeout=20)
    yield c
    c.close()


@pytest.fixture(autouse=True)
def no_rejections(amock):
    """No request the gateway sent may have been refused by the mock's checks."""
    before = len(amock.rejected)
    yield
    assert amock.rejected[before:] == [], f"the mock refused: {amock.rejected[before:]}"


def stream_chunks(ac, **kw) -> list[dict]:
    chunks = chunk_dicts(ac.chat.completions.create(stream=True, **kw))
    for c in chunks:
        openapi.validate(openapi.CHAT_COMPLETION_CHUNK, c)
        assert c["model"] == kw["model"]
    return chunks


def content_of(chunks: list[dict]) -> str:
    return "".join((c["choices"][0]["delta"].get("content") or "") for c in chunks if c["choices"])


def finishes(chunks: list[dict]) -> list[str]:
    return [ch["finish_reason"] for c in chunks for ch in c["choices"] if ch.get("finish_reason")]


def tool_calls_of(chunks: list[dict]) -> list[dict]:
    """Tool-call deltas reassembled by index, as the SDK does; the first delta must carry id and name."""
    calls: dict[int, dict] = {}
    for c in chunks:
        for ch in c["choices"]:
            for tc in ch["delta"].get("tool_calls") or []:
                i = tc["index"]
                if i not in calls:
                    assert tc.get("id") and tc["function"].get("name") and tc.get("type") == "function", tc
                    calls[i] = {"id": tc["id"], "name": tc["function"]["name"], "arguments": ""}
                calls[i]["arguments"] += tc["function"].get("arguments") or ""
    return [calls[i] for i in sorted(calls)]


# ------------------------------------------------------------------------------------------ chat
def test_chat_non_stream_and_upstream_request(ac, amock):
    raw = ac.chat.completions.with_raw_response.create(
        model="claude",
        messages=[{"role": "system", "content": "Be friendly."},
                  {"role": "user", "content": "Hi"},
                  {"role": "user", "content": "How are you?"}],
        max_tokens=50, temperature=0.3, top_p=0.9, stop=["\n\nHuman:"], user="user-42", seed=1)
    body = raw.http_response.json()
    openapi.validate(openapi.CHAT_COMPLETION, body)
    assert body["model"] == "claude"
    assert body["object"] == "chat.completion"
    ch = body["choices"][0]
    assert ch["message"]["content"] == TEXT
    assert ch["finish_reason"] == "stop"
    assert {k: body["usage"][k] for k in ("prompt_tokens", "completion_tokens", "total_tokens")} == \
        {"prompt_tokens": 12, "completion_tokens": 29, "total_tokens": 41}

    rec = amock.last()
    assert rec.path == "/v1/messages"
    assert rec.headers["x-api-key"] == ANTHROPIC_KEY
    assert rec.headers["anthropic-version"] == "2023-06-01"
    assert rec.headers["content-type"].startswith("application/json")
    assert rec.body == {
        "model": "claude-text",
        "max_tokens": 50,
        "system": "Be friendly.",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"},
                                                  {"type": "text", "text": "How are you?"}]}],
        "stop_sequences": ["\n\nHuman:"],
        "temperature": 0.3,
        "top_p": 0.9,
        "metadata": {"user_id": "user-42"},
    }


def test_default_max_tokens(ac, amock):
    ac.chat.completions.create(model="claude", messages=[{"role": "user", "content": "x"}])
    assert amock.last().body["max_tokens"] == 4096
    ac.chat.completions.create(model="claude", messages=[{"role": "user", "content": "x"}],
                               max_completion_tokens=77)
    assert amock.last().body["max_tokens"] == 77


def test_chat_stream_with_usage(ac, amock):
    chunks = stream_chunks(ac, model="claude", messages=[{"role": "user", "content": "1+1?"}],
                           stream_options={"include_usage": True})
    assert amock.last().body["stream"] is True
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert content_of(chunks) == "2"
    assert finishes(chunks) == ["stop"]
    assert len({c["id"] for c in chunks}) == 1
    last = chunks[-1]
    assert last["choices"] == []
    assert {k: last["usage"][k] for k in ("prompt_tokens", "completion_tokens", "total_tokens")} == \
        {"prompt_tokens": 20, "completion_tokens": 5, "total_tokens": 25}
    assert [c for c in chunks if c.get("usage")] == [last]


def test_chat_stream_raw_framing_without_usage(ahttp, akey):
    r, text, events = stream_raw(ahttp, "/v1/chat/completions", akey["key"],
                                 {"model": "claude", "stream": True, "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    assert events[-1].is_done
    payloads = data_payloads(events)
    for p in payloads:
        openapi.validate(openapi.CHAT_COMPLETION_CHUNK, p)
        assert "usage" not in p
    assert "".join(p["choices"][0]["delta"].get("content") or "" for p in payloads) == "2"


def test_stream_error_event_after_200(ahttp, akey):
    r, text, events = stream_raw(ahttp, "/v1/chat/completions", akey["key"],
                                 {"model": "claude-stream-error", "stream": True,
                                  "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 200
    assert not any(e.is_done for e in events), text
    last = events[-1].json()
    assert last["error"]["type"] == "overloaded_error"
    assert last["error"]["message"] == "Overloaded"
    openapi.validate(openapi.ERROR, last)
    chunks = [e.json() for e in events[:-1]]
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == "2"


def test_refusal_is_content_filter(ac):
    raw = ac.chat.completions.with_raw_response.create(model="claude-refusal",
                                                       messages=[{"role": "user", "content": "x"}])
    body = raw.http_response.json()
    openapi.validate(openapi.CHAT_COMPLETION, body)
    assert body["choices"][0]["finish_reason"] == "content_filter"
    assert body["choices"][0]["message"]["content"] is None


# ------------------------------------------------------------------------------------------ tools
def test_tool_call_stream_then_tool_result_round_trip(ac, amock):
    messages = [{"role": "user", "content": "Weather in San Francisco?"}]
    chunks = stream_chunks(ac, model="claude-tools", messages=messages, tools=[WEATHER_TOOL],
                           tool_choice="auto")
    sent = amock.last().body
    assert sent["tools"] == [{"name": "get_weather", "description": "Current weather",
                              "input_schema": WEATHER_TOOL["function"]["parameters"]}]
    assert sent["tool_choice"] == {"type": "auto"}
    assert content_of(chunks) == "Okay, let's check the weather for San Francisco, CA:"
    assert finishes(chunks) == ["tool_calls"]
    calls = tool_calls_of(chunks)
    assert [(c["id"], c["name"]) for c in calls] == [("toolu_01T1x1fJ34qAmk2tNTrN7Up6", "get_weather")]
    assert json.loads(calls[0]["arguments"]) == TOOL_ARGS

    # Same stream through the SDK's own accumulation helper.
    with ac.beta.chat.completions.stream(model="claude-tools", messages=messages, tools=[WEATHER_TOOL]) as s:
        final = s.get_final_completion()
    tc = final.choices[0].message.tool_calls[0]
    assert tc.id == "toolu_01T1x1fJ34qAmk2tNTrN7Up6" and json.loads(tc.function.arguments) == TOOL_ARGS

    # Next turn: the assistant's tool call and the tool's result go back upstream.
    messages += [
        {"role": "assistant", "content": "Okay, let's check the weather for San Francisco, CA:",
         "tool_calls": [{"id": calls[0]["id"], "type": "function",
                         "function": {"name": "get_weather", "arguments": calls[0]["arguments"]}}]},
        {"role": "tool", "tool_call_id": calls[0]["id"], "content": "58F, sunny"},
    ]
    raw = ac.chat.completions.with_raw_response.create(model="claude", messages=messages, tools=[WEATHER_TOOL])
    openapi.validate(openapi.CHAT_COMPLETION, raw.http_response.json())
    assert amock.last().body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "Weather in San Francisco?"}]},
        {"role": "assistant", "content": [
            {"type": "text", "text": "Okay, let's check the weather for San Francisco, CA:"},
            {"type": "tool_use", "id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6", "name": "get_weather", "input": TOOL_ARGS}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6", "content": "58F, sunny"}]},
    ]


def test_parallel_tool_results_grouped_in_one_user_message(ac, amock):
    messages = [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "toolu_a", "type": "function", "function": {"name": "get_weather", "arguments": '{"location":"Paris"}'}},
            {"id": "toolu_b", "type": "function", "function": {"name": "get_weather", "arguments": '{"location":"Rome"}'}}]},
        {"role": "tool", "tool_call_id": "toolu_a", "content": "18C"},
        {"role": "tool", "tool_call_id": "toolu_b", "content": "22C"},
        {"role": "user", "content": "Which is warmer?"},
    ]
    ac.chat.completions.create(model="claude", messages=messages, tools=[WEATHER_TOOL],
                               tool_choice="required", parallel_tool_calls=False)
    sent = amock.last().body
    assert sent["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}
    assert sent["messages"][1]["content"] == [
        {"type": "tool_use", "id": "toolu_a", "name": "get_weather", "input": {"location": "Paris"}},
        {"type": "tool_use", "id": "toolu_b", "name": "get_weather", "input": {"location": "Rome"}}]
    assert sent["messages"][2] == {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "toolu_a", "content": "18C"},
        {"type": "tool_result", "tool_use_id": "toolu_b", "content": "22C"},
        {"type": "text", "text": "Which is warmer?"}]}


@pytest.mark.parametrize("choice,want", [
    ("none", {"type": "none"}),
    ({"type": "function", "function": {"name": "get_weather"}}, {"type": "tool", "name": "get_weather"}),
])
def test_tool_choice_forms(ac, amock, choice, want):
    ac.chat.completions.create(model="claude", messages=[{"role": "user", "content": "x"}],
                               tools=[WEATHER_TOOL], tool_choice=choice)
    assert amock.last().body["tool_choice"] == want


def test_tool_call_non_stream_without_arguments(ac):
    raw = ac.chat.completions.with_raw_response.create(model="claude-tools",
                                                       messages=[{"role": "user", "content": "update"}],
                                                       tools=[WEATHER_TOOL])
    body = raw.http_response.json()
    openapi.validate(openapi.CHAT_COMPLETION, body)
    assert body["choices"][0]["finish_reason"] == "tool_calls"
    assert body["choices"][0]["message"]["tool_calls"] == [
        {"id": "toolu_01LRmxn9vGM1d2DZSDBowdZ1", "type": "function",
         "function": {"name": "updateIssueList", "arguments": "{}"}}]


def test_text_then_tool_use_stream(ac):
    chunks = stream_chunks(ac, model="claude-text-tool", messages=[{"role": "user", "content": "x"}],
                           tools=[WEATHER_TOOL])
    assert content_of(chunks) == "I'll invoke the JSON response tool."
    calls = tool_calls_of(chunks)
    assert calls[0]["name"] == "json"
    assert json.loads(calls[0]["arguments"])["elements"][0]["location"] == "San Francisco"
    assert finishes(chunks) == ["tool_calls"]


# ------------------------------------------------------------------------------------------ images
def test_images_data_and_http_urls(ac, amock):
    ac.chat.completions.create(model="claude", messages=[{"role": "user", "content": [
        {"type": "text", "text": "Compare"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG_1PX}"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg", "detail": "high"}},
    ]}])
    assert amock.last().body["messages"][0]["content"] == [
        {"type": "text", "text": "Compare"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG_1PX}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
    ]


# ------------------------------------------------------------------------------------------ structured output
def test_response_format_json_schema(ac, amock):
    schema = {"type": "object", "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
              "required": ["city", "population"], "additionalProperties": False}
    rf = {"type": "json_schema", "json_schema": {"name": "city", "schema": schema, "strict": True}}
    raw = ac.chat.completions.with_raw_response.create(model="claude-json", response_format=rf,
                                                       messages=[{"role": "user", "content": "Biggest French city?"}])
    body = raw.http_response.json()
    openapi.validate(openapi.CHAT_COMPLETION, body)
    assert json.loads(body["choices"][0]["message"]["content"]) == JSON_ANSWER
    assert body["choices"][0]["finish_reason"] == "stop"
    assert "tool_calls" not in body["choices"][0]["message"]
    assert amock.last().body["tools"][0]["input_schema"] == schema

    chunks = stream_chunks(ac, model="claude-json", response_format={"type": "json_object"},
                           messages=[{"role": "user", "content": "JSON please"}])
    assert amock.last().body["tools"][0]["input_schema"] == {"type": "object"}
    assert json.loads(content_of(chunks)) == JSON_ANSWER
    assert finishes(chunks) == ["stop"]
    assert tool_calls_of(chunks) == []


# ------------------------------------------------------------------------------------------ parameters
@pytest.mark.parametrize("param,kw", [("n", {"n": 2}), ("logprobs", {"logprobs": True}),
                                      ("presence_penalty", {"presence_penalty": 0.5})])
def test_unsupported_params_are_400_naming_them(ac, amock, param, kw):
    before = amock.count()
    with pytest.raises(openai.BadRequestError) as ei:
        ac.chat.completions.create(model="claude", messages=[{"role": "user", "content": "x"}], **kw)
    err = assert_sdk_error(ei.value, 400, param=param)
    assert param in err["message"]
    assert amock.count() == before, "a refused request must not reach the provider"


def test_unsupported_params_dropped_when_configured(ac, amock):
    r = ac.chat.completions.create(model="claude-drop", messages=[{"role": "user", "content": "x"}],
                                   logprobs=True, top_logprobs=2, frequency_penalty=1)
    assert r.choices[0].message.content == TEXT
    assert set(amock.last().body) == {"model", "max_tokens", "messages"}


# ------------------------------------------------------------------------------------------ errors
def test_provider_400(ac):
    with pytest.raises(openai.BadRequestError) as ei:
        ac.chat.completions.create(model="claude-400", messages=[{"role": "user", "content": "x"}])
    err = assert_sdk_error(ei.value, 400, type_="invalid_request_error")
    assert err["message"] == "tools.0.custom.input_schema.type: Field required"


def test_provider_429_passes_retry_after(ac):
    with pytest.raises(openai.RateLimitError) as ei:
        ac.chat.completions.create(model="claude-429", messages=[{"role": "user", "content": "x"}])
    assert_sdk_error(ei.value, 429, type_="rate_limit_error")
    assert ei.value.response.headers.get("retry-after") == RETRY_AFTER


def test_provider_529_overloaded_is_503(ac):
    with pytest.raises(openai.InternalServerError) as ei:
        ac.chat.completions.create(model="claude-529", messages=[{"role": "user", "content": "x"}])
    assert_sdk_error(ei.value, 503, type_="overloaded_error")


def test_provider_500_is_502(ac):
    with pytest.raises(openai.InternalServerError) as ei:
        ac.chat.completions.create(model="claude-500", messages=[{"role": "user", "content": "x"}])
    assert_sdk_error(ei.value, 502, type_="api_error")


def test_stream_request_errors_before_the_stream(ahttp, akey):
    r = ahttp.post("/v1/chat/completions", headers=auth(akey["key"]),
                   json={"model": "claude-429", "stream": True, "messages": [{"role": "user", "content": "x"}]})
    assert_error_response(r, 429, type_="rate_limit_error")


# ------------------------------------------------------------------------------------------ other endpoints
def test_legacy_completions(ac, amock):
    raw = ac.completions.with_raw_response.create(model="claude", prompt="Say hi", stop=["\n"])
    body = raw.http_response.json()
    openapi.validate(openapi.COMPLETION, body)
    assert body["object"] == "text_completion"
    assert body["choices"][0]["text"] == TEXT
    assert body["model"] == "claude"
    sent = amock.last().body
    assert sent["messages"] == [{"role": "user", "content": [{"type": "text", "text": "Say hi"}]}]
    assert sent["max_tokens"] == 16
    assert sent["stop_sequences"] == ["\n"]

    chunks = chunk_dicts(ac.completions.create(model="claude", prompt="1+1?", stream=True, max_tokens=5))
    for c in chunks:
        openapi.validate(openapi.COMPLETION_CHUNK, c)
    assert "".join(c["choices"][0]["text"] for c in chunks if c["choices"]) == "2"
    assert amock.last().body["max_tokens"] == 5


def test_embeddings_are_refused_clearly(ac, amock):
    before = amock.count()
    with pytest.raises(openai.BadRequestError) as ei:
        ac.embeddings.create(model="claude", input="hello")
    err = assert_sdk_error(ei.value, 400, param="model")
    assert "embeddings" in err["message"]
    assert amock.count() == before


# ------------------------------------------------------------------------------------------ usage
def test_cache_tokens_are_metered_once(ac, agw, akey):
    r = ac.chat.completions.create(model="claude-cache", messages=[{"role": "user", "content": "x"}])
    assert r.usage.prompt_tokens == 12 + 100 + 50
    assert r.usage.prompt_tokens_details.cached_tokens == 100
    assert r.usage.total_tokens == 162 + 29
    import time
    deadline = time.monotonic() + 5
    while True:
        data = httpx.get(agw + "/admin/usage", params={"key_id": akey["id"], "model": "claude-cache"},
                         headers=auth(MASTER_KEY), timeout=10).json()["data"]
        recs = [d for d in data if d["model"] == "claude-cache"]
        if recs or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert recs, data
    rec = recs[0]
    assert (rec["prompt_tokens"], rec["cached_tokens"], rec["cache_write_tokens"], rec["completion_tokens"]) == \
        (162, 100, 50, 29)
    assert rec["provider"] == "claude" and rec["provider_model"] == "claude-cache"
