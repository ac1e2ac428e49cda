#!/usr/bin/env python3
"""Soak test of the release server: a fixed request rate for minutes, resources and latency tracked.

Open loop (request i is due at start + i / rate; its latency counts from then, so a stalled
server cannot hide behind a slowed client). Two thirds of the rate are plain chat completions
sent by `bench-load rate` (Rust, one run a minute, so each minute has its own percentiles); a
third are streams (with usage) sent from here, `--drop` of which are abandoned by the client after
their first event (a client disconnecting mid-stream). Upstream: `bench-mock` (release), streams
`--chunks` events `--stream-delay-ms` apart. Every 10 s the server's resident memory (VmRSS) and
open file descriptors (/proc/PID/fd) are sampled.

Checks (exit status 1 on a violation):
- no error: every request that was not dropped on purpose gets a whole 200 answer;
- RSS and fds flat after warm-up (the first minute, or a fifth of a short run): the largest
  sample of the last third exceeds the largest of the first third after warm-up by at most 5 %
  (for fds, at least 4 descriptors of slack: connections come and go);
- the rate held: each minute's plain requests reached 95 % of their share of `--rate`;
- p99 stable (plain requests): no minute's p99 above 3 x the median minute's p99 + 20 ms, and the
  mean p99 of the last third of the run at most 2 x that of the first third after warm-up + 10 ms.

Prints a table, one row a minute.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import json

import httpx

ROOT = Path(__file__).resolve().parents[1]
MASTER = "soak-master-" + os.urandom(8).hex()
UPSTREAM_KEY = "soak-upstream-key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(cmd: list, env: dict, log: Path, prefix: str) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=open(log, "wb"), start_new_session=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stdout.readline().decode()
        if not line:
            break
        if line.startswith(prefix):
            return proc, line[len(prefix):].strip()
    raise SystemExit(f"soak: {cmd[0]} did not start (see {log})")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@dataclass
class Minute:
    requests: int = 0
    streams: int = 0
    dropped: int = 0
    errors: int = 0
    late: int = 0
    latencies: list = field(default_factory=list)  # non-streamed, ms (warm-up only)
    plain: dict = field(default_factory=dict)  # bench-load's answer for the minute
    stream_latencies: list = field(default_factory=list)  # to the end of the stream, ms
    rss_kib: list = field(default_factory=list)
    fds: list = field(default_factory=list)


def pct(values: list, p: float) -> float:
    if not values:
        return 0.0
    v = sorted(values)
    return v[min(len(v) - 1, int(round(p / 100 * (len(v) - 1))))]


async def one(client: httpx.AsyncClient, key: str, stream: bool, drop: bool, due: float,
              minute: Minute, errors: list) -> None:
    body = {"model": "soak-chat", "max_tokens": 32,
            "messages": [{"role": "user", "content": "Say hello in one short sentence."}]}
    headers = {"Authorization": f"Bearer {key}"}
    try:
        if not stream:
            r = await client.post("/v1/chat/completions", json=body, headers=headers)
            if r.status_code != 200 or "choices" not in r.json():
                raise RuntimeError(f"HTTP {r.status_code} {r.text[:200]}")
            minute.latencies.append((time.monotonic() - due) * 1000)
            return
        body.update(stream=True, stream_options={"include_usage": True})
        async with client.stream("POST", "/v1/chat/completions", json=body, headers=headers) as r:
            if r.status_code != 200:
                raise RuntimeError(f"stream HTTP {r.status_code}")
            done = False
            async for line in r.aiter_lines():
                if not line.startswith("data: "):
                    continue
                if drop:
                    minute.dropped += 1
                    return  # closes the connection mid-stream
                if line == "data: [DONE]":
                    done = True
                elif '"error"' in line:
                    raise RuntimeError(f"error event {line[:200]}")
            if not done:
                raise RuntimeError("stream ended without [DONE]")
            minute.stream_latencies.append((time.monotonic() - due) * 1000)
    except Exception as e:  # noqa: BLE001 - every failure is counted and shown
        minute.errors += 1
        errors.append(f"{type(e).__name__}: {e}")


async def sampler(pid: int, minutes: list, t0: float, stop_at: float) -> None:
    while time.monotonic() < stop_at:
        m = minutes[min(len(minutes) - 1, int((time.monotonic() - t0) // 60))]
        m.rss_kib.append(rss_kib(pid))
        m.fds.append(fds(pid))
        await asyncio.sleep(10)


async def plain_minutes(args, base: str, key: str, minutes: list, t0: float) -> None:
    """Two thirds of the rate, plain chat completions: one `bench-load rate` run a minute."""
    body = json.dumps({"model": "soak-chat", "max_tokens": 32,
                       "messages": [{"role": "user", "content": "Say hello in one short sentence."}]})
    for i, m in enumerate(minutes):
        left = t0 + args.minutes * 60 - time.monotonic()
        seconds = min(60.0, left)
        if seconds < 1:
            break
        proc = await asyncio.create_subprocess_exec(
            args.load_bin, "rate", "--url", base + "/v1/chat/completions", "--header",
            f"Authorization: Bearer {key}", "--body", body, "--rate", str(args.rate * 2 / 3),
            "--duration-s", str(int(seconds)), "--connections", str(args.connections // 2),
            "--warmup", "0", "--label", f"minute {i + 1}",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
        out, _ = await proc.communicate()
        try:
            m.plain = json.loads(out)
        except ValueError:
            m.plain = {"error_count": 1, "errors": {"bench-load": f"no output, exit {proc.returncode}"}}
        m.requests += m.plain.get("scheduled", 0)
        m.late += m.plain.get("late_starts", 0)
        m.duration = int(seconds)


async def drive(args, base: str, key: str, pid: int) -> tuple[list, list, float]:
    rng = random.Random(args.seed)
    n_minutes = int(args.minutes) + (1 if args.minutes % 1 else 0)
    minutes = [Minute() for _ in range(n_minutes)]
    errors: list = []
    limits = httpx.Limits(max_connections=args.connections, max_keepalive_connections=args.connections)
    async with httpx.AsyncClient(base_url=base, timeout=30, limits=limits) as client:
        # warm the pool
        for _ in range(20):
            await one(client, key, False, False, time.monotonic(), Minute(), errors)
        if errors:
            raise SystemExit(f"soak: warm-up failed: {errors[:3]}")
        t0 = time.monotonic()
        duration = args.minutes * 60
        stop_at = t0 + duration
        sampling = asyncio.create_task(sampler(pid, minutes, t0, stop_at))
        plain = asyncio.create_task(plain_minutes(args, base, key, minutes, t0))
        slots = asyncio.Semaphore(args.connections)
        tasks: set = set()
        i = 0
        stream_rate = args.rate / 3
        while True:
            due = t0 + i / stream_rate
            if due >= stop_at:
                break
            now = time.monotonic()
            if due > now:
                await asyncio.sleep(due - now)
            m = minutes[min(n_minutes - 1, int((due - t0) // 60))]
            if time.monotonic() - due > 0.05:
                m.late += 1
            stream = True
            drop = rng.random() < args.drop
            m.streams += 1

            async def run(stream=stream, drop=drop, due=due, m=m):
                async with slots:
                    await one(client, key, stream, drop, due, m, errors)

            t = asyncio.create_task(run())
            tasks.add(t)
            t.add_done_callback(tasks.discard)
            i += 1
        await asyncio.gather(*tasks)
        await plain
        await sampling
    return minutes, errors, time.monotonic() - t0


def report(minutes: list, errors: list, elapsed: float, args) -> list:
    violations = []
    print("\n| minute | requests | streams | dropped | errors | late starts | p50 ms | p99 ms "
          "| stream p99 ms | RSS MiB (max) | fds (max) |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for i, m in enumerate(minutes):
        lat = m.plain.get("latency", {})
        plain_errors = m.plain.get("error_count", 0)
        if plain_errors:
            errors.append(f"minute {i + 1}: {plain_errors} plain requests failed: {m.plain.get('errors')}")
        m.errors += plain_errors
        m.p99 = lat.get("p99_ms", 0.0)
        print(f"| {i + 1} | {m.requests + m.streams} | {m.streams} | {m.dropped} | {m.errors} | {m.late} "
              f"| {lat.get('p50_ms', 0.0):.1f} | {m.p99:.1f} | {pct(m.stream_latencies, 99):.1f} "
              f"| {max(m.rss_kib, default=0) / 1024:.1f} | {max(m.fds, default=0)} |")
        want = args.rate * 2 / 3 * getattr(m, "duration", 60)
        if m.plain and m.plain.get("requests_ok", 0) < 0.95 * want:
            violations.append(f"minute {i + 1}: {m.plain.get('requests_ok', 0)} plain requests of {want:.0f}")
    total = sum(m.requests + m.streams for m in minutes)
    print(f"\n{total} requests in {elapsed:.0f} s ({total / elapsed:.0f}/s), "
          f"{sum(m.errors for m in minutes)} errors, {sum(m.dropped for m in minutes)} streams dropped by the client")
    if errors:
        violations.append(f"{len(errors)} errors, e.g. {errors[:3]}")
    # Resources after warm-up.
    samples = [(r, f) for m in minutes for r, f in zip(m.rss_kib, m.fds)]
    warm = max(1, len(samples) // 5) if args.minutes < 5 else 6
    steady = samples[warm:]
    if len(steady) >= 3:
        third = max(1, len(steady) // 3)
        first, last = steady[:third], steady[-third:]
        rss0, rss1 = max(r for r, _ in first), max(r for r, _ in last)
        fd0, fd1 = max(f for _, f in first), max(f for _, f in last)
        print(f"RSS after warm-up {rss0 / 1024:.1f} -> {rss1 / 1024:.1f} MiB ({(rss1 / rss0 - 1) * 100:+.1f} %), "
              f"fds {fd0} -> {fd1}")
        if rss1 > rss0 * 1.05:
            violations.append(f"RSS grew {(rss1 / rss0 - 1) * 100:.1f} % after warm-up")
        if fd1 > max(fd0 * 1.05, fd0 + 4):
            violations.append(f"open fds grew from {fd0} to {fd1}")
    p99s = [m.p99 for m in minutes if m.plain]
    if p99s:
        median = statistics.median(p99s)
        for i, p in enumerate(p99s):
            if p > 3 * median + 20:
                violations.append(f"minute {i + 1}: p99 {p:.1f} ms against a median minute p99 of {median:.1f} ms")
        after = p99s[1:] if len(p99s) > 2 else p99s
        third = max(1, len(after) // 3)
        early, late = statistics.mean(after[:third]), statistics.mean(after[-third:])
        print(f"p99 of plain requests: median minute {median:.1f} ms; first third {early:.1f} ms, "
              f"last third {late:.1f} ms")
        if late > 2 * early + 10:
            violations.append(f"p99 grew from {early:.1f} ms to {late:.1f} ms")
    return violations


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bin", default=str(ROOT / "target/release/conduit"))
    p.add_argument("--mock-bin", default=str(ROOT / "target/release/bench-mock"))
    p.add_argument("--load-bin", default=str(ROOT / "target/release/bench-load"))
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--rate", type=float, default=200.0, help="requests per second")
    p.add_argument("--drop", type=float, default=0.1, help="share of streams the client abandons")
    p.add_argument("--connections", type=int, default=128, help="client connection pool (and in-flight bound)")
    p.add_argument("--chunks", type=int, default=10)
    p.add_argument("--stream-delay-ms", type=int, default=5)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="conduit-soak-"))
    mock, mock_url = start([args.mock_bin, "--listen", "127.0.0.1:0", "--chunks", str(args.chunks),
                            "--stream-delay-ms", str(args.stream_delay_ms), "--require-key", UPSTREAM_KEY],
                           dict(os.environ), work / "mock.log", "listening on ")
    (work / "conduit.toml").write_text(f"""[server]
