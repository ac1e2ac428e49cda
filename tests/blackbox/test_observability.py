"""Metrics and traces (issue 12), black-box.

* Server (SQLite and PostgreSQL): ``GET /metrics`` parsed with the real Prometheus parser
  (``prometheus_client.parser``) before and after a set of requests; counters move by exactly
  what the requests did, histograms count them, the endpoint needs the master key or
  ``[server] metrics_token``, and an unknown ``model`` makes no series.
* Worker and Lambda: the per-request JSON log line (``"conduit": "request"``) carries the same
  fields, and no secret.
* Every target: the client's W3C ``traceparent`` reaches the provider (with Conduit's own span
  as the parent) and the usage record; a fresh valid one is made when it is absent or invalid.
"""
from __future__ import annotations

import json
import re
import time
from typing import Any, Optional

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import MASTER_KEY, METRICS_TOKEN
from helpers import auth, chat_body
from targets import make_target, target_name

SERVER = target_name() in ("server", "server-postgres")
TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"

server_only = pytest.mark.skipif(not SERVER, reason="GET /metrics is the native server's")
logs_only = pytest.mark.skipif(SERVER, reason="the per-request log line is the Worker's and Lambda's")


# ------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------
Samples = dict[tuple[str, frozenset], float]


def scrape(http: httpx.Client, token: str = MASTER_KEY) -> Samples:
    r = http.get("/metrics", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/openmetrics-text"), r.headers
    samples: Samples = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum over every series of ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= set(ls))


def chat(http: httpx.Client, key: str, model: str, text: str = "hello",
         headers: Optional[dict] = None, **extra: Any) -> httpx.Response:
    return http.post("/v1/chat/completions", headers={**auth(key), **(headers or {})},
                     json=chat_body(model, text, **extra))


def upstream_request(mock, marker: str):
    found = [r for r in mock.requests if r.contains(marker)]
    assert found, f"no upstream request carries {marker}"
    return found


def log_lines(gateway, target=None) -> list[dict]:
    """The target's JSON log lines of kind ``"conduit"`` (the Worker's console, Lambda's stdout)."""
    target = target or gateway.target
    raw = list(getattr(target, "_lines", None) or getattr(target, "_stdout_lines", []))
    out = []
    decoder = json.JSONDecoder()
    for line in raw:
        # Every object in the line: wrangler dev may print two console lines
        # written in the same tick on one output line.
        start = line.find('{"conduit"')
        while start >= 0:
            try:
                obj, end = decoder.raw_decode(line, start)
            except ValueError:
                break
            out.append(obj)
            start = line.find('{"conduit"', end)
    return out


def wait_log_line(gateway, request_id: str, timeout: float = 5.0, kind: str = "request",
                  target=None) -> dict:
    target = target or gateway.target
    deadline = time.monotonic() + timeout
    while True:
        for line in log_lines(gateway, target):
            if line.get("conduit") == kind and line.get("request_id") == request_id:
                return line
        if time.monotonic() > deadline:
            raise AssertionError(f"no log line for {request_id}:\n" + target.logs())
        time.sleep(0.05)


# ------------------------------------------------------------------------------------------
# GET /metrics (server)
# ------------------------------------------------------------------------------------------
@server_only
def test_metrics_need_the_master_key_or_the_metrics_token(http):
    r = http.get("/metrics")
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "invalid_metrics_token"
    r = http.get("/metrics", headers={"Authorization": "Bearer not-the-token"})
    assert r.status_code == 401
    for token in (MASTER_KEY, METRICS_TOKEN):
        samples = scrape(http, token)
        assert ("conduit_requests_in_flight", frozenset()) in samples
    assert http.post("/metrics", headers=auth(MASTER_KEY)).status_code == 405


