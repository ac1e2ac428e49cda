"""The Responses API front door (`/v1/responses`), black-box, with the official `openai` SDK as the client.

Against an OpenAI deployment (passed through to the mock's `/v1/responses`, which replays recorded
Responses payloads), and an Anthropic and a Bedrock one (translated through chat). Every answer and
every streamed event on the wire is validated against OpenAI's OpenAPI schemas (Response,
ResponseStreamEvent); translated answers are compared with what the chat endpoint answers.
"""
from __future__ import annotations

import json

import httpx
import openai
import pytest
from pydantic import BaseModel

import openapi
from frontdoor_env import FrontDoorEnv
from helpers import assert_error_response, auth, parse_sse
from mock_anthropic import JSON_ANSWER

WEATHER = {"type": "function", "name": "get_weather", "description": "Current weather in a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
# provider -> (text alias, tools alias, passed through?)
PROVIDERS = {
    "openai": ("oai", "oai-tools", True),
    "anthropic": ("claude", "claude-tools", False),
    "bedrock": ("bedrock", "bedrock-tools", False),
}


class City(BaseModel):
    city: str
    population: int


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
    c = openai.OpenAI(base_url=env.base + "/v1", api_key=key["key"], max_retries=0, timeout=20)
    yield c
    c.close()


@pytest.fixture(scope="module")
def http(env):
    c = httpx.Client(base_url=env.base, timeout=20)
    yield c
    c.close()


def chat_text(client, alias: str) -> str:
    return client.chat.completions.create(model=alias, messages=[{"role": "user", "content": "Hi"}],
                                          max_tokens=100).choices[0].message.content


def chat_stream_text(client, alias: str) -> str:
    chunks = client.chat.completions.create(model=alias, messages=[{"role": "user", "content": "Hi"}], stream=True)
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def wire_events(http: httpx.Client, key: str, body: dict) -> list[dict]:
    """The stream's events, each validated against ResponseStreamEvent, with their sequence checked."""
    with http.stream("POST", "/v1/responses", json={**body, "stream": True}, headers=auth(key)) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        text = r.read().decode()
    events = []
    for e in parse_sse(text):
        payload = json.loads(e.data)
        openapi.validate(openapi.RESPONSE_STREAM_EVENT, payload)
        assert e.event == payload["type"]
        events.append(payload)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    types = [e["type"] for e in events]
    assert types[:2] == ["response.created", "response.in_progress"], types
    assert types[-1] in ("response.completed", "response.incomplete"), types
    return events


# ------------------------------------------------------------------------------------------ create
@pytest.mark.parametrize("provider", PROVIDERS)
def test_create_text(client, env, provider):
    alias, _, passthrough = PROVIDERS[provider]
    want = "OK" if passthrough else chat_text(client, alias)
    raw = client.responses.with_raw_response.create(model=alias, input="Hi", instructions="Be brief.",
                                                    max_output_tokens=100, temperature=0.5)
    assert raw.headers.get("x-request-id") and raw.headers.get("x-conduit-overhead-ms")
    body = raw.http_response.json()
    openapi.validate(openapi.RESPONSE, body)
    r = raw.parse()
    assert r.object == "response" and r.status == "completed" and r.model == alias
    assert r.output_text == want
    assert r.usage.input_tokens > 0 and r.usage.output_tokens > 0
    assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens
    if provider == "openai":
        sent = env.openai.requests[-1]
        assert sent.path == "/v1/responses"
        assert sent.body == {"model": "gpt-4o-mini", "input": "Hi", "instructions": "Be brief.",
                             "max_output_tokens": 100, "temperature": 0.5}
    elif provider == "anthropic":
        sent = env.anthropic.last().body
        assert sent["system"] == "Be brief." and sent["max_tokens"] == 100 and sent["temperature"] == 0.5
        assert sent["messages"] == [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}]
    else:
        sent = env.bedrock.last()
        assert sent["action"] == "converse" and sent["problems"] == []
        assert sent["body"]["system"] == [{"text": "Be brief."}]
        assert sent["body"]["inferenceConfig"]["maxTokens"] == 100


def test_input_items_and_image_translated(client, env):
    png = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
    client.responses.create(model="claude", input=[
        {"role": "developer", "content": "Answer in French."},
        {"type": "message", "role": "user", "content": [
            {"type": "input_text", "text": "What is in this image?"},
            {"type": "input_image", "image_url": png, "detail": "auto"}]},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Un pixel."}]},
        {"role": "user", "content": "Merci"},
    ], metadata={"trace": "t1"}, parallel_tool_calls=False)
    sent = env.anthropic.last().body
    assert sent["system"] == "Answer in French."
    assert sent["messages"][0]["content"][1] == {"type": "image", "source": {
        "type": "base64", "media_type": "image/png", "data": png.split(",", 1)[1]}}
    assert [m["role"] for m in sent["messages"]] == ["user", "assistant", "user"]


