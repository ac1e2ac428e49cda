"""The fault matrix's DynamoDB cases (issue 12): throttling and 500s from DynamoDB, injected by a
proxy (fault_proxy.py) between the code under test and dynalite.

Runs on the Lambda target (the function as ``conduit-lambda-local`` runs it, its DynamoDB endpoint
being the proxy) and on the server target with ``[server] store = "dynamodb"`` (the same store code,
platforms/dynamodb). The SDK's retry policy is Conduit's own (``conduit_dynamodb::client``: standard
mode, 4 attempts, backoff 50 ms doubling to 1 s, with jitter):

* a few faults in a row are retried away: the client never sees them;
* DynamoDB failing for longer: each call is tried 4 times, then the request is a 503
  ``store_unavailable``, admin writes too; nothing was admitted, written or charged;
* when DynamoDB answers again the next request succeeds, and the key's state (its record, its
  spend, its rate-limit window) is exactly what the served requests made it.
"""
from __future__ import annotations

import time

import httpx
import pytest

from conftest import AZURE_KEY_ENV, MASTER_KEY, OPENAI_KEY_ENV, build_config
from fault_proxy import FaultProxy
from helpers import assert_error_body, auth, chat_body
from mock_upstream import AZURE_KEY, OPENAI_KEY
from targets import LambdaTarget, ServerTarget, target_name

pytestmark = pytest.mark.skipif(target_name() not in ("lambda", "server"),
                                reason="DynamoDB is the Lambda function's store (and the server's, optionally)")

ENV = {"CONDUIT_MASTER_KEY": MASTER_KEY, OPENAI_KEY_ENV: OPENAI_KEY, AZURE_KEY_ENV: AZURE_KEY}
ATTEMPTS = 4  # conduit_dynamodb::RETRY_MAX_ATTEMPTS
PRICED = '\n[models."ddb-priced"]\ndeployments = [{ provider = "openai", model = "gpt-4o-mini", ' \
         'price = { input = 1.0, output = 2.0 } }]\n'


class Env:
    def __init__(self, base: str, proxy: FaultProxy):
        self.base, self.proxy = base, proxy
        self.admin = httpx.Client(base_url=base, headers=auth(MASTER_KEY), timeout=30)
        self.http = httpx.Client(base_url=base, timeout=30)


@pytest.fixture(scope="module")
def ddb(mock):
    proxies: list[FaultProxy] = []

    def front(url: str) -> str:
        proxies.append(FaultProxy(url).start())
        return proxies[-1].url

    dynalite = None
    if target_name() == "lambda":
        t = LambdaTarget(instances=1)
        t.dynamodb_front = front
        base = t.start(build_config(mock.url) + PRICED, ENV)
    else:
        from dynalite import Dynalite

        dynalite = Dynalite().start()
        config = build_config(mock.url).replace(
            "[server]\n", '[server]\nstore = "dynamodb"\ndynamodb_create_tables = true\n', 1) + PRICED
        t = ServerTarget()
        base = t.start(config, {**ENV, **dynalite.env,
                                "AWS_ENDPOINT_URL_DYNAMODB": front(dynalite.env["AWS_ENDPOINT_URL_DYNAMODB"])})
    deadline = time.monotonic() + 30
    while httpx.get(base + "/health", timeout=5).status_code != 200:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    e = Env(base, proxies[0])
    yield e
    e.admin.close()
    e.http.close()
    t.stop()
    for p in proxies:
        p.stop()
    if dynalite is not None:
        dynalite.close()


def _key(e: Env, **fields) -> tuple[str, str]:
    r = e.admin.post("/admin/keys", json={"name": "ddb-fault", "limits": {"rpm": 100},
                                          "budget": {"max_usd": 10, "period": "total"}, **fields})
    assert r.status_code == 201, r.text
    return r.json()["id"], r.json()["key"]


def _chat(e: Env, key: str) -> httpx.Response:
    return e.http.post("/v1/chat/completions", headers=auth(key), json=chat_body("ddb-priced", max_tokens=20))


