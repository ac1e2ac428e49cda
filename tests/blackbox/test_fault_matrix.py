"""The fault matrix (issue 12), black-box: what a failing provider or a misbehaving client gets from
the gateway, what the usage record and the key's spend say afterwards, and that the next request
succeeds. The README's "Failure behaviour" table is this file's expectations in prose; the cases
already proven elsewhere are mapped to their tests in tests/blackbox/README.md.

A gateway of its own (every target): one provider on the mock and one alias per upstream case, each
priced (1 USD / 2 USD per million prompt / completion tokens) so billing is exact; a provider on a
port nothing listens on (connection refused); `max_response_bytes` = 1 MiB and
`upstream_timeout_ms` = 1.5 s. Each case programs the mock's fault model for its alias
(``mock.set_faults``), sends one request on a key with a budget, then checks:

* the status and OpenAI error (or, after a stream's first event, the error event that ends it);
* the usage record: status, tokens and cost (``none``: failed before any answer, recorded at 0;
  ``estimate``: content reached the client, billed as a disconnect is: the prompt estimate plus the
  larger of the allowance and what was relayed);
* the key's spend: exactly the sum of its records' costs, nothing left reserved;
* the next request on the same alias and key succeeds.

Runtimes: every upstream case runs on the server, the Worker and Lambda (each can meet every one of
them: they are a provider's doing). Client cases that are about the bytes of a request body run
everywhere; those about the connection (a slow head, a lying Content-Length, a 64 KiB head) need the
server's own HTTP front and are in test_client_faults.py; the cancelled upstream call on a client
disconnect is checked where the runtime passes the disconnect on (see ``DISCONNECT_*_SKIP``).
"""
from __future__ import annotations

import json
import socket
import time
import uuid

import httpx
import pytest

from conftest import AZURE_KEY_ENV, MASTER_KEY, OPENAI_KEY_ENV
from helpers import assert_error_body, auth, chat_body, data_payloads, stream_raw
from mock_upstream import AZURE_KEY, OPENAI_KEY
from targets import LambdaTarget, ServerTarget, make_target, target_name

MAX_RESPONSE_BYTES = 1 << 20
UPSTREAM_TIMEOUT_MS = 1500
PRICE_IN, PRICE_OUT = 1.0, 2.0  # USD per million tokens
NANO_PER_TOKEN_IN, NANO_PER_TOKEN_OUT = 1000, 2000
MAX_TOKENS = 30

# case id -> the mock's fault model (None: the alias's provider refuses connections)
UPSTREAM_FAULTS: dict[str, str | None] = {
    "500": "500",
    "502": "502",
    "503-retry-after": "503:ra=3",
    "429": "429:ra=3",
    "refused": None,
    "reset-after-headers": "reset-headers",
    "reset-mid-body": "reset-body",
    "not-json": "garbage",
    "200-with-error": "error-in-200",
    "truncated-stream": "stream-cut-after",
    "error-event-after-content": "error-after",
    "drip": "drip",
    "huge": f"huge={3 * MAX_RESPONSE_BYTES}",
    "huge-event": f"huge={9 << 20}",
}

