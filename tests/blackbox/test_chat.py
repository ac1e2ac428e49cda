"""POST /v1/chat/completions through the gateway: non-stream, stream (incremental delivery, usage
chunk semantics, [DONE]), OpenAI / Azure / OpenAI-compatible providers, what reaches the provider
(provider model, provider credentials, forced stream_options.include_usage, unknown fields),
`model` = alias, headers, and OpenAPI-schema validity of every body and chunk."""
from __future__ import annotations

import time

import pytest

import openapi
from conftest import AZURE_API_VERSION, ALIASES
from helpers import chat_body, chunk_dicts, data_payloads, stream_raw, user_msg
from mock_upstream import AZURE_KEY, OPENAI_KEY

FX_TEXT = "The capital of the UK is London."
FX_USAGE = {"prompt_tokens": 78, "completion_tokens": 9, "total_tokens": 87}
MISTRAL_USAGE = {"prompt_tokens": 124, "completion_tokens": 22, "total_tokens": 146}


def _usage_core(u: dict) -> dict:
    return {k: u[k] for k in ("prompt_tokens", "completion_tokens", "total_tokens")}


def _no_virtual_key_upstream(rec, key: str) -> None:
    for name, value in rec.headers.items():
        assert key not in value, f"virtual key leaked upstream in header {name!r}"
    assert key.encode() not in rec.raw_body, "virtual key leaked upstream in the body"


def _content(chunks: list[dict]) -> str:
    return "".join((c["choices"][0]["delta"].get("content") or "") for c in chunks if c.get("choices"))


def _check_stream_chunks(chunks: list[dict], alias: str, *, usage_expected: dict | None) -> None:
    """Schema + semantics of a chat stream as seen by the client."""
    assert chunks, "empty stream"
    for c in chunks:
        openapi.validate(openapi.CHAT_COMPLETION_CHUNK, c)
        assert c["model"] == alias, f"chunk model {c['model']!r} != alias {alias!r}"
        assert c["id"], f"chunk with empty id: {c}"
    assert len({c["id"] for c in chunks}) == 1, "chunk ids differ within one stream"
    finishes = [ch["finish_reason"] for c in chunks for ch in c["choices"] if ch.get("finish_reason")]
    assert len(finishes) == 1, f"expected exactly one finish_reason, got {finishes}"
    with_usage = [c for c in chunks if c.get("usage") is not None]
    empty_choices = [c for c in chunks if c["choices"] == []]
    if usage_expected is None:
        assert with_usage == [], f"usage sent although the client did not ask: {with_usage}"
        assert empty_choices == [], f"chunk(s) with choices: [] although no usage asked: {empty_choices}"
    else:
        assert len(with_usage) == 1, f"expected exactly one usage chunk, got {len(with_usage)}"
        last = chunks[-1]
        assert last is with_usage[0], "usage chunk is not the last chunk"
        assert last["choices"] == [], f"usage chunk must have choices: [] (got {last['choices']})"
        assert _usage_core(last["usage"]) == usage_expected
        assert empty_choices == [last], "only the usage chunk may have choices: []"


# ------------------------------------------------------------------------------------------
# non-streaming
# ------------------------------------------------------------------------------------------
def test_chat_non_stream(client, mock, marker, api_key):
    raw = client.chat.completions.with_raw_response.create(model="chat", messages=user_msg(marker))
    r = raw.parse()
    body = r.to_dict(mode="json", exclude_unset=True)
    openapi.validate(openapi.CHAT_COMPLETION, body)
    assert r.model == "chat"
    assert r.object == "chat.completion"
    assert r.choices[0].message.content == FX_TEXT
    assert r.choices[0].finish_reason == "stop"
    assert _usage_core(body["usage"]) == FX_USAGE
    assert raw.headers.get("x-request-id")
    assert raw.headers.get("x-conduit-overhead-ms") is not None
    assert float(raw.headers["x-conduit-overhead-ms"]) >= 0

    recs = mock.with_marker(marker)
    assert len(recs) == 1, f"expected one upstream call, got {len(recs)}"
    rec = recs[0]
    assert rec.api == "openai" and rec.path == "/v1/chat/completions"
    assert rec.body["model"] == "gpt-4o-mini", "upstream must receive the provider model, not the alias"
    assert rec.body["messages"] == user_msg(marker)
    assert rec.headers.get("authorization") == f"Bearer {OPENAI_KEY}"
    assert not rec.body.get("stream"), "non-stream request was sent upstream as a stream"
    _no_virtual_key_upstream(rec, api_key)