# ------------------------------------------------------------------------------------------ stream
@pytest.mark.parametrize("provider", PROVIDERS)
def test_stream_text(client, http, key, provider):
    alias, _, passthrough = PROVIDERS[provider]
    want = "OK" if passthrough else chat_stream_text(client, alias)
    events = wire_events(http, key["key"], {"model": alias, "input": "Hi"})
    deltas = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert deltas == want
    done = [e for e in events if e["type"] == "response.output_text.done"]
    assert [d["text"] for d in done] == [want]
    final = events[-1]["response"]
    assert final["status"] == "completed" and final["usage"]["output_tokens"] > 0
    with client.responses.stream(model=alias, input="Hi") as s:
        types = [ev.type for ev in s]
        r = s.get_final_response()
    assert r.output_text == want
    assert "response.output_text.delta" in types and types[-1] == "response.completed"


def test_stream_failure_is_response_failed(http, key):
    with http.stream("POST", "/v1/responses", headers=auth(key["key"]),
                     json={"model": "claude-stream-error", "input": "x", "stream": True}) as r:
        assert r.status_code == 200
        text = r.read().decode()
    events = [json.loads(e.data) for e in parse_sse(text)]
    for e in events:
        openapi.validate(openapi.RESPONSE_STREAM_EVENT, e)
    assert events[-1]["type"] == "response.failed"
    assert events[-1]["response"]["status"] == "failed"
    assert events[-1]["response"]["error"]["message"]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))


# ------------------------------------------------------------------------------------------ tools
@pytest.mark.parametrize("provider", PROVIDERS)
def test_function_calls_stream_and_round_trip(client, http, key, env, provider):
    _, alias, _ = PROVIDERS[provider]
    question = {"role": "user", "content": "Weather in Paris?"}
    events = wire_events(http, key["key"], {"model": alias, "input": [question], "tools": [WEATHER]})
    types = [e["type"] for e in events]
    assert "response.function_call_arguments.delta" in types
    assert "response.function_call_arguments.done" in types
    with client.responses.stream(model=alias, input=[question], tools=[WEATHER], tool_choice="auto") as s:
        for _ in s:
            pass
        r = s.get_final_response()
    calls = [o for o in r.output if o.type == "function_call"]
    assert calls, r.output
    for c in calls:
        assert c.call_id and c.name and isinstance(json.loads(c.arguments), dict)
    if provider == "anthropic":
        assert env.anthropic.last().body["tools"] == [{"name": "get_weather", "description": "Current weather in a city",
                                                       "input_schema": WEATHER["parameters"]}]
        assert env.anthropic.last().body["tool_choice"] == {"type": "auto"}

    # The next turn: the calls and their outputs.
    follow = [question] + [o.model_dump(exclude_none=True) for o in r.output] + [
        {"type": "function_call_output", "call_id": c.call_id, "output": f"18C in call {i}"}
        for i, c in enumerate(calls)]
    answer = client.responses.create(model=alias, input=follow, tools=[WEATHER])
    openapi.validate(openapi.RESPONSE, answer.to_dict(mode="json"))
    assert answer.output_text
    if provider == "openai":
        assert env.openai.requests[-1].body["input"][-1] == follow[-1]
    elif provider == "anthropic":
        last = env.anthropic.last().body["messages"][-1]
        assert last["role"] == "user"
        assert last["content"][0] == {"type": "tool_result", "tool_use_id": calls[0].call_id, "content": "18C in call 0"}
    else:
        last = env.bedrock.last()["body"]["messages"][-1]
        results = [b["toolResult"] for b in last["content"]]
        assert [r_["toolUseId"] for r_ in results] == [c.call_id for c in calls]


def test_function_call_create_non_stream(client):
    r = client.responses.create(model="bedrock-tools", input="Temperatures in Paris and Rome?", tools=[WEATHER])
    openapi.validate(openapi.RESPONSE, r.to_dict(mode="json"))
    assert r.output[0].type == "message"
    calls = [o for o in r.output if o.type == "function_call"]
    assert [(c.call_id, json.loads(c.arguments)) for c in calls] == [
        ("tooluse_paris", {"city": "Paris"}), ("tooluse_rome", {"city": "Rome"})]
    assert r.usage.input_tokens_details.cached_tokens == 100


# ------------------------------------------------------------------------------------------ structured output
def test_text_format_json_schema(client, env, http, key):
    schema = City.model_json_schema()
    schema["additionalProperties"] = False
    fmt = {"type": "json_schema", "name": "city", "schema": schema, "strict": True}
    r = client.responses.create(model="claude-json", input="Biggest French city?", text={"format": fmt})
    assert json.loads(r.output_text) == JSON_ANSWER
    assert env.anthropic.last().body["tools"][0]["input_schema"] == schema
    parsed = client.responses.parse(model="claude-json", input="Biggest French city?", text_format=City)
    assert parsed.output_parsed == City(**JSON_ANSWER)
    with client.responses.stream(model="claude-json", input="Biggest French city?", text_format=City) as s:
        final = s.get_final_response()
    assert final.output_parsed == City(**JSON_ANSWER)
    events = wire_events(http, key["key"], {"model": "bedrock-json", "input": "x",
                                            "text": {"format": {"type": "json_object"}}})
    assert json.loads(events[-1]["response"]["output"][0]["content"][0]["text"]) == {"answer": 42}
    # Passed through untouched to OpenAI.
    client.responses.create(model="oai", input="x", text={"format": fmt})
    assert env.openai.requests[-1].body["text"] == {"format": fmt}


