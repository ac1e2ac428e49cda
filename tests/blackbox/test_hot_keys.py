"""Hot keys at edge scale (issue 14), black-box.

One key sending a few hundred requests a second through many instances
(Lambda: the local runner with 8 instances on dynalite; the Worker under
`wrangler dev`; the server for comparison): no 503, the offered rate kept,
`rpm = N` still admits exactly N; and a revocation, rotation or PATCH made
through one instance takes effect on the others within
`[gateway] revocation_delay_ms` (at once with 0).

The machine running the suite may be too slow for the issue's rates: the
offered rate, the request count and the rate that must be achieved are
parameters (`CONDUIT_HOT_RATE`, `CONDUIT_HOT_REQUESTS`,
`CONDUIT_HOT_MIN_RATE`, defaults 200, 2000, 150). The exactness checks do
not depend on them.
"""
from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from conftest import MASTER_KEY, OPENAI_KEY_ENV
from helpers import auth, chat_body
from mock_upstream import OPENAI_KEY
from targets import LambdaTarget, make_target, target_name

RATE = float(os.environ.get("CONDUIT_HOT_RATE", "200"))
REQUESTS = int(os.environ.get("CONDUIT_HOT_REQUESTS", "2000"))
MIN_RATE = float(os.environ.get("CONDUIT_HOT_MIN_RATE", "150"))
INSTANCES = 8
DELAY_MS = 2000  # the default of `revocation_delay_ms`
# Time for a request in flight to finish and the admin call to reach the store.
SLACK_S = 1.5
# Under `wrangler dev` a request its proxy loses before the Worker is sent again by the
# suite's clients (dev_proxy.py): every count below is exact on every target.


def config(mock_url: str, delay_ms: int | None) -> str:
    extra = "" if delay_ms is None else f"revocation_delay_ms = {delay_ms}\n"
    return f"""
[providers.openai]
kind = "openai"
base_url = "{mock_url}/v1"
api_key_env = "{OPENAI_KEY_ENV}"

[models."hot"]
deployments = [{{ provider = "openai", model = "gpt-4o-mini", price = {{ input = 0.1, output = 0.2 }} }}]

[gateway]
upstream_timeout_ms = 10000
default_max_tokens = 16
{extra}"""


def start(mock, delay_ms: int | None):
    t = LambdaTarget(instances=INSTANCES) if target_name() == "lambda" else make_target()
    base = t.start(config(mock.url, delay_ms), {"CONDUIT_MASTER_KEY": MASTER_KEY, OPENAI_KEY_ENV: OPENAI_KEY})
    return t, base


@pytest.fixture(scope="module")
def hot(mock):
    t, base = start(mock, None)
    yield base
    t.stop()


@pytest.fixture(scope="module")
def strict(mock):
    t, base = start(mock, 0)
    yield base
    t.stop()


def new_key(base: str, **fields) -> tuple[str, str]:
    r = httpx.post(base + "/admin/keys", json={"name": "hot", **fields}, headers=auth(MASTER_KEY), timeout=10)
    assert r.status_code == 201, r.text
    return r.json()["id"], r.json()["key"]


def admin(base: str, method: str, path: str, **kw) -> httpx.Response:
    r = httpx.request(method, base + path, headers=auth(MASTER_KEY), timeout=10, **kw)
    assert r.status_code in (200, 201), r.text
    return r


def offer(base: str, key: str, n: int, rate: float, workers: int = 64) -> tuple[dict[int, int], float]:
    """n chat requests offered at `rate` per second (open loop, bounded by `workers` in flight).
    Returns the count per status and the achieved rate (answers per second of wall time)."""
    body = chat_body("hot", "hi")
    counts: dict[int, int] = {}
    samples: list[str] = []  # the first few unexpected answers of each kind, for the failure message
    lock = threading.Lock()
    local = threading.local()

    def one(i: int) -> None:
        delay = t0 + i / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        c = getattr(local, "client", None)
        if c is None:
            c = local.client = httpx.Client(timeout=30)
        try:
            r = c.post(base + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"})
            status, text = r.status_code, r.text
        except httpx.HTTPError as e:
            status, text = 0, repr(e)
        with lock:
            counts[status] = counts.get(status, 0) + 1
            if status not in (200, 429) and sum(x.startswith(f"{status}:") for x in samples) < 3:
                samples.append(f"{status}: {text[:300]}")

    t0 = time.monotonic()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(one, range(n)))
    elapsed = time.monotonic() - t0
    if samples:
        print("unexpected answers:", *samples, sep="\n  ")
    return counts, n / elapsed


