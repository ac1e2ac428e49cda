"""Model routing (issue 10), black-box: strategies, retries with backoff, Retry-After, deadline,
cooldown, fallbacks, context-window fallbacks, streams peeked up to their first event, metering of
retried requests, the x-conduit-deployment / x-conduit-attempts headers and GET /admin/routes.

A gateway of its own, with three providers of three kinds pointing at the mock (OpenAI, an
OpenAI-compatible host, Azure) and one alias per test; the mock's fault and delay models
(``mock.set_faults`` / ``mock.set_delay``) decide what each upstream model name answers, and its
request log (arrival times included) says which deployment was called when.

Health state lives in the gateway instance. On Lambda that is the container, and a container
serves one request at a time: the Lambda target runs with a single instance here, so that the
state the assertions speak of is one container's (with several, each keeps its own).
"""
from __future__ import annotations

import math
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from conftest import AZURE_API_VERSION, AZURE_KEY_ENV, MASTER_KEY, OPENAI_KEY_ENV
from helpers import assert_error_body, auth, chat_body, data_payloads, stream_raw, user_msg
from mock_upstream import AZURE_KEY, OPENAI_KEY
from targets import LambdaTarget, make_target

FX_TEXT = "The capital of the UK is London."
PRICE_C = (1.0, 2.0)  # rt-meter's answering deployment, USD per 1M tokens (input, output)

ALIASES = """
[models."rt-ordered"]
deployments = [{ provider = "p1", model = "ord-a" }, { provider = "p2", model = "ord-b" }]

[models."rt-rr"]
strategy = "round-robin"
deployments = [{ provider = "p1", model = "rr-a" }, { provider = "p2", model = "rr-b" }, { provider = "az", model = "rr-c" }]

[models."rt-weighted"]
strategy = "weighted"
deployments = [{ provider = "p1", model = "w-a", weight = 3 }, { provider = "p2", model = "w-b", weight = 1 }]

[models."rt-latency"]
strategy = "least-latency"
deployments = [{ provider = "p1", model = "lat-a" }, { provider = "p2", model = "lat-b" }]

[models."rt-cost"]
strategy = "least-cost"
deployments = [
  { provider = "p1", model = "cost-a", price = { input = 5.0, output = 15.0 } },
  { provider = "p2", model = "cost-b", price = { input = 0.5, output = 1.5 } },
  { provider = "az", model = "cost-c", price = { input = 2.0, output = 8.0 } },
]

[models."rt-busy"]
strategy = "least-busy"
deployments = [{ provider = "p1", model = "busy-a" }, { provider = "p2", model = "busy-b" }, { provider = "az", model = "busy-c" }]

[models."rt-backoff"]
retries = 3
retry_backoff_ms = 50
retry_backoff_max_ms = 1000
deployments = [{ provider = "p1", model = "bo-a" }]

[models."rt-retry-after"]
retries = 1
timeout_ms = 5000
deployments = [{ provider = "p1", model = "ra-a" }]

[models."rt-retry-after-skip"]
deployments = [{ provider = "p1", model = "ras-a" }, { provider = "p2", model = "ras-b" }]

[models."rt-retry-after-nofit"]
retries = 1
timeout_ms = 1500
deployments = [{ provider = "p1", model = "ranf-a" }]

[models."rt-no-retry"]
retries = 2
deployments = [{ provider = "p1", model = "nr-a" }, { provider = "p2", model = "nr-b" }]

[models."rt-deadline"]
retries = 3
timeout_ms = 1000
deployments = [{ provider = "p1", model = "dl-a" }, { provider = "p2", model = "dl-b" }]

[models."rt-cooldown"]
cooldown_after_failures = 2
cooldown_ms = 800
deployments = [{ provider = "p1", model = "cd-a" }, { provider = "p2", model = "cd-b" }]

[models."rt-fallback"]
retries = 1
fallbacks = ["rt-backup"]
deployments = [{ provider = "p1", model = "fb-a" }, { provider = "p2", model = "fb-b" }]

[models."rt-backup"]
deployments = [{ provider = "az", model = "fb-backup" }]

[models."rt-ctx"]
fallbacks = ["rt-backup"]
context_window_fallbacks = ["rt-long"]
deployments = [{ provider = "p1", model = "ctx-a" }, { provider = "p2", model = "ctx-b" }]

[models."rt-long"]
deployments = [{ provider = "p2", model = "ctx-long" }]

[models."rt-stream"]
stream_first_event_timeout_ms = 400
deployments = [{ provider = "p1", model = "st-a" }, { provider = "p2", model = "st-b" }]

[models."rt-meter"]
retries = 2
deployments = [
  { provider = "p1", model = "m-a", price = { input = 50.0, output = 50.0 } },
  { provider = "p2", model = "m-b", price = { input = 50.0, output = 50.0 } },
  { provider = "p1", model = "m-c", price = { input = %s, output = %s } },
]
""" % PRICE_C


