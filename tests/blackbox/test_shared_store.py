"""Several native servers, one state: two `conduit serve` instances on one shared store (PostgreSQL,
then DynamoDB), requests alternating between them, must behave exactly like one instance (limits,
budgets, revocation, usage); the store going away is a 503 `store_unavailable`, and the servers
recover by themselves when it comes back."""
from __future__ import annotations

import concurrent.futures as cf
import time

import httpx
import pytest

from conftest import MASTER_KEY, build_config
from helpers import auth, chat_body
from mock_upstream import AZURE_KEY, OPENAI_KEY
from targets import ServerTarget, target_name

pytestmark = pytest.mark.skipif(target_name() != "server", reason="native servers on a shared store")

ENV = {"CONDUIT_MASTER_KEY": MASTER_KEY, "BB_OPENAI_API_KEY": OPENAI_KEY, "BB_AZURE_OPENAI_API_KEY": AZURE_KEY}

PRICED = '\n[models."shared-priced"]\ndeployments = [{ provider = "openai", model = "gpt-4o-mini", ' \
         'price = { input = 1000.0, output = 2000.0 } }]\n'


class Store:
    """A running shared store: what the servers' config and environment need, and an outage."""

    def __init__(self, kind: str):
        self.kind = kind
        if kind == "postgres":
            from pg import shared_postgres

            self.pg = shared_postgres()
            self.server = 'store = "postgres"\n'
            self.env = {"CONDUIT_POSTGRES_URL": self.pg.url}
        else:
            from dynalite import Dynalite

            self.ddb = Dynalite().start()
            suffix = hex(id(self))[2:]
            self.server = (f'store = "dynamodb"\ndynamodb_create_tables = true\n'
                           f'dynamodb_keys_table = "keys-{suffix}"\ndynamodb_usage_table = "usage-{suffix}"\n')
            self.env = dict(self.ddb.env)

    def stop(self) -> None:
        self.pg.stop() if self.kind == "postgres" else self.ddb.stop()

    def start(self) -> None:
        self.pg.start() if self.kind == "postgres" else self.ddb.start()

    def close(self) -> None:
        if self.kind == "dynamodb":
            self.ddb.close()


@pytest.fixture(scope="module", params=["postgres", "dynamodb"])
def store(request) -> Store:
    s = Store(request.param)
    yield s
    s.close()


@pytest.fixture(scope="module")
def pair(mock, store):
    config = build_config(mock.url).replace("[server]\n", "[server]\n" + store.server, 1) + PRICED
    a, b = ServerTarget(), ServerTarget()
    urls = (a.start(config, {**ENV, **store.env}), b.start(config, {**ENV, **store.env}))
    yield urls
    a.stop()
    b.stop()


def _admin(url: str) -> httpx.Client:
    return httpx.Client(base_url=url, headers=auth(MASTER_KEY), timeout=15)


def _create(url: str, **fields) -> dict:
    with _admin(url) as h:
        r = h.post("/admin/keys", json={"name": "shared", **fields})
        assert r.status_code == 201, r.text
        return r.json()


def _chat(url: str, key: str, model: str = "chat", **extra) -> httpx.Response:
    return httpx.post(f"{url}/v1/chat/completions", headers=auth(key), json=chat_body(model, **extra), timeout=15)


def test_rpm_is_exact_across_two_servers(pair):
    rec = _create(pair[0], limits={"rpm": 5})
    with cf.ThreadPoolExecutor(max_workers=50) as ex:
        statuses = list(ex.map(lambda i: _chat(pair[i % 2], rec["key"]).status_code, range(50)))
    # Admitted: every answer but the limit's 429 (a slow machine may time a few out upstream).
    assert statuses.count(429) == 45, statuses
    assert all(s in (200, 504) for s in statuses if s != 429), statuses


def test_budget_is_shared_exactly(pair):
    # max_tokens covers what the mock answers, so the estimate admission reserves is never below
    # the actual cost and the budget is never crossed (see the README's bound otherwise).
    probe = _create(pair[0])
    assert _chat(pair[0], probe["key"], "shared-priced", max_tokens=200).status_code == 200
    with _admin(pair[0]) as h:
        deadline = time.monotonic() + 5
        while not (records := h.get("/admin/usage", params={"key_id": probe["id"]}).json()["data"]):
            assert time.monotonic() < deadline
            time.sleep(0.05)
    cost = records[0]["cost_nano_usd"]
    assert cost > 0
    estimate = records[0]["estimated_prompt_tokens"] * 1000 * 1000 + 200 * 2000 * 1000
    assert estimate >= cost
    rec = _create(pair[1], budget={"max_usd": (9 * cost + estimate) / 1e9, "period": "total"})
    statuses = [_chat(pair[i % 2], rec["key"], "shared-priced", max_tokens=200).status_code for i in range(20)]
    assert 402 in statuses, statuses
    for url in pair:
        with _admin(url) as h:
            view = h.get(f"/admin/keys/{rec['id']}").json()
            spent = view["spend"]["spent_nano_usd"]
            assert spent == statuses.count(200) * cost, (spent, statuses)
            assert spent <= 9 * cost + estimate
            assert statuses.count(200) == 10, statuses


def test_revocation_through_one_is_refused_by_the_other(pair):
    rec = _create(pair[0])
    assert _chat(pair[1], rec["key"]).status_code == 200
    with _admin(pair[0]) as h:
        assert h.delete(f"/admin/keys/{rec['id']}").status_code == 200
    r = _chat(pair[1], rec["key"])
    assert r.status_code == 401, r.text
    # Disable and rotation likewise.
    rec = _create(pair[1])
    assert _chat(pair[0], rec["key"]).status_code == 200
    with _admin(pair[1]) as h:
        new = h.post(f"/admin/keys/{rec['id']}/rotate").json()["key"]
    assert _chat(pair[0], rec["key"]).status_code == 401
    assert _chat(pair[0], new).status_code == 200
    with _admin(pair[1]) as h:
        assert h.patch(f"/admin/keys/{rec['id']}", json={"enabled": False}).status_code == 200
    assert _chat(pair[0], new).status_code == 401


def test_usage_from_both_in_either(pair):
    rec = _create(pair[0])
    for i in range(6):
        assert _chat(pair[i % 2], rec["key"]).status_code == 200
    for url in pair:
        with _admin(url) as h:
            deadline = time.monotonic() + 5
            while True:
                data = h.get("/admin/usage", params={"key_id": rec["id"]}).json()["data"]
                if len(data) >= 6 or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            assert len(data) == 6, data


def test_store_outage_is_503_then_recovers(pair, store):
    rec = _create(pair[0], limits={"rpm": 1000})
    assert _chat(pair[0], rec["key"]).status_code == 200
    store.stop()
    try:
        for url in pair:
            r = _chat(url, rec["key"])
            assert r.status_code == 503, r.text
            assert r.json()["error"]["code"] == "store_unavailable"
    finally:
        store.start()
    deadline = time.monotonic() + 15
    while True:
        statuses = [_chat(url, rec["key"]).status_code for url in pair]
        if statuses == [200, 200] or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert statuses == [200, 200]
