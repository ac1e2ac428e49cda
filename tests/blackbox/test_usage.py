"""GET /admin/usage: one record per proxied request with the right fields, statuses, streamed flag,
token counts (from the provider's usage, also when the client did not ask for stream usage), totals,
key_id / since / until filtering. Usage is written off the hot path, so the helpers poll (~3 s)."""
from __future__ import annotations

import datetime as dt
import math
import time

import openai
import pytest

from helpers import assert_error_response, assert_no_secret_material, user_msg
from mock_upstream import CACHED_TOKENS

USAGE_KEYS = {"request_id", "key_id", "model", "provider", "provider_model", "endpoint", "status", "streamed",
              "prompt_tokens", "completion_tokens", "cached_tokens", "total_tokens", "latency_ms",
              "upstream_latency_ms", "overhead_ms", "created_at"}
TOTAL_KEYS = {"requests", "prompt_tokens", "completion_tokens", "cached_tokens", "total_tokens"}


def _ts(v) -> float:
    if isinstance(v, (int, float)):
        return float(v)
    return dt.datetime.fromisoformat(v.replace("Z", "+00:00")).timestamp()


def _rfc3339(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, tz=dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _check_totals(body: dict) -> None:
    assert set(body) >= {"data", "totals"}, body.keys()
    t = body["totals"]
    assert not TOTAL_KEYS - set(t), f"totals lack {sorted(TOTAL_KEYS - set(t))}: {t}"
    data = body["data"]
    assert t["requests"] == len(data)
    for k in ("prompt_tokens", "completion_tokens", "cached_tokens", "total_tokens"):
        assert t[k] == sum(r[k] for r in data), f"totals.{k} {t[k]} != sum {sum(r[k] for r in data)}"


@pytest.fixture(scope="module")
def usage_run(admin, make_client):
    """Make a known set of requests with a dedicated key; return (key record, {request_id: expectation})."""
    rec = admin.create_key(name="bb-usage")
    c = make_client(rec["key"])
    exp: dict[str, dict] = {}

    def note(rid, **e):
        assert rid, "response without x-request-id"
        exp[rid] = e

    ok = dict(status=200, provider="openai")
    raw = c.chat.completions.with_raw_response.create(model="chat", messages=user_msg("u1"))
    raw.parse()
    note(raw.headers["x-request-id"], model="chat", provider_model="gpt-4o-mini", streamed=False,
         tokens=(78, 9, 87, 0), kind="chat", **ok)

    raw = c.chat.completions.with_raw_response.create(model="chat", messages=user_msg("u2"), stream=True)
    list(raw.parse())
    note(raw.headers["x-request-id"], model="chat", provider_model="gpt-4o-mini", streamed=True,
         tokens=(78, 9, 87, 0), kind="chat", **ok)

    raw = c.chat.completions.with_raw_response.create(model="cached", messages=user_msg("u3"), stream=True,
                                                      stream_options={"include_usage": True})
    list(raw.parse())
    note(raw.headers["x-request-id"], model="cached", provider_model="mock-cached", streamed=True,
         tokens=(78, 9, 87, CACHED_TOKENS), kind="chat", **ok)

    raw = c.embeddings.with_raw_response.create(model="embed", input=["a", "b"], encoding_format="float")
    raw.parse()
    note(raw.headers["x-request-id"], model="embed", provider_model="text-embedding-3-small", streamed=False,
         tokens=(12, 0, 12, 0), kind="embeddings", **ok)

    raw = c.completions.with_raw_response.create(model="instruct", prompt="u5")
    raw.parse()
    note(raw.headers["x-request-id"], model="instruct", provider_model="gpt-3.5-turbo-instruct",
         streamed=False, tokens=(14, 16, 30, 0), kind="completions", **ok)

    raw = c.chat.completions.with_raw_response.create(model="azure-chat", messages=user_msg("u6"))
    raw.parse()
    note(raw.headers["x-request-id"], model="azure-chat", provider="az", provider_model="gpt5nano-deploy",
         streamed=False, status=200, tokens=(15, 78, 93, 0), kind="chat")

    raw = c.chat.completions.with_raw_response.create(model="mistral", messages=user_msg("u7"), stream=True)
    list(raw.parse())
    note(raw.headers["x-request-id"], model="mistral", provider="local", provider_model="mock-mistral",
         streamed=True, status=200, tokens=(124, 22, 146, 0), kind="chat")

    with pytest.raises(openai.InternalServerError) as ei:
        c.chat.completions.create(model="fail-500", messages=user_msg("u8"))
    note(ei.value.request_id, model="fail-500", provider="openai", provider_model="mock-error-500",
         streamed=False, status=502, tokens=(0, 0, 0, 0), kind="chat")

    with pytest.raises(openai.BadRequestError) as ei:
        c.chat.completions.create(model="fail-400", messages=user_msg("u9"))
    note(ei.value.request_id, model="fail-400", provider="openai", provider_model="mock-error-400",
         streamed=False, status=400, tokens=(0, 0, 0, 0), kind="chat")

    body = admin.wait_usage(rec["id"], len(exp))
    return rec, exp, body


def test_usage_records_listed(usage_run):
    rec, exp, body = usage_run
    got = {r["request_id"]: r for r in body["data"]}
    missing = set(exp) - set(got)
    assert not missing, f"{len(missing)} request(s) without a usage record after 3 s: " \
                        f"{[exp[m]['model'] for m in missing]}"
    assert len(body["data"]) == len(exp), f"unexpected extra records: {set(got) - set(exp)}"


def test_usage_record_fields(usage_run):
    rec, exp, body = usage_run
    for r in body["data"]:
        assert not USAGE_KEYS - set(r), f"usage record lacks {sorted(USAGE_KEYS - set(r))}: {r}"
        assert r["key_id"] == rec["id"]
        for k in ("latency_ms", "upstream_latency_ms", "overhead_ms"):
            assert isinstance(r[k], (int, float)) and not isinstance(r[k], bool) and r[k] >= 0, (k, r[k])
        assert isinstance(r["streamed"], bool) and isinstance(r["status"], int)
        assert isinstance(r["endpoint"], str) and r["endpoint"]
        assert abs(_ts(r["created_at"]) - time.time()) < 300
    assert_no_secret_material(body, rec["key"])


def test_usage_record_values(usage_run):
    rec, exp, body = usage_run
    got = {r["request_id"]: r for r in body["data"]}
    for rid, e in exp.items():
        if rid not in got:
            continue  # reported by test_usage_records_listed
        r = got[rid]
        where = f"usage for {e['model']} ({rid})"
        assert r["model"] == e["model"], where
        assert r["provider"] == e["provider"], where
        assert r["provider_model"] == e["provider_model"], where
        assert r["status"] == e["status"], f"{where}: status {r['status']}"
        assert r["streamed"] is e["streamed"], f"{where}: streamed {r['streamed']}"
        assert (r["prompt_tokens"], r["completion_tokens"], r["total_tokens"], r["cached_tokens"]) == \
            e["tokens"], f"{where}: tokens {r}"
    eps = {e["kind"]: got[rid]["endpoint"] for rid, e in exp.items() if rid in got}
    assert len(set(eps.values())) == 3, f"endpoints not distinguished: {eps}"
    assert "chat" in eps["chat"] and "embeddings" in eps["embeddings"]
    assert "completions" in eps["completions"] and "chat" not in eps["completions"]


def test_usage_totals(usage_run):
    rec, exp, body = usage_run
    _check_totals(body)
    assert body["totals"]["requests"] == len(exp)
    assert body["totals"]["total_tokens"] == sum(e["tokens"][2] for e in exp.values())
    assert body["totals"]["cached_tokens"] == CACHED_TOKENS


def test_usage_key_filter(admin, usage_run):
    rec, exp, _ = usage_run
    other = admin.create_key()
    r = admin.usage(key_id=other["id"])
    assert r.status_code == 200
    assert r.json()["data"] == [] and r.json()["totals"]["requests"] == 0
    # every key's records, page by page (newest first, at most 1000 a page)
    ids: set = set()
    cursor = None
    while True:
        page = admin.usage(limit=1000, cursor=cursor)
        assert page.status_code == 200
        _check_totals(page.json())
        ids |= {u["request_id"] for u in page.json()["data"]}
        cursor = page.json()["next_cursor"]
        if not cursor:
            break
    assert set(exp) <= ids


def test_usage_since_until(admin, make_client, usage_run):
    rec = admin.create_key(name="bb-usage-window")
    c = make_client(rec["key"])
    a = c.chat.completions.with_raw_response.create(model="chat", messages=user_msg("window-a"))
    t_a = time.time()
    split = math.floor(t_a) + 1  # A happened strictly before `split`
    while time.time() < split + 1.05:  # B happens in a later second than `split`, whatever the rounding
        time.sleep(0.05)
    b = c.chat.completions.with_raw_response.create(model="chat", messages=user_msg("window-b"))
    rid_a, rid_b = a.headers["x-request-id"], b.headers["x-request-id"]
    body = admin.wait_usage(rec["id"], 2)
    assert {u["request_id"] for u in body["data"]} == {rid_a, rid_b}

    def ids(**params):
        r = admin.usage(key_id=rec["id"], **params)
        assert r.status_code == 200, r.text
        _check_totals(r.json())
        return {u["request_id"] for u in r.json()["data"]}

    for since in (split, _rfc3339(split)):
        assert ids(since=since) == {rid_b}, f"since={since}"
    for until in (split, _rfc3339(split)):
        assert ids(until=until) == {rid_a}, f"until={until}"
    assert ids(since=split - 3600, until=split + 3600) == {rid_a, rid_b}
    assert ids(since=int(time.time()) + 3600) == set()
    assert ids(until=split - 3600) == set()


def test_usage_requires_master_key(http, api_key):
    assert_error_response(http.get("/admin/usage"), 401)
    assert_error_response(http.get("/admin/usage", headers={"Authorization": f"Bearer {api_key}"}), 401)


def test_usage_bad_since_400(admin):
    assert_error_response(admin.usage(since="yesterday-ish"), 400)
