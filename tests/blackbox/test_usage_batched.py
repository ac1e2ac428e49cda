"""Usage records under concurrency (every target): many concurrent requests of one key, then every
request's record is in GET /admin/usage within RECORD_WITHIN_S of the last answer, once, and the
totals of the page and of GET /admin/usage/summary are exact.

On the Worker this is the batching of usage records per isolate and key (README, "Limits, budgets
and cost"): a batch is posted to the key's Durable Object at 32 records or 200 ms after its first,
by the request that opened or filled it; a record may appear up to that much later than on the
server. On the server and Lambda it checks the same promise: no record lost or doubled under load."""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from helpers import auth, chat_body

REQUESTS = 120
CONCURRENCY = 16
# The batch age (0.2 s) plus the call and the slow test machine's scheduling.
RECORD_WITHIN_S = 5.0
# The mock's answer for the "chat" alias (tests/blackbox/mock_upstream.py).
PROMPT, COMPLETION = 78, 9


def test_every_record_of_a_hot_key_is_stored_once_with_exact_totals(gateway, admin):
    rec = admin.create_key(name="bb-usage-batched")
    headers = auth(rec["key"])
    since = int(time.time()) - 5

    def one(i: int) -> str:
        with httpx.Client(base_url=gateway.v1, timeout=30) as c:
            r = c.post("/chat/completions", headers=headers, json=chat_body("chat", f"batched {i}"))
        assert r.status_code == 200, r.text
        return r.headers["x-request-id"]

    with ThreadPoolExecutor(CONCURRENCY) as pool:
        ids = list(pool.map(one, range(REQUESTS)))
    assert len(set(ids)) == REQUESTS
    answered = time.monotonic()

    body = admin.wait_usage(rec["id"], REQUESTS, timeout=RECORD_WITHIN_S, limit=1000)
    waited = time.monotonic() - answered
    got = [r["request_id"] for r in body["data"]]
    missing = set(ids) - set(got)
    assert not missing, f"{len(missing)} of {REQUESTS} records missing {waited:.1f} s after the last answer"
    assert len(got) == REQUESTS == len(set(got)), f"records doubled or foreign: {len(got)}"
    assert not body.get("has_more")
    totals = body["totals"]
    assert totals["requests"] == REQUESTS
    assert totals["prompt_tokens"] == REQUESTS * PROMPT
    assert totals["completion_tokens"] == REQUESTS * COMPLETION
    assert totals["total_tokens"] == REQUESTS * (PROMPT + COMPLETION)
    assert all(r["status"] == 200 for r in body["data"])

    # The hourly counters, written with the records (in the same transaction on the Worker).
    summary = admin.http.get("/admin/usage/summary",
                             params={"key_id": rec["id"], "since": since, "until": int(time.time()) + 60})
    assert summary.status_code == 200, summary.text
    t = summary.json()["totals"]
    assert t["requests"] == REQUESTS
    assert t["prompt_tokens"] == REQUESTS * PROMPT
    assert t["total_tokens"] == REQUESTS * (PROMPT + COMPLETION)
    assert t["cost_nano_usd"] == sum(r["cost_nano_usd"] or 0 for r in body["data"])
    assert t["errors"] == 0
