"""Kind `bedrock`, black-box: the official OpenAI SDK through Conduit to a local Bedrock Runtime.

The module starts its own gateway (targets.make_target()) whose `[providers.aws]` table has exactly
the documented shape, `base_url` pointing at mock_bedrock.MockBedrock. The mock answers from the
recorded payloads (tests/fixtures/bedrock/) and checks what it receives: the path (model id
percent-encoded), the JSON body shape and the SigV4 signature, which it recomputes.
"""
from __future__ import annotations

import json
import uuid

import httpx
import openai
import pytest

import openapi
from conftest import MASTER_KEY
from helpers import assert_sdk_error, auth, data_payloads, stream_raw
from mock_bedrock import MockBedrock
from targets import make_target

AKID, SECRET, TOKEN = "AKIDBBTEST00000001", "bb-secret/Key+example", "bb-session-token=="
AKID2, SECRET2 = "AKIDBBTEST00000002", "bb-second-secret"
CLAUDE = "anthropic.claude-3-5-sonnet-20240620-v1:0"
TEXT = ('Let me count the "r"s in "strawberry":\n\ns-t-**r**-a-w-b-e-**r**-**r**-y\n\n'
        'There are **3** "r"s in "strawberry."')
STREAM_TEXT = ('Let me count the "r"s in "strawberry":\n\ns-t-**r**-a-w-b-e-**r**-**r**-y\n\n'
               "There are **3** r's in \"strawberry.\"")

ALIASES = {
    "claude": ("aws", CLAUDE),
    "claude-eu": ("aws2", CLAUDE),
    "profile": ("aws", "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.claude-3-5-sonnet-20240620-v1:0"),
    "tools": ("aws", "mock.tools"),
    "guardrail": ("aws", "mock.guardrail"),
    "json": ("aws", "mock.json"),
    "stream-error": ("aws", "mock.stream-error"),
    "throttle": ("aws", "mock.throttle"),
    "validation": ("aws", "mock.validation"),
    "denied": ("aws", "mock.denied"),
    "missing": ("aws", "mock.missing"),
    "unavailable": ("aws", "mock.unavailable"),
    "internal": ("aws", "mock.internal"),
    "wrong-secret": ("aws-wrong-secret", CLAUDE),
    "titan": ("aws", "amazon.titan-embed-text-v2:0"),
    "cohere-embed": ("aws", "cohere.embed-english-v3"),
}


def config(mock_url: str) -> str:
    lines = [f"""
[providers.aws]
kind = "bedrock"
region = "us-east-1"
base_url = "{mock_url}"
access_key_id_env = "AWS_ACCESS_KEY_ID"
secret_access_key_env = "AWS_SECRET_ACCESS_KEY"
session_token_env = "AWS_SESSION_TOKEN"

[providers.aws2]
kind = "bedrock"
region = "eu-west-3"
base_url = "{mock_url}"
access_key_id_env = "BB_AWS2_ACCESS_KEY_ID"
secret_access_key_env = "BB_AWS2_SECRET_ACCESS_KEY"
session_token_env = "BB_AWS2_SESSION_TOKEN_UNSET"

[providers.aws-wrong-secret]
kind = "bedrock"
region = "us-east-1"
base_url = "{mock_url}"
access_key_id_env = "BB_AWS2_ACCESS_KEY_ID"
secret_access_key_env = "BB_AWS_WRONG_SECRET"

[gateway]
upstream_timeout_ms = 5000
image_fetch_allow_private = true
"""]
    for alias, (prov, model) in ALIASES.items():
        lines.append(f'[models."{alias}"]\ndeployments = [{{ provider = "{prov}", model = "{model}" }}]\n')
    return "\n".join(lines)


@pytest.fixture(scope="module")
def bedrock():
    m = MockBedrock({AKID: SECRET, AKID2: SECRET2}).start()
    yield m
    m.stop()


