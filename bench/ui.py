"""Web UI numbers (bench, not tests): first load of /ui/ on the native server in headless
Chromium (bytes transferred, time to interactive), and GET /admin/usage/summary and the first
page of GET /admin/usage over 100,000 usage records.

    bash bench/ui.sh          (builds the server, then runs this with the test venv)

The database is seeded directly (100,000 records over 30 days, 50 keys, 6 models); the server
fills its hourly counters from them once at start, exactly as it keeps them when it writes
records itself.
"""
from __future__ import annotations

import calendar
import json
import os
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parents[1]
BIN = ROOT / "target/release/conduit"
RECORDS = int(os.environ.get("BENCH_UI_RECORDS", "100000"))
MASTER = "bench-master-" + uuid.uuid4().hex
CONFIG = """
[providers.openai]
kind = "openai"
base_url = "http://127.0.0.1:9/v1"
api_key_env = "BENCH_OPENAI_KEY"
""" + "".join(f'\n[models."m{i}"]\ndeployments = [{{ provider = "openai", model = "gpt-4o-mini" }}]\n' for i in range(6))


def seed(db: Path) -> None:
    subprocess.run([str(BIN), "keys", "list", "--database", str(db)], check=True, capture_output=True)  # creates the schema
    con = sqlite3.connect(db)
    now_ms = int(time.time() * 1000)
    rng = random.Random(7)
    keys = []
    teams = ["search", "support-bot", "checkout", "analytics", "mobile-app", "data-eng", "growth", "docs-assistant"]
    t = time.gmtime(now_ms // 1000)
    month_start = calendar.timegm((t.tm_year, t.tm_mon, 1, 0, 0, 0))
    spend = {}
    for i in range(50):
        kid = f"key_bench{i:02d}"
        team = teams[i % len(teams)]
        budget = {"max_nanos": (i % 5 + 1) * 20 * 10**9, "period": "monthly"} if i % 3 else None
        rec = {"id": kid, "name": f"{team}-{'prod' if i % 2 else 'staging'}-{i}", "enabled": i % 11 != 5,
               "expires_at": None if i % 7 else now_ms // 1000 + 90 * 86400,
               "allowed_models": [] if i % 4 == 0 else [f"m{i % 6}", f"m{(i + 1) % 6}"],
               "metadata": {"team": team}, "limits": {"rpm": 600 if i % 2 else None, "rpd": None, "tpm": 200000 if i % 3 == 1 else None},
               "budget": budget, "created_at": now_ms // 1000 - 40 * 86400 + i * 3600, "updated_at": now_ms // 1000 - 40 * 86400}
        con.execute("INSERT INTO virtual_keys (id, key_hash, record, created_at) VALUES (?, ?, ?, ?)",
                    (kid, uuid.uuid4().hex + uuid.uuid4().hex, json.dumps(rec), rec["created_at"]))
        keys.append(kid)
        if budget:
            spend[kid] = 0
    rows = []
    for n in range(RECORDS):
        at = now_ms - rng.randrange(30 * 86400 * 1000)
        status = rng.choice([200] * 18 + [429, 502])
        p, c = rng.randrange(10, 2000), rng.randrange(0, 800)
        r = {"request_id": f"req_bench{n:07d}", "key_id": keys[min(int(rng.expovariate(0.12)), len(keys) - 1)], "model": f"m{rng.randrange(6)}",
             "provider": "openai", "provider_model": "gpt-4o-mini", "endpoint": "/v1/chat/completions",
             "status": status, "streamed": n % 3 == 0, "prompt_tokens": p if status == 200 else 0,
             "completion_tokens": c if status == 200 else 0, "total_tokens": p + c if status == 200 else 0,
             "cached_tokens": 0, "reasoning_tokens": 0, "cache_write_tokens": 0, "estimated_prompt_tokens": p,
             "estimated_completion_tokens": 4096, "cost_nano_usd": (p * 2500 + c * 10000) if status == 200 else 0,
             "refused_by": "rpm" if status == 429 else None, "latency_ms": 12.5, "upstream_latency_ms": 12.0,
             "created_at_ms": at}
        rows.append((r["request_id"], r["key_id"], at, json.dumps(r)))
        if r["key_id"] in spend and at // 1000 >= month_start:
            spend[r["key_id"]] += r["cost_nano_usd"]
    con.executemany("INSERT INTO key_spend (key_id, period_start, spent_nanos) VALUES (?, ?, ?)",
                    [(k, month_start, v) for k, v in spend.items()])
    con.executemany("INSERT INTO usage_records (request_id, key_id, created_at_ms, record) VALUES (?, ?, ?, ?)", rows)
    con.commit()
    con.close()


def timed(client: httpx.Client, path: str, n: int = 20) -> tuple[float, float, int]:
    times = []
    size = 0
    for _ in range(n):
        t = time.perf_counter()
        r = client.get(path)
        times.append((time.perf_counter() - t) * 1000)
        assert r.status_code == 200, r.text
        size = len(r.content)
    times.sort()
    return statistics.median(times), times[int(len(times) * 0.9) - 1], size


def main() -> int:
    if not BIN.exists():
        print(f"{BIN} missing: cargo build --release -p conduit-server", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="conduit-bench-ui-"))
    db = tmp / "bench.db"
    t = time.perf_counter()
    seed(db)
    seeded = time.perf_counter() - t
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("CONDUIT_")},
           "CONDUIT_MASTER_KEY": MASTER, "CONDUIT_CONFIG": CONFIG, "BENCH_OPENAI_KEY": "sk-none"}
    t = time.perf_counter()
    proc = subprocess.Popen([str(BIN), "serve", "--listen", "127.0.0.1:0", "--database", str(db)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = proc.stdout.readline()
        started = time.perf_counter() - t
        base = line.strip().rsplit(" ", 1)[-1]
        out = []
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {MASTER}"}, timeout=30) as c:
            now = int(time.time())
            for label, q in [("summary, 24 h by hour", f"since={now - 86400}&until={now}&bucket=hour"),
                             ("summary, 7 d by hour", f"since={now - 7 * 86400}&until={now}&bucket=hour"),
                             ("summary, 30 d by day", f"since={now - 30 * 86400}&until={now}&bucket=day"),
                             ("summary, 30 d by day, one key", f"since={now - 30 * 86400}&until={now}&bucket=day&key_id=key_bench07")]:
                p50, p90, size = timed(c, "/admin/usage/summary?" + q)
                out.append((f"GET /admin/usage/summary ({label}), {RECORDS:,} records", f"{p50:.1f} / {p90:.1f} ms", "< 200 ms", p90 < 200))
            total = c.get(f"/admin/usage/summary?since={now - 31 * 86400}&until={now + 3600}&bucket=day").json()["totals"]["requests"]
            assert total == RECORDS, total
            for label, q in [("first page of 100", ""), ("page of 100, status=refused", "status=refused"),
                             ("page of 100 after a cursor", None)]:
                if q is None:
                    cur = c.get("/admin/usage?limit=100").json()["next_cursor"]
                    q = f"cursor={cur}"
                p50, p90, size = timed(c, "/admin/usage?limit=100&" + q)
                out.append((f"GET /admin/usage ({label})", f"{p50:.1f} / {p90:.1f} ms", "–", None))
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=shutil.which("chromium"), headless=True, args=["--no-sandbox"])
            loads = []
            for i in range(7):
                ctx = browser.new_context(viewport={"width": 1280, "height": 800})
                page = ctx.new_page()
                cdp = ctx.new_cdp_session(page)
                cdp.send("Network.enable")
                cdp.send("Network.setCacheDisabled", {"cacheDisabled": True})
                sizes = {}
                cdp.on("Network.loadingFinished", lambda e, s=sizes: s.__setitem__(e["requestId"], e["encodedDataLength"]))
                t = time.perf_counter()
                page.goto(base + "/ui/")
                page.get_by_label("Master key").wait_for()
                tti_signin = (time.perf_counter() - t) * 1000
                nav = page.evaluate("JSON.stringify(performance.getEntriesByType('navigation')[0].toJSON())")
                page.get_by_label("Master key").fill(MASTER)
                t = time.perf_counter()
                page.get_by_role("button", name="Sign in").click()
                page.locator("figure.chart canvas").first.wait_for()
                page.locator("dl.totals").wait_for()
                overview = (time.perf_counter() - t) * 1000
                time.sleep(0.2)
                loads.append((sum(sizes.values()), tti_signin, json.loads(nav)["domInteractive"], overview))
                if i == 0 and os.environ.get("BENCH_UI_DOCS"):
                    # the README's screenshots, on this seeded database
                    docs = ROOT / "docs"
                    docs.mkdir(exist_ok=True)
                    page.get_by_role("button", name="Last 7 days").click()
                    page.locator("p.muted", has_text="Loading…").first.wait_for(state="detached")
                    time.sleep(0.5)
                    page.screenshot(path=str(docs / "ui-overview.png"), full_page=True)
                    page.goto(base + "/ui/#/keys")
                    page.get_by_role("row").nth(12).wait_for()
                    time.sleep(1.0)
                    page.screenshot(path=str(docs / "ui-keys.png"))
                ctx.close()
            browser.close()
        first = loads[0][0]
        out.append(("first load of /ui/: bytes transferred (HTML, JS, CSS, icon; compressed, with headers)", f"{first:,} B ({first / 1024:.1f} KiB)", "≤ 80 KiB", first <= 80 * 1024))
        med = lambda i: statistics.median(x[i] for x in loads)
        out.append(("first load of /ui/: time to interactive (sign-in form usable), median of 7", f"{med(1):.0f} ms (DOM interactive {med(2):.0f} ms)", "–", None))
        out.append(("sign-in to overview rendered (totals and charts, 24 h summary), median of 7", f"{med(3):.0f} ms", "–", None))
        out.append((f"seeding {RECORDS:,} records / server start (fills hourly counters once)", f"{seeded:.1f} s / {started * 1000:.0f} ms", "–", None))
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(tmp, ignore_errors=True)
    print("| metric | value | target | ok? |\n|---|---:|---|---|")
    for name, value, target, ok in out:
        print(f"| {name} | {value} | {target} | {'–' if ok is None else ('yes' if ok else '**NO**')} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
