#!/usr/bin/env python3
"""Crash test of the native server on SQLite: mixed load, `kill -9` at a random moment, restart, check.

Each iteration starts `conduit serve` on the same database, drives for a random 1.5-4 s

- inference: chat completions on budget-limited keys, a third streamed (with usage), a tenth of
  the streams dropped by the client mid-stream, a quarter costing more than their admission's
  estimate (`max_tokens` 1); one key with a budget small enough to run out;
- admin changes: keys created, PATCHed (name), rotated and revoked,

then sends SIGKILL to the server, restarts it and checks against the client's ledger:

1. every admin change that was answered is there (a change still in flight may or may not be);
2. every answered request's usage record is there with the cost the client computed from the
   usage it received (prompt x input + completion x output), unless it was answered within the
   write-behind window before the kill (`--window-ms`, default 250: the writer's 100 ms batch
   plus one commit); the largest gap of a missing record is reported as the measured window;
3. each budget key's spend is at least what the client was billed (the answered requests),
   and at least the cost of its usage records; what is above that (reservations in flight at
   the kill, charged at their estimate, and dropped streams) is reported.

The ledger and the database carry over from one iteration to the next. Exit status 1 on any
violation, 2 on a setup failure. Upstream: the black-box suite's mock provider (in process).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "blackbox"))
from mock_upstream import MockUpstream, OPENAI_KEY  # noqa: E402

MASTER = "crash-master-" + os.urandom(8).hex()
PRICE_IN, PRICE_OUT = 10.0, 30.0  # USD per million tokens
ALIAS = "crash-chat"
SLOW_ALIAS = "crash-slow"


def cost_nanos(prompt: int, completion: int) -> int:
    # The README's formula: ceil((prompt x input + completion x output) / 1e6), prices in nano-USD / 1M.
    return math.ceil((prompt * int(PRICE_IN * 1e9) + completion * int(PRICE_OUT * 1e9)) / 1e6)


def config(mock_url: str) -> str:
    price = f"price = {{ input = {PRICE_IN}, output = {PRICE_OUT} }}"
    return f"""[server]
listen = "127.0.0.1:0"

[providers.openai]
kind = "openai"
base_url = "{mock_url}/v1"
api_key_env = "CRASH_OPENAI_KEY"

[models."{ALIAS}"]
deployments = [{{ provider = "openai", model = "gpt-4o-mini", {price} }}]

[models."{SLOW_ALIAS}"]
deployments = [{{ provider = "openai", model = "mock-delay-300", {price} }}]
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, binary: Path, workdir: Path, mock_url: str):
        self.binary, self.workdir = binary, workdir
        (workdir / "conduit.toml").write_text(config(mock_url))
        self.port = free_port()
        self.proc: Optional[subprocess.Popen] = None
        self.log = open(workdir / "conduit.log", "ab")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CONDUIT_")}
        env.update({"CONDUIT_MASTER_KEY": MASTER, "CRASH_OPENAI_KEY": OPENAI_KEY})
        self.proc = subprocess.Popen(
            [str(self.binary), "serve", "--config", str(self.workdir / "conduit.toml"), "--listen",
             f"127.0.0.1:{self.port}", "--database", str(self.workdir / "conduit.db")],
            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self.log, start_new_session=True)
        line = self.proc.stdout.readline().decode()
        if "listening" not in line:
            raise SystemExit(f"crash: the server did not start: {line!r} (log: {self.workdir / 'conduit.log'})")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            self.proc.wait(timeout=30)
        self.proc = None


@dataclass
class AdminKey:
    id: str
    secret: str
    name: str
    pending_names: set = field(default_factory=set)
    old_secrets: list = field(default_factory=list)
    rotate_pending: bool = False
    revoked: bool = False
    revoke_pending: bool = False


@dataclass
class Answered:
    request_id: str
    key_id: str
    cost: int
    at: float  # wall clock, seconds
    lost: bool = False  # its record was inside the window of an earlier kill


