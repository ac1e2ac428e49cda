"""Legacy POST /v1/completions (stream and not) and POST /v1/embeddings, OpenAI and Azure."""
from __future__ import annotations

import pytest

import openapi
from conftest import AZURE_API_VERSION
from helpers import data_payloads, stream_raw
from mock_upstream import AZURE_KEY, OPENAI_KEY

FX_COMPLETION_TEXT = 'The new holiday is called "Gratitude Day" and it celebrates the importance of'
FX_COMPLETION_USAGE = {"prompt_tokens": 14, "completion_tokens": 16, "total_tokens": 30}
FX_EMBED_USAGE = {"prompt_tokens": 12, "total_tokens": 12}


def _core(u):
    return {k: u[k] for k in ("prompt_tokens", "completion_tokens", "total_tokens")}


def test_completion_non_stream(client, mock, marker):
    raw = client.completions.with_raw_response.create(model="instruct", prompt=marker, max_tokens=16)
    r = raw.parse()
    body = r.to_dict(mode="json", exclude_unset=True)
    openapi.validate(openapi.COMPLETION, body)
    assert r.model == "instruct" and r.object == "text_completion"
    assert r.choices[0].text == FX_COMPLETION_TEXT and r.choices[0].finish_reason == "length"
    assert _core(body["usage"]) == FX_COMPLETION_USAGE
    assert raw.headers.get("x-request-id") and raw.headers.get("x-conduit-overhead-ms") is not None
    rec = mock.with_marker(marker)[-1]
    assert rec.path == "/v1/completions" and rec.body["model"] == "gpt-3.5-turbo-instruct"
    assert rec.body["prompt"] == marker and rec.body["max_tokens"] == 16
    assert rec.headers.get("authorization") == f"Bearer {OPENAI_KEY}"


def _stream_text(mock) -> str:
    return "".join(ch["text"] for c in mock.fx.completion_stream for ch in c["choices"])


def _check_completion_chunks(chunks: list[dict], alias: str, usage: dict | None, text: str) -> None:
    assert chunks
    for c in chunks:
        # strict except for choices[].finish_reason: null (see openapi.COMPLETION_CHUNK); `usage: null`
        # on legacy chunks is schema-invalid (T2) and must not be emitted.
        openapi.validate(openapi.COMPLETION_CHUNK, c)
        assert c["model"] == alias
    with_usage = [c for c in chunks if c.get("usage") is not None]
    if usage is None:
        assert with_usage == [] and all(c["choices"] for c in chunks)
    else:
        assert with_usage == [chunks[-1]] and chunks[-1]["choices"] == []
        assert _core(chunks[-1]["usage"]) == usage
    assert "".join(ch["text"] for c in chunks for ch in c["choices"]) == text


@pytest.mark.parametrize("include_usage", [False, True])
def test_completion_stream_raw(http, api_key, mock, marker, include_usage):
    body = {"model": "instruct", "prompt": marker, "stream": True}
    if include_usage:
        body["stream_options"] = {"include_usage": True}
    r, text, events = stream_raw(http, "/v1/completions", api_key, body)
    assert r.status_code == 200, text[:300]
    assert r.headers.get("content-type", "").startswith("text/event-stream")
    assert events and events[-1].is_done, text[-300:]
    _check_completion_chunks(data_payloads(events), "instruct", FX_COMPLETION_USAGE if include_usage else None,
                             _stream_text(mock))
    rec = mock.with_marker(marker)[-1]
    assert rec.path == "/v1/completions" and rec.body["stream"] is True
    assert rec.body["stream_options"]["include_usage"] is True


def test_completion_stream_sdk(client, mock):
    chunks = [c.to_dict(mode="json", exclude_unset=True) for c in client.completions.create(
        model="instruct", prompt="x", stream=True, stream_options={"include_usage": True})]
    _check_completion_chunks(chunks, "instruct", FX_COMPLETION_USAGE, _stream_text(mock))


def test_azure_completion(client, mock, marker):
    r = client.completions.create(model="azure-instruct", prompt=marker)
    openapi.validate(openapi.COMPLETION, r.to_dict(mode="json", exclude_unset=True))
    assert r.model == "azure-instruct"
    rec = mock.with_marker(marker)[-1]
    assert rec.path == "/openai/deployments/instruct-deploy/completions"
    assert rec.query.get("api-version") == [AZURE_API_VERSION] and rec.headers.get("api-key") == AZURE_KEY


def test_embeddings(client, mock, marker):
    raw = client.embeddings.with_raw_response.create(model="embed", input=[marker, "b", "c"],
                                                     encoding_format="float")
    r = raw.parse()
    body = r.to_dict(mode="json", exclude_unset=True)
    openapi.validate(openapi.EMBEDDINGS, body)
    assert r.model == "embed" and r.object == "list"
    assert [d.index for d in r.data] == [0, 1, 2]
    assert r.data[0].embedding == mock.fx.embeddings["data"][0]["embedding"]
    assert {k: body["usage"][k] for k in FX_EMBED_USAGE} == FX_EMBED_USAGE
    assert raw.headers.get("x-request-id") and raw.headers.get("x-conduit-overhead-ms") is not None
    rec = mock.with_marker(marker)[-1]
    assert rec.path == "/v1/embeddings" and rec.body["model"] == "text-embedding-3-small"
    assert rec.body["input"] == [marker, "b", "c"] and rec.body["encoding_format"] == "float"


def test_embeddings_sdk_default_base64(client, mock, marker):
    """The SDK asks for base64 by default; the provider answers base64 (T3), the SDK decodes it."""
    r = client.embeddings.create(model="embed", input=marker)
    assert r.model == "embed" and len(r.data) == 1
    assert r.data[0].embedding == pytest.approx(mock.fx.embeddings["data"][0]["embedding"], rel=1e-6)
    assert mock.with_marker(marker)[-1].body["encoding_format"] == "base64"


def test_azure_embeddings(client, mock, marker):
    r = client.embeddings.create(model="azure-embed", input=[marker], encoding_format="float")
    openapi.validate(openapi.EMBEDDINGS, r.to_dict(mode="json", exclude_unset=True))
    assert r.model == "azure-embed"
    rec = mock.with_marker(marker)[-1]
    assert rec.path == "/openai/deployments/embed-deploy/embeddings"
    assert rec.query.get("api-version") == [AZURE_API_VERSION] and rec.headers.get("api-key") == AZURE_KEY
