"""The DynamoDB store's paths that dynalite cannot run, on moto's DynamoDB (moto_ddb.py), which has
them: two native servers (`store = "dynamodb"`) on the same tables, the official `openai` SDK as
client, moto's request recorder as the witness of which calls the store made.

* Usage: a record and its hour's counters as one `TransactWriteItems` (not the two-write fallback),
  every record once, the hourly summary exact; a transaction whose answer was lost (a proxy answers
  500 after moto did it) is retried by the SDK, cancelled by the record's condition and counted once.
* Admission decided on the server's remembered copy of the key item, written as one conditional
  `UpdateItem`; when the copy is stale the failed condition returns the item
  (`ReturnValuesOnConditionCheckFailure=ALL_OLD`) and the admission is decided again on it, without
  a read. Under contention (50 concurrent requests over both servers, `rpm = 5`) exactly 5 are
  admitted; a budget is refused at the right spend."""
from __future__ import annotations

import concurrent.futures as cf
import time

import httpx
import openai
import pytest

from conftest import MASTER_KEY, build_config
from helpers import auth
from mock_upstream import AZURE_KEY, OPENAI_KEY
from fault_proxy import FaultProxy
from moto_ddb import MotoDynamo
from targets import ServerTarget, target_name

pytestmark = pytest.mark.skipif(target_name() != "server", reason="native servers on moto's DynamoDB")

ENV = {"CONDUIT_MASTER_KEY": MASTER_KEY, "BB_OPENAI_API_KEY": OPENAI_KEY, "BB_AZURE_OPENAI_API_KEY": AZURE_KEY}

PRICED = '\n[models."moto-priced"]\ndeployments = [{ provider = "openai", model = "gpt-4o-mini", ' \
         'price = { input = 1000.0, output = 2000.0 } }]\n'

KEYS, USAGE = "moto-keys", "moto-usage"


@pytest.fixture(scope="module")
def ddb():
    d = MotoDynamo(KEYS, USAGE).start()
    yield d
    d.close()


def _config(mock_url: str) -> str:
    # The tables exist as template.yaml makes them: the servers do not create them. A key found by
    # its hash is cached for a minute, so that its item is not read again (and the copy a server
    # remembers not refreshed) by the lookup: only admissions see the item.
    server = f'store = "dynamodb"\ndynamodb_keys_table = "{KEYS}"\ndynamodb_usage_table = "{USAGE}"\n'
    return build_config(mock_url).replace("[server]\n", "[server]\n" + server, 1) \
        .replace("[gateway]\n", "[gateway]\nkey_cache_ttl_ms = 60000\n", 1) + PRICED


@pytest.fixture(scope="module")
def pair(mock, ddb):
    config = _config(mock.url)
    a, b = ServerTarget(), ServerTarget()
    urls = (a.start(config, {**ENV, **ddb.env}), b.start(config, {**ENV, **ddb.env}))
    yield urls
    for t in (a, b):
        t.stop()
        # A transaction that failed for another reason than a record already written is logged.
        assert "transaction failed" not in t.logs(last=100000)


def _admin(url: str) -> httpx.Client:
    return httpx.Client(base_url=url, headers=auth(MASTER_KEY), timeout=15)


def _create(url: str, **fields) -> dict:
    with _admin(url) as h:
        r = h.post("/admin/keys", json={"name": "moto", **fields})
        assert r.status_code == 201, r.text
        return r.json()


def _sdk(url: str, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=20)


def _chat(url: str, key: str, model: str = "chat", **extra) -> int:
    """The status of one chat completion through the SDK (200, or the error's)."""
    try:
        with _sdk(url, key) as c:
            c.chat.completions.create(model=model, messages=[{"role": "user", "content": "hello"}], **extra)
        return 200
    except openai.APIStatusError as e:
        return e.status_code


def _records(url: str, key_id: str, n: int) -> list[dict]:
    """The key's usage records, once there are `n` (waits up to 5 s; records are written after the answer)."""
    with _admin(url) as h:
        deadline = time.monotonic() + 5
        while True:
            data = h.get("/admin/usage", params={"key_id": key_id}).json()["data"]
            if len(data) >= n or time.monotonic() > deadline:
                return data
            time.sleep(0.05)