def statuses(base: str, key: str, n: int) -> list[int]:
    """n concurrent requests (to reach several instances); their statuses."""
    def one(_):
        return httpx.post(base + "/v1/chat/completions", json=chat_body("hot", "hi"),
                          headers={"Authorization": f"Bearer {key}"}, timeout=30).status_code

    with ThreadPoolExecutor(max_workers=n) as pool:
        return list(pool.map(one, range(n)))


def usage_count(base: str, key_id: str, status: str, want: int, timeout: float = 10.0) -> int:
    """The gateway's usage records of `key_id` with `status` (one page: these keys have a few
    hundred at most; usage is written off the response path: polled until `want` are listed
    or `timeout` passes)."""
    deadline = time.monotonic() + timeout
    while True:
        params = {"key_id": key_id, "status": status, "limit": 1000}
        seen = len(admin(base, "GET", "/admin/usage", params=params).json()["data"])
        if seen >= want or time.monotonic() > deadline:
            return seen
        time.sleep(0.1)


def test_hot_key_with_generous_limits_keeps_the_rate(hot):
    _, key = new_key(hot, limits={"rpm": 1_000_000, "tpm": 1_000_000_000}, budget={"max_usd": 1000, "period": "daily"})
    statuses(hot, key, INSTANCES)  # every instance warm
    counts, achieved = offer(hot, key, REQUESTS, RATE)
    print(f"hot key, generous limits: {counts}, {achieved:.1f} req/s of {RATE:.0f} offered")
    assert counts.get(503, 0) == 0, counts
    assert counts == {200: REQUESTS}, counts
    assert achieved >= MIN_RATE, f"{achieved:.1f} req/s achieved, {MIN_RATE} required ({counts})"


def test_hot_key_without_limits_keeps_the_rate(hot):
    _, key = new_key(hot)
    statuses(hot, key, INSTANCES)
    counts, achieved = offer(hot, key, REQUESTS, RATE)
    print(f"hot key, no limits: {counts}, {achieved:.1f} req/s of {RATE:.0f} offered")
    assert counts == {200: REQUESTS}, counts
    assert achieved >= MIN_RATE, f"{achieved:.1f} req/s achieved, {MIN_RATE} required ({counts})"


def test_hot_key_rpm_is_exact(hot):
    key_id, key = new_key(hot, limits={"rpm": 100})
    # Three times the limit, offered at the hot rate: all inside one window.
    n = 300
    counts, _ = offer(hot, key, n, RATE)
    assert counts == {200: 100, 429: n - 100}, counts
    # And the gateway's own counts: the authority admitted exactly N (no lease is granted
    # for so small an rpm) and exactly N requests were served.
    assert remaining_requests(hot, key_id) == 0
    assert usage_count(hot, key_id, "200", want=100) == 100, counts


def wait_refused(base: str, key: str, bound_s: float) -> float:
    """Seconds until every instance refuses `key` (401); fails past `bound_s`."""
    t0 = time.monotonic()
    while True:
        got = statuses(base, key, INSTANCES)
        elapsed = time.monotonic() - t0
        if all(s == 401 for s in got):
            return elapsed
        assert set(got) <= {200, 401}, got
        assert elapsed <= bound_s, f"still admitted {elapsed:.2f} s after the change: {got}"
        time.sleep(0.05)


@pytest.mark.parametrize("change", ["delete", "rotate", "disable"])
def test_revocation_within_the_delay(hot, change):
    key_id, key = new_key(hot)
    assert set(statuses(hot, key, INSTANCES)) == {200}
    if change == "delete":
        admin(hot, "DELETE", f"/admin/keys/{key_id}")
    elif change == "rotate":
        admin(hot, "POST", f"/admin/keys/{key_id}/rotate")
    else:
        admin(hot, "PATCH", f"/admin/keys/{key_id}", json={"enabled": False})
    took = wait_refused(hot, key, DELAY_MS / 1000 + SLACK_S)
    print(f"{change}: refused everywhere after {took:.2f} s")
    # And it stays refused.
    time.sleep(DELAY_MS / 1000)
    assert set(statuses(hot, key, INSTANCES)) == {401}


@pytest.mark.parametrize("change", ["delete", "rotate", "disable"])
def test_revocation_at_once_with_zero_delay(strict, change):
    key_id, key = new_key(strict)
    assert set(statuses(strict, key, INSTANCES)) == {200}
    if change == "delete":
        admin(strict, "DELETE", f"/admin/keys/{key_id}")
    elif change == "rotate":
        admin(strict, "POST", f"/admin/keys/{key_id}/rotate")
    else:
        admin(strict, "PATCH", f"/admin/keys/{key_id}", json={"enabled": False})
    assert set(statuses(strict, key, INSTANCES)) == {401}


# ---- leases (issue 14): a key with limits is admitted from an instance's lease while well below them

