"""The Messages API front door (`/v1/messages`, `/v1/messages/count_tokens`), black-box, with the
official `anthropic` SDK as the client.

Against an OpenAI-compatible deployment (translated through chat), an Anthropic one (passed through),
a Gemini one (translated) and Claude on Bedrock (passed through InvokeModel), every mock checking what
it receives. Translated answers are compared with what the chat endpoint answers for the same alias.
"""
from __future__ import annotations

import base64
import json

import anthropic
import httpx
import openai
import pytest

from frontdoor_env import FrontDoorEnv
from helpers import parse_sse

TEXT = "Hello! I'm doing well, thanks for asking. How are you doing today? Is there anything I can help you with?"
PNG_1PX = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
WEATHER = {"name": "get_weather", "description": "Current weather in a city",
           "input_schema": {"type": "object", "properties": {"location": {"type": "string"}},
                            "required": ["location"]}}
# provider -> (text alias, tools alias, passed through?)
PROVIDERS = {
    "openai-compatible": ("compat", "compat-tools", False),
    "anthropic": ("claude", "claude-tools", True),
    "gemini": ("gem", "gem-tools", False),
}
EVENTS = {"message_start", "content_block_start", "content_block_delta", "content_block_stop", "message_delta",
          "message_stop", "ping"}


@pytest.fixture(scope="module")
def env():
    e = FrontDoorEnv().start()
    yield e
    e.stop()


@pytest.fixture(scope="module")
def key(env) -> dict:
    return env.create_key()


@pytest.fixture(scope="module")
def client(env, key):
    c = anthropic.Anthropic(base_url=env.base, api_key=key["key"], max_retries=0, timeout=20)
    yield c
    c.close()


@pytest.fixture(scope="module")
def chat(env, key):
    c = openai.OpenAI(base_url=env.base + "/v1", api_key=key["key"], max_retries=0, timeout=20)
    yield c
    c.close()


@pytest.fixture(scope="module")
def http(env):
    c = httpx.Client(base_url=env.base, timeout=20)
    yield c
    c.close()


def expected_text(chat, alias: str, passthrough: bool) -> str:
    if passthrough:
        return TEXT
    return chat.chat.completions.create(model=alias, messages=[{"role": "user", "content": "Hi"}],
                                        max_tokens=100).choices[0].message.content


def raw_events(http: httpx.Client, key: str, body: dict, **headers) -> list[tuple[str, dict]]:
    """The stream's events as (event name, payload), checked: names match payload types."""
    with http.stream("POST", "/v1/messages", json=body,
                     headers={"x-api-key": key, "anthropic-version": "2023-06-01", **headers}) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers.get("x-request-id")
        text = r.read().decode()
    events = []
    for e in parse_sse(text):
        payload = json.loads(e.data)
        assert e.event == payload["type"], (e.event, payload)
        events.append((e.event, payload))
    return events


def assert_sequence(events: list[tuple[str, dict]]) -> None:
    """Anthropic's order: message_start, balanced blocks with deltas inside, message_delta, message_stop."""
    names = [n for n, _ in events]
    assert set(names) <= EVENTS, names
    assert names[0] == "message_start" and names[-2:] == ["message_delta", "message_stop"], names
    open_blocks: set[int] = set()
    for name, p in events:
        if name == "content_block_start":
            assert p["index"] not in open_blocks
            open_blocks.add(p["index"])
        elif name == "content_block_delta":
            assert p["index"] in open_blocks, (p, open_blocks)
        elif name == "content_block_stop":
            open_blocks.remove(p["index"])
    assert not open_blocks