def test_chat_tool_calls_non_stream(client):
    r = client.chat.completions.create(model="tools", messages=user_msg("capital?"),
                                       tools=[{"type": "function", "function": {
                                           "name": "get_capital", "parameters": {"type": "object"}}}])
    openapi.validate(openapi.CHAT_COMPLETION, r.to_dict(mode="json", exclude_unset=True))
    assert r.model == "tools"
    assert r.choices[0].finish_reason == "tool_calls"
    tc = r.choices[0].message.tool_calls[0]
    assert tc.function.name == "get_capital" and tc.function.arguments == '{"country":"UK"}'


def test_unknown_fields_pass_through(client, mock, marker):
    text = marker + " héllo ✓ 日本語 \u2028 \"quoted\" \\ end"
    r = client.chat.completions.create(model="chat", messages=user_msg(text), temperature=0.25, seed=7,
                                       extra_body={"foo_passthrough": 123, "nested_passthrough": {"a": [1, "b"]}})
    assert r.model == "chat"
    rec = mock.with_marker(marker)[-1]
    assert rec.body.get("foo_passthrough") == 123
    assert rec.body.get("nested_passthrough") == {"a": [1, "b"]}
    assert rec.body.get("temperature") == 0.25 and rec.body.get("seed") == 7
    assert rec.body["messages"] == user_msg(text), "message content altered on the way upstream"


@pytest.mark.parametrize("alias", ["local-chat", "azure-chat"])
def test_unknown_fields_pass_through_other_openai_family(client, mock, marker, alias):
    client.chat.completions.create(model=alias, messages=user_msg(marker), extra_body={"foo_passthrough": 123})
    assert mock.with_marker(marker)[-1].body.get("foo_passthrough") == 123


def test_openai_compatible_provider(client, mock, marker, api_key):
    r = client.chat.completions.create(model="local-chat", messages=user_msg(marker))
    openapi.validate(openapi.CHAT_COMPLETION, r.to_dict(mode="json", exclude_unset=True))
    assert r.model == "local-chat" and r.choices[0].message.content == FX_TEXT
    rec = mock.with_marker(marker)[-1]
    assert rec.path == "/compat/v1/chat/completions"
    assert rec.body["model"] == "llama3.2"
    # no api_key_env configured for this provider: no credentials at all upstream
    assert "authorization" not in rec.headers and "api-key" not in rec.headers, rec.headers
    _no_virtual_key_upstream(rec, api_key)


def test_azure_chat_non_stream(client, mock, marker, api_key):
    raw = client.chat.completions.with_raw_response.create(model="azure-chat", messages=user_msg(marker))
    r = raw.parse()
    openapi.validate(openapi.CHAT_COMPLETION, r.to_dict(mode="json", exclude_unset=True))
    assert r.model == "azure-chat"
    assert r.choices[0].message.content == mock.fx.azure_chat["choices"][0]["message"]["content"]
    assert raw.headers.get("x-conduit-overhead-ms") is not None
    rec = mock.with_marker(marker)[-1]
    assert rec.api == "azure"
    assert rec.path == "/openai/deployments/gpt5nano-deploy/chat/completions"
    assert rec.query.get("api-version") == [AZURE_API_VERSION]
    assert rec.headers.get("api-key") == AZURE_KEY
    assert not rec.headers.get("authorization"), "Azure must get the `api-key` header, not Authorization"
    assert rec.body["messages"] == user_msg(marker)
    _no_virtual_key_upstream(rec, api_key)


# ------------------------------------------------------------------------------------------
# streaming
# ------------------------------------------------------------------------------------------
def test_chat_stream_without_usage(client, mock, marker):
    chunks = chunk_dicts(client.chat.completions.create(model="chat", messages=user_msg(marker), stream=True))
    _check_stream_chunks(chunks, "chat", usage_expected=None)
    assert _content(chunks) == FX_TEXT
    rec = mock.with_marker(marker)[-1]
    assert rec.body.get("stream") is True
    assert (rec.body.get("stream_options") or {}).get("include_usage") is True, \
        f"stream_options.include_usage must be forced upstream, got {rec.body.get('stream_options')}"