@server_only
def test_counters_move_by_exactly_what_the_requests_did(http, admin, mock, marker):
    before = scrape(http)
    plain = admin.create_key()
    limited = admin.create_key(limits={"rpm": 1})
    narrow = admin.create_key(allowed_models=["chat"])
    broke = admin.create_key(budget={"max_usd": 0.000000001, "period": "total"})

    # 2 answers and 1 stream on `chat`
    for i in range(2):
        assert chat(http, plain["key"], "chat", f"{marker} {i}").status_code == 200
    with http.stream("POST", "/v1/chat/completions", headers=auth(plain["key"]),
                     json=chat_body("chat", marker, stream=True,
                                    stream_options={"include_usage": True})) as s:
        assert s.status_code == 200
        assert "[DONE]" in s.read().decode()
    # a provider 500 (no retries configured: one failed attempt)
    assert chat(http, plain["key"], "fail-500", marker).status_code == 502
    # refusals: rpm, model_not_allowed, budget, invalid_api_key
    assert chat(http, limited["key"], "chat", marker).status_code == 200
    assert chat(http, limited["key"], "chat", marker).status_code == 429
    assert chat(http, narrow["key"], "embed", marker).status_code == 403
    assert chat(http, broke["key"], "chat", marker).status_code == 402
    assert chat(http, "condt_" + "x" * 43, "chat", marker).status_code == 401
    # an unknown model: a 404 that must not create a series of its own
    assert chat(http, plain["key"], "no-such-model-" + marker, marker).status_code == 404

    records = []
    for k, n in ((plain, 5), (limited, 2), (narrow, 1), (broke, 1)):
        records += admin.wait_usage(k["id"], n)["data"]
    assert len(records) == 9
    after = scrape(http)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    ok = dict(alias="chat", provider="openai", endpoint="/v1/chat/completions", status_class="2xx")
    assert delta("conduit_requests_total", **ok) == 4
    assert delta("conduit_requests_total", alias="fail-500", provider="openai",
                 endpoint="/v1/chat/completions", status_class="5xx") == 1
    assert delta("conduit_requests_total", alias="chat", provider="", endpoint="/v1/chat/completions",
                 status_class="4xx") == 2  # rpm and budget, refused before routing
    assert delta("conduit_requests_total", alias="embed", provider="", endpoint="/v1/chat/completions",
                 status_class="4xx") == 1
    assert delta("conduit_requests_total", alias="", provider="", endpoint="/v1/chat/completions",
                 status_class="4xx") == 2  # the bad key and the unknown model
    for reason, n in (("rpm", 1), ("rpd", 0), ("tpm", 0), ("budget", 1), ("model_not_allowed", 1),
                      ("invalid_api_key", 1)):
        assert delta("conduit_refusals_total", reason=reason) == n, reason
    assert not any("no-such-model" in str(labels) for (_, labels) in after), "unknown model made a series"

    # tokens and cost by alias: exactly what the usage records say
    chat_records = [r for r in records if r["model"] == "chat"]
    for kind in ("prompt", "completion", "cached", "reasoning"):
        want = sum(r[f"{kind}_tokens"] for r in chat_records)
        assert delta("conduit_tokens_total", alias="chat", type=kind) == want, kind
    assert sum(r["prompt_tokens"] for r in chat_records) > 0
    want_cost = sum(r["cost_nano_usd"] or 0 for r in chat_records)
    assert want_cost > 0
    assert delta("conduit_cost_nano_usd_total", alias="chat") == want_cost

    # upstream attempts and failures
    assert delta("conduit_upstream_attempts_total", provider="openai") == 5
    assert delta("conduit_upstream_failures_total", provider="openai", kind="5xx") == 1

    # histograms: one observation per request (overhead), per upstream request (latency),
    # per stream (time to first event)
    assert total(after, "conduit_gateway_overhead_seconds_count") - \
        total(before, "conduit_gateway_overhead_seconds_count") == 9 + 1
    assert delta("conduit_upstream_latency_seconds_count", provider="openai") == 5
    assert delta("conduit_time_to_first_event_seconds_count", provider="openai") == 1
    assert value(after, "conduit_time_to_first_event_seconds_sum", provider="openai") > 0

    # key cache: every request with a key went through it
    lookups = sum(delta("conduit_key_cache_lookups_total", result=r) for r in ("hit", "miss"))
    assert lookups == 10
    assert value(after, "conduit_requests_in_flight") == 0
    assert delta("conduit_store_errors_total", op="request") == 0
    assert ("conduit_store_errors_total", frozenset({("op", "write")})) in after


