"""Rate limits, budgets, pricing and exact metering (issue 3), black-box.

A gateway of its own, with priced and unpriced aliases, driven by the
official SDK. Concurrency tests send to an upstream that hangs past the
gateway's timeout, so every admission is decided before any settlement:
exactly the limit is admitted, the rest get 429.
"""
from __future__ import annotations

import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest

from conftest import MASTER_KEY, OPENAI_KEY_ENV
from helpers import auth, chat_body
from mock_upstream import OPENAI_KEY
from targets import ServerTarget, make_target, target_name

PRICE_IN, PRICE_OUT, PRICE_CACHED = 100.0, 200.0, 50.0  # USD per 1M tokens
LONG_PROMPT = "Tell me about the sea. " * 12  # the estimate exceeds the mock's prompt tokens


def config(mock_url: str) -> str:
    price = f"price = {{ input = {PRICE_IN}, output = {PRICE_OUT}, cached_input = {PRICE_CACHED} }}"
    return f"""
[providers.openai]
kind = "openai"
base_url = "{mock_url}/v1"
api_key_env = "{OPENAI_KEY_ENV}"

[providers.local]
kind = "openai-compatible"
base_url = "{mock_url}/compat/v1"

[models."priced"]
deployments = [{{ provider = "openai", model = "gpt-4o-mini", {price} }}]

[models."priced-slow"]
deployments = [{{ provider = "openai", model = "mock-slow-stream", {price} }}]

[models."hang"]
deployments = [{{ provider = "openai", model = "mock-hang", {price} }}]

[models."unpriced"]
deployments = [{{ provider = "local", model = "mock-unpriced-model" }}]

[gateway]
upstream_timeout_ms = 1500
default_max_tokens = 64
"""


def start(mock, database: Path | None = None):
    if database is not None:
        t = ServerTarget(database=database)
    else:
        t = make_target()
    base = t.start(config(mock.url), {"CONDUIT_MASTER_KEY": MASTER_KEY, OPENAI_KEY_ENV: OPENAI_KEY})
    return t, base


@pytest.fixture(scope="module")
def lgw(mock):
    t, base = start(mock)
    yield base
    t.stop()


def new_key(base: str, **fields) -> tuple[str, str]:
    r = httpx.post(base + "/admin/keys", json={"name": "limits", **fields}, headers=auth(MASTER_KEY), timeout=10)
    assert r.status_code == 201, r.text
    return r.json()["id"], r.json()["key"]


def client(base: str, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0, timeout=20)


def usage_records(base: str, key_id: str, want: int, timeout: float = 5.0) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        r = httpx.get(base + "/admin/usage", params={"key_id": key_id}, headers=auth(MASTER_KEY), timeout=10)
        assert r.status_code == 200, r.text
        data = r.json()["data"]
        if len(data) >= want or time.monotonic() > deadline:
            return data
        time.sleep(0.05)


def expected_cost_nanos(rec: dict) -> int:
    cached = rec["cached_tokens"]
    fresh = rec["prompt_tokens"] - cached
    micro = fresh * PRICE_IN * 1e9 + cached * PRICE_CACHED * 1e9 + rec["completion_tokens"] * PRICE_OUT * 1e9
    return math.ceil(round(micro) / 1_000_000)


def burst(base: str, key: str, n: int, **body) -> list:
    """n concurrent chat requests through the SDK; each result is a response or an exception."""
    c = client(base, key)
    barrier = threading.Barrier(n)

    def one(_):
        barrier.wait()
        try:
            return c.chat.completions.with_raw_response.create(**body)
        except openai.APIStatusError as e:
            return e

    with ThreadPoolExecutor(max_workers=n) as pool:
        return list(pool.map(one, range(n)))


def split(results):
    admitted = [r for r in results if not isinstance(r, openai.RateLimitError)]
    refused = [r for r in results if isinstance(r, openai.RateLimitError)]
    return admitted, refused


def check_refusal(e: openai.RateLimitError, param: str, limit: int) -> None:
    assert e.status_code == 429
    err = e.response.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert (err["type"], err["code"], err["param"]) == ("rate_limit_error", "rate_limit_exceeded", param)
    retry = int(e.response.headers["retry-after"])
    assert retry >= 1
    if param == "rpm":
        assert retry <= 60
    h = e.response.headers
    if param in ("rpm", "rpd"):
        assert h["x-ratelimit-limit-requests"] == str(limit)
        assert h["x-ratelimit-remaining-requests"] == "0"
        assert "x-ratelimit-reset-requests" in h