# ------------------------------------------------------------------------------------------ state, tools and errors
def test_state_and_builtin_tools_are_400_when_translated(client, env):
    for kw, param in [({"previous_response_id": "resp_123"}, "previous_response_id"), ({"store": True}, "store"),
                      ({"tools": [{"type": "web_search"}]}, "tools[0].type")]:
        with pytest.raises(openai.BadRequestError) as ei:
            client.responses.create(model="claude", input="x", **kw)
        err = assert_error_response(ei.value.response, 400, type_="invalid_request_error", param=param)
        assert param.split("[")[0] in err["message"]
    # OpenAI keeps the state: passed through.
    client.responses.create(model="oai", input="x", previous_response_id="resp_123", store=True,
                            tools=[{"type": "web_search"}])
    sent = env.openai.requests[-1].body
    assert sent["previous_response_id"] == "resp_123" and sent["tools"] == [{"type": "web_search"}]


def test_stored_response_is_fetched_from_the_provider_that_keeps_it(env, client):
    r = client.responses.retrieve("resp_abc123")
    assert r.id == "resp_abc123" and r.output_text == "OK"
    sent = env.openai.requests[-1]
    assert (sent.method, sent.path) == ("GET", "/v1/responses/resp_abc123")
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve("resp_missing")
    narrow = env.create_key(allowed_models=["claude"])  # no deployment of it stores responses
    c = openai.OpenAI(base_url=env.base + "/v1", api_key=narrow["key"], max_retries=0)
    with pytest.raises(openai.NotFoundError) as ei:
        c.responses.retrieve("resp_abc123")
    assert_error_response(ei.value.response, 404, code="not_found")


def test_errors_in_openai_envelope(env, client):
    bad = openai.OpenAI(base_url=env.base + "/v1", api_key="condt_nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as ei:
        bad.responses.create(model="oai", input="x")
    assert_error_response(ei.value.response, 401, code="invalid_api_key")
    with pytest.raises(openai.NotFoundError) as ei:
        client.responses.create(model="no-such-alias", input="x")
    assert_error_response(ei.value.response, 404, code="model_not_found")
    with pytest.raises(openai.RateLimitError) as ei:
        client.responses.create(model="oai-429", input="x")
    assert ei.value.response.headers.get("retry-after") == "20"


def test_rate_limit_of_the_key_is_429(env):
    k = env.create_key(limits={"rpm": 1})
    c = openai.OpenAI(base_url=env.base + "/v1", api_key=k["key"], max_retries=0)
    c.responses.create(model="claude", input="x")
    with pytest.raises(openai.RateLimitError) as ei:
        c.responses.create(model="claude", input="x")
    assert_error_response(ei.value.response, 429, type_="rate_limit_error", code="rate_limit_exceeded")
    assert int(ei.value.response.headers["retry-after"]) >= 1
    with pytest.raises(openai.RateLimitError):
        with c.responses.stream(model="claude", input="x") as s:
            s.get_final_response()


def test_usage_records_name_the_endpoint(env):
    k = env.create_key()
    c = openai.OpenAI(base_url=env.base + "/v1", api_key=k["key"], max_retries=0)
    c.responses.create(model="oai", input="x")
    with c.responses.stream(model="claude", input="x") as s:
        s.get_final_response()
    recs = env.usage(k["id"], 2)
    assert {r["endpoint"] for r in recs} == {"/v1/responses"}
    by_model = {r["model"]: r for r in recs}
    assert (by_model["oai"]["prompt_tokens"], by_model["oai"]["completion_tokens"]) == (12, 2)
    assert by_model["claude"]["streamed"] is True and by_model["claude"]["completion_tokens"] > 0


def test_azure_passes_through_to_its_responses_api(make_client, api_key, mock):
    """The session gateway's Azure deployment (conftest): `/openai/responses?api-version=…`, key in `api-key`."""
    client = make_client(api_key)
    r = client.responses.create(model="azure-chat", input="Hi")
    assert r.output_text == "OK" and r.model == "azure-chat"
    sent = mock.requests[-1]
    assert sent.path == "/openai/responses" and sent.query["api-version"] == ["2024-10-21"]
    assert sent.headers["api-key"] and "authorization" not in sent.headers
    assert sent.body == {"model": "gpt5nano-deploy", "input": "Hi"}
    with client.responses.stream(model="azure-chat", input="Hi") as s:
        assert s.get_final_response().output_text == "OK"
