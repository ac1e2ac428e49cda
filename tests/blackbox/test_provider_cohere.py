"""The `cohere` provider, black-box: the official OpenAI SDK through Conduit to a mock Cohere v2 API.

The module starts its own gateway (make_target()) with the documented config shape pointing at
mock_cohere.MockCohere, which answers from the recorded Cohere payloads (tests/fixtures/cohere/)
and refuses any request that is not Cohere v2's shape. Each test then checks both sides: what the
client got (validated against OpenAI's response schemas) and what Cohere received.
"""
from __future__ import annotations

import base64
import json
import time
import uuid

import httpx
import openai
import pytest

import openapi
from conftest import MASTER_KEY
from helpers import assert_error_body, assert_sdk_error, auth, chunk_dicts, stream_raw
from mock_cohere import COHERE_KEY, TEXT_STREAM, MockCohere, stream_text
from targets import make_target

TEXT = stream_text(TEXT_STREAM)  # "The capital of France is Paris."

# alias -> (Cohere model, drop_unsupported_params)
ALIASES = {
    "co": ("command-a-03-2025", False),
    "co-drop": ("command-a-03-2025", True),
    "co-tools": ("cohere-tools", False),
    "co-max": ("cohere-max-tokens", False),
    "co-stream-error": ("cohere-stream-error", False),
    "co-429": ("cohere-429", False),
    "co-400": ("cohere-400", False),
    "co-blocked": ("cohere-blocked", False),
    "co-500": ("cohere-500", False),
    "co-embed": ("embed-v4.0", False),
}

