"""The admin API additions the web UI uses, on every target: paged GET /admin/usage (limit, cursor,
newest first, model and status filters), GET /admin/usage/summary (buckets, totals, top keys and
models), last_used_at and per-limit remaining counts on key records, GET /admin/models (no secrets)."""
from __future__ import annotations

import time

import openai
import pytest

from conftest import ALIASES, AZURE_KEY_ENV, OPENAI_KEY_ENV
from helpers import assert_error_response, user_msg
from mock_upstream import AZURE_KEY, OPENAI_KEY


@pytest.fixture(scope="module")
def traffic(admin, make_client):
    """A key with 5 OK requests (chat x3, embed x2), one provider 400 and one rate-limit refusal."""
    rec = admin.create_key(name="bb-additions", limits={"rpm": 7})
    c = make_client(rec["key"])
    for i in range(3):
        c.chat.completions.create(model="chat", messages=user_msg(f"add {i}"))
        time.sleep(0.01)
    c.embeddings.create(model="embed", input=["a"])
    c.embeddings.create(model="embed", input=["b"])
    with pytest.raises(openai.BadRequestError):
        c.chat.completions.create(model="fail-400", messages=user_msg("bad"))
    c.chat.completions.create(model="chat", messages=user_msg("seventh"))
    with pytest.raises(openai.RateLimitError):
        c.chat.completions.create(model="chat", messages=user_msg("refused"))
    body = admin.wait_usage(rec["id"], 8)
    assert len(body["data"]) == 8, body["data"]
    return rec, body["data"]


def test_usage_pages_newest_first(admin, traffic):
    rec, records = traffic
    everything = [r["request_id"] for r in records]
    order = sorted(records, key=lambda r: (r["created_at_ms"], r["request_id"]), reverse=True)
    assert everything == [r["request_id"] for r in order], "default page is newest first"
    seen, cursor, pages = [], None, 0
    while True:
        r = admin.usage(key_id=rec["id"], limit=3, cursor=cursor)
        assert r.status_code == 200, r.text
        body = r.json()
        assert len(body["data"]) <= 3
        assert body["totals"]["requests"] == len(body["data"])
        seen += [u["request_id"] for u in body["data"]]
        pages += 1
        assert body["has_more"] == (body["next_cursor"] is not None)
        cursor = body["next_cursor"]
        if not cursor:
            break
    assert pages == 3 and seen == everything


def test_usage_filters_and_bad_params(admin, traffic):
    rec, records = traffic
    def ids(**params):
        r = admin.usage(key_id=rec["id"], **params)
        assert r.status_code == 200, r.text
        return {u["request_id"] for u in r.json()["data"]}
    assert ids(model="embed") == {r["request_id"] for r in records if r["model"] == "embed"}
    assert len(ids(model="embed")) == 2
    assert ids(status="refused") == {r["request_id"] for r in records if r["refused_by"]}
    assert len(ids(status="refused")) == 1
    assert ids(status="error") == {r["request_id"] for r in records if r["status"] == 400}
    assert len(ids(status="ok")) == 6
    assert ids(status="400") == ids(status="error")
    for bad in ({"limit": 0}, {"limit": 1001}, {"limit": "x"}, {"cursor": "not-a-cursor"}, {"status": "maybe"}):
        assert_error_response(admin.usage(**bad), 400)