def _summary(url: str, key_id: str) -> dict:
    now = int(time.time())
    with _admin(url) as h:
        r = h.get("/admin/usage/summary", params={"key_id": key_id, "since": now - 7200, "until": now + 60})
        assert r.status_code == 200, r.text
        return r.json()["totals"]


def _key_pk(body: dict) -> str:
    return body.get("Key", {}).get("pk", {}).get("S", "")


# --- usage: one transaction per record ------------------------------------------------------------

N = 8


@pytest.fixture(scope="module")
def usage_run(pair, ddb):
    rec = _create(pair[0])
    ddb.reset_log()
    statuses = [_chat(pair[i % 2], rec["key"], "moto-priced") for i in range(N)]
    assert statuses == [200] * N, statuses
    records = _records(pair[0], rec["id"], N)
    return rec, records, ddb.operations()


def test_usage_records_exact_in_both(pair, usage_run):
    rec, records, _ = usage_run
    assert len(records) == N, records
    assert len({r["request_id"] for r in records}) == N
    assert len(_records(pair[1], rec["id"], N)) == N
    totals = _summary(pair[1], rec["id"])
    assert totals["requests"] == N
    assert totals["prompt_tokens"] == sum(r["prompt_tokens"] for r in records)
    assert totals["completion_tokens"] == sum(r["completion_tokens"] for r in records)
    assert totals["total_tokens"] == sum(r["total_tokens"] for r in records)
    assert totals["cost_nano_usd"] == sum(r["cost_nano_usd"] for r in records) > 0


def test_usage_written_as_one_transaction(usage_run):
    rec, records, ops = usage_run
    txs = [b for op, b in ops if op == "TransactWriteItems"
           and b["TransactItems"][0].get("Put", {}).get("Item", {}).get("pk", {}).get("S") == rec["id"]]
    assert len(txs) == N, [op for op, _ in ops]
    for tx in txs:
        kinds = [next(iter(i)) for i in tx["TransactItems"]]
        assert kinds == ["Put", "Update"], kinds
        put, update = tx["TransactItems"][0]["Put"], tx["TransactItems"][1]["Update"]
        assert put["TableName"] == USAGE and put["ConditionExpression"] == "attribute_not_exists(pk)"
        assert update["TableName"] == USAGE and _key_pk(update) == f"hours#{rec['id']}"
    # Not the fallback of a store without transactions (a PutItem of the record, an UpdateItem of the hour).
    assert not [b for op, b in ops if op == "PutItem" and b.get("TableName") == USAGE], [op for op, _ in ops]
    assert not [b for op, b in ops if op == "UpdateItem" and b.get("TableName") == USAGE]


def test_a_retry_after_a_lost_answer_is_counted_once(mock, ddb):
    """The transaction went through but its answer was lost (500): the SDK sends it again, the
    record's condition cancels it, and the store takes that cancellation as the record written:
    counted once, no two-write retry. (moto ignores the `ClientRequestToken`; DynamoDB answers a
    retry within 10 minutes with the first outcome, and cancels it likewise after that.)"""
    proxy = FaultProxy(ddb.url).start()
    server = ServerTarget()
    try:
        url = server.start(_config(mock.url), {**ENV, **ddb.env, "AWS_ENDPOINT_URL_DYNAMODB": proxy.url})
        rec = _create(url)
        ddb.reset_log()
        proxy.fail_next(1, "lost", operation="TransactWriteItems")
        assert _chat(url, rec["key"], "moto-priced") == 200
        _records(url, rec["id"], 1)
        time.sleep(0.5)  # a second record, if any, would be written by now
        records = _records(url, rec["id"], 1)
        assert proxy.faulted["TransactWriteItems"] == 1
        assert len(records) == 1, records
        ops = ddb.operations()
        sent = [b for op, b in ops if op == "TransactWriteItems"
                and b["TransactItems"][0]["Put"]["Item"]["pk"]["S"] == rec["id"]]
        assert len(sent) == 2 and sent[0] == sent[1], [op for op, _ in ops]  # the first and the SDK's retry
        assert not [b for op, b in ops if op in ("PutItem", "UpdateItem") and b.get("TableName") == USAGE]
        totals = _summary(url, rec["id"])
        assert totals["requests"] == 1 and totals["cost_nano_usd"] == records[0]["cost_nano_usd"] > 0
    finally:
        server.stop()
        proxy.stop()
    assert "transaction failed" not in server.logs(last=100000)