def test_rpm_exact_under_concurrency(lgw):
    _, key = new_key(lgw, limits={"rpm": 5})
    results = burst(lgw, key, 50, model="hang", messages=[{"role": "user", "content": "x"}])
    admitted, refused = split(results)
    assert (len(admitted), len(refused)) == (5, 45)
    for e in refused:
        check_refusal(e, "rpm", 5)
    # the admitted ones reached the (hanging) provider and timed out
    assert all(isinstance(r, openai.APIStatusError) and r.status_code == 504 for r in admitted)


def test_rpd_exact_under_concurrency(lgw):
    _, key = new_key(lgw, limits={"rpd": 3})
    admitted, refused = split(burst(lgw, key, 20, model="hang", messages=[{"role": "user", "content": "x"}]))
    assert (len(admitted), len(refused)) == (3, 17)
    for e in refused:
        check_refusal(e, "rpd", 3)


def test_tpm_exact_under_concurrency(lgw):
    # "x" → 1 + 4 (message) prompt tokens estimated, plus max_tokens 300: 305 each; 3 fit in 1000.
    key_id, key = new_key(lgw, limits={"tpm": 1000})
    admitted, refused = split(burst(lgw, key, 30, model="hang", max_tokens=300,
                                    messages=[{"role": "user", "content": "x"}]))
    assert (len(admitted), len(refused)) == (3, 27)
    for e in refused:
        check_refusal(e, "tpm", 1000)
        assert e.response.headers["x-ratelimit-limit-tokens"] == "1000"
    recs = usage_records(lgw, key_id, 30)
    assert sorted(r["refused_by"] for r in recs if r["refused_by"]) == ["tpm"] * 27
    assert all(r["cost_nano_usd"] == 0 for r in recs if r["refused_by"])


def test_headers_on_every_answer_of_a_limited_key(lgw):
    _, key = new_key(lgw, limits={"rpm": 100, "tpm": 100000})
    raw = client(lgw, key).chat.completions.with_raw_response.create(model="priced", messages=[{"role": "user", "content": "hi"}])
    h = raw.headers
    assert h["x-ratelimit-limit-requests"] == "100"
    assert h["x-ratelimit-remaining-requests"] == "99"
    assert h["x-ratelimit-limit-tokens"] == "100000"
    assert int(h["x-ratelimit-remaining-tokens"]) < 100000
    assert h["x-ratelimit-reset-requests"].endswith("s")
    models = httpx.get(lgw + "/v1/models", headers=auth(key), timeout=10)
    assert models.headers["x-ratelimit-limit-requests"] == "100"
    assert models.headers["x-ratelimit-limit-tokens"] == "100000"
    # error answers carry them too
    with pytest.raises(openai.APIStatusError) as ei:
        client(lgw, key).chat.completions.create(model="no-such-alias", messages=[{"role": "user", "content": "hi"}])
    assert ei.value.status_code == 404
    assert ei.value.response.headers["x-ratelimit-limit-requests"] == "100"


def test_budget_refuses_the_request_that_would_cross_it(lgw):
    # Learn the mock's usage and the gateway's estimate for this exact request.
    probe_id, probe = new_key(lgw)
    body = dict(model="priced", max_tokens=200, messages=[{"role": "user", "content": LONG_PROMPT}])
    client(lgw, probe).chat.completions.create(**body)
    rec = usage_records(lgw, probe_id, 1)[0]
    actual = rec["cost_nano_usd"]
    assert actual == expected_cost_nanos(rec) > 0
    est_tokens_cost = math.ceil((rec["estimated_prompt_tokens"] * PRICE_IN * 1e9
                                 + rec["estimated_completion_tokens"] * PRICE_OUT * 1e9) / 1e6)
    assert est_tokens_cost >= actual, "the estimate covers this request"
    k = 3
    max_nanos = (k - 1) * actual + est_tokens_cost
    key_id, key = new_key(lgw, budget={"max_usd": max_nanos / 1e9, "period": "daily"})
    c = client(lgw, key)
    for _ in range(k):
        c.chat.completions.create(**body)
    with pytest.raises(openai.APIStatusError) as ei:
        c.chat.completions.create(**body)
    e = ei.value
    assert e.status_code == 402
    err = e.response.json()["error"]
    assert (err["type"], err["code"]) == ("insufficient_quota", "budget_exceeded")
    recs = usage_records(lgw, key_id, k + 1)
    spent = sum(r["cost_nano_usd"] for r in recs)
    assert spent == k * actual <= max_nanos
    assert [r["refused_by"] for r in recs].count("budget") == 1
    view = httpx.get(f"{lgw}/admin/keys/{key_id}", headers=auth(MASTER_KEY), timeout=10).json()
    assert view["spend"]["spent_nano_usd"] == k * actual
    assert abs(view["spend"]["remaining_usd"] - (max_nanos - k * actual) / 1e9) < 1e-9