def _records(e: Env, key_id: str, count: int) -> list[dict]:
    deadline = time.monotonic() + 10
    while True:
        r = e.admin.get("/admin/usage", params={"key_id": key_id})
        assert r.status_code == 200, r.text
        data = r.json()["data"]
        if len(data) >= count or time.monotonic() > deadline:
            return data
        time.sleep(0.1)


def _state(e: Env, key_id: str) -> dict:
    r = e.admin.get(f"/admin/keys/{key_id}")
    assert r.status_code == 200, r.text
    return r.json()


@pytest.mark.parametrize("kind", ["throttle", "500"])
def test_a_few_faults_are_retried_away(ddb, kind):
    key_id, key = _key(ddb)
    assert _chat(ddb, key).status_code == 200
    time.sleep(0.3)  # the first request's writes are done
    ddb.proxy.reset_counts()
    ddb.proxy.fail_next(ATTEMPTS - 1, kind)
    r = _chat(ddb, key)
    assert r.status_code == 200, r.text
    assert sum(ddb.proxy.faulted.values()) == ATTEMPTS - 1, ddb.proxy.faulted
    # one operation took all of them, and was answered on its last attempt
    op, n = ddb.proxy.faulted.most_common(1)[0]
    assert n == ATTEMPTS - 1 and ddb.proxy.seen[op] >= ATTEMPTS, (ddb.proxy.faulted, ddb.proxy.seen)
    data = _records(ddb, key_id, 2)
    assert [d["status"] for d in data] == [200, 200], data
    state = _state(ddb, key_id)
    assert state["spend"]["spent_nano_usd"] == sum(d["cost_nano_usd"] for d in data), (state, data)
    assert state["rate_limits"]["requests"]["remaining"] == 98, state["rate_limits"]


@pytest.mark.parametrize("kind", ["throttle", "500"])
def test_dynamodb_down_is_503_then_back_with_the_key_intact(ddb, kind):
    key_id, key = _key(ddb)
    assert _chat(ddb, key).status_code == 200
    time.sleep(0.3)
    before = _state(ddb, key_id)
    ddb.proxy.reset_counts()
    ddb.proxy.fail_next(10_000, kind)
    started = time.monotonic()
    r = _chat(ddb, key)
    elapsed = time.monotonic() - started
    assert r.status_code == 503, r.text
    assert_error_body(r.json(), type_="api_error", code="store_unavailable")
    faulted = dict(ddb.proxy.faulted)
    assert faulted and all(n % ATTEMPTS == 0 for n in faulted.values()), faulted
    # three backoffs between four attempts: waits drawn from [0, 50 ms], [0, 100 ms], [0, 200 ms]
    assert elapsed < 10, elapsed
    r = ddb.admin.post("/admin/keys", json={"name": "made-while-down"})
    assert r.status_code == 503, r.text
    assert_error_body(r.json(), code="store_unavailable")
    r = ddb.admin.patch(f"/admin/keys/{key_id}", json={"name": "renamed-while-down"})
    assert r.status_code == 503, r.text

    ddb.proxy.clear()
    r = _chat(ddb, key)
    assert r.status_code == 200, r.text
    after = _state(ddb, key_id)
    assert after["name"] == before["name"] == "ddb-fault"
    data = [d for d in _records(ddb, key_id, 2) if d["status"] == 200]
    assert len(data) == 2, data
    # The refused request was neither admitted nor charged: the spend is the two served requests',
    # nothing is left reserved, and the rpm window holds exactly two requests.
    assert after["spend"]["spent_nano_usd"] == sum(d["cost_nano_usd"] for d in data), (after, data)
    assert after["spend"]["reserved_usd"] == 0, after["spend"]
    assert after["rate_limits"]["requests"]["remaining"] == 98, after["rate_limits"]
    names = [k["name"] for k in ddb.admin.get("/admin/keys").json()["data"]]
    assert "made-while-down" not in names and "renamed-while-down" not in names