# ------------------------------------------------------------------------------------------ create
@pytest.mark.parametrize("provider", PROVIDERS)
def test_create_text(client, chat, env, provider):
    alias, _, passthrough = PROVIDERS[provider]
    want = expected_text(chat, alias, passthrough)
    raw = client.messages.with_raw_response.create(
        model=alias, max_tokens=100, system="Be brief.", messages=[{"role": "user", "content": "Hi"}],
        stop_sequences=["\n\nHuman:"], metadata={"user_id": "u-42"}, extra_body={"temperature": 0.5})
    assert raw.headers.get("x-request-id")
    assert raw.headers.get("x-conduit-overhead-ms")
    msg = raw.parse()
    assert msg.type == "message" and msg.role == "assistant"
    assert msg.model == alias
    assert msg.content[0].type == "text"
    assert msg.content[0].text == want
    assert msg.stop_reason == "end_turn"
    assert msg.usage.input_tokens > 0 and msg.usage.output_tokens > 0
    if provider == "anthropic":
        sent = env.anthropic.last().body
        assert sent == {"model": "claude-text", "max_tokens": 100, "system": "Be brief.",
                        "messages": [{"role": "user", "content": "Hi"}], "temperature": 0.5,
                        "stop_sequences": ["\n\nHuman:"], "metadata": {"user_id": "u-42"}}
    if provider == "openai-compatible":
        sent = env.openai.requests[-1].body
        assert sent["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
        assert sent["stop"] == ["\n\nHuman:"] and sent["user"] == "u-42" and sent["max_tokens"] == 100
        assert sent["temperature"] == 0.5


def test_output_config_format_is_structured_output(client, env):
    schema = {"type": "object", "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
              "required": ["city", "population"], "additionalProperties": False}
    client.messages.create(model="compat", max_tokens=50, messages=[{"role": "user", "content": "x"}],
                           output_config={"format": {"type": "json_schema", "schema": schema}})
    assert env.openai.requests[-1].body["response_format"] == {
        "type": "json_schema", "json_schema": {"name": "output", "schema": schema}}


def test_claude_on_bedrock_passes_through_invoke(client, env):
    msg = client.messages.create(model="bedrock-claude", max_tokens=50,
                                 messages=[{"role": "user", "content": "Hi"}])
    assert msg.content[0].text == TEXT and msg.model == "bedrock-claude"
    rec = env.bedrock.last()
    assert rec["action"] == "invoke" and rec["problems"] == []
    assert rec["body"] == {"anthropic_version": "bedrock-2023-05-31", "max_tokens": 50,
                           "messages": [{"role": "user", "content": "Hi"}]}
    with client.messages.stream(model="bedrock-claude", max_tokens=50,
                                messages=[{"role": "user", "content": "Hi"}]) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert env.bedrock.last()["action"] == "invoke-with-response-stream"
    assert text and final.content[0].text == text
    assert final.usage.output_tokens > 0


# ------------------------------------------------------------------------------------------ stream
@pytest.mark.parametrize("provider", PROVIDERS)
def test_stream_text(client, chat, http, key, provider):
    alias, _, passthrough = PROVIDERS[provider]
    with client.messages.stream(model=alias, max_tokens=100,
                                messages=[{"role": "user", "content": "Hi"}]) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert final.content[0].type == "text" and final.content[0].text == text
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens > 0
    if not passthrough:
        # The translated stream says what the chat stream says.
        chunks = chat.chat.completions.create(model=alias, messages=[{"role": "user", "content": "Hi"}],
                                              stream=True)
        assert text == "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert final.usage.input_tokens > 0
    events = raw_events(http, key["key"], {"model": alias, "max_tokens": 100, "stream": True,
                                           "messages": [{"role": "user", "content": "Hi"}]})
    assert_sequence(events)


def test_stream_error_after_200_is_an_error_event(http, key):
    events = raw_events(http, key["key"], {"model": "claude-stream-error", "max_tokens": 10, "stream": True,
                                           "messages": [{"role": "user", "content": "x"}]})
    name, payload = events[-1]
    assert name == "error"
    assert payload == {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}


def test_pings_while_the_provider_is_silent(client, http, key):
    # The gateway's idle timeout is 5 s: a ping after each second of silence.
    events = raw_events(http, key["key"], {"model": "claude-slow", "max_tokens": 10, "stream": True,
                                           "messages": [{"role": "user", "content": "x"}]})
    names = [n for n, _ in events]
    assert names[0] == "message_start"
    assert names[1:3] == ["ping", "ping"], names
    assert names[-1] == "message_stop"
    with client.messages.stream(model="claude-slow", max_tokens=10,
                                messages=[{"role": "user", "content": "x"}]) as s:
        assert s.get_final_message().content[0].text == "2"


def test_unknown_method_on_messages_is_anthropic_shaped(http, key):
    r = http.get("/v1/messages", headers={"x-api-key": key["key"]})
    assert r.status_code == 405
    assert r.json()["type"] == "error" and r.json()["error"]["type"] == "invalid_request_error"


# ------------------------------------------------------------------------------------------ tools
@pytest.mark.parametrize("provider", PROVIDERS)
def test_tool_use_stream_and_round_trip(client, env, provider):
    _, alias, _ = PROVIDERS[provider]
    question = {"role": "user", "content": "What is the weather in San Francisco?"}
    with client.messages.stream(model=alias, max_tokens=200, tools=[WEATHER],
                                tool_choice={"type": "auto"}, messages=[question]) as s:
        final = s.get_final_message()
    uses = [b for b in final.content if b.type == "tool_use"]
    assert uses, final
    assert final.stop_reason == "tool_use"
    use = uses[0]
    assert use.id and use.name and isinstance(use.input, dict) and use.input
    if provider == "openai-compatible":
        assert env.openai.requests[-1].body["tools"] == [{"type": "function", "function": {
            "name": "get_weather", "description": "Current weather in a city",
            "parameters": WEATHER["input_schema"]}}]

    # The next turn: the assistant's tool use and the tool's result.
    messages = [question, {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in final.content]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "18C, sunny"},
                                             {"type": "text", "text": "Thanks."}]}]
    answer = client.messages.create(model=alias, max_tokens=200, tools=[WEATHER], messages=messages)
    assert answer.type == "message"
    if provider == "openai-compatible":
        sent = env.openai.requests[-1].body["messages"]
        assert sent[1]["role"] == "assistant"
        assert sent[1]["tool_calls"][0]["id"] == use.id
        assert json.loads(sent[1]["tool_calls"][0]["function"]["arguments"]) == use.input
        assert sent[2] == {"role": "tool", "tool_call_id": use.id, "content": "18C, sunny"}
        assert sent[3] == {"role": "user", "content": [{"type": "text", "text": "Thanks."}]}
    elif provider == "gemini":
        contents = env.gemini.last("gemini-tools").body["contents"]
        assert contents[2]["parts"][0]["functionResponse"]["name"] == use.name
        assert answer.content[0].type == "text" and answer.stop_reason == "end_turn"
    else:
        assert env.anthropic.last().body["messages"] == messages