# --- admission: remembered copies, ALL_OLD, contention ----------------------------------------------

def test_stale_copy_is_decided_again_from_all_old(pair, ddb):
    """Server A remembers the key item from its own admissions; B's admissions make that copy stale.
    A's next admission, decided on the stale copy, fails its condition; the item comes back with the
    failure (ALL_OLD) and the refusal is decided on it: no read of the key item beyond what an
    admission on a fresh copy makes."""
    a, b = pair
    rec = _create(a, limits={"rpm": 3})
    pk = f"key#{rec['id']}"

    def admission(url: str) -> tuple[int, list[tuple[str, dict]]]:
        ddb.reset_log()
        status = _chat(url, rec["key"])
        time.sleep(0.3)  # the request's usage record and settlement land
        return status, [(op, body) for op, body in ddb.operations() if _key_pk(body) == pk]

    def admission_writes(ops: list[tuple[str, dict]]) -> list[dict]:
        return [body for op, body in ops if op == "UpdateItem" and body.get("ReturnValues") == "ALL_NEW"]

    assert admission(a)[0] == 200  # A remembers the item its admission's write returned
    status, warm = admission(a)  # decided on the copy A remembers
    assert status == 200
    reads = sum(op == "GetItem" for op, _ in warm)
    assert len(admission_writes(warm)) == 1, [op for op, _ in warm]
    assert admission(b)[0] == 200  # the third of 3: A's copy still says 2
    status, stale = admission(a)
    assert status == 429, stale
    # The write decided on A's copy (2 of 3), refused by its condition; the refusal wrote nothing.
    guarded = admission_writes(stale)
    assert len(guarded) == 1, [op for op, _ in stale]
    # Decided again on the item the failure returned: a store without ALL_OLD has it read, one GetItem more.
    assert sum(op == "GetItem" for op, _ in stale) == reads, [op for op, _ in stale]
    assert guarded[0]["ReturnValuesOnConditionCheckFailure"] == "ALL_OLD"


def test_rpm_is_exact_under_contention(pair, ddb):
    rec = _create(pair[0], limits={"rpm": 5})
    ddb.reset_log()
    with cf.ThreadPoolExecutor(max_workers=50) as ex:
        statuses = list(ex.map(lambda i: _chat(pair[i % 2], rec["key"]), range(50)))
    # Admitted: every answer but the limit's 429 (a slow machine may time a few out upstream).
    assert statuses.count(429) == 45, statuses
    assert all(s in (200, 504) for s in statuses if s != 429), statuses
    pk = f"key#{rec['id']}"
    admissions = [b for op, b in ddb.operations()
                  if op == "UpdateItem" and _key_pk(b) == pk and b.get("ReturnValues") == "ALL_NEW"]
    # At least the 5 that were written; more where a server's copy was stale.
    assert len(admissions) >= 5
    assert all(b.get("ReturnValuesOnConditionCheckFailure") == "ALL_OLD" for b in admissions)


def test_budget_is_refused_at_the_right_spend(pair):
    # max_tokens covers what the mock answers, so the estimate admission reserves is never below
    # the actual cost and the budget is never crossed.
    probe = _create(pair[0])
    assert _chat(pair[0], probe["key"], "moto-priced", max_tokens=200) == 200
    records = _records(pair[0], probe["id"], 1)
    cost = records[0]["cost_nano_usd"]
    estimate = records[0]["estimated_prompt_tokens"] * 1000 * 1000 + 200 * 2000 * 1000
    assert 0 < cost <= estimate
    rec = _create(pair[1], budget={"max_usd": (9 * cost + estimate) / 1e9, "period": "total"})
    statuses = [_chat(pair[i % 2], rec["key"], "moto-priced", max_tokens=200) for i in range(20)]
    assert statuses.count(200) == 10 and statuses[10:] == [402] * 10, statuses
    for url in pair:
        with _admin(url) as h:
            spent = h.get(f"/admin/keys/{rec['id']}").json()["spend"]["spent_nano_usd"]
            assert spent == 10 * cost, (spent, cost)