[providers.mock]
kind = "openai"
base_url = "{mock_url}/v1"
api_key_env = "SOAK_UPSTREAM_KEY"

[models."soak-chat"]
deployments = [{{ provider = "mock", model = "gpt-4o-mini", price = {{ input = 0.15, output = 0.6 }} }}]
""")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONDUIT_")}
    env.update(CONDUIT_MASTER_KEY=MASTER, SOAK_UPSTREAM_KEY=UPSTREAM_KEY)
    port = free_port()
    server, base = start([args.bin, "serve", "--config", str(work / "conduit.toml"), "--listen",
                          f"127.0.0.1:{port}", "--database", str(work / "conduit.db")],
                         env, work / "conduit.log", "conduit listening on ")
    try:
        r = httpx.post(base + "/admin/keys", headers={"Authorization": f"Bearer {MASTER}"}, json={
            "name": "soak", "limits": {"rpm": 1_000_000}, "budget": {"max_usd": 1_000_000, "period": "total"}})
        r.raise_for_status()
        key = r.json()["key"]
        print(f"soak: {args.minutes:g} min at {args.rate:g} req/s against pid {server.pid} "
              f"(a third streamed, {args.drop:.0%} of those dropped); work directory {work}", flush=True)
        minutes, errors, elapsed = asyncio.run(drive(args, base, key, server.pid))
    finally:
        stop(server)
        stop(mock)
    violations = report(minutes, errors, elapsed, args)
    if violations:
        print("soak: FAILED:\n  " + "\n  ".join(violations))
        return 1
    print("soak: OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