@dataclass
class Ledger:
    admin_keys: dict = field(default_factory=dict)  # id -> AdminKey
    budget_keys: dict = field(default_factory=dict)  # id -> secret
    answered: list = field(default_factory=list)
    refused: int = 0
    dropped: int = 0
    errors: list = field(default_factory=list)
    creates_answered: int = 0
    changes_answered: int = 0

    def billed(self, key_id: str) -> int:
        return sum(a.cost for a in self.answered if a.key_id == key_id)


async def chat_once(client: httpx.AsyncClient, ledger: Ledger, rng: random.Random) -> None:
    key_id, secret = rng.choice(list(ledger.budget_keys.items()))
    stream = rng.random() < 1 / 3
    alias = SLOW_ALIAS if rng.random() < 0.1 else ALIAS
    # A quarter ask for one token: the mock answers more, so the request costs more than
    # the estimate its admission reserved, and its settlement raises the key's spend (the
    # write the answer's end must wait for).
    body = {"model": alias, "max_tokens": 1 if rng.random() < 0.25 else 16,
            "messages": [{"role": "user", "content": f"crash test {rng.random()}"}]}
    headers = {"Authorization": f"Bearer {secret}"}
    if not stream:
        r = await client.post("/v1/chat/completions", json=body, headers=headers)
        if r.status_code == 402:
            ledger.refused += 1
            return
        if r.status_code != 200:
            ledger.errors.append(f"chat: HTTP {r.status_code} {r.text[:200]}")
            return
        u = r.json()["usage"]
        ledger.answered.append(Answered(r.headers["x-request-id"], key_id,
                                        cost_nanos(u["prompt_tokens"], u["completion_tokens"]), time.time()))
        return
    body.update(stream=True, stream_options={"include_usage": True})
    drop = rng.random() < 0.1
    async with client.stream("POST", "/v1/chat/completions", json=body, headers=headers) as r:
        if r.status_code == 402:
            ledger.refused += 1
            await r.aread()
            return
        if r.status_code != 200:
            ledger.errors.append(f"stream: HTTP {r.status_code} {(await r.aread())[:200]!r}")
            return
        usage, done, events = None, False, 0
        async for line in r.aiter_lines():
            if not line.startswith("data: "):
                continue
            events += 1
            if drop and events == 2:
                ledger.dropped += 1
                return  # leaves the block: the connection is closed mid-stream
            data = line[6:]
            if data == "[DONE]":
                done = True
                continue
            chunk = json.loads(data)
            if "error" in chunk:
                ledger.errors.append(f"stream error event: {data[:200]}")
                return
            if chunk.get("usage"):
                usage = chunk["usage"]
        if not done or usage is None:
            return  # cut by the kill: in flight, not answered
        ledger.answered.append(Answered(r.headers["x-request-id"], key_id,
                                        cost_nanos(usage["prompt_tokens"], usage["completion_tokens"]),
                                        time.time()))


async def chat_loop(client, ledger, rng, stop: asyncio.Event) -> None:
    while not stop.is_set():
        try:
            await chat_once(client, ledger, rng)
        except (httpx.HTTPError, OSError):
            await asyncio.sleep(0.05)  # the server is gone
        await asyncio.sleep(rng.uniform(0, 0.01))


async def admin_loop(client, ledger: Ledger, rng: random.Random, stop: asyncio.Event, seq: list) -> None:
    auth = {"Authorization": f"Bearer {MASTER}"}
    while not stop.is_set():
        live = [k for k in ledger.admin_keys.values() if not k.revoked and not k.revoke_pending]
        op = rng.choice(["create", "patch", "patch", "rotate", "revoke"]) if len(live) > 3 else "create"
        seq[0] += 1
        n = seq[0]
        try:
            if op == "create":
                r = await client.post("/admin/keys", json={"name": f"admin-{n}"}, headers=auth)
                if r.status_code == 201:
                    v = r.json()
                    ledger.admin_keys[v["id"]] = AdminKey(v["id"], v["key"], f"admin-{n}")
                    ledger.creates_answered += 1
                else:
                    ledger.errors.append(f"create: HTTP {r.status_code}")
            else:
                k = rng.choice(live)
                if op == "patch":
                    name = f"renamed-{n}"
                    k.pending_names.add(name)
                    r = await client.patch(f"/admin/keys/{k.id}", json={"name": name}, headers=auth)
                    if r.status_code == 200:
                        k.name = name
                        k.pending_names.clear()
                elif op == "rotate":
                    k.rotate_pending = True
                    r = await client.post(f"/admin/keys/{k.id}/rotate", headers=auth)
                    if r.status_code == 200:
                        k.old_secrets.append(k.secret)
                        k.secret = r.json()["key"]
                        k.rotate_pending = False
                else:
                    k.revoke_pending = True
                    r = await client.delete(f"/admin/keys/{k.id}", headers=auth)
                    if r.status_code == 200:
                        k.revoked, k.revoke_pending = True, False
                if r.status_code != 200:
                    ledger.errors.append(f"{op}: HTTP {r.status_code} {r.text[:200]}")
                else:
                    ledger.changes_answered += 1
        except (httpx.HTTPError, OSError):
            await asyncio.sleep(0.05)
        await asyncio.sleep(rng.uniform(0.005, 0.03))


