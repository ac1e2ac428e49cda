"""Native-server-only checks (skipped unless CONDUIT_TARGET=server): the `conduit keys` CLI,
CONDUIT_CONFIG, stdout discipline, missing master key, graceful SIGTERM with an in-flight stream."""
from __future__ import annotations

import json
import signal
import subprocess
import threading
from pathlib import Path

import httpx
import pytest

from conftest import MASTER_KEY, build_config
from helpers import assert_error_response, auth, chat_body, parse_sse
from mock_upstream import AZURE_KEY, OPENAI_KEY
from targets import ServerTarget, conduit_binary, target_name

pytestmark = pytest.mark.skipif(target_name() != "server", reason="native server target only")

ENV = {"CONDUIT_MASTER_KEY": MASTER_KEY, "BB_OPENAI_API_KEY": OPENAI_KEY, "BB_AZURE_OPENAI_API_KEY": AZURE_KEY}


def _cli(*args: str, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    binary = conduit_binary()
    if not binary.exists():
        pytest.fail(f"conduit binary not found at {binary} (set CONDUIT_BIN)")
    return subprocess.run([str(binary), *args], capture_output=True, text=True, timeout=30,
                          env={**ENV, **(env or {}), "PATH": "/usr/bin:/bin"}, cwd=cwd)


@pytest.fixture
def server(mock):
    started: list[ServerTarget] = []

    def _start(**kw) -> tuple[ServerTarget, str]:
        t = ServerTarget(**{k: v for k, v in kw.items() if k in ("database", "use_config_file")})
        env = kw.get("env", ENV)
        base = t.start(kw.get("config") or build_config(mock.url), env)
        started.append(t)
        return t, base

    yield _start
    for t in started:
        t.stop()


def test_keys_cli_create_list_revoke(tmp_path, server):
    db = tmp_path / "cli.db"
    r1 = _cli("keys", "create", "--name", "cli-one", "--allowed-model", "chat", "--allowed-model", "fam-*",
              "--database", str(db))
    assert r1.returncode == 0, r1.stderr
    rec1 = json.loads(r1.stdout)
    assert rec1["key"].startswith("condt_") and rec1["id"].startswith("key_")
    assert rec1["name"] == "cli-one" and rec1["allowed_models"] == ["chat", "fam-*"]
    r2 = _cli("keys", "create", "--name", "cli-two", "--database", str(db))
    assert r2.returncode == 0, r2.stderr
    rec2 = json.loads(r2.stdout)

    lst = _cli("keys", "list", "--database", str(db))
    assert lst.returncode == 0, lst.stderr
    data = json.loads(lst.stdout)["data"]
    assert {d["id"] for d in data} >= {rec1["id"], rec2["id"]}
    assert rec1["key"] not in lst.stdout and all("key" not in d for d in data)

    rv = _cli("keys", "revoke", rec2["id"], "--database", str(db))
    assert rv.returncode == 0, rv.stderr
    after = {d["id"]: d for d in json.loads(_cli("keys", "list", "--database", str(db)).stdout)["data"]}
    assert rec2["id"] not in after or after[rec2["id"]]["enabled"] is False

    _, base = server(database=db)
    with httpx.Client(base_url=base, timeout=10) as h:
        assert h.post("/v1/chat/completions", json=chat_body("chat"), headers=auth(rec1["key"])).status_code == 200
        assert h.post("/v1/chat/completions", json=chat_body("fam-beta"), headers=auth(rec1["key"])).status_code == 200
        assert_error_response(h.post("/v1/chat/completions", json=chat_body("embed"), headers=auth(rec1["key"])),
                              403, code="model_not_allowed")
        assert_error_response(h.post("/v1/chat/completions", json=chat_body("chat"), headers=auth(rec2["key"])),
                              401, code="invalid_api_key")
        # the admin API sees the CLI-made key
        got = h.get(f"/admin/keys/{rec1['id']}", headers=auth(MASTER_KEY))
        assert got.status_code == 200 and got.json()["name"] == "cli-one"


def test_keys_cli_with_config_file(tmp_path, mock):
    db = tmp_path / "from-config.db"
    cfg = tmp_path / "conduit.toml"
    cfg.write_text(build_config(mock.url).replace('listen = "127.0.0.1:0"',
                                                  f'listen = "127.0.0.1:0"\ndatabase = "{db}"'))
    r = _cli("keys", "create", "--name", "cfg-key", "--config", str(cfg))
    assert r.returncode == 0, r.stderr
    key_id = json.loads(r.stdout)["id"]
    assert key_id in _cli("keys", "list", "--database", str(db)).stdout


def test_conduit_config_env(server):
    t, base = server(use_config_file=False)
    r = httpx.get(base + "/health", timeout=5)
    assert r.status_code == 200 and r.json() == {"status": "ok"}
    with httpx.Client(base_url=base, headers=auth(MASTER_KEY), timeout=10) as h:
        assert h.get("/admin/keys").status_code == 200


def test_stdout_is_only_the_listening_line(server):
    t, base = server()
    with httpx.Client(base_url=base, timeout=10) as h:
        key = h.post("/admin/keys", json={"name": "x"}, headers=auth(MASTER_KEY)).json()["key"]
        assert h.post("/v1/chat/completions", json=chat_body("chat"), headers=auth(key)).status_code == 200
        h.get("/v1/nope")
    t.stop()
    assert t.stdout_lines == [f"conduit listening on {base}"], t.stdout_lines


def test_admin_401_without_master_key_env(server):
    env = {k: v for k, v in ENV.items() if k != "CONDUIT_MASTER_KEY"}
    t, base = server(env=env)
    for bearer in (MASTER_KEY, "anything"):
        r = httpx.get(base + "/admin/keys", headers={"Authorization": f"Bearer {bearer}"}, timeout=5)
        assert_error_response(r, 401)


def test_sigterm_lets_inflight_stream_finish(server):
    t, base = server()
    key = httpx.post(base + "/admin/keys", json={"name": "term"}, headers=auth(MASTER_KEY), timeout=5).json()["key"]
    got: dict = {}
    first_chunk = threading.Event()

    def consume():
        try:
            with httpx.stream("POST", base + "/v1/chat/completions", json=chat_body("slow", stream=True),
                              headers=auth(key), timeout=15) as r:
                buf = b""
                for b in r.iter_bytes():
                    buf += b
                    if b"data:" in buf:
                        first_chunk.set()
                got["status"] = r.status_code
                got["text"] = buf.decode()
        except Exception as e:  # noqa: BLE001
            got["error"] = repr(e)
        finally:
            first_chunk.set()

    th = threading.Thread(target=consume, daemon=True)
    th.start()
    assert first_chunk.wait(10)
    t.proc.send_signal(signal.SIGTERM)
    th.join(15)
    assert "error" not in got, got.get("error")
    events = parse_sse(got["text"])
    assert events and events[-1].is_done, f"in-flight stream cut by SIGTERM: {got['text'][-300:]!r}"
    rc = t.proc.wait(timeout=10)
    assert rc == 0, f"exit code after SIGTERM: {rc}"


# ---- the CLI an operator expects (clap) ----------------------------------------------------------
SUBCOMMANDS = [["serve"], ["check"], ["keys"], ["keys", "create"], ["keys", "list"], ["keys", "show"],
               ["keys", "update"], ["keys", "rotate"], ["keys", "revoke"], ["usage"]]


@pytest.mark.parametrize("sub", SUBCOMMANDS, ids=lambda s: " ".join(s))
def test_help_and_version_on_every_subcommand(sub):
    h = _cli(*sub, "--help")
    assert h.returncode == 0, h.stderr
    assert "Usage: conduit " + " ".join(sub) in h.stdout, h.stdout
    v = _cli(*sub, "--version")
    assert v.returncode == 0 and v.stdout.startswith("conduit") and "0.1.0" in v.stdout, (v.stdout, v.stderr)


def test_unknown_option_is_a_usage_error():
    r = _cli("serve", "--no-such-flag")
    assert r.returncode == 2 and "--no-such-flag" in r.stderr


def test_check_good_and_broken_configs(tmp_path, mock):
    good = tmp_path / "good.toml"
    good.write_text(build_config(mock.url))
    r = _cli("check", "--config", str(good))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "config " in r.stdout and ": ok" in r.stdout and "chat" in r.stdout and "gpt-4o-mini" in r.stdout
    assert OPENAI_KEY not in r.stdout + r.stderr, "a secret's value must never be printed"
    j = _cli("check", "--config", str(good), "--json")
    report = json.loads(j.stdout)
    assert report["ok"] is True and any(a["alias"] == "chat" for a in report["aliases"])
    chat = next(a for a in report["aliases"] if a["alias"] == "chat")
    assert chat["deployments"][0]["kind"] == "openai"
    assert chat["deployments"][0]["price_per_million"]["input"] > 0
    # A secret missing from the environment: reported by name, exit 1.
    r = subprocess.run([str(conduit_binary()), "check", "--config", str(good)], capture_output=True, text=True,
                       timeout=30, env={"PATH": "/usr/bin:/bin"})
    assert r.returncode == 1 and "BB_OPENAI_API_KEY" in r.stdout, r.stdout
    # A broken config: the error names the key, exit 1.
    bad = tmp_path / "bad.toml"
    bad.write_text(build_config(mock.url).replace('provider = "openai", model = "gpt-4o-mini"',
                                                  'provider = "opena", model = "gpt-4o-mini"', 1))
    r = _cli("check", "--config", str(bad))
    assert r.returncode == 1 and "opena" in r.stderr, r.stderr
    r = _cli("check", "--config", str(tmp_path / "missing.toml"))
    assert r.returncode == 1 and "cannot read" in r.stderr


def test_keys_show_update_rotate_and_usage(tmp_path, server):
    db = tmp_path / "ops.db"
    created = json.loads(_cli("keys", "create", "--name", "ops", "--rpm", "7", "--budget-usd", "2",
                              "--budget-period", "daily", "--metadata", "team=search",
                              "--database", str(db)).stdout)
    kid = created["id"]
    shown = json.loads(_cli("keys", "show", kid, "--database", str(db)).stdout)
    assert shown["limits"]["rpm"] == 7 and shown["budget"]["max_usd"] == 2 and shown["metadata"] == {"team": "search"}
    assert "key" not in shown
    upd = _cli("keys", "update", kid, "--rpm", "9", "--disable", "--database", str(db))
    assert upd.returncode == 0, upd.stderr
    assert json.loads(upd.stdout)["limits"]["rpm"] == 9 and json.loads(upd.stdout)["enabled"] is False
    assert _cli("keys", "update", kid, "--enable", "--database", str(db)).returncode == 0
    rot = json.loads(_cli("keys", "rotate", kid, "--database", str(db)).stdout)
    assert rot["key"].startswith("condt_") and rot["key"] != created["key"]
    missing = _cli("keys", "show", "key_nope", "--database", str(db))
    assert missing.returncode == 1 and "key_nope" in missing.stderr

    _, base = server(database=db)
    with httpx.Client(base_url=base, timeout=10) as h:
        assert h.post("/v1/chat/completions", json=chat_body("chat"), headers=auth(created["key"])).status_code == 401
        for _ in range(3):
            assert h.post("/v1/chat/completions", json=chat_body("chat"), headers=auth(rot["key"])).status_code == 200
    # Usage written by the server (its writes are batched: give it a moment).
    import time
    deadline = time.monotonic() + 5
    while True:
        j = _cli("usage", "--key", kid, "--json", "--database", str(db))
        body = json.loads(j.stdout)
        if body["totals"]["requests"] >= 3 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert body["totals"]["requests"] == 3
    table = _cli("usage", "--key", kid, "--database", str(db))
    assert table.returncode == 0 and "REQUESTS" in table.stdout and kid in table.stdout
    assert "total" in table.stdout


# ---- `[server] runtime`: one single-threaded runtime per worker, or one shared runtime -----------
@pytest.mark.parametrize("runtime", ["per-core", "shared"])
def test_both_runtimes_serve_limit_exactly_and_drain_on_sigterm(server, mock, runtime):
    """Connections spread over two workers: every answer right, `rpm = 5` admits exactly 5 of 40
    concurrent requests, and SIGTERM lets streams open on several connections finish."""
    config = build_config(mock.url).replace("[server]\n", f'[server]\nruntime = "{runtime}"\nworkers = 2\n', 1)
    t, base = server(config=config)
    admin = httpx.Client(base_url=base, headers=auth(MASTER_KEY), timeout=10)
    plain = admin.post("/admin/keys", json={"name": f"rt-{runtime}"}).json()["key"]
    limited = admin.post("/admin/keys", json={"name": f"rt5-{runtime}", "limits": {"rpm": 5}}).json()["key"]

    # Eight clients, each its own kept-alive connection, ten requests each.
    def client_run(i: int) -> list[int]:
        with httpx.Client(base_url=base, headers=auth(plain), timeout=10) as c:
            return [c.post("/v1/chat/completions", json=chat_body("chat")).status_code for _ in range(10)]

    def shard_cpu_ns() -> int:
        """CPU time of the second worker's thread (per-core: `conduit-shard-1`)."""
        for task in Path(f"/proc/{t.proc.pid}/task").iterdir():
            if (task / "comm").read_text().strip() == "conduit-shard-1":
                return int((task / "schedstat").read_text().split()[0])
        return -1

    before = shard_cpu_ns()
    import concurrent.futures as cf
    with cf.ThreadPoolExecutor(max_workers=8) as ex:
        statuses = [s for run in ex.map(client_run, range(8)) for s in run]
    assert statuses == [200] * 80, statuses
    if runtime == "per-core":
        # Half the connections were handed to the second worker, which served them.
        assert before >= 0 and shard_cpu_ns() > before, "the second worker served nothing"
    else:
        assert before == -1

    def one_limited(_: int) -> int:
        with httpx.Client(base_url=base, headers=auth(limited), timeout=10) as c:
            return c.post("/v1/chat/completions", json=chat_body("chat")).status_code

    with cf.ThreadPoolExecutor(max_workers=40) as ex:
        limited_statuses = list(ex.map(one_limited, range(40)))
    assert limited_statuses.count(200) == 5 and limited_statuses.count(429) == 35, limited_statuses

    # Streams on four connections (handed to both workers), then SIGTERM.
    results: dict[int, str] = {}
    started = threading.Barrier(5, timeout=10)

    def stream(i: int) -> None:
        try:
            with httpx.stream("POST", base + "/v1/chat/completions", json=chat_body("slow", stream=True),
                              headers=auth(plain), timeout=15) as r:
                buf = b""
                waited = False
                for b in r.iter_bytes():
                    buf += b
                    if not waited and b"data:" in buf:
                        waited = True
                        started.wait()
                results[i] = buf.decode()
        except Exception as e:  # noqa: BLE001
            results[i] = f"error: {e!r}"

    threads = [threading.Thread(target=stream, args=(i,), daemon=True) for i in range(4)]
    for th in threads:
        th.start()
    started.wait()
    t.proc.send_signal(signal.SIGTERM)
    for th in threads:
        th.join(15)
    for i in range(4):
        events = parse_sse(results.get(i, ""))
        assert events and events[-1].is_done, f"stream {i} cut by SIGTERM: {results.get(i, '')[-300:]!r}"
    assert t.proc.wait(timeout=10) == 0
    admin.close()


def test_an_unknown_runtime_is_a_config_error(tmp_path, mock):
    config = tmp_path / "rt.toml"
    config.write_text(build_config(mock.url).replace("[server]\n", '[server]\nruntime = "threads"\n', 1))
    r = _cli("check", "--config", str(config))
    assert r.returncode == 1 and "server.runtime" in r.stderr and "per-core or shared" in r.stderr, r.stderr
    r = _cli("serve", "--runtime", "threads", "--config", str(tmp_path / "rt.toml"))
    assert r.returncode == 2 and "--runtime" in r.stderr, r.stderr
