"""`x-request-id` on every response (unique per request); `x-conduit-overhead-ms` on proxied ones."""
from __future__ import annotations

import pytest

from helpers import auth, chat_body, stream_raw


@pytest.fixture(scope="module")
def responses(http, api_key, admin):
    """(label, proxied?, response) for a spread of endpoints and outcomes."""
    k = auth(api_key)
    out = [
        ("health", False, http.get("/health")),
        ("models", False, http.get("/v1/models", headers=k)),
        ("model", False, http.get("/v1/models/chat", headers=k)),
        ("chat", True, http.post("/v1/chat/completions", json=chat_body("chat"), headers=k)),
        ("azure chat", True, http.post("/v1/chat/completions", json=chat_body("azure-chat"), headers=k)),
        ("completions", True, http.post("/v1/completions", json={"model": "instruct", "prompt": "x"}, headers=k)),
        ("embeddings", True, http.post("/v1/embeddings", json={"model": "embed", "input": "x",
                                                               "encoding_format": "float"}, headers=k)),
        ("stream", True, stream_raw(http, "/v1/chat/completions", api_key, chat_body("chat", stream=True))[0]),
        ("401", False, http.post("/v1/chat/completions", json=chat_body("chat"))),
        ("404 alias", False, http.post("/v1/chat/completions", json=chat_body("nope"), headers=k)),
        ("404 path", False, http.get("/v1/nope", headers=k)),
        ("405", False, http.get("/v1/chat/completions", headers=k)),
        ("502", False, http.post("/v1/chat/completions", json=chat_body("fail-500"), headers=k)),
        ("400 provider", False, http.post("/v1/chat/completions", json=chat_body("fail-400"), headers=k)),
        ("admin list", False, admin.list_keys()),
        ("admin 401", False, http.get("/admin/keys")),
    ]
    return out


def test_x_request_id_everywhere_and_unique(responses):
    ids = []
    for label, _, r in responses:
        rid = r.headers.get("x-request-id")
        assert rid and rid.strip(), f"{label}: no x-request-id (status {r.status_code})"
        ids.append(rid)
    assert len(set(ids)) == len(ids), f"x-request-id values repeat: {ids}"


def test_overhead_header_on_proxied(responses):
    for label, proxied, r in responses:
        if not proxied:
            continue
        assert r.status_code == 200, f"{label}: {r.status_code} {r.text[:200]}"
        v = r.headers.get("x-conduit-overhead-ms")
        assert v is not None, f"{label}: no x-conduit-overhead-ms"
        assert float(v) >= 0, f"{label}: x-conduit-overhead-ms={v!r}"