@pytest.fixture(scope="module")
def bgw(bedrock):
    t = make_target()
    base = t.start(config(bedrock.url), {
        "CONDUIT_MASTER_KEY": MASTER_KEY,
        "AWS_ACCESS_KEY_ID": AKID, "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_SESSION_TOKEN": TOKEN,
        "BB_AWS2_ACCESS_KEY_ID": AKID2, "BB_AWS2_SECRET_ACCESS_KEY": SECRET2,
        "BB_AWS_WRONG_SECRET": "not-the-secret",
    })
    yield base
    t.stop()


@pytest.fixture(scope="module")
def key(bgw):
    r = httpx.post(bgw + "/admin/keys", json={"name": "bedrock"}, headers=auth(MASTER_KEY), timeout=10)
    assert r.status_code == 201, r.text
    return r.json()["key"]


@pytest.fixture(scope="module")
def client(bgw, key):
    c = openai.OpenAI(base_url=bgw + "/v1", api_key=key, max_retries=0, timeout=20)
    yield c
    c.close()


@pytest.fixture
def marker() -> str:
    return "bbmark-" + uuid.uuid4().hex


def received(mock: MockBedrock, marker: str) -> dict:
    """The one request the mock received whose body holds `marker`, checked clean."""
    hits = [r for r in mock.requests if marker in json.dumps(r["body"])]
    assert len(hits) == 1, f"{len(hits)} requests hold {marker}"
    r = hits[0]
    assert r["problems"] == [], r["problems"]
    return r


def assert_signed(rec: dict, akid: str = AKID, region: str = "us-east-1", token: str | None = TOKEN) -> None:
    a = rec["auth"]
    assert a["akid"] == akid and a["region"] == region
    signed = a["signed"].split(";")
    assert {"host", "x-amz-date", "content-type"} <= set(signed)
    if token:
        assert rec["headers"].get("x-amz-security-token") == token
        assert "x-amz-security-token" in signed
    else:
        assert "x-amz-security-token" not in rec["headers"]


def dump(obj) -> dict:
    return obj.to_dict(mode="json", exclude_unset=True)


# -- chat ---------------------------------------------------------------------------------------

def test_chat_non_stream(client, bedrock, marker):
    r = client.chat.completions.create(
        model="claude", max_tokens=300, temperature=0.3, top_p=0.9, stop=["STOP"], user="user-7",
        messages=[{"role": "system", "content": "Count letters."},
                  {"role": "user", "content": marker},
                  {"role": "user", "content": [{"type": "text", "text": "strawberry"}]}])
    body = dump(r)
    openapi.validate(openapi.CHAT_COMPLETION, body)
    assert r.model == "claude" and r.object == "chat.completion"
    assert r.choices[0].message.content == TEXT and r.choices[0].finish_reason == "stop"
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (22, 57, 79)
    rec = received(bedrock, marker)
    assert rec["path"] == "/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/converse"
    assert_signed(rec)
    sent = rec["body"]
    assert sent["system"] == [{"text": "Count letters."}]
    # Two user messages merged into one turn.
    assert sent["messages"] == [{"role": "user", "content": [{"text": marker}, {"text": "strawberry"}]}]
    assert sent["inferenceConfig"] == {"maxTokens": 300, "temperature": 0.3, "topP": 0.9, "stopSequences": ["STOP"]}
    assert sent["requestMetadata"] == {"user": "user-7"}
    assert "model" not in sent and "toolConfig" not in sent


def test_chat_stream(client, bedrock, marker):
    stream = client.chat.completions.create(model="claude", stream=True, stream_options={"include_usage": True},
                                            messages=[{"role": "user", "content": marker}])
    chunks = [dump(c) for c in stream]
    for c in chunks:
        openapi.validate(openapi.CHAT_COMPLETION_CHUNK, c)
        assert c["model"] == "claude"
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == STREAM_TEXT
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert finishes == ["stop"]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] == 77
    rec = received(bedrock, marker)
    assert rec["path"].endswith("%3A0/converse-stream")
    assert_signed(rec)


def test_inference_profile_arn_is_encoded(client, bedrock, marker):
    r = client.chat.completions.create(model="profile", messages=[{"role": "user", "content": marker}])
    assert r.choices[0].message.content == TEXT
    rec = received(bedrock, marker)
    assert rec["path"] == ("/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A123456789012%3Ainference-profile"
                           "%2Fus.anthropic.claude-3-5-sonnet-20240620-v1%3A0/converse")