# (case, stream) -> (status, error code, billing); billing: "none" | "estimate".
# A status of 200 with a code: the stream began and ended with that error event.
EXPECT: dict[tuple[str, bool], tuple[int, str, str]] = {
    ("500", False): (502, "upstream_error", "none"),
    ("500", True): (502, "upstream_error", "none"),
    ("502", False): (502, "upstream_error", "none"),
    ("502", True): (502, "upstream_error", "none"),
    ("503-retry-after", False): (502, "upstream_error", "none"),
    ("503-retry-after", True): (502, "upstream_error", "none"),
    ("429", False): (429, "rate_limit_exceeded", "none"),
    ("429", True): (429, "rate_limit_exceeded", "none"),
    ("refused", False): (502, "upstream_error", "none"),
    ("refused", True): (502, "upstream_error", "none"),
    ("reset-after-headers", False): (502, "upstream_error", "none"),
    ("reset-after-headers", True): (502, "upstream_error", "none"),
    ("reset-mid-body", False): (502, "upstream_error", "none"),
    ("reset-mid-body", True): (200, "upstream_error", "estimate"),
    ("not-json", False): (502, "upstream_error", "none"),
    ("not-json", True): (502, "upstream_error", "none"),
    ("200-with-error", False): (502, "upstream_error", "none"),
    ("200-with-error", True): (502, "upstream_error", "none"),
    ("truncated-stream", True): (200, "upstream_error", "estimate"),
    ("error-event-after-content", True): (200, "upstream_error", "estimate"),
    ("drip", False): (504, "upstream_timeout", "none"),
    ("drip", True): (200, "upstream_timeout", "estimate"),
    ("huge", False): (502, "upstream_error", "none"),
    ("huge-event", True): (200, "upstream_error", "estimate"),
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def config(mock_url: str) -> str:
    price = f"price = {{ input = {PRICE_IN}, output = {PRICE_OUT} }}"
    lines = [f"""
[providers.p1]
kind = "openai"
base_url = "{mock_url}/v1"
api_key_env = "{OPENAI_KEY_ENV}"

[providers.dead]
kind = "openai-compatible"
base_url = "http://127.0.0.1:{_free_port()}/v1"

[gateway]
upstream_timeout_ms = {UPSTREAM_TIMEOUT_MS}
max_response_bytes = {MAX_RESPONSE_BYTES}
"""]
    for case, fault in UPSTREAM_FAULTS.items():
        provider = "p1" if fault is not None else "dead"
        lines.append(f'[models."fm-{case}"]\ndeployments = [{{ provider = "{provider}", model = "fm-{case}", {price} }}]\n')
    for alias in ("fm-ok", "fm-stall", "fm-slow"):
        lines.append(f'[models."{alias}"]\ndeployments = [{{ provider = "p1", model = "{alias}", {price} }}]\n')
    return "\n".join(lines)


class Gw:
    def __init__(self, base: str, target):
        self.base, self.target = base, target
        self.admin = httpx.Client(base_url=base, headers=auth(MASTER_KEY), timeout=15)
        self.http = httpx.Client(base_url=base, timeout=30)

    def new_key(self, **fields) -> tuple[str, str]:
        body = {"name": "fm-" + uuid.uuid4().hex[:6], "budget": {"max_usd": 100, "period": "total"}, **fields}
        r = self.admin.post("/admin/keys", json=body)
        assert r.status_code == 201, r.text
        return r.json()["id"], r.json()["key"]

    def records(self, key_id: str, count: int, timeout: float = 5.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        while True:
            r = self.admin.get("/admin/usage", params={"key_id": key_id})
            assert r.status_code == 200, r.text
            data = r.json()["data"]
            if len(data) >= count or time.monotonic() > deadline:
                return data
            time.sleep(0.05)

    def spend(self, key_id: str) -> dict:
        r = self.admin.get(f"/admin/keys/{key_id}")
        assert r.status_code == 200, r.text
        return r.json()["spend"]


@pytest.fixture(scope="module")
def gw(mock):
    target = make_target()
    if isinstance(target, LambdaTarget):
        target.instances = 1  # the provider's Retry-After is kept by the instance (see test_routing)
    base = target.start(config(mock.url), {"CONDUIT_MASTER_KEY": MASTER_KEY, OPENAI_KEY_ENV: OPENAI_KEY,
                                           AZURE_KEY_ENV: AZURE_KEY})
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(base + "/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "gateway never answered /health\n" + target.logs()
        time.sleep(0.05)
    g = Gw(base, target)
    yield g
    g.admin.close()
    g.http.close()
    target.stop()


def _expected_cost(rec: dict) -> int:
    return rec["prompt_tokens"] * NANO_PER_TOKEN_IN + rec["completion_tokens"] * NANO_PER_TOKEN_OUT


def check_billing(gw: Gw, key_id: str, billing: str, status: int, relayed: int = 0) -> dict:
    """The one record of the failed request, its cost, and the key's spend."""
    recs = gw.records(key_id, 1)
    assert len(recs) == 1, recs
    rec = recs[0]
    assert rec["status"] == status, rec
    if billing == "none":
        assert (rec["prompt_tokens"], rec["completion_tokens"], rec["cost_nano_usd"]) == (0, 0, 0), rec
    else:
        assert rec["prompt_tokens"] == rec["estimated_prompt_tokens"] > 0, rec
        assert rec["completion_tokens"] == max(MAX_TOKENS, relayed), rec
        assert rec["cost_nano_usd"] == _expected_cost(rec) > 0, rec
    spend = gw.spend(key_id)
    assert spend["spent_nano_usd"] == rec["cost_nano_usd"], (spend, rec)
    assert spend["reserved_usd"] == 0, spend
    return rec


def next_request_succeeds(gw: Gw, key: str, alias: str) -> None:
    r = gw.http.post("/v1/chat/completions", headers=auth(key), json=chat_body(alias, max_tokens=MAX_TOKENS))
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"], r.text


MATRIX = sorted(EXPECT, key=lambda k: (list(UPSTREAM_FAULTS).index(k[0]), k[1]))


@pytest.mark.parametrize("case,stream", MATRIX, ids=[f"{c}-{'stream' if s else 'buffered'}" for c, s in MATRIX])
def test_upstream_fault(gw, mock, case, stream):
    status, code, billing = EXPECT[(case, stream)]
    alias = f"fm-{case}"
    fault = UPSTREAM_FAULTS[case]
    if fault is not None:
        mock.set_faults(alias, fault)
    key_id, key = gw.new_key()
    body = chat_body(alias, "tell me about faults", max_tokens=MAX_TOKENS, stream=stream)
    started = time.monotonic()
    relayed = 0
    if not stream:
        r = gw.http.post("/v1/chat/completions", headers=auth(key), json=body)
        assert r.status_code == status, r.text[:500]
        err = assert_error_body(r.json(), code=code)
        if case == "429":
            # The provider's 4xx passes through: its type and message, and its Retry-After.
            assert err["type"] == "requests" and "Rate limit reached" in err["message"], err
            assert r.headers.get("retry-after") == "3", r.headers
    else:
        r, text, events = stream_raw(gw.http, "/v1/chat/completions", key, body)
        assert r.status_code == status, text[:500]
        if status != 200:
            assert_error_body(json.loads(text), code=code)
            if case == "429":
                assert r.headers.get("retry-after") == "3", r.headers
        else:
            payloads = data_payloads(events)
            assert payloads and "error" in payloads[-1], text[-500:]
            assert_error_body(payloads[-1], code=code)
            assert not any(e.is_done for e in events), "a failed stream must not end with [DONE]"
            relayed = sum(1 for p in payloads if p.get("choices") and p["choices"][0].get("delta", {}).get("content"))
    elapsed = time.monotonic() - started
    if case == "drip":
        # Timed between events, not reads: the 8 s drip is cut after upstream_timeout_ms.
        assert elapsed < UPSTREAM_TIMEOUT_MS / 1000 + 3, elapsed
    recorded_status = status if status != 200 else (504 if code == "upstream_timeout" else 502)
    check_billing(gw, key_id, billing, recorded_status, relayed)
    if case in ("503-retry-after", "429"):
        # The provider asked for 3 s: its only deployment is not called before then, and the
        # client is told so (429 with the wait left), then it is used again.
        n = len(mock.for_model(alias))
        r = gw.http.post("/v1/chat/completions", headers=auth(key), json=chat_body(alias, max_tokens=MAX_TOKENS))
        assert r.status_code == 429, r.text
        assert_error_body(r.json(), type_="rate_limit_error", code="rate_limit_exceeded")
        wait = int(r.headers["retry-after"])
        assert 1 <= wait <= 3, r.headers
        assert len(mock.for_model(alias)) == n, "the provider was called inside its Retry-After"
        time.sleep(wait)
    next_request_succeeds(gw, key, alias if fault is not None else "fm-ok")


def _rss_kib(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.mark.skipif(target_name() != "server", reason="the server's own process is the one whose memory we can read")
def test_huge_answers_keep_memory_bounded(gw, mock):
    """64 MiB answers, ten in a row (buffered, and streams with one 64 MiB event): each is refused at
    its bound (max_response_bytes, 1 MiB here; 8 MiB for one stream event), and the server's
    resident memory does not grow by anything like what was sent (640 MiB each way)."""
    assert isinstance(gw.target, ServerTarget)
    pid = gw.target.proc.pid
    key_id, key = gw.new_key()
    next_request_succeeds(gw, key, "fm-ok")
    before = _rss_kib(pid)
    for stream in (False, True):
        mock.set_faults("fm-huge", *[f"huge={64 << 20}"] * 10)
        for _ in range(10):
            body = chat_body("fm-huge", max_tokens=MAX_TOKENS, stream=stream)
            if stream:
                r, text, events = stream_raw(gw.http, "/v1/chat/completions", key, body)
                assert r.status_code == 200 and data_payloads(events)[-1]["error"]["code"] == "upstream_error"
            else:
                r = gw.http.post("/v1/chat/completions", headers=auth(key), json=body)
                assert r.status_code == 502, r.text[:300]
    grown_mib = (_rss_kib(pid) - before) / 1024
    print(f"server RSS {before / 1024:.0f} MiB before, grew {grown_mib:.1f} MiB over 20 answers of 64 MiB")
    # Bounded: a few times the 8 MiB event bound at most, never the 1.25 GiB that was sent.
    assert grown_mib < 48, f"resident memory grew by {grown_mib:.0f} MiB"
    next_request_succeeds(gw, key, "fm-ok")


# ------------------------------------------------------------------------------------------
# Client faults
# ------------------------------------------------------------------------------------------
# Where the runtime does not pass a client's disconnect on to the running invocation before it
# writes, the cancelled upstream call cannot happen: the invocation runs on to the provider's answer
# (billed as served) or to its timeout (recorded 504, nothing billed), and that is what it records.
# Once a stream is flowing every runtime notices the disconnect at its next write.
DISCONNECT_BEFORE_SKIP = {
    "worker": "workerd does not cancel an invocation that has not answered yet when the client goes",
    "lambda": "a Function URL invocation that has not answered yet runs on after the client goes",
}
DISCONNECT_MID_SKIP: dict[str, str] = {}


@pytest.mark.skipif(target_name() in DISCONNECT_BEFORE_SKIP, reason=DISCONNECT_BEFORE_SKIP.get(target_name(), ""))
def test_client_disconnect_before_the_answer_cancels_upstream_and_bills_the_estimate(gw, mock):
    key_id, key = gw.new_key()
    mock.set_faults("fm-stall", "stall=5")
    before = mock.closed_by_peer("fm-stall")
    marker = "gone-" + uuid.uuid4().hex
    body = json.dumps(chat_body("fm-stall", marker, max_tokens=MAX_TOKENS)).encode()
    host, port = gw.base.removeprefix("http://").split(":")
    s = socket.create_connection((host, int(port)), timeout=10)
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Authorization: Bearer %s\r\nContent-Length: %d\r\n\r\n%s" % (key.encode(), len(body), body))
    # The client goes once the provider has the request (and well before upstream_timeout_ms).
    assert mock.wait_for(lambda r: r.contains(marker), timeout=10), "the request never reached the provider"
    s.close()
    deadline = time.monotonic() + 3
    while mock.closed_by_peer("fm-stall") == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert mock.closed_by_peer("fm-stall") == before + 1, "the upstream call was not cancelled"
    check_billing(gw, key_id, "estimate", 499)
    next_request_succeeds(gw, key, "fm-stall")


@pytest.mark.skipif(target_name() in DISCONNECT_MID_SKIP, reason=DISCONNECT_MID_SKIP.get(target_name(), ""))
def test_client_disconnect_mid_stream_cancels_upstream_and_bills_what_was_relayed(gw, mock):
    key_id, key = gw.new_key()
    mock.set_faults("fm-slow", "slow=0.1")
    before = mock.closed_by_peer("fm-slow")
    relayed = 0
    with gw.http.stream("POST", "/v1/chat/completions", headers=auth(key),
                        json=chat_body("fm-slow", max_tokens=MAX_TOKENS, stream=True)) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: ") and '"tick ' in line:
                relayed += 1
                if relayed == 5:
                    break
    # the client is gone; the gateway closes its upstream call
    deadline = time.monotonic() + 5
    while mock.closed_by_peer("fm-slow") == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert mock.closed_by_peer("fm-slow") == before + 1, "the upstream call was not cancelled"
    rec = check_billing(gw, key_id, "estimate", 499, relayed)
    assert rec["completion_tokens"] >= relayed
    next_request_succeeds(gw, key, "fm-ok")


DEEP = 100_000


@pytest.mark.parametrize("path,body", [
    ("/v1/chat/completions", b'{"model":"fm-ok","messages":' + b"[" * DEEP + b"]" * DEEP + b"}"),
    ("/v1/chat/completions", b"[" * DEEP + b"]" * DEEP),
    ("/v1/chat/completions", b'{"model":"fm-ok","messages":[{"role":"user","content":"x"}],"metadata":'
     + b'{"a":' * DEEP + b"1" + b"}" * DEEP + b"}"),
    ("/v1/embeddings", b'{"model":"fm-ok","input":' + b"[" * DEEP + b"]" * DEEP + b"}"),
    ("/v1/completions", b'{"model":"fm-ok","prompt":' + b"[" * DEEP + b"]" * DEEP + b"}"),
    ("/v1/responses", b'{"model":"fm-ok","input":' + b"[" * DEEP + b"]" * DEEP + b"}"),
    ("/v1/messages", b'{"model":"fm-ok","max_tokens":5,"messages":' + b"[" * DEEP + b"]" * DEEP + b"}"),
    ("/v1/messages/count_tokens", b'{"model":"fm-ok","messages":' + b"[" * DEEP + b"]" * DEEP + b"}"),
    ("/admin/keys", b'{"name":"deep","metadata":' + b"[" * DEEP + b"]" * DEEP + b"}"),
], ids=["chat-messages", "chat-top", "chat-object", "embeddings", "completions", "responses", "messages",
        "count-tokens", "admin"])
def test_json_nested_100000_deep_is_a_400_and_the_gateway_lives(gw, path, body):
    key_id, key = gw.new_key()
    headers = {**auth(MASTER_KEY if path.startswith("/admin") else key), "content-type": "application/json"}
    if path.startswith("/v1/messages"):
        headers["anthropic-version"] = "2023-06-01"
    r = gw.http.post(path, content=body, headers=headers)
    assert r.status_code == 400, r.text[:300]
    if path.startswith("/v1/messages"):
        assert r.json()["type"] == "error" and r.json()["error"]["type"] == "invalid_request_error", r.text
    else:
        assert_error_body(r.json(), type_="invalid_request_error")
    if not path.startswith("/admin"):
        recs = gw.records(key_id, 0, timeout=0)
        assert all(x["cost_nano_usd"] == 0 for x in recs), recs
        assert gw.spend(key_id)["spent_nano_usd"] == 0
    next_request_succeeds(gw, key, "fm-ok")


@pytest.mark.parametrize("body,param", [
    (b'{"model":"fm-ok","messages":[{"role":"user","content":"\xff\xfe bad utf-8"}]}', None),
    (b'{"model":"fm-ok","messages":[{"role":"user","content":"x"}],"max_tokens":1e400}', "max_tokens"),
    (b'{"model":"fm-ok","messages":[{"role":"user","content":"x"}],"max_tokens":99999999999999999999999}',
     "max_tokens"),
    (b'{"model":"fm-ok","messages":[{"role":"user","content":"x"}],"n":-18446744073709551617}', "n"),
    (b'{"model":"fm-ok","messages":[{"role":"user","content":"x"}],"temperature":1e999}', None),
], ids=["not-utf8", "float-overflow", "int-overflow", "negative-overflow", "float-infinite"])
def test_malformed_bodies_are_400_and_unbilled(gw, mock, body, param):
    key_id, key = gw.new_key()
    n_before = len(mock.for_model("fm-ok"))
    r = gw.http.post("/v1/chat/completions", content=body, headers={**auth(key), "content-type": "application/json"})
    assert r.status_code == 400, r.text[:300]
    err = assert_error_body(r.json(), type_="invalid_request_error")
    if param is not None:
        assert err["param"] in (param, None), err
    assert len(mock.for_model("fm-ok")) == n_before, "a malformed body reached the provider"
    assert gw.spend(key_id)["spent_nano_usd"] == 0
    next_request_succeeds(gw, key, "fm-ok")


def test_duplicate_keys_take_one_value_and_bill_it(gw, mock):
    """Duplicate keys in a JSON object: the last one wins (RFC 8259 leaves it open; this is what
    serde_json and the JSON the provider is sent both do), and the limits see the same value the
    provider gets: a second `max_tokens` cannot smuggle a larger allowance past the estimate."""
    key_id, key = gw.new_key(limits={"tpm": 5000})
    marker = "dup-" + uuid.uuid4().hex
    body = ('{"model":"fm-ok","messages":[{"role":"user","content":"%s"}],"max_tokens":10,"max_tokens":20000}'
            % marker).encode()
    r = gw.http.post("/v1/chat/completions", content=body, headers={**auth(key), "content-type": "application/json"})
    # The allowance the provider would get (20000) is over the key's tpm (5000): refused, not admitted.
    assert r.status_code == 429, r.text[:300]
    assert not mock.with_marker(marker)
    body = ('{"model":"fm-ok","model":"fm-ok","messages":[{"role":"user","content":"%s"}],"max_tokens":20000,'
            '"max_tokens":10}' % marker).encode()
    r = gw.http.post("/v1/chat/completions", content=body, headers={**auth(key), "content-type": "application/json"})
    assert r.status_code == 200, r.text[:300]
    sent = mock.with_marker(marker)
    assert len(sent) == 1 and sent[0].body["max_tokens"] == 10, sent and sent[0].raw_body[:300]
    assert sent[0].raw_body.count(b'"max_tokens"') == 1, sent[0].raw_body[:300]


def test_chunked_body_over_max_body_bytes_is_413(gw):
    """Every runtime can receive a chunked upload (no Content-Length): the size bound holds."""
    key_id, key = gw.new_key()
    limit = 10 * 1024 * 1024  # [gateway] max_body_bytes default

    def body():
        yield b'{"model":"fm-ok","messages":[{"role":"user","content":"'
        piece = b"a" * 65536
        for _ in range(limit // len(piece) + 2):
            yield piece
        yield b'"}]}'

    try:
        r = gw.http.post("/v1/chat/completions", content=body(), headers={**auth(key), "content-type": "application/json"})
    except httpx.HTTPError as e:  # answered and closed before the upload finished
        pytest.fail(f"no answer: {e!r}")
    assert r.status_code == 413, r.text[:300]
    assert_error_body(r.json(), code="request_too_large")
    assert gw.spend(key_id)["spent_nano_usd"] == 0
    next_request_succeeds(gw, key, "fm-ok")


# ------------------------------------------------------------------------------------------
# A Durable Object that throws (Worker)
# ------------------------------------------------------------------------------------------
@pytest.mark.skipif(target_name() != "worker", reason="the Worker's Durable Objects")
def test_durable_object_that_throws_is_503_and_the_key_is_intact(gw):
    """A natural fault, no switch: a Durable Object's SQLite refuses a string over its row limit
    (2 MB on Cloudflare, enforced by workerd as well), so writing a key record with 3 MB of
    metadata makes the key's object throw. KV would take it (25 MiB); the object is written first,
    so the admin write is a 503 that changed nothing, and the object keeps serving the key."""
    key_id, key = gw.new_key(metadata={"team": "a"}, limits={"rpm": 100})
    next_request_succeeds(gw, key, "fm-ok")
    before = gw.admin.get(f"/admin/keys/{key_id}").json()
    big = {"blob": "x" * (3 << 20)}
    r = gw.admin.patch(f"/admin/keys/{key_id}", json={"metadata": big, "name": "renamed"})
    assert r.status_code == 503, r.text[:300]
    err = assert_error_body(r.json(), type_="api_error", code="store_unavailable")
    print("the object's refusal:", err["message"])
    after = gw.admin.get(f"/admin/keys/{key_id}").json()
    assert (after["name"], after["metadata"]) == (before["name"], {"team": "a"}), after
    assert after["spend"] == before["spend"], (before["spend"], after["spend"])
    next_request_succeeds(gw, key, "fm-ok")
    after = gw.admin.get(f"/admin/keys/{key_id}").json()
    assert after["rate_limits"]["requests"]["remaining"] == 98, after["rate_limits"]
    recs = gw.records(key_id, 2)
    assert after["spend"]["spent_nano_usd"] == sum(x["cost_nano_usd"] for x in recs)
    # A key created with such a record does not half-exist: refused whole.
    r = gw.admin.post("/admin/keys", json={"name": "too-big-for-its-object", "metadata": big})
    assert r.status_code == 503, r.text[:300]
    names = [k["name"] for k in gw.admin.get("/admin/keys").json()["data"]]
    assert "too-big-for-its-object" not in names