TOOLS = [
    {"type": "function", "function": {"name": "weather", "description": "Weather in a place",
                                      "parameters": {"type": "object", "properties": {"location": {"type": "string"}},
                                                     "required": ["location"]}}},
    {"type": "function", "function": {"name": "cityAttractions", "description": "Attractions in a city",
                                      "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                     "required": ["city"]}}},
]


def config(mock_url: str) -> str:
    lines = [
        "[providers.cohere]",
        'kind = "cohere"',
        f'base_url = "{mock_url}"',
        'api_key_env = "COHERE_API_KEY"',
        "",
        "[gateway]",
        "upstream_timeout_ms = 5000",
        "",
    ]
    for alias, (model, drop) in ALIASES.items():
        extra = ", drop_unsupported_params = true" if drop else ""
        lines += [f'[models."{alias}"]', f'deployments = [{{ provider = "cohere", model = "{model}"{extra} }}]', ""]
    return "\n".join(lines)


@pytest.fixture(scope="module")
def co_mock():
    m = MockCohere().start()
    yield m
    m.stop()


@pytest.fixture(scope="module")
def cgw(co_mock):
    t = make_target()
    base = t.start(config(co_mock.url), {"CONDUIT_MASTER_KEY": MASTER_KEY, "COHERE_API_KEY": COHERE_KEY})
    deadline = time.monotonic() + 10
    while httpx.get(base + "/health", timeout=2).status_code != 200:
        assert time.monotonic() < deadline, "gateway never became healthy"
        time.sleep(0.05)
    yield base
    t.stop()


@pytest.fixture(scope="module")
def key(cgw) -> dict:
    r = httpx.post(cgw + "/admin/keys", json={"name": "cohere-bb"}, headers=auth(MASTER_KEY), timeout=10)
    assert r.status_code == 201, r.text
    return r.json()


@pytest.fixture(scope="module")
def client(cgw, key):
    c = openai.OpenAI(base_url=cgw + "/v1", api_key=key["key"], max_retries=0, timeout=20)
    yield c
    c.close()


@pytest.fixture(scope="module")
def http(cgw):
    c = httpx.Client(base_url=cgw, timeout=20)
    yield c
    c.close()


@pytest.fixture
def marker() -> str:
    return "bbco-" + uuid.uuid4().hex


def received(co_mock: MockCohere, marker: str) -> dict:
    """The one request Cohere received for this test; it must have passed the mock's checks."""
    reqs = co_mock.with_marker(marker)
    assert len(reqs) == 1, f"expected one upstream request with {marker}, got {len(reqs)}"
    r = reqs[0]
    assert r.error is None, r.error
    assert r.headers["authorization"] == f"Bearer {COHERE_KEY}"
    assert r.headers["content-type"].startswith("application/json")
    return r.body


def wire(obj) -> dict:
    return obj.to_dict(mode="json", exclude_unset=True)


# --------------------------------------------------------------------------------------------
# chat
# --------------------------------------------------------------------------------------------
def test_chat_non_stream(client, co_mock, marker):
    r = client.chat.completions.create(
        model="co",
        messages=[{"role": "system", "content": "Answer briefly."},
                  {"role": "user", "content": f"Capital of France? {marker}"}],
        max_tokens=50, temperature=0.2, top_p=0.9, stop=["END"], seed=3, user="user-1",
        frequency_penalty=0.1, presence_penalty=0.2,
    )
    body = wire(r)
    openapi.validate(openapi.CHAT_COMPLETION, body)
    assert body["model"] == "co"
    assert body["object"] == "chat.completion"
    choice = body["choices"][0]
    assert choice["message"]["content"] == TEXT
    assert choice["message"]["role"] == "assistant"
    assert choice["finish_reason"] == "stop"
    assert body["usage"]["prompt_tokens"] == 507
    assert body["usage"]["completion_tokens"] == 10
    assert body["usage"]["total_tokens"] == 517
    assert body["usage"]["prompt_tokens_details"]["cached_tokens"] == 448

    sent = received(co_mock, marker)
    assert sent == {
        "model": "command-a-03-2025",
        "messages": [{"role": "system", "content": "Answer briefly."},
                     {"role": "user", "content": f"Capital of France? {marker}"}],
        "max_tokens": 50, "stop_sequences": ["END"], "temperature": 0.2, "p": 0.9, "seed": 3,
        "frequency_penalty": 0.1, "presence_penalty": 0.2,
    }


def test_chat_max_tokens_is_length(client):
    r = client.chat.completions.create(model="co-max", messages=[{"role": "user", "content": "history"}],
                                       max_completion_tokens=4)
    body = wire(r)
    openapi.validate(openapi.CHAT_COMPLETION, body)
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["choices"][0]["message"]["content"] == "**The History of"
    assert body["usage"] == {"prompt_tokens": 506, "completion_tokens": 5, "total_tokens": 511,
                             "prompt_tokens_details": {"cached_tokens": 448},
                             "completion_tokens_details": {"reasoning_tokens": 0}}


def test_chat_stream(client, co_mock, marker):
    stream = client.chat.completions.create(model="co", messages=[{"role": "user", "content": marker}],
                                            stream=True, stream_options={"include_usage": True})
    chunks = chunk_dicts(stream)
    for c in chunks:
        openapi.validate(openapi.CHAT_COMPLETION_CHUNK, c)
        assert c["model"] == "co"
        assert c["object"] == "chat.completion.chunk"
    with_choices = [c for c in chunks if c["choices"]]
    assert with_choices[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in with_choices) == TEXT
    assert [c["choices"][0]["finish_reason"] for c in with_choices][-1] == "stop"
    assert all(c["choices"][0]["finish_reason"] is None for c in with_choices[:-1])
    usage = chunks[-1]
    assert usage["choices"] == []
    assert usage["usage"]["prompt_tokens"] == 507
    assert usage["usage"]["completion_tokens"] == 10
    assert usage["usage"]["total_tokens"] == 517
    assert usage["usage"]["prompt_tokens_details"]["cached_tokens"] == 448
    assert len({c["id"] for c in chunks}) == 1
    sent = received(co_mock, marker)
    assert sent["stream"] is True
    assert "stream_options" not in sent


def test_chat_stream_raw_ends_with_done(http, key):
    r, _, events = stream_raw(http, "/v1/chat/completions", key["key"],
                              {"model": "co", "messages": [{"role": "user", "content": "x"}], "stream": True})
    assert r.status_code == 200
    assert events[-1].is_done
    payloads = [e.json() for e in events[:-1]]
    assert all("usage" not in p for p in payloads), "usage is shown only when asked for"


def test_images_pass_as_urls(client, co_mock, marker):
    png = "data:image/png;base64," + base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 16).decode()
    client.chat.completions.create(model="co", messages=[{"role": "user", "content": [
        {"type": "text", "text": f"What are these? {marker}"},
        {"type": "image_url", "image_url": {"url": png, "detail": "low"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
    ]}])
    sent = received(co_mock, marker)
    assert sent["messages"][0]["content"] == [
        {"type": "text", "text": f"What are these? {marker}"},
        {"type": "image_url", "image_url": {"url": png, "detail": "low"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
    ]


def test_response_format_json_schema(client, co_mock, marker):
    schema = {"type": "object", "properties": {"capital": {"type": "string"}}, "required": ["capital"]}
    client.chat.completions.create(model="co", messages=[{"role": "user", "content": marker}],
                                   response_format={"type": "json_schema",
                                                    "json_schema": {"name": "c", "strict": True, "schema": schema}})
    assert received(co_mock, marker)["response_format"] == {"type": "json_object", "json_schema": schema}
    m2 = marker + "-obj"
    client.chat.completions.create(model="co", messages=[{"role": "user", "content": m2}],
                                   response_format={"type": "json_object"})
    assert received(co_mock, m2)["response_format"] == {"type": "json_object"}


# --------------------------------------------------------------------------------------------
# tools
# --------------------------------------------------------------------------------------------
def test_tool_call_round_trip(client, co_mock, marker):
    first = client.chat.completions.create(
        model="co-tools", messages=[{"role": "user", "content": f"Weather and sights in SF? {marker}"}],
        tools=TOOLS, tool_choice="required")
    body = wire(first)
    openapi.validate(openapi.CHAT_COMPLETION, body)
    msg = body["choices"][0]["message"]
    assert body["choices"][0]["finish_reason"] == "tool_calls"
    assert msg["content"] is None, "the tool plan is not the answer"
    calls = msg["tool_calls"]
    assert [(c["id"], c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls] == [
        ("weather_dqgshstja6p9", "weather", {"location": "San Francisco"}),
        ("cityAttractions_dcxfx4myvx68", "cityAttractions", {"city": "San Francisco"}),
    ]
    sent = received(co_mock, marker)
    assert sent["tool_choice"] == "REQUIRED"
    assert sent["tools"] == [{"type": "function", "function": t["function"]} for t in TOOLS]

    m2 = marker + "-results"
    second = client.chat.completions.create(model="co", tools=TOOLS, messages=[
        {"role": "user", "content": f"Weather and sights in SF? {m2}"},
        first.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": calls[0]["id"], "content": "Sunny, 21 C"},
        {"role": "tool", "tool_call_id": calls[1]["id"], "content": [{"type": "text", "text": "Golden Gate Bridge"}]},
    ])
    assert second.choices[0].message.content == TEXT
    sent = received(co_mock, m2)
    assert sent["messages"][1] == {"role": "assistant", "tool_calls": [
        {"id": c["id"], "type": "function", "function": c["function"]} for c in calls]}
    assert sent["messages"][2] == {"role": "tool", "tool_call_id": "weather_dqgshstja6p9", "content": "Sunny, 21 C"}
    assert sent["messages"][3] == {"role": "tool", "tool_call_id": "cityAttractions_dcxfx4myvx68",
                                   "content": [{"type": "text", "text": "Golden Gate Bridge"}]}
    assert "tool_choice" not in sent


def test_tool_call_stream(client, co_mock, marker):
    chunks = chunk_dicts(client.chat.completions.create(
        model="co-tools", messages=[{"role": "user", "content": marker}], tools=TOOLS, stream=True))
    for c in chunks:
        openapi.validate(openapi.CHAT_COMPLETION_CHUNK, c)
    assert all(not (c["choices"][0]["delta"].get("content") or "") for c in chunks if c["choices"])
    calls: dict[int, dict] = {}
    for c in chunks:
        for tc in (c["choices"][0]["delta"].get("tool_calls") or []) if c["choices"] else []:
            i = tc["index"]
            if i not in calls:
                # the first delta of each call names it
                assert tc["id"] and tc["type"] == "function" and tc["function"]["name"], tc
                calls[i] = {"id": tc["id"], "name": tc["function"]["name"], "arguments": ""}
            else:
                assert "id" not in tc and "name" not in tc.get("function", {}), tc
            calls[i]["arguments"] += tc["function"].get("arguments") or ""
    assert [(c["id"], c["name"], json.loads(c["arguments"])) for c in calls.values()] == [
        ("weather_e8p4pn45zt0t", "weather", {"location": "San Francisco"}),
        ("cityAttractions_pyxssbwnq9fq", "cityAttractions", {"city": "San Francisco"}),
    ]
    assert [c for c in chunks if c["choices"]][-1]["choices"][0]["finish_reason"] == "tool_calls"
    assert received(co_mock, marker)["stream"] is True


def test_named_tool_choice_and_none(client, co_mock, marker):
    client.chat.completions.create(model="co-tools", messages=[{"role": "user", "content": marker}], tools=TOOLS,
                                   tool_choice={"type": "function", "function": {"name": "cityAttractions"}})
    sent = received(co_mock, marker)
    assert sent["tool_choice"] == "REQUIRED"
    assert [t["function"]["name"] for t in sent["tools"]] == ["cityAttractions"]
    m2 = marker + "-none"
    client.chat.completions.create(model="co", messages=[{"role": "user", "content": m2}], tools=TOOLS,
                                   tool_choice="none")
    assert received(co_mock, m2)["tool_choice"] == "NONE"


# --------------------------------------------------------------------------------------------
# unsupported parameters and errors
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("param,value", [("n", 2), ("logprobs", True), ("top_logprobs", 2),
                                         ("parallel_tool_calls", False)])
def test_unsupported_params(client, co_mock, marker, param, value):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="co", messages=[{"role": "user", "content": marker}],
                                       **{param: value})
    err = assert_sdk_error(e.value, 400, param=param, type_="invalid_request_error")
    assert param in err["message"]
    assert not co_mock.with_marker(marker), "a refused request must not reach Cohere"
    # The deployment with drop_unsupported_params answers, without the parameter.
    m2 = marker + "-drop"
    r = client.chat.completions.create(model="co-drop", messages=[{"role": "user", "content": m2}],
                                       **{param: value})
    assert r.choices[0].message.content == TEXT
    assert param not in received(co_mock, m2)


def test_error_429_keeps_retry_after(client):
    with pytest.raises(openai.RateLimitError) as e:
        client.chat.completions.create(model="co-429", messages=[{"role": "user", "content": "x"}])
    err = assert_sdk_error(e.value, 429, type_="rate_limit_error")
    assert "Trial key" in err["message"]
    assert e.value.response.headers.get("retry-after") == "7"


def test_error_400_is_kept(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="co-400", messages=[{"role": "user", "content": "x"}])
    err = assert_sdk_error(e.value, 400, type_="invalid_request_error")
    assert err["message"] == "invalid request: max_tokens is too large for this model"


def test_blocked_prompt(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="co-blocked", messages=[{"role": "user", "content": "x"}])
    err = assert_sdk_error(e.value, 400, code="content_filter")
    assert err["message"].startswith("blocked input")


def test_error_500_is_502(client):
    with pytest.raises(openai.APIStatusError) as e:
        client.chat.completions.create(model="co-500", messages=[{"role": "user", "content": "x"}])
    assert_sdk_error(e.value, 502, type_="api_error")


def test_generation_error(client, http, key):
    with pytest.raises(openai.APIStatusError) as e:
        client.chat.completions.create(model="co-stream-error", messages=[{"role": "user", "content": "x"}])
    assert_sdk_error(e.value, 502)
    r, _, events = stream_raw(http, "/v1/chat/completions", key["key"],
                              {"model": "co-stream-error", "messages": [{"role": "user", "content": "x"}],
                               "stream": True})
    assert r.status_code == 200
    assert not any(e.is_done for e in events), "a failed generation must not end with [DONE]"
    last = events[-1].json()
    assert_error_body(last)
    assert "mock generation failure" in last["error"]["message"]


def test_bad_key_never_reaches_cohere(cgw, co_mock):
    before = len(co_mock.requests)
    r = httpx.post(cgw + "/v1/chat/completions", json={"model": "co", "messages": [{"role": "user", "content": "x"}]},
                   headers=auth("condt_wrong"), timeout=10)
    assert r.status_code == 401
    assert len(co_mock.requests) == before


# --------------------------------------------------------------------------------------------
# embeddings and legacy completions
# --------------------------------------------------------------------------------------------
def test_embeddings(client, http, key, co_mock, marker):
    texts = [f"sunny day at the beach {marker}", "rainy day in the city", "snow"]
    r = client.embeddings.create(model="co-embed", input=texts)  # the SDK asks for base64 by default
    assert [d.index for d in r.data] == [0, 1, 2]
    assert len(r.data[0].embedding) == 5
    assert r.data[0].embedding[0] == pytest.approx(0.03302002)
    assert r.usage.prompt_tokens == 10 and r.usage.total_tokens == 10
    sent = received(co_mock, marker)
    assert sent == {"model": "embed-v4.0", "texts": texts, "input_type": "search_document",
                    "embedding_types": ["float"]}

    raw = http.post("/v1/embeddings", headers=auth(key["key"]),
                    json={"model": "co-embed", "input": "one text", "encoding_format": "float"})
    assert raw.status_code == 200, raw.text
    openapi.validate(openapi.EMBEDDINGS, raw.json())
    assert raw.json()["model"] == "co-embed"

    bad = http.post("/v1/embeddings", headers=auth(key["key"]), json={"model": "co-embed", "input": [[1, 2, 3]]})
    assert_error_body(bad.json(), param="input")
    assert bad.status_code == 400


def test_legacy_completions(client, co_mock, marker):
    r = client.completions.create(model="co", prompt=f"Capital of France? {marker}", max_tokens=5)
    body = wire(r)
    openapi.validate(openapi.COMPLETION, body)
    assert body["object"] == "text_completion"
    assert body["choices"][0]["text"] == TEXT
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"]["total_tokens"] == 517
    sent = received(co_mock, marker)
    assert sent["messages"] == [{"role": "user", "content": f"Capital of France? {marker}"}]
    assert sent["max_tokens"] == 5

    m2 = marker + "-stream"
    chunks = chunk_dicts(client.completions.create(model="co", prompt=m2, stream=True,
                                                   stream_options={"include_usage": True}))
    for c in chunks:
        openapi.validate(openapi.COMPLETION_CHUNK, c)
    assert "".join(c["choices"][0]["text"] for c in chunks if c["choices"]) == TEXT
    assert chunks[-1]["usage"]["total_tokens"] == 517
    # The legacy API's default max_tokens (16) is sent, since Cohere has none.
    assert received(co_mock, m2)["max_tokens"] == 16


def test_usage_is_metered_once(cgw, client, co_mock, marker):
    r = httpx.post(cgw + "/admin/keys", json={"name": "cohere-usage"}, headers=auth(MASTER_KEY), timeout=10)
    k = r.json()
    c = openai.OpenAI(base_url=cgw + "/v1", api_key=k["key"], max_retries=0, timeout=20)
    list(c.chat.completions.create(model="co", messages=[{"role": "user", "content": marker}], stream=True))
    c.chat.completions.create(model="co-tools", messages=[{"role": "user", "content": marker}], tools=TOOLS)
    c.close()
    deadline = time.monotonic() + 5
    while True:
        data = httpx.get(cgw + "/admin/usage", params={"key_id": k["id"]}, headers=auth(MASTER_KEY),
                         timeout=10).json()["data"]
        if len(data) >= 2 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    by_model = {d["provider_model"]: d for d in data}
    s = by_model["command-a-03-2025"]
    assert (s["prompt_tokens"], s["completion_tokens"], s["cached_tokens"], s["total_tokens"]) == (507, 10, 448, 517)
    assert s["streamed"] is True and s["provider"] == "cohere"
    t = by_model["cohere-tools"]
    assert (t["prompt_tokens"], t["completion_tokens"], t["cached_tokens"]) == (1549, 103, 992)