def test_chat_stream_with_usage(client, mock, marker):
    chunks = chunk_dicts(client.chat.completions.create(model="chat", messages=user_msg(marker), stream=True,
                                                        stream_options={"include_usage": True}))
    _check_stream_chunks(chunks, "chat", usage_expected=FX_USAGE)
    assert _content(chunks) == FX_TEXT
    assert mock.with_marker(marker)[-1].body["stream_options"]["include_usage"] is True


def test_chat_stream_include_usage_false_explicit(client, mock, marker):
    chunks = chunk_dicts(client.chat.completions.create(model="chat", messages=user_msg(marker), stream=True,
                                                        stream_options={"include_usage": False}))
    _check_stream_chunks(chunks, "chat", usage_expected=None)
    assert mock.with_marker(marker)[-1].body["stream_options"]["include_usage"] is True


def test_chat_stream_raw_framing(http, api_key, marker):
    r, text, events = stream_raw(http, "/v1/chat/completions", api_key, chat_body("chat", marker, stream=True))
    assert r.status_code == 200, text[:500]
    assert r.headers.get("content-type", "").startswith("text/event-stream")
    assert r.headers.get("x-request-id")
    assert r.headers.get("x-conduit-overhead-ms") is not None
    assert events and events[-1].is_done, f"stream must end with data: [DONE]; tail: {text[-300:]!r}"
    assert sum(e.is_done for e in events) == 1
    payloads = data_payloads(events)
    for p in payloads:
        assert "usage" not in p or p["usage"] is None
        assert "error" not in p, p
    _check_stream_chunks(payloads, "chat", usage_expected=None)


def test_chat_stream_close_delimited_upstream(client):
    """Provider stream framed by connection close (no chunked encoding, no Content-Length)."""
    chunks = chunk_dicts(client.chat.completions.create(model="close-delim", messages=user_msg("x"), stream=True,
                                                        stream_options={"include_usage": True}))
    _check_stream_chunks(chunks, "close-delim", usage_expected=FX_USAGE)
    assert _content(chunks) == FX_TEXT


def test_chat_stream_is_incremental(client):
    """mock-slow-stream spaces upstream events ~200 ms apart; the gateway must not buffer."""
    t0 = time.monotonic()
    arrivals, chunks = [], []
    for c in client.chat.completions.create(model="slow", messages=user_msg("slow please"), stream=True):
        arrivals.append(time.monotonic() - t0)
        chunks.append(c.to_dict(mode="json", exclude_unset=True))
    _check_stream_chunks(chunks, "slow", usage_expected=None)
    assert len(arrivals) >= 6
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:])]
    spread = arrivals[-1] - arrivals[0]
    assert spread >= 0.1 * len(gaps), f"events arrived together (spread {spread:.3f}s, gaps {gaps})"
    assert sum(g >= 0.1 for g in gaps) >= len(gaps) - 1, f"gaps < 100ms: {[round(g, 3) for g in gaps]}"
    assert arrivals[0] < arrivals[-1] - 0.8, f"first event not well before the last: {arrivals}"


def test_parallel_streams_interleave(make_client, api_key):
    """Concurrent streams are served concurrently: every stream's first chunk arrives before any
    stream's last chunk (a serialising gateway would finish one before starting the next)."""
    import threading

    n = 4
    firsts: list[float] = [0.0] * n
    lasts: list[float] = [0.0] * n
    errors: list[BaseException] = []
    start = threading.Barrier(n)

    def run(i: int) -> None:
        try:
            c = make_client(api_key)
            start.wait(5)
            it = c.chat.completions.create(model="slow", messages=user_msg(f"par-{i}"), stream=True)
            for j, _ in enumerate(it):
                if j == 0:
                    firsts[i] = time.monotonic()
                lasts[i] = time.monotonic()
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert not errors, errors
    assert max(firsts) < min(lasts), f"streams were serialised: firsts={firsts} lasts={lasts}"