def test_streamed_and_buffered_cost_the_same(lgw):
    key_id, key = new_key(lgw)
    c = client(lgw, key)
    msgs = [{"role": "user", "content": "same"}]
    c.chat.completions.create(model="priced", messages=msgs)
    for _ in c.chat.completions.create(model="priced", messages=msgs, stream=True):
        pass
    recs = usage_records(lgw, key_id, 2)
    buffered = next(r for r in recs if not r["streamed"])
    streamed = next(r for r in recs if r["streamed"])
    for r in (buffered, streamed):
        assert r["price_known"] is True
        assert r["cost_nano_usd"] == expected_cost_nanos(r) > 0
        assert abs(r["cost_usd"] - r["cost_nano_usd"] / 1e9) < 1e-12
    assert (buffered["prompt_tokens"], buffered["completion_tokens"]) == (streamed["prompt_tokens"], streamed["completion_tokens"])
    assert buffered["cost_nano_usd"] == streamed["cost_nano_usd"]


def test_client_disconnect_mid_stream_still_bills(lgw):
    key_id, key = new_key(lgw)
    with httpx.stream("POST", lgw + "/v1/chat/completions", headers=auth(key), timeout=10,
                      json=chat_body("priced-slow", stream=True, max_tokens=50)) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: "):
                break  # leave after the first event
    recs = usage_records(lgw, key_id, 1)
    assert len(recs) == 1
    rec = recs[0]
    assert rec["status"] == 499 and rec["streamed"] is True
    assert rec["completion_tokens"] >= 50 and rec["prompt_tokens"] == rec["estimated_prompt_tokens"]
    assert rec["cost_nano_usd"] == expected_cost_nanos(rec) > 0


def test_unpriced_model_and_budget(lgw):
    _, budgeted = new_key(lgw, budget={"max_usd": 10, "period": "monthly"})
    with pytest.raises(openai.PermissionDeniedError) as ei:
        client(lgw, budgeted).chat.completions.create(model="unpriced", messages=[{"role": "user", "content": "hi"}])
    err = ei.value.response.json()["error"]
    assert err["code"] == "model_price_unknown" and "unpriced" in err["message"]
    free_id, free = new_key(lgw)
    client(lgw, free).chat.completions.create(model="unpriced", messages=[{"role": "user", "content": "hi"}])
    rec = usage_records(lgw, free_id, 1)[0]
    assert rec["status"] == 200 and rec["price_known"] is False and rec["cost_nano_usd"] is None
    assert rec["total_tokens"] > 0


def test_usage_totals_by_key_and_model(lgw):
    key_id, key = new_key(lgw)
    c = client(lgw, key)
    c.chat.completions.create(model="priced", messages=[{"role": "user", "content": "a"}])
    c.chat.completions.create(model="unpriced", messages=[{"role": "user", "content": "b"}])
    usage_records(lgw, key_id, 2)
    body = httpx.get(lgw + "/admin/usage", params={"key_id": key_id}, headers=auth(MASTER_KEY), timeout=10).json()
    t = body["totals"]
    assert t["requests"] == 2
    assert set(t["by_model"]) == {"priced", "unpriced"}
    assert t["by_key"][key_id]["requests"] == 2
    assert t["by_model"]["unpriced"]["unpriced_requests"] == 1
    assert t["cost_nano_usd"] == t["by_model"]["priced"]["cost_nano_usd"] > 0


@pytest.mark.skipif(target_name() != "server", reason="restarts the native server on the same database")
def test_restart_keeps_spend(mock, tmp_path):
    db = tmp_path / "conduit.db"
    t, base = start(mock, db)
    try:
        key_id, key = new_key(base, budget={"max_usd": 5, "period": "total"})
        client(base, key).chat.completions.create(model="priced", messages=[{"role": "user", "content": "hi"}])
        usage_records(base, key_id, 1)
        before = httpx.get(f"{base}/admin/keys/{key_id}", headers=auth(MASTER_KEY), timeout=10).json()["spend"]
        assert before["spent_nano_usd"] > 0
    finally:
        t.stop()
    t, base = start(mock, db)
    try:
        after = httpx.get(f"{base}/admin/keys/{key_id}", headers=auth(MASTER_KEY), timeout=10).json()["spend"]
        assert after["spent_nano_usd"] == before["spent_nano_usd"]
    finally:
        t.stop()