def test_second_provider_own_credentials_no_token(client, bedrock, marker):
    r = client.chat.completions.create(model="claude-eu", messages=[{"role": "user", "content": marker}])
    assert r.choices[0].finish_reason == "stop"
    assert_signed(received(bedrock, marker), akid=AKID2, region="eu-west-3", token=None)


# -- tools --------------------------------------------------------------------------------------

TOOLS = [{"type": "function", "function": {
    "name": "get_temperature", "description": "Get the temperature in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
    {"type": "function", "function": {
        "name": "get_capital", "description": "Get the capital of a country.",
        "parameters": {"type": "object", "properties": {"country": {"type": "string"}}, "required": ["country"]}}}]


def test_parallel_tool_calls_and_round_trip(client, bedrock, marker):
    msgs = [{"role": "user", "content": f"{marker} weather in Paris and Rome?"}]
    r = client.chat.completions.create(model="tools", messages=msgs, tools=TOOLS, tool_choice="required")
    openapi.validate(openapi.CHAT_COMPLETION, dump(r))
    m = r.choices[0].message
    assert r.choices[0].finish_reason == "tool_calls"
    assert [(c.id, c.function.name, json.loads(c.function.arguments)) for c in m.tool_calls] == [
        ("tooluse_paris", "get_temperature", {"city": "Paris"}),
        ("tooluse_rome", "get_temperature", {"city": "Rome"})]
    # Cache reads are counted inside prompt_tokens, once.
    assert r.usage.prompt_tokens == 150 and r.usage.prompt_tokens_details.cached_tokens == 100
    first = received(bedrock, marker)["body"]
    assert first["toolConfig"]["toolChoice"] == {"any": {}}
    assert first["toolConfig"]["tools"][0] == {"toolSpec": {
        "name": "get_temperature", "description": "Get the temperature in a city.",
        "inputSchema": {"json": TOOLS[0]["function"]["parameters"]}}}

    marker2 = marker + "-2"
    msgs2 = [{"role": "user", "content": f"{marker2} weather in Paris and Rome?"},
             m.model_dump(exclude_none=True),
             {"role": "tool", "tool_call_id": "tooluse_paris", "content": "18C"},
             {"role": "tool", "tool_call_id": "tooluse_rome", "content": "21C"}]
    r2 = client.chat.completions.create(model="tools", messages=msgs2, tools=TOOLS)
    assert r2.choices[0].message.content == TEXT
    sent = received(bedrock, marker2)["body"]
    assert [x["role"] for x in sent["messages"]] == ["user", "assistant", "user"]
    assert sent["messages"][1]["content"] == [
        {"text": "I'll look both up."},
        {"toolUse": {"toolUseId": "tooluse_paris", "name": "get_temperature", "input": {"city": "Paris"}}},
        {"toolUse": {"toolUseId": "tooluse_rome", "name": "get_temperature", "input": {"city": "Rome"}}}]
    # Both results in ONE user message.
    assert sent["messages"][2]["content"] == [
        {"toolResult": {"toolUseId": "tooluse_paris", "content": [{"text": "18C"}]}},
        {"toolResult": {"toolUseId": "tooluse_rome", "content": [{"text": "21C"}]}}]
    assert sent["toolConfig"]["toolChoice"] == {"auto": {}}


def test_tool_call_stream_round_trip(client, bedrock, marker):
    """The recorded tool-use stream: first delta of the call has index, id and name; the SDK reassembles it."""
    stream = client.chat.completions.create(model="tools", stream=True, tools=TOOLS,
                                            messages=[{"role": "user", "content": marker}])
    chunks = [dump(c) for c in stream]
    for c in chunks:
        openapi.validate(openapi.CHAT_COMPLETION_CHUNK, c)
    deltas = [tc for c in chunks for tc in (c["choices"][0]["delta"].get("tool_calls") or [])]
    assert deltas[0] == {"index": 0, "id": "tooluse_QjQX34XORLu0wJVplWWHGQ", "type": "function",
                         "function": {"name": "get_capital", "arguments": ""}}
    args = "".join(d["function"].get("arguments", "") for d in deltas)
    assert json.loads(args) == {"country": "France"}
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    assert received(bedrock, marker)["path"].endswith("/converse-stream")

    marker2 = marker + "-2"
    r = client.chat.completions.create(model="tools", tools=TOOLS, messages=[
        {"role": "user", "content": marker2},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": deltas[0]["id"], "type": "function", "function": {"name": "get_capital", "arguments": args}}]},
        {"role": "tool", "tool_call_id": deltas[0]["id"], "content": "Paris"}])
    assert r.choices[0].finish_reason == "stop"
    sent = received(bedrock, marker2)["body"]
    assert sent["messages"][1]["content"] == [{"toolUse": {
        "toolUseId": "tooluse_QjQX34XORLu0wJVplWWHGQ", "name": "get_capital", "input": {"country": "France"}}}]
    assert sent["messages"][2] == {"role": "user", "content": [
        {"toolResult": {"toolUseId": "tooluse_QjQX34XORLu0wJVplWWHGQ", "content": [{"text": "Paris"}]}}]}


def test_response_format_json_schema(client, bedrock, marker):
    schema = {"type": "object", "properties": {"answer": {"type": "integer"}}, "required": ["answer"]}
    rf = {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}
    r = client.chat.completions.create(model="json", response_format=rf, messages=[{"role": "user", "content": marker}])
    openapi.validate(openapi.CHAT_COMPLETION, dump(r))
    assert json.loads(r.choices[0].message.content) == {"answer": 42}
    assert r.choices[0].finish_reason == "stop" and not r.choices[0].message.tool_calls
    tc = received(bedrock, marker)["body"]["toolConfig"]
    assert tc["tools"][0]["toolSpec"]["inputSchema"]["json"] == schema
    assert tc["toolChoice"] == {"tool": {"name": tc["tools"][0]["toolSpec"]["name"]}}

    stream = client.chat.completions.create(model="json", response_format={"type": "json_object"}, stream=True,
                                            messages=[{"role": "user", "content": marker + "-s"}])
    chunks = [dump(c) for c in stream]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert json.loads(text) == {"answer": 42}


def test_images_data_and_http(client, bedrock, marker):
    png_b64 = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwCAAAAC0lEQVR42mNkYAAAAAYAAjCB0C8AAAAASUVORK5CYII="
    r = client.chat.completions.create(model="claude", messages=[{"role": "user", "content": [
        {"type": "text", "text": marker},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{png_b64}"}},
        {"type": "image_url", "image_url": {"url": f"{bedrock.url}/image.png"}}]}])
    assert r.choices[0].finish_reason == "stop"
    content = received(bedrock, marker)["body"]["messages"][0]["content"]
    img = {"image": {"format": "png", "source": {"bytes": png_b64}}}
    assert content == [{"text": marker}, img, img]


# -- finish reasons, errors ----------------------------------------------------------------------

def test_guardrail_is_content_filter(client):
    r = client.chat.completions.create(model="guardrail", messages=[{"role": "user", "content": "x"}])
    openapi.validate(openapi.CHAT_COMPLETION, dump(r))
    assert r.choices[0].finish_reason == "content_filter"
    assert r.choices[0].message.content == "Sorry, the model cannot answer this question."


@pytest.mark.parametrize("alias,status,type_,code", [
    ("validation", 400, "invalid_request_error", "ValidationException"),
    ("denied", 403, "permission_error", "AccessDeniedException"),
    ("missing", 404, "not_found_error", "ResourceNotFoundException"),
    ("throttle", 429, "rate_limit_error", "ThrottlingException"),
    ("unavailable", 503, "api_error", "ServiceUnavailableException"),
    ("internal", 502, "api_error", "upstream_error"),
])
def test_errors(client, alias, status, type_, code):
    with pytest.raises(openai.APIStatusError) as ei:
        client.chat.completions.create(model=alias, messages=[{"role": "user", "content": "x"}])
    err = assert_sdk_error(ei.value, status, type_=type_, code=code)
    assert err["message"]
    if status == 429:
        assert ei.value.response.headers.get("retry-after") == "7"


def test_mock_verifies_the_signature(client, bedrock, marker):
    """With a wrong secret the mock's recomputed signature differs: AWS's 403 reaches the client."""
    with pytest.raises(openai.PermissionDeniedError) as ei:
        client.chat.completions.create(model="wrong-secret", messages=[{"role": "user", "content": marker}])
    assert_sdk_error(ei.value, 403, type_="authentication_error", code="InvalidSignatureException")
    hits = [r for r in bedrock.requests if marker in json.dumps(r["body"])]
    assert len(hits) == 1 and hits[0]["problems"] == ["signature mismatch"]


def test_stream_exception_ends_with_error(bgw, key):
    with httpx.Client(base_url=bgw, timeout=20) as http:
        r, text, events = stream_raw(http, "/v1/chat/completions", key, {
            "model": "stream-error", "stream": True, "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 200
    payloads = data_payloads(events)
    assert not any(e.is_done for e in events), text
    assert "".join(p["choices"][0]["delta"].get("content") or "" for p in payloads[:-1]) == "Let me count the \""
    err = payloads[-1]["error"]
    assert err["code"] == "upstream_error" and "Model Stream Error" in err["message"]
    openapi.validate(openapi.ERROR, payloads[-1])


def test_unsupported_parameter_is_a_400(client):
    with pytest.raises(openai.BadRequestError) as ei:
        client.chat.completions.create(model="claude", n=2, messages=[{"role": "user", "content": "x"}])
    assert_sdk_error(ei.value, 400, param="n")
    with pytest.raises(openai.BadRequestError) as ei:
        client.chat.completions.create(model="claude", logprobs=True, messages=[{"role": "user", "content": "x"}])
    assert_sdk_error(ei.value, 400, param="logprobs")


# -- legacy completions, embeddings -------------------------------------------------------------

def test_legacy_completions(client, bedrock, marker):
    r = client.completions.create(model="claude", prompt=marker, max_tokens=20)
    body = dump(r)
    openapi.validate(openapi.COMPLETION, body)
    assert r.object == "text_completion" and r.choices[0].text == TEXT and r.choices[0].finish_reason == "stop"
    assert r.usage.total_tokens == 79
    sent = received(bedrock, marker)["body"]
    assert sent == {"messages": [{"role": "user", "content": [{"text": marker}]}], "inferenceConfig": {"maxTokens": 20}}

    stream = client.completions.create(model="claude", prompt=marker + "-s", max_tokens=20, stream=True)
    chunks = [dump(c) for c in stream]
    for c in chunks:
        openapi.validate(openapi.COMPLETION_CHUNK, c)
    assert "".join(c["choices"][0]["text"] for c in chunks if c["choices"]) == STREAM_TEXT
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_embeddings_titan(client, bedrock, marker):
    r = client.embeddings.create(model="titan", input=f"{marker} hello world", dimensions=8)
    body = dump(r)
    openapi.validate(openapi.EMBEDDINGS, body)
    assert r.model == "titan" and len(r.data) == 1 and len(r.data[0].embedding) == 8
    assert r.usage.prompt_tokens == 3
    rec = received(bedrock, marker)
    assert rec["path"] == "/model/amazon.titan-embed-text-v2%3A0/invoke"
    assert rec["body"] == {"inputText": f"{marker} hello world", "dimensions": 8}
    assert_signed(rec)


def test_embeddings_cohere(client, bedrock, marker):
    r = client.embeddings.create(model="cohere-embed", input=[marker, "two"], encoding_format="float")
    openapi.validate(openapi.EMBEDDINGS, dump(r))
    assert [d.index for d in r.data] == [0, 1] and r.data[1].embedding == [0.5, -0.25, 1.0]
    rec = received(bedrock, marker)
    assert rec["body"] == {"texts": [marker, "two"], "input_type": "search_document"}