def test_chat_stream_tool_calls(client):
    chunks = chunk_dicts(client.chat.completions.create(
        model="tools", messages=user_msg("capital?"), stream=True, stream_options={"include_usage": True},
        tools=[{"type": "function", "function": {"name": "get_capital", "parameters": {"type": "object"}}}]))
    _check_stream_chunks(chunks, "tools",
                         usage_expected={"prompt_tokens": 53, "completion_tokens": 15, "total_tokens": 68})
    args = "".join(tc["function"].get("arguments") or "" for c in chunks for ch in c["choices"]
                   for tc in (ch["delta"].get("tool_calls") or []))
    assert args == '{"country":"UK"}'
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"


def test_azure_stream(client, mock, marker):
    """Azure's first chunk (choices: [], empty id/model/object, prompt_filter_results; T4) must not
    reach the client as a schema-invalid chunk."""
    plain = chunk_dicts(client.chat.completions.create(model="azure-chat", messages=user_msg(marker), stream=True))
    _check_stream_chunks(plain, "azure-chat", usage_expected=None)
    assert _content(plain) == mock.fx.azure_chat["choices"][0]["message"]["content"]
    rec = mock.with_marker(marker)[-1]
    assert rec.path == "/openai/deployments/gpt5nano-deploy/chat/completions"
    assert rec.query.get("api-version") == [AZURE_API_VERSION]
    assert rec.body["stream_options"]["include_usage"] is True
    withu = chunk_dicts(client.chat.completions.create(model="azure-chat", messages=user_msg(marker),
                                                       stream=True, stream_options={"include_usage": True}))
    _check_stream_chunks(withu, "azure-chat",
                         usage_expected={"prompt_tokens": 15, "completion_tokens": 78, "total_tokens": 93})


def test_mistral_like_usage_without_stream_options(client, mock, marker):
    """T18: provider sends usage on the finish chunk although not asked; client did not ask -> none."""
    chunks = chunk_dicts(client.chat.completions.create(model="mistral", messages=user_msg(marker), stream=True))
    _check_stream_chunks(chunks, "mistral", usage_expected=None)
    assert _content(chunks) == FX_TEXT
    assert mock.with_marker(marker)[-1].path == "/compat/v1/chat/completions"


def test_mistral_like_usage_with_stream_options(client):
    """T18: asked for usage -> a separate final `choices: []` usage chunk, not usage on the finish chunk."""
    chunks = chunk_dicts(client.chat.completions.create(model="mistral", messages=user_msg("x"), stream=True,
                                                        stream_options={"include_usage": True}))
    _check_stream_chunks(chunks, "mistral", usage_expected=MISTRAL_USAGE)


def test_mistral_tool_call_stream_usage_semantics(client):
    """Recorded Mistral tool-call stream (no `index`/`type` in tool_calls, usage on finish chunk)."""
    plain = chunk_dicts(client.chat.completions.create(model="mistral-tools", messages=user_msg("w"), stream=True))
    assert all(c.get("usage") is None for c in plain), "usage leaked without include_usage"
    calls = [tc for c in plain for ch in c["choices"] for tc in (ch["delta"].get("tool_calls") or [])]
    assert calls and calls[0]["id"] == "gSIMJiOkT" and calls[0]["function"]["name"] == "weather"
    assert calls[0]["function"]["arguments"] == '{"location": "San Francisco"}'
    withu = chunk_dicts(client.chat.completions.create(model="mistral-tools", messages=user_msg("w"), stream=True,
                                                       stream_options={"include_usage": True}))
    assert withu[-1]["choices"] == [] and _usage_core(withu[-1]["usage"]) == MISTRAL_USAGE
    assert [c for c in withu if c.get("usage") is not None] == [withu[-1]]


def test_mistral_tool_call_stream_is_schema_valid(client):
    """T5: Mistral omits tool_calls[].index/type; the gateway promises OpenAI-schema output."""
    chunks = chunk_dicts(client.chat.completions.create(model="mistral-tools", messages=user_msg("w"), stream=True))
    for c in chunks:
        openapi.validate(openapi.CHAT_COMPLETION_CHUNK, c)


def test_every_alias_is_configured(client):
    """Sanity: the config the suite generates is accepted as a whole (all aliases listed)."""
    ids = {m.id for m in client.models.list()}
    assert set(ALIASES) <= ids, f"missing aliases: {set(ALIASES) - ids}"