@server_only
def test_a_stream_is_in_flight_until_it_ends(http, api_key, mock, marker):
    with http.stream("POST", "/v1/chat/completions", headers=auth(api_key),
                     json=chat_body("slow", marker, stream=True)) as s:
        assert s.status_code == 200
        it = s.iter_bytes()
        next(it)
        assert value(scrape(http), "conduit_requests_in_flight") >= 1
        for _ in it:
            pass
    assert value(scrape(http), "conduit_requests_in_flight") == 0


# ------------------------------------------------------------------------------------------
# The per-request log line (Worker, Lambda)
# ------------------------------------------------------------------------------------------
@logs_only
def test_the_log_line_carries_the_request(gateway, http, admin, marker):
    key = admin.create_key()
    r = chat(http, key["key"], "chat", marker, headers={"traceparent": f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"})
    assert r.status_code == 200, r.text
    line = wait_log_line(gateway, r.headers["x-request-id"])
    rec = admin.wait_usage(key["id"], 1)["data"][0]
    assert line["key_id"] == key["id"]
    assert (line["endpoint"], line["alias"], line["provider"], line["status"], line["status_class"]) == \
        ("/v1/chat/completions", "chat", "openai", 200, "2xx")
    for f in ("prompt_tokens", "completion_tokens", "cached_tokens", "reasoning_tokens", "cost_nano_usd",
              "attempts"):
        assert line[f] == rec[f], f
    assert line["trace_id"] == CLIENT_TRACE
    assert line["refusal"] is None and line["failures"] == [] and line["store_error"] is False
    assert line["key_cache"] in ("hit", "miss")
    for f in ("latency_ms", "overhead_ms", "upstream_ms"):
        assert isinstance(line[f], (int, float)) and line[f] >= 0, f
    text = json.dumps(line)
    assert key["key"] not in text and marker not in text and MASTER_KEY not in text

    # a refusal and a failed attempt
    r = chat(http, "condt_" + "y" * 43, "chat", marker)
    assert r.status_code == 401
    line = wait_log_line(gateway, r.headers["x-request-id"])
    assert (line["refusal"], line["key_id"], line["alias"]) == ("invalid_api_key", None, None)
    r = chat(http, key["key"], "fail-500", marker)
    assert r.status_code == 502
    line = wait_log_line(gateway, r.headers["x-request-id"])
    assert line["failures"] == [{"provider": "openai", "kind": "5xx", "status": 500}]
    # The failure's own line may reach the log after the request's.
    wait_log_line(gateway, line["request_id"], kind="upstream_failure")
    failure = [x for x in log_lines(gateway)
               if x.get("conduit") == "upstream_failure" and x.get("request_id") == line["request_id"]]
    assert [(f["provider"], f["kind"], f["alias"]) for f in failure] == [("openai", "5xx", "fail-500")]

    # a stream has its time to first event
    with http.stream("POST", "/v1/chat/completions", headers=auth(key["key"]),
                     json=chat_body("chat", marker, stream=True)) as s:
        s.read()
        rid = s.headers["x-request-id"]
    line = wait_log_line(gateway, rid)
    assert line["streamed"] is True and line["ttfe_ms"] > 0


@logs_only
def test_request_log_failures_writes_only_what_went_wrong(gateway, marker):
    """`[gateway] request_log = "failures"`: no line for a request answered 2xx at the first
    attempt; the lines of a refusal and of a failed upstream attempt, as with the default."""
    config = gateway.config.replace("[gateway]\n", '[gateway]\nrequest_log = "failures"\n', 1)
    assert 'request_log = "failures"' in config
    target = make_target()
    base = target.start(config, gateway.env)
    try:
        with httpx.Client(base_url=base, timeout=30) as c:
            r = c.post("/admin/keys", headers=auth(MASTER_KEY), json={"name": "quiet"})
            assert r.status_code == 201, r.text
            key = r.json()["key"]
            ok = [chat(c, key, "chat", marker) for _ in range(3)]
            assert [r.status_code for r in ok] == [200] * 3, ok[0].text
            refused = chat(c, "condt_" + "z" * 43, "chat", marker)
            assert refused.status_code == 401
            failed = chat(c, key, "fail-500", marker)
            assert failed.status_code == 502
        line = wait_log_line(gateway, refused.headers["x-request-id"], target=target)
        assert line["refusal"] == "invalid_api_key"
        line = wait_log_line(gateway, failed.headers["x-request-id"], target=target)
        assert line["failures"] == [{"provider": "openai", "kind": "5xx", "status": 500}]
        wait_log_line(gateway, failed.headers["x-request-id"], kind="upstream_failure", target=target)
        # Every line of the requests before them is in by now: none is for the 200s.
        logged = {x.get("request_id") for x in log_lines(gateway, target)}
        assert not logged & {r.headers["x-request-id"] for r in ok}
    finally:
        target.stop()


# ------------------------------------------------------------------------------------------
# W3C traceparent (every target)
# ------------------------------------------------------------------------------------------
def test_the_clients_traceparent_reaches_the_provider_and_the_record(http, admin, mock, marker):
    key = admin.create_key()
    sent = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"
    r = chat(http, key["key"], "chat", marker, headers={"traceparent": sent, "tracestate": "congo=t61rcWkgMzE"})
    assert r.status_code == 200, r.text
    (up,) = upstream_request(mock, marker)
    m = TRACEPARENT.match(up.headers.get("traceparent", ""))
    assert m, up.headers
    assert m.group(1) == CLIENT_TRACE
    assert m.group(2) != CLIENT_SPAN and m.group(2) != "0" * 16, "Conduit's own span is the parent"
    assert m.group(3) == "01"
    assert up.headers.get("tracestate") == "congo=t61rcWkgMzE"
    rec = admin.wait_usage(key["id"], 1)["data"][0]
    assert rec["trace_id"] == CLIENT_TRACE
    assert rec["traceparent"] == up.headers["traceparent"]


@pytest.mark.parametrize("given", [None, "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
                                   "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", "garbage"])
def test_a_new_trace_when_absent_or_invalid(http, admin, mock, marker, given):
    key = admin.create_key()
    headers = {"traceparent": given, "tracestate": "a=b"} if given else {}
    r = chat(http, key["key"], "chat", marker, headers=headers)
    assert r.status_code == 200, r.text
    (up,) = upstream_request(mock, marker)
    m = TRACEPARENT.match(up.headers.get("traceparent", ""))
    assert m, up.headers
    trace, span, flags = m.groups()
    assert trace != "0" * 32 and span != "0" * 16
    assert trace != CLIENT_TRACE.lower()
    assert "tracestate" not in up.headers
    rec = admin.wait_usage(key["id"], 1)["data"][0]
    assert rec["trace_id"] == trace and rec["traceparent"] == up.headers["traceparent"]


def test_every_attempt_carries_the_trace(http, admin, mock, marker):
    """A stream and a failing provider: each upstream request has the trace."""
    key = admin.create_key()
    sent = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-00"
    with http.stream("POST", "/v1/chat/completions", headers={**auth(key["key"]), "traceparent": sent},
                     json=chat_body("chat", marker, stream=True)) as s:
        assert s.status_code == 200
        s.read()
    assert chat(http, key["key"], "fail-500", marker, headers={"traceparent": sent}).status_code == 502
    ups = upstream_request(mock, marker)
    assert len(ups) == 2
    for up in ups:
        m = TRACEPARENT.match(up.headers.get("traceparent", ""))
        assert m and m.group(1) == CLIENT_TRACE and m.group(3) == "00", up.headers