def test_usage_summary(admin, traffic):
    rec, records = traffic
    now = int(time.time())
    r = admin.http.get("/admin/usage/summary", params={"key_id": rec["id"], "since": now - 7200, "until": now + 60})
    assert r.status_code == 200, r.text
    s = r.json()
    assert s["bucket"] == "hour" and 2 <= len(s["buckets"]) <= 4
    t = s["totals"]
    assert t["requests"] == len(records) == sum(b["requests"] for b in s["buckets"])
    assert t["total_tokens"] == sum(u["total_tokens"] for u in records)
    assert t["prompt_tokens"] == sum(u["prompt_tokens"] for u in records)
    assert t["cost_nano_usd"] == sum(u["cost_nano_usd"] or 0 for u in records)
    assert t["errors"] == 2 and t["refused"] == 1 and t["rate_limited"] == 1 and t["budget_refused"] == 0
    assert [k["key_id"] for k in s["top_keys"]] == [rec["id"]] and s["top_keys"][0]["name"] == "bb-additions"
    models = {m["model"]: m for m in s["top_models"]}
    assert set(models) == {"chat", "embed", "fail-400"} and models["embed"]["requests"] == 2
    day = admin.http.get("/admin/usage/summary", params={"key_id": rec["id"], "bucket": "day",
                                                         "since": now - 3 * 86400, "until": now + 60}).json()
    assert day["bucket"] == "day" and day["totals"]["requests"] == len(records)
    assert len(day["buckets"]) in (3, 4)
    only = admin.http.get("/admin/usage/summary", params={"key_id": rec["id"], "model": "embed"}).json()
    assert only["totals"]["requests"] == 2
    overall = admin.http.get("/admin/usage/summary").json()
    assert overall["totals"]["requests"] >= len(records) and len(overall["buckets"]) == 24
    for bad in ({"bucket": "week"}, {"since": "soon"}, {"since": now, "until": now - 7200}):
        assert_error_response(admin.http.get("/admin/usage/summary", params=bad), 400)


def test_last_used_and_remaining_limits(admin, traffic, make_client):
    rec, records = traffic
    fresh = admin.create_key(name="bb-never-used", limits={"rpm": 5, "rpd": 50, "tpm": 9000})
    listed = {k["id"]: k for k in admin.list_keys().json()["data"]}
    assert listed[fresh["id"]]["last_used_at"] is None
    newest = max(u["created_at_ms"] for u in records) // 1000
    got = listed[rec["id"]]["last_used_at"]
    assert got is not None and abs(_ts(got) - newest) <= 1, (got, newest)
    make_client(fresh["key"]).chat.completions.create(model="chat", messages=user_msg("once"))
    admin.wait_usage(fresh["id"], 1)
    deadline = time.monotonic() + 5
    while True:
        k = admin.get_key(fresh["id"]).json()
        if k["last_used_at"] or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert k["last_used_at"] is not None
    rl = k["rate_limits"]
    assert rl["rpm"]["limit"] == 5 and rl["rpm"]["remaining"] == 4
    assert rl["rpd"]["limit"] == 50 and rl["rpd"]["remaining"] == 49
    assert rl["tpm"]["limit"] == 9000 and rl["tpm"]["remaining"] < 9000


def _ts(v: str) -> float:
    import datetime as dt
    return dt.datetime.fromisoformat(v.replace("Z", "+00:00")).timestamp()


def test_models_view_without_secrets(admin, gateway):
    r = admin.http.get("/admin/models")
    assert r.status_code == 200
    body = r.json()
    by_id = {m["id"]: m for m in body["data"]}
    assert set(by_id) == set(ALIASES)
    chat = by_id["chat"]
    assert chat["routing"]["strategy"] == "ordered" and chat["routing"]["fallbacks"] == []
    assert isinstance(chat["routing"]["retries"], int) and chat["routing"]["timeout_ms"] > 0
    (d,) = chat["deployments"]
    assert (d["provider"], d["provider_kind"], d["model"]) == ("openai", "openai", "gpt-4o-mini")
    assert d["price_per_million_tokens"]["input_usd"] == 0.15 and d["price_per_million_tokens"]["output_usd"] == 0.6
    assert by_id["azure-chat"]["deployments"][0]["provider_kind"] == "azure"
    assert by_id["local-chat"]["deployments"][0]["provider_kind"] == "openai-compatible"
    text = r.text
    for secret in (OPENAI_KEY, AZURE_KEY, OPENAI_KEY_ENV, AZURE_KEY_ENV, "api_key", "base_url", "127.0.0.1"):
        assert secret not in text, secret
    assert_error_response(admin.http.post("/admin/models"), 405)


def test_additions_need_the_master_key(http):
    for path in ("/admin/usage/summary", "/admin/models"):
        assert_error_response(http.get(path), 401)
        assert_error_response(http.get(path, headers={"Authorization": "Bearer wrong"}), 401)
    s = http.get("/admin/session").json()
    assert s == {"object": "session", "admin_enabled": True, "signed_in": False}