async def all_records(client: httpx.AsyncClient) -> dict:
    auth = {"Authorization": f"Bearer {MASTER}"}
    out, cursor = {}, None
    while True:
        params = {"limit": 1000, **({"cursor": cursor} if cursor else {})}
        r = await client.get("/admin/usage", params=params, headers=auth)
        r.raise_for_status()
        v = r.json()
        for rec in v["data"]:
            out[rec["request_id"]] = rec
        if not v.get("has_more"):
            return out
        cursor = v["next_cursor"]


async def verify(client: httpx.AsyncClient, ledger: Ledger, kill_at: float, window_ms: float,
                 report: dict) -> list:
    auth = {"Authorization": f"Bearer {MASTER}"}
    violations = []
    # 1. admin changes
    for k in ledger.admin_keys.values():
        r = await client.get(f"/admin/keys/{k.id}", headers=auth)
        if k.revoked:
            if r.status_code != 404:
                violations.append(f"key {k.id}: revoked (answered) but GET says {r.status_code}")
            continue
        if r.status_code == 404 and k.revoke_pending:
            k.revoked, k.revoke_pending = True, False  # the revocation in flight was applied
            continue
        if r.status_code != 200:
            violations.append(f"key {k.id}: created (answered) but GET says {r.status_code}")
            continue
        k.revoke_pending = False
        name = r.json().get("name")
        if name != k.name and name not in k.pending_names:
            violations.append(f"key {k.id}: name {name!r}, the last answered PATCH set {k.name!r}")
        elif name in k.pending_names:
            k.name = name
        k.pending_names.clear()
        works = (await client.get("/v1/models", headers={"Authorization": f"Bearer {k.secret}"})).status_code
        if k.rotate_pending:
            k.rotate_pending = False
            if works != 200:
                # the rotation in flight was applied: its secret was never seen, so the key is done with
                k.revoked = True
            continue
        if works != 200:
            violations.append(f"key {k.id}: its last answered secret gets {works}")
        for old in k.old_secrets[-2:]:
            s = (await client.get("/v1/models", headers={"Authorization": f"Bearer {old}"})).status_code
            if s != 401:
                violations.append(f"key {k.id}: a rotated-out secret gets {s}")
    # 2. usage records
    records = await all_records(client)
    missing = [a for a in ledger.answered if a.request_id not in records and not a.lost]
    gaps = [(kill_at - a.at) * 1000 for a in missing]
    for a, gap in zip(missing, gaps):
        if gap > window_ms:
            violations.append(f"record {a.request_id} missing, answered {gap:.0f} ms before the kill")
        a.lost = True
    for a in ledger.answered:
        rec = records.get(a.request_id)
        if rec is not None and rec.get("cost_nano_usd") != a.cost:
            violations.append(f"record {a.request_id}: cost {rec.get('cost_nano_usd')} != billed {a.cost}")
    # 3. spend
    over = 0
    for key_id in ledger.budget_keys:
        r = await client.get(f"/admin/keys/{key_id}", headers=auth)
        spent = r.json()["spend"]["spent_nano_usd"]
        billed = ledger.billed(key_id)
        recorded = sum(rec.get("cost_nano_usd") or 0 for rec in records.values() if rec["key_id"] == key_id)
        if spent < billed:
            violations.append(f"key {key_id}: spend {spent} < billed {billed} (short {billed - spent} nano-USD)")
        if spent < recorded:
            violations.append(f"key {key_id}: spend {spent} < its records' cost {recorded}")
        over += spent - billed
    report.update(missing=len(missing), max_gap_ms=max(gaps, default=0.0), records=len(records),
                  over_nanos=over)
    return violations