def config(mock_url: str) -> str:
    return f"""
[providers.p1]
kind = "openai"
base_url = "{mock_url}/v1"
api_key_env = "{OPENAI_KEY_ENV}"

[providers.p2]
kind = "openai-compatible"
base_url = "{mock_url}/compat/v1"

[providers.az]
kind = "azure"
base_url = "{mock_url}"
api_version = "{AZURE_API_VERSION}"
api_key_env = "{AZURE_KEY_ENV}"

[gateway]
upstream_timeout_ms = 3000
{ALIASES}"""


@pytest.fixture(scope="module")
def rgw(mock):
    target = make_target()
    if isinstance(target, LambdaTarget):
        target.instances = 1
    base = target.start(config(mock.url), {"CONDUIT_MASTER_KEY": MASTER_KEY, OPENAI_KEY_ENV: OPENAI_KEY,
                                           AZURE_KEY_ENV: AZURE_KEY})
    deadline = time.monotonic() + 20
    while True:
        try:
            if httpx.get(base + "/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "routing gateway never answered /health\n" + target.logs()
        time.sleep(0.05)
    yield base
    target.stop()


def new_key(base: str, **fields) -> tuple[str, str]:
    r = httpx.post(base + "/admin/keys", json={"name": "routing", **fields}, headers=auth(MASTER_KEY), timeout=10)
    assert r.status_code == 201, r.text
    return r.json()["id"], r.json()["key"]


@pytest.fixture(scope="module")
def rkey(rgw) -> tuple[str, str]:
    return new_key(rgw)


@pytest.fixture(scope="module")
def rc(rgw, rkey) -> openai.OpenAI:
    c = openai.OpenAI(base_url=rgw + "/v1", api_key=rkey[1], max_retries=0, timeout=20)
    yield c
    c.close()


def chat(rc: openai.OpenAI, alias: str, text: str = "hello", **kw):
    """(status, headers, body dict) of one chat request, errors included."""
    try:
        raw = rc.chat.completions.with_raw_response.create(model=alias, messages=user_msg(text), **kw)
        return raw.status_code, raw.headers, raw.parse().to_dict(mode="json")
    except openai.APIStatusError as e:
        return e.status_code, e.response.headers, e.response.json()


def deployment_of(headers) -> str:
    return headers.get("x-conduit-deployment", "")


def usage_record(base: str, key_id: str, request_id: str, timeout: float = 5.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        r = httpx.get(base + "/admin/usage", params={"key_id": key_id}, headers=auth(MASTER_KEY), timeout=10)
        assert r.status_code == 200, r.text
        found = [d for d in r.json()["data"] if d["request_id"] == request_id]
        if found:
            return found[0]
        assert time.monotonic() < deadline, f"no usage record for {request_id}"
        time.sleep(0.05)


def routes(base: str) -> dict:
    r = httpx.get(base + "/admin/routes", headers=auth(MASTER_KEY), timeout=10)
    assert r.status_code == 200, r.text
    return {a["alias"]: a for a in r.json()["data"]}


def gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in zip(times, times[1:])]


# ------------------------------------------------------------------------------------------
# strategies
# ------------------------------------------------------------------------------------------
def test_ordered_fails_over_and_headers_name_the_answer(rgw, rkey, rc, mock):
    mock.set_faults("ord-a", "500")
    status, headers, body = chat(rc, "rt-ordered")
    assert status == 200 and body["choices"][0]["message"]["content"] == FX_TEXT
    assert deployment_of(headers) == "p2/ord-b"
    assert headers["x-conduit-attempts"] == "2"
    assert body["model"] == "rt-ordered"
    # the failed deployment is first again on the next request (no cooldown configured)
    status, headers, _ = chat(rc, "rt-ordered")
    assert (status, deployment_of(headers), headers["x-conduit-attempts"]) == (200, "p1/ord-a", "1")
    rec = usage_record(rgw, rkey[0], headers["x-request-id"])
    assert rec["deployment"] == "p1/ord-a" and rec["attempts"] == 1 and rec["failed_attempts"] == []


def test_round_robin_is_exact(rc, mock):
    seen = Counter(deployment_of(chat(rc, "rt-rr")[1]) for _ in range(30))
    assert seen == {"p1/rr-a": 10, "p2/rr-b": 10, "az/rr-c": 10}, seen
    assert Counter(m for m in ("rr-a", "rr-b", "rr-c") for _ in mock.for_model(m)) == \
        {"rr-a": 10, "rr-b": 10, "rr-c": 10}


def test_weighted_three_to_one(rc):
    """400 requests, weights 3:1: the count of the first deployment is Binomial(400, 0.75), mean 300,
    standard deviation 8.66. The tolerance is ±5 standard deviations (±43): a correct router fails
    it about once in 1.7 million runs; one that ignored the weights (mean 200) or used 2:1
    (mean 267) or 4:1 (mean 320, 1 run in 14 inside) cannot pass it reliably."""
    def one(_):
        return deployment_of(chat(rc, "rt-weighted")[1])

    with ThreadPoolExecutor(8) as pool:
        seen = Counter(pool.map(one, range(400)))
    assert set(seen) == {"p1/w-a", "p2/w-b"}, seen
    assert 257 <= seen["p1/w-a"] <= 343, seen


def test_least_latency_prefers_the_faster_and_comes_back(rgw, rc, mock):
    mock.set_delay("lat-a", 0.15)
    mock.set_delay("lat-b", 0.0)
    try:
        warm = [deployment_of(chat(rc, "rt-latency")[1]) for _ in range(2)]
        assert sorted(warm) == ["p1/lat-a", "p2/lat-b"], f"warm-up measures both: {warm}"
        seen = Counter(deployment_of(chat(rc, "rt-latency")[1]) for _ in range(20))
        # one request in ten explores the other deployment
        assert seen["p2/lat-b"] >= 16, seen
        latency = {d["deployment"]: d["latency_ms"] for d in routes(rgw)["rt-latency"]["deployments"]}
        assert latency["p1/lat-a"] > latency["p2/lat-b"], latency
        # lat-a recovers and lat-b slows down: exploration measures lat-a again and traffic moves back
        mock.set_delay("lat-a", 0.0)
        mock.set_delay("lat-b", 0.08)
        picks = [deployment_of(chat(rc, "rt-latency")[1]) for _ in range(40)]
        assert Counter(picks[-10:])["p1/lat-a"] >= 8, picks
    finally:
        mock.set_delay("lat-a", 0.0)
        mock.set_delay("lat-b", 0.0)


def test_least_cost_picks_the_cheapest(rc, mock):
    for _ in range(5):
        status, headers, _ = chat(rc, "rt-cost")
        assert (status, deployment_of(headers)) == (200, "p2/cost-b")
    # the cheapest failing: the next cheapest answers
    mock.set_faults("cost-b", "503")
    status, headers, _ = chat(rc, "rt-cost")
    assert (status, deployment_of(headers)) == (200, "az/cost-c")


def test_least_busy_spreads_concurrent_slow_requests(rc, mock):
    for m in ("busy-a", "busy-b", "busy-c"):
        mock.set_delay(m, 0.4)
    try:
        barrier = threading.Barrier(6)

        def one(_):
            barrier.wait()
            return deployment_of(chat(rc, "rt-busy")[1])

        with ThreadPoolExecutor(6) as pool:
            seen = Counter(pool.map(one, range(6)))
        assert seen == {"p1/busy-a": 2, "p2/busy-b": 2, "az/busy-c": 2}, seen
    finally:
        for m in ("busy-a", "busy-b", "busy-c"):
            mock.set_delay(m, 0.0)


# ------------------------------------------------------------------------------------------
# retries, Retry-After, client errors, deadline, cooldown
# ------------------------------------------------------------------------------------------
def test_retries_back_off_exponentially_with_jitter(rgw, rkey, rc, mock):
    """retries = 3, retry_backoff_ms = 50: retry k waits uniformly in [0, 50·2^(k-1)] ms (full
    jitter). Over 10 requests every gap stays under its cap (plus the request's own time), and the
    third retry's gaps exceed the second retry's cap at least once (all ten under it: p = 0.4^10)."""
    slack = 0.12
    per_retry: list[list[float]] = [[], [], []]
    for i in range(10):
        mock.set_faults("bo-a", "500", "500", "500", "500")
        before = len(mock.for_model("bo-a"))
        status, headers, body = chat(rc, "rt-backoff")
        assert status == 502 and body["error"]["code"] == "upstream_error", body
        assert headers["x-conduit-attempts"] == "4"
        times = [r.received_at for r in mock.for_model("bo-a")[before:]]
        assert len(times) == 4, f"request {i}: {len(times)} upstream calls"
        for k, g in enumerate(gaps(times)):
            per_retry[k].append(g)
    for k, cap in enumerate((0.05, 0.10, 0.20)):
        assert max(per_retry[k]) <= cap + slack, (k, per_retry[k])
    assert max(per_retry[2]) > 0.10, per_retry[2]
    rec = usage_record(rgw, rkey[0], headers["x-request-id"])
    assert rec["attempts"] == 4 and len(rec["failed_attempts"]) == 4
    assert rec["failed_attempts"][0] == {"alias": "rt-backoff", "provider": "p1", "model": "bo-a",
                                         "status": 500, "code": "upstream_error", "kind": "5xx"}


def test_retry_after_is_waited_out(rc, mock):
    mock.set_faults("ra-a", "429:ra=1")
    before = len(mock.for_model("ra-a"))
    status, headers, _ = chat(rc, "rt-retry-after")
    assert status == 200 and headers["x-conduit-attempts"] == "2"
    times = [r.received_at for r in mock.for_model("ra-a")[before:]]
    assert len(times) == 2 and 0.95 <= times[1] - times[0] <= 1.6, gaps(times)


def test_retry_after_skips_the_deployment_for_later_requests(rc, mock):
    mock.set_faults("ras-a", "429:ra=2")
    status, headers, _ = chat(rc, "rt-retry-after-skip")
    assert (status, deployment_of(headers), headers["x-conduit-attempts"]) == (200, "p2/ras-b", "2")
    for _ in range(3):
        status, headers, _ = chat(rc, "rt-retry-after-skip")
        assert (status, deployment_of(headers), headers["x-conduit-attempts"]) == (200, "p2/ras-b", "1")
    assert len(mock.for_model("ras-a")) == 1, "called again inside its Retry-After"


def test_retry_after_that_cannot_fit_answers_at_once(rc, mock):
    mock.set_faults("ranf-a", "429:ra=30")
    started = time.monotonic()
    status, headers, body = chat(rc, "rt-retry-after-nofit")
    assert time.monotonic() - started < 1.0
    assert status == 429 and body["error"]["code"] == "rate_limit_exceeded"
    assert headers.get("retry-after") == "30" and headers["x-conduit-attempts"] == "1"
    assert len(mock.for_model("ranf-a")) == 1


def test_client_error_is_not_retried(rc, mock):
    mock.set_faults("nr-a", "400")
    status, headers, body = chat(rc, "rt-no-retry")
    assert status == 400 and body["error"]["code"] == "unsupported_parameter", body
    assert headers["x-conduit-attempts"] == "1" and deployment_of(headers) == "p1/nr-a"
    assert mock.for_model("nr-b") == []


def test_deadline_is_504_naming_the_attempts(rgw, rkey, rc, mock):
    mock.set_delay("dl-a", 0.3)
    mock.set_faults("dl-a", "500")
    mock.set_faults("dl-b", "hang")
    try:
        started = time.monotonic()
        status, headers, body = chat(rc, "rt-deadline")
        took = time.monotonic() - started
    finally:
        mock.set_delay("dl-a", 0.0)
    assert status == 504, body
    err = assert_error_body(body, type_="api_error", code="upstream_timeout")
    assert "p1/dl-a (500 upstream_error)" in err["message"] and "p2/dl-b (504 upstream_timeout)" in err["message"], err
    assert "1000 ms" in err["message"]
    assert 0.95 <= took < 1.8, took
    assert headers["x-conduit-attempts"] == "2"
    rec = usage_record(rgw, rkey[0], headers["x-request-id"])
    assert rec["status"] == 504 and rec["attempts"] == 2 and rec["cost_nano_usd"] == 0
    assert [(f["model"], f["status"]) for f in rec["failed_attempts"]] == [("dl-a", 500), ("dl-b", 504)]


def test_cooldown_skips_a_failing_deployment_and_brings_it_back(rgw, rc, mock):
    mock.set_faults("cd-a", then="500")
    try:
        for _ in range(2):
            status, headers, _ = chat(rc, "rt-cooldown")
            assert (status, deployment_of(headers), headers["x-conduit-attempts"]) == (200, "p2/cd-b", "2")
        health = {d["deployment"]: d for d in routes(rgw)["rt-cooldown"]["deployments"]}
        a = health["p1/cd-a"]
        assert a["available"] is False and a["consecutive_failures"] == 2 and a["cooling_until"], a
        assert health["p2/cd-b"]["available"] is True and health["p2/cd-b"]["in_flight"] == 0
        for _ in range(3):
            status, headers, _ = chat(rc, "rt-cooldown")
            assert (status, deployment_of(headers), headers["x-conduit-attempts"]) == (200, "p2/cd-b", "1")
        assert len(mock.for_model("cd-a")) == 2, "a cooling deployment was called"
    finally:
        mock.set_faults("cd-a")
    time.sleep(0.9)
    status, headers, _ = chat(rc, "rt-cooldown")
    assert (status, deployment_of(headers)) == (200, "p1/cd-a")
    assert routes(rgw)["rt-cooldown"]["deployments"][0]["consecutive_failures"] == 0


# ------------------------------------------------------------------------------------------
# fallbacks
# ------------------------------------------------------------------------------------------
def test_fallbacks_reach_the_other_alias_even_if_the_key_may_not_ask_for_it(rgw, mock):
    key_id, key = new_key(rgw, allowed_models=["rt-fallback"])
    c = openai.OpenAI(base_url=rgw + "/v1", api_key=key, max_retries=0, timeout=20)
    mock.set_faults("fb-a", "500")
    mock.set_faults("fb-b", "cut")
    status, headers, body = chat(c, "rt-fallback")
    assert status == 200 and body["model"] == "rt-fallback"
    assert (deployment_of(headers), headers["x-conduit-attempts"]) == ("az/fb-backup", "3")
    rec = usage_record(rgw, key_id, headers["x-request-id"])
    assert rec["model"] == "rt-fallback" and rec["served_alias"] == "rt-backup"
    assert [(f["model"], f["status"]) for f in rec["failed_attempts"]] == [("fb-a", 500), ("fb-b", 502)]
    # the fallback alias itself stays forbidden to this key
    status, _, body = chat(c, "rt-backup")
    assert status == 403 and body["error"]["code"] == "model_not_allowed"
    c.close()


def test_context_window_fallbacks(rc, mock):
    mock.set_faults("ctx-a", "context")
    status, headers, body = chat(rc, "rt-ctx")
    assert status == 200, body
    assert (deployment_of(headers), headers["x-conduit-attempts"]) == ("p2/ctx-long", "2")
    assert mock.for_model("ctx-b") == [], "a context-window error is not retried on the same alias"
    # without context_window_fallbacks the 400 goes back to the client
    mock.set_faults("nr-a", "context")
    status, _, body = chat(rc, "rt-no-retry")
    assert status == 400 and body["error"]["code"] == "context_length_exceeded"


# ------------------------------------------------------------------------------------------
# streams
# ------------------------------------------------------------------------------------------
def stream_chat(rgw: str, key: str, alias: str):
    r, text, events = stream_raw(httpx.Client(base_url=rgw, timeout=20), "/v1/chat/completions", key,
                                 chat_body(alias, stream=True))
    return r, events


def content_of(payloads: list[dict]) -> str:
    return "".join((p["choices"][0]["delta"].get("content") or "") for p in payloads if p.get("choices"))


@pytest.mark.parametrize("fault", ["stream-cut-first", "stream-error-first"])
def test_stream_failing_before_its_first_event_is_retried(rgw, rkey, mock, fault):
    mock.set_faults("st-a", fault)
    r, events = stream_chat(rgw, rkey[1], "rt-stream")
    assert r.status_code == 200
    payloads = data_payloads(events)
    assert not [p for p in payloads if "error" in p], payloads
    assert events[-1].is_done and content_of(payloads) == FX_TEXT
    assert (r.headers["x-conduit-deployment"], r.headers["x-conduit-attempts"]) == ("p2/st-b", "2")


def test_stream_failing_after_content_ends_with_an_error_and_no_retry(rgw, rkey, mock):
    mock.set_faults("st-a", "stream-cut-after")
    before = len(mock.for_model("st-b"))
    r, events = stream_chat(rgw, rkey[1], "rt-stream")
    assert r.status_code == 200 and r.headers["x-conduit-attempts"] == "1"
    payloads = data_payloads(events)
    assert content_of(payloads), "content reached the client first"
    assert "error" in payloads[-1], payloads[-1]
    assert len(mock.for_model("st-b")) == before, "retried after bytes reached the client"


def test_stream_first_event_timeout_triggers_a_retry(rgw, rkey, mock):
    mock.set_faults("st-a", "stream-stall-first=3")
    started = time.monotonic()
    r, events = stream_chat(rgw, rkey[1], "rt-stream")
    took = time.monotonic() - started
    assert r.status_code == 200 and r.headers["x-conduit-deployment"] == "p2/st-b"
    assert content_of(data_payloads(events)) == FX_TEXT and events[-1].is_done
    assert 0.35 <= took < 2.0, took


# ------------------------------------------------------------------------------------------
# metering
# ------------------------------------------------------------------------------------------
def test_three_attempts_are_billed_once_for_the_answering_one(rgw, mock):
    key_id, key = new_key(rgw, limits={"rpm": 50}, budget={"max_usd": 5, "period": "total"})
    c = openai.OpenAI(base_url=rgw + "/v1", api_key=key, max_retries=0, timeout=20)
    mock.set_faults("m-a", "500")
    mock.set_faults("m-b", "503")
    status, headers, body = chat(c, "rt-meter")
    c.close()
    assert status == 200 and headers["x-conduit-attempts"] == "3" and deployment_of(headers) == "p1/m-c"
    assert headers["x-ratelimit-remaining-requests"] == "49", "rpm must count the request once"
    rec = usage_record(rgw, key_id, headers["x-request-id"])
    usage = body["usage"]
    expected = math.ceil((usage["prompt_tokens"] * PRICE_C[0] + usage["completion_tokens"] * PRICE_C[1]) * 1000)
    assert rec["cost_nano_usd"] == expected, rec
    assert (rec["provider"], rec["provider_model"], rec["attempts"]) == ("p1", "m-c", 3)
    assert [(f["provider"], f["model"], f["status"], f["code"]) for f in rec["failed_attempts"]] == \
        [("p1", "m-a", 500, "upstream_error"), ("p2", "m-b", 503, "upstream_error")]
    k = httpx.get(rgw + f"/admin/keys/{key_id}", headers=auth(MASTER_KEY), timeout=10).json()
    assert k["rate_limits"]["requests"]["remaining"] == 49, k["rate_limits"]
    deadline = time.monotonic() + 5
    while k["spend"]["spent_nano_usd"] != expected and time.monotonic() < deadline:
        time.sleep(0.05)
        k = httpx.get(rgw + f"/admin/keys/{key_id}", headers=auth(MASTER_KEY), timeout=10).json()
    assert k["spend"]["spent_nano_usd"] == expected, k["spend"]


def test_admin_routes_shows_every_alias(rgw):
    r = httpx.get(rgw + "/admin/routes", timeout=10)
    assert r.status_code == 401
    all_routes = routes(rgw)
    rr = all_routes["rt-rr"]
    assert rr["strategy"] == "round-robin" and len(rr["deployments"]) == 3
    d = rr["deployments"][0]
    assert set(d) >= {"deployment", "provider", "model", "weight", "available", "cooling_until",
                      "retry_after_until", "consecutive_failures", "latency_ms", "in_flight"}
    assert all_routes["rt-fallback"]["fallbacks"] == ["rt-backup"]