def test_tool_use_create_non_stream(client):
    msg = client.messages.create(model="compat-tools", max_tokens=50, tools=[WEATHER],
                                 messages=[{"role": "user", "content": "Capital of the UK?"}])
    use = [b for b in msg.content if b.type == "tool_use"][0]
    assert use.name == "get_capital" and use.input == {"country": "UK"}
    assert msg.stop_reason == "tool_use"


def test_tool_choice_forms(client, env):
    for choice, want in [({"type": "any"}, "required"), ({"type": "none"}, "none"),
                         ({"type": "tool", "name": "get_weather"},
                          {"type": "function", "function": {"name": "get_weather"}})]:
        client.messages.create(model="compat", max_tokens=10, tools=[WEATHER], tool_choice=choice,
                               messages=[{"role": "user", "content": "x"}])
        assert env.openai.requests[-1].body["tool_choice"] == want
    client.messages.create(model="compat", max_tokens=10, tools=[WEATHER],
                           tool_choice={"type": "auto", "disable_parallel_tool_use": True},
                           messages=[{"role": "user", "content": "x"}])
    assert env.openai.requests[-1].body["parallel_tool_calls"] is False


# ------------------------------------------------------------------------------------------ images
@pytest.mark.parametrize("provider", PROVIDERS)
def test_images(client, env, provider):
    alias, _, _ = PROVIDERS[provider]
    msg = client.messages.create(model=alias, max_tokens=20, messages=[{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG_1PX}},
        {"type": "text", "text": "What is this?"}]}])
    assert msg.content[0].type == "text"
    if provider == "openai-compatible":
        assert env.openai.requests[-1].body["messages"][0]["content"] == [
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG_1PX}"}},
            {"type": "text", "text": "What is this?"}]
    elif provider == "gemini":
        parts = env.gemini.last("gemini-text").body["contents"][0]["parts"]
        assert parts[0] == {"inlineData": {"mimeType": "image/png", "data": PNG_1PX}}
    else:
        assert env.anthropic.last().body["messages"][0]["content"][0]["source"]["data"] == PNG_1PX