async def iteration(server: Server, ledger: Ledger, rng: random.Random, args, n: int) -> list:
    server.start()
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=32)
    async with httpx.AsyncClient(base_url=server.url, timeout=10, limits=limits) as client:
        if n > 0:
            report: dict = {}
            violations = await verify(client, ledger, ledger_kill[0], args.window_ms, report)
            print(f"crash: after kill {n}: {len(ledger.answered)} answered requests "
                  f"({ledger.refused} refused by budget, {ledger.dropped} dropped streams), "
                  f"{ledger.creates_answered} keys created and {ledger.changes_answered} changes answered; "
                  f"{report['records']} records, {report['missing']} missing "
                  f"(largest gap before the kill {report['max_gap_ms']:.0f} ms), "
                  f"spend above billed {report['over_nanos']} nano-USD", flush=True)
            window[0] = max(window[0], report["max_gap_ms"])
            if violations:
                return violations
        if not ledger.budget_keys:
            auth = {"Authorization": f"Bearer {MASTER}"}
            for i, usd in enumerate([100.0, 100.0, 100.0, 0.02]):
                r = await client.post("/admin/keys", headers=auth, json={
                    "name": f"budget-{i}", "budget": {"max_usd": usd, "period": "total"}})
                r.raise_for_status()
                ledger.budget_keys[r.json()["id"]] = r.json()["key"]
        if n == args.iterations:
            return []
        stop = asyncio.Event()
        seq = [n * 100000]
        tasks = [asyncio.create_task(chat_loop(client, ledger, random.Random(rng.random()), stop))
                 for _ in range(args.clients)]
        tasks.append(asyncio.create_task(admin_loop(client, ledger, random.Random(rng.random()), stop, seq)))
        await asyncio.sleep(rng.uniform(args.min_s, args.max_s))
        ledger_kill[0] = time.time()
        server.kill(signal.SIGKILL)
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
    return []


ledger_kill = [0.0]
window = [0.0]


async def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bin", default=str(ROOT / "target/release/conduit"))
    p.add_argument("--iterations", type=int, default=5, help="kills (default 5)")
    p.add_argument("--clients", type=int, default=8, help="concurrent inference clients")
    p.add_argument("--min-s", type=float, default=1.5, help="load before a kill, at least (s)")
    p.add_argument("--max-s", type=float, default=4.0, help="load before a kill, at most (s)")
    p.add_argument("--window-ms", type=float, default=250.0, help="the write-behind window allowed")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    args = p.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    binary = Path(args.bin)
    if not binary.exists():
        print(f"crash: no binary at {binary}", file=sys.stderr)
        return 2
    mock = MockUpstream().start()
    work = Path(tempfile.mkdtemp(prefix="conduit-crash-"))
    print(f"crash: seed {seed}, {args.iterations} kills, work directory {work}", flush=True)
    server = Server(binary, work, f"http://127.0.0.1:{mock.port}")
    ledger = Ledger()
    violations: list = []
    try:
        for n in range(args.iterations + 1):
            violations = await iteration(server, ledger, rng, args, n)
            if violations:
                break
    finally:
        server.kill(signal.SIGKILL)
        mock.stop()
    if ledger.errors:
        print(f"crash: {len(ledger.errors)} unexpected answers, e.g. {ledger.errors[:3]}")
        violations.append("unexpected answers")
    if violations:
        print(f"crash: FAILED ({len(violations)} violations):")
        for v in violations[:30]:
            print("  " + v)
        print(f"crash: the database and the log are in {work}")
        return 1
    print(f"crash: OK: {args.iterations} kills, {len(ledger.answered)} answered requests, "
          f"measured write-behind window {window[0]:.0f} ms (allowed {args.window_ms:.0f} ms)")
    if not args.keep:
        import shutil
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