# A lease is valid for at most a second on the Worker, two on Lambda (granted in one second,
# counted in the next: src/metering/limits/lease.rs, LEASE_MAX_MS and SPANNING_MAX_MS).
LEASE_S = 2.0 if target_name() == "lambda" else 1.0


def test_hot_key_with_leases_never_passes_its_rpm(hot):
    # rpm above 100: leases are granted while the key is well below it, none near it.
    limit = 400
    _, key = new_key(hot, limits={"rpm": limit})
    n = 2 * limit
    counts, achieved = offer(hot, key, n, RATE)
    print(f"hot key, rpm {limit}: {counts}, {achieved:.1f} req/s")
    assert set(counts) <= {200, 429}, counts
    # Never more than the limit; short of it only by what leases held and had not
    # given back yet (each at most a tenth of what was left).
    assert limit * 0.9 <= counts.get(200, 0) <= limit, counts
    assert counts.get(200, 0) + counts.get(429, 0) == n


def warm_leases(base: str, key: str, n: int = 40) -> None:
    """Bursts of concurrent requests: every instance sees the key's rate and takes a lease."""
    for _ in range(n // INSTANCES):
        assert set(statuses(base, key, INSTANCES)) == {200}


@pytest.mark.parametrize("change", ["delete", "rotate", "disable"])
def test_revocation_of_a_leased_key_within_the_lease(hot, change):
    key_id, key = new_key(hot, limits={"rpm": 100_000})
    warm_leases(hot, key)
    if change == "delete":
        admin(hot, "DELETE", f"/admin/keys/{key_id}")
    elif change == "rotate":
        admin(hot, "POST", f"/admin/keys/{key_id}/rotate")
    else:
        admin(hot, "PATCH", f"/admin/keys/{key_id}", json={"enabled": False})
    took = wait_refused(hot, key, LEASE_S + SLACK_S)
    print(f"{change} of a leased key: refused everywhere after {took:.2f} s")


def test_no_lease_with_zero_delay(strict):
    key_id, key = new_key(strict, limits={"rpm": 100_000})
    warm_leases(strict, key)
    admin(strict, "PATCH", f"/admin/keys/{key_id}", json={"enabled": False})
    assert set(statuses(strict, key, INSTANCES)) == {401}


def remaining_requests(base: str, key_id: str) -> int:
    """The authority's count: what the key's minute window has left."""
    return admin(base, "GET", f"/admin/keys/{key_id}").json()["rate_limits"]["requests"]["remaining"]


def function_pids(t: LambdaTarget) -> list[int]:
    """The function instances the local runner started (its child processes)."""
    runner = next(p for p in t.procs if any("conduit-lambda-local" in str(a) for a in p.args))
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    stat = fh.read()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == runner.pid:
                pids.append(int(entry))
    return pids


def test_a_killed_instance_holding_a_lease(mock):
    """Lambda: every function instance is killed (SIGKILL); the Worker: wrangler dev and its
    workerd are killed and started again on the same persisted state."""
    if target_name() not in ("lambda", "worker"):
        pytest.skip("leases are the edge platforms'")
    import signal

    limit = 1000
    if target_name() == "lambda":
        t = LambdaTarget(instances=4)
    else:
        t = make_target()
    base = t.start(config(mock.url, None), {"CONDUIT_MASTER_KEY": MASTER_KEY, OPENAI_KEY_ENV: OPENAI_KEY})
    try:
        key_id, key = new_key(base, limits={"rpm": limit})
        body = chat_body("hot", "hi")
        with httpx.Client(timeout=30) as c:
            # One request at a time: past two a second, the instance serving them
            # takes a lease. Until the key's count shows one held.
            admitted, held = 0, 0
            for _ in range(40):
                r = c.post(base + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"})
                assert r.status_code == 200, r.text
                admitted += 1
                held = limit - admitted - remaining_requests(base, key_id)
                if held > 0:
                    break
            assert held > 0, "no lease was taken"
            assert held <= (limit - admitted) // 10 + 1, "a lease is at most a tenth of what is left"
            if target_name() == "lambda":
                # Every instance is killed (the one holding the lease among them).
                pids = function_pids(t)
                assert 1 <= len(pids) < 4, pids
                for pid in pids:
                    os.kill(pid, signal.SIGKILL)
                time.sleep(0.2)  # the runner sees their polls end (it checks every 20 ms)
            else:
                base = t.kill_and_restart()
            # The key does not wait for the dead holder: a new instance is admitted at once.
            r = c.post(base + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"})
            assert r.status_code == 200, r.text
            admitted += 1
            # Past the lease's validity nothing more can come out of it: what it held
            # stays charged, like an unsettled reservation (never more), and the rest of
            # the key's capacity is the new instance's to use.
            time.sleep(LEASE_S)
            assert remaining_requests(base, key_id) == limit - admitted - held
    finally:
        t.stop()