def test_image_url_and_tool_result_image_translated(client, env):
    client.messages.create(model="compat", max_tokens=20, messages=[
        {"role": "user", "content": [{"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}}]},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "shot", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG_1PX}}]}]}])
    sent = env.openai.requests[-1].body["messages"]
    assert sent[0]["content"] == [{"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]
    assert sent[2]["content"] == [{"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG_1PX}"}}]


# ------------------------------------------------------------------------------------------ count_tokens
def test_count_tokens_from_anthropic(client, env):
    r = client.messages.with_raw_response.count_tokens(
        model="claude", system="Be brief.", messages=[{"role": "user", "content": "Hello there"}])
    count = r.parse()
    assert count.input_tokens >= 1000  # the mock's own count
    assert r.headers.get("x-conduit-token-count") is None
    sent = env.anthropic.last()
    assert sent.path == "/v1/messages/count_tokens"
    assert sent.body == {"model": "claude-text", "messages": [{"role": "user", "content": "Hello there"}],
                         "system": "Be brief."}


@pytest.mark.parametrize("alias", ["compat", "gem"])
def test_count_tokens_estimated(client, alias):
    r = client.messages.with_raw_response.count_tokens(
        model=alias, messages=[{"role": "user", "content": "Hello there, how are you today?"}])
    assert r.headers["x-conduit-token-count"] == "estimate"
    n = r.parse().input_tokens
    assert 5 <= n <= 30


# ------------------------------------------------------------------------------------------ errors
def assert_anthropic_error(e: anthropic.APIStatusError, status: int, kind: str) -> None:
    assert e.status_code == status
    assert e.body == {"type": "error", "error": {"type": kind, "message": e.body["error"]["message"]}}
    assert e.body["error"]["message"]
    assert e.response.headers.get("x-request-id")


def test_typed_errors(env, client):
    bad = anthropic.Anthropic(base_url=env.base, api_key="condt_not-a-key", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as ei:
        bad.messages.create(model="claude", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    assert_anthropic_error(ei.value, 401, "authentication_error")

    narrow = env.create_key(allowed_models=["gem"])
    limited = anthropic.Anthropic(base_url=env.base, api_key=narrow["key"], max_retries=0)
    with pytest.raises(anthropic.PermissionDeniedError) as ei:
        limited.messages.create(model="claude", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    assert_anthropic_error(ei.value, 403, "permission_error")

    with pytest.raises(anthropic.NotFoundError) as ei:
        client.messages.create(model="no-such-alias", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    assert_anthropic_error(ei.value, 404, "not_found_error")

    with pytest.raises(anthropic.BadRequestError) as ei:
        client.messages.create(model="compat", messages=[{"role": "user", "content": "x"}], max_tokens=0)
    assert_anthropic_error(ei.value, 400, "invalid_request_error")

    with pytest.raises(anthropic.BadRequestError) as ei:
        client.messages.create(model="compat", max_tokens=5, messages=[{"role": "user", "content": "x"}],
                               extra_body={"top_k": 5})
    assert "top_k" in ei.value.body["error"]["message"]


def test_rate_limit_of_the_key_is_429_with_retry_after(env):
    k = env.create_key(limits={"rpm": 1})
    c = anthropic.Anthropic(base_url=env.base, api_key=k["key"], max_retries=0)
    c.messages.create(model="claude", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    with pytest.raises(anthropic.RateLimitError) as ei:
        c.messages.create(model="claude", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    assert_anthropic_error(ei.value, 429, "rate_limit_error")
    assert int(ei.value.response.headers["retry-after"]) >= 1
    with pytest.raises(anthropic.RateLimitError):
        with c.messages.stream(model="claude", max_tokens=5, messages=[{"role": "user", "content": "x"}]) as s:
            s.get_final_message()


def test_provider_429_keeps_retry_after(client):
    with pytest.raises(anthropic.RateLimitError) as ei:
        client.messages.create(model="claude-429", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    assert_anthropic_error(ei.value, 429, "rate_limit_error")
    assert ei.value.response.headers["retry-after"] == "7"


def test_budget_is_402_billing_error(env):
    k = env.create_key(budget={"max_usd": 0.000000001, "period": "total"})
    c = anthropic.Anthropic(base_url=env.base, api_key=k["key"], max_retries=0)
    with pytest.raises(anthropic.APIStatusError) as ei:
        c.messages.create(model="claude-priced", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    assert_anthropic_error(ei.value, 402, "billing_error")


# ------------------------------------------------------------------------------------------ pipeline
def test_bearer_key_fallback_and_usage_record(env, http):
    k = env.create_key()
    r = http.post("/v1/messages", headers={"Authorization": f"Bearer {k['key']}", "anthropic-version": "2023-06-01",
                                           "anthropic-beta": "prompt-caching-2024-07-31"},
                  json={"model": "fallback", "max_tokens": 20, "messages": [{"role": "user", "content": "Hi"}]})
    assert r.status_code == 200, r.text
    assert r.json()["content"][0]["text"] == TEXT  # the second deployment served
    recs = env.usage(k["id"], 1)
    assert recs and recs[0]["endpoint"] == "/v1/messages"
    assert recs[0]["provider"] == "claude" and recs[0]["prompt_tokens"] == 12 and recs[0]["completion_tokens"] == 29


def test_streamed_usage_is_recorded(env, http):
    k = env.create_key()
    events = raw_events(http, k["key"], {"model": "gem", "max_tokens": 50, "stream": True,
                                         "messages": [{"role": "user", "content": "Hi"}]})
    usage = events[-2][1]["usage"]
    recs = env.usage(k["id"], 1)
    assert recs[0]["endpoint"] == "/v1/messages" and recs[0]["streamed"] is True
    assert recs[0]["completion_tokens"] == usage["output_tokens"] > 0
    assert recs[0]["prompt_tokens"] == usage["input_tokens"] > 0
