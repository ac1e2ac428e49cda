"""Native server: the connection-level settings of `[server]`.

- `max_connections`: one connection over the cap gets 503 `server_overloaded` and is closed;
  once a connection closes, a new one is served.
- `keep_alive_timeout_ms`: an idle kept-alive connection is closed after it, and only after it
  (an idle spell longer than `header_read_timeout_ms` is not a slow head).
- `http2`: h2c with prior knowledge, through the openai SDK over an HTTP/2 httpx client; off, only
  HTTP/1.1 is spoken.
- `reuse_address`: a server killed (SIGKILL) or stopped (SIGTERM) while its port has connections in
  TIME_WAIT binds the same port again at once.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import httpx2
import openai
import pytest

from conftest import MASTER_KEY, build_config
from mock_upstream import AZURE_KEY, OPENAI_KEY
from targets import LISTEN_RE, ServerTarget, conduit_binary, target_name

pytestmark = pytest.mark.skipif(target_name() != "server", reason="the native server's own HTTP front")

ENV = {"CONDUIT_MASTER_KEY": MASTER_KEY, "BB_OPENAI_API_KEY": OPENAI_KEY, "BB_AZURE_OPENAI_API_KEY": AZURE_KEY}


def _server_config(mock_url: str, settings: str) -> str:
    return build_config(mock_url).replace("[server]\n", "[server]\n" + settings, 1)


@pytest.fixture
def start_server(mock):
    started: list[ServerTarget] = []

    def _start(settings: str) -> tuple[str, int]:
        t = ServerTarget()
        base = t.start(_server_config(mock.url, settings), ENV)
        started.append(t)
        host, port = base.removeprefix("http://").split(":")
        return host, int(port)

    yield _start
    for t in started:
        t.stop()


def _connect(addr) -> socket.socket:
    s = socket.create_connection(addr, timeout=10)
    s.settimeout(10)
    return s


def _read_response(s: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response with a Content-Length body."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before a response head: {data!r}")
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = s.recv(65536)
        if not chunk:
            break
        body += chunk
    return status, headers, body


def _get_health(s: socket.socket) -> int:
    s.sendall(b"GET /health HTTP/1.1\r\nHost: bb\r\n\r\n")
    return _read_response(s)[0]


def _closed(s: socket.socket, within: float) -> bool:
    """Whether the peer closes the connection within `within` seconds."""
    s.settimeout(within)
    try:
        return s.recv(1) == b""
    except socket.timeout:
        return False
    except OSError:
        return True


def test_connection_over_the_cap_gets_503_then_a_freed_slot_is_served(start_server):
    addr = start_server("max_connections = 3\nheader_read_timeout_ms = 30000\nkeep_alive_timeout_ms = 30000\n")
    held = [_connect(addr) for _ in range(3)]
    # The three count once the server accepted them: one request on each proves it.
    for s in held:
        assert _get_health(s) == 200
    extra = _connect(addr)
    extra.sendall(b"GET /health HTTP/1.1\r\nHost: bb\r\n\r\n")
    status, headers, body = _read_response(extra)
    assert status == 503, body
    err = json.loads(body)["error"]
    assert err["code"] == "server_overloaded" and err["type"] == "api_error", err
    assert headers.get("connection") == "close" and headers.get("retry-after") == "1", headers
    assert _closed(extra, 5), "the refused connection is closed"
    extra.close()
    # The held connections still work; closing one frees its slot.
    assert _get_health(held[0]) == 200
    held.pop().close()
    deadline = time.monotonic() + 5
    while True:
        s = _connect(addr)
        try:
            if _get_health(s) == 200:
                break
        except ConnectionError:
            pass
        finally:
            s.close()
        assert time.monotonic() < deadline, "no connection was served after one closed"
        time.sleep(0.05)
    for s in held:
        s.close()


def test_idle_connection_is_closed_after_the_keep_alive_timeout_and_not_before(start_server):
    addr = start_server("header_read_timeout_ms = 600\nkeep_alive_timeout_ms = 2000\n")
    s = _connect(addr)
    assert _get_health(s) == 200
    # Idle longer than the header-read timeout: still open, still served.
    assert not _closed(s, 1.0)
    assert _get_health(s) == 200
    started = time.monotonic()
    assert _closed(s, 6), "an idle connection is closed after keep_alive_timeout_ms"
    waited = time.monotonic() - started
    assert 1.5 < waited < 4, waited
    s.close()
    # A head that stalls is still dropped after the header-read timeout.
    s = _connect(addr)
    s.sendall(b"GET /health HTTP/1.1\r\nHost: bb\r\n")
    started = time.monotonic()
    assert _closed(s, 5)
    assert time.monotonic() - started < 1.5
    s.close()


def test_h2c_with_the_openai_sdk(start_server):
    host, port = start_server("http2 = true\n")
    admin = httpx2.Client(base_url=f"http://{host}:{port}", headers={"Authorization": f"Bearer {MASTER_KEY}"})
    key = admin.post("/admin/keys", json={"name": "bb-h2c"}).json()["key"]
    h2 = httpx2.Client(http1=False, http2=True, timeout=15)
    r = h2.get(f"http://{host}:{port}/health")
    assert r.status_code == 200 and r.http_version == "HTTP/2", r.http_version
    client = openai.OpenAI(base_url=f"http://{host}:{port}/v1", api_key=key, http_client=h2, max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model="chat", messages=[{"role": "user", "content": "hello over h2c"}])
    assert raw.http_response.http_version == "HTTP/2"
    assert raw.parse().choices[0].message.content
    chunks = list(client.chat.completions.create(
        model="chat", messages=[{"role": "user", "content": "stream over h2c"}], stream=True))
    assert any(c.choices and c.choices[0].delta.content for c in chunks)
    # Several streams at once on the one connection.
    with httpx2.Client(http1=False, http2=True, timeout=15) as c:
        for _ in range(3):
            assert c.get(f"http://{host}:{port}/health").status_code == 200
    h2.close()
    admin.close()


def test_http2_off_speaks_only_http1(start_server):
    host, port = start_server("http2 = false\n")
    with httpx2.Client(timeout=5) as h1:
        r = h1.get(f"http://{host}:{port}/health")
        assert r.status_code == 200 and r.http_version == "HTTP/1.1"
    with httpx2.Client(http1=False, http2=True, timeout=5) as h2:
        with pytest.raises(httpx2.HTTPError):
            h2.get(f"http://{host}:{port}/health")


# ------------------------------------------------------------------------------------------
# restart on the same port
# ------------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_on(port: int, config: Path, db: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONDUIT_")}
    env.update(ENV)
    return subprocess.Popen([str(conduit_binary()), "serve", "--config", str(config), "--listen",
                             f"127.0.0.1:{port}", "--database", str(db)], env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)


def _wait_listening(proc: subprocess.Popen) -> bool:
    """True once it prints its listening line; False when it exits first."""
    while True:
        line = proc.stdout.readline()
        if not line:
            proc.wait(timeout=10)
            return False
        if LISTEN_RE.match(line.decode().strip()):
            return True


def _time_wait_on(port: int) -> int:
    """Sockets in TIME_WAIT whose local port is `port` (from /proc/net/tcp)."""
    n = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[3] == "06" and int(fields[1].split(":")[1], 16) == port:
            n += 1
    return n


def _close_from_the_server(port: int, n: int) -> None:
    """Requests with `Connection: close`: the server closes first, so its side enters TIME_WAIT."""
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(b"GET /health HTTP/1.1\r\nHost: bb\r\nConnection: close\r\n\r\n")
        while s.recv(65536):
            pass
        s.close()


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM], ids=["sigkill", "sigterm"])
def test_restart_on_the_same_port_while_connections_are_in_time_wait(mock, how):
    with tempfile.TemporaryDirectory(prefix="conduit-bb-") as d:
        config = Path(d) / "conduit.toml"
        config.write_text(_server_config(mock.url, "reuse_address = true\n"))
        db = Path(d) / "conduit.db"
        port = _free_port()
        first = _start_on(port, config, db)
        second = None
        try:
            assert _wait_listening(first), first.stderr.read().decode()
            _close_from_the_server(port, 5)
            assert _time_wait_on(port) > 0, "the server closed first: its side is in TIME_WAIT"
            # A client connection left open while the server goes.
            held = socket.create_connection(("127.0.0.1", port), timeout=5)
            os.killpg(first.pid, how)
            first.wait(timeout=10)
            second = _start_on(port, config, db)
            assert _wait_listening(second), second.stderr.read().decode()
            with httpx2.Client(timeout=5) as c:
                assert c.get(f"http://127.0.0.1:{port}/health").status_code == 200
            held.close()
        finally:
            for p in (first, second):
                if p is not None and p.poll() is None:
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait(timeout=10)


def test_without_reuse_address_the_port_stays_taken_while_time_wait_lasts(mock):
    """What `reuse_address` buys: with it off, the same restart fails with EADDRINUSE."""
    with tempfile.TemporaryDirectory(prefix="conduit-bb-") as d:
        config = Path(d) / "conduit.toml"
        config.write_text(_server_config(mock.url, "reuse_address = false\n"))
        db = Path(d) / "conduit.db"
        port = _free_port()
        first = _start_on(port, config, db)
        second = None
        try:
            assert _wait_listening(first), first.stderr.read().decode()
            _close_from_the_server(port, 3)
            assert _time_wait_on(port) > 0
            os.killpg(first.pid, signal.SIGKILL)
            first.wait(timeout=10)
            second = _start_on(port, config, db)
            assert not _wait_listening(second)
            assert "Address already in use" in second.stderr.read().decode()
        finally:
            for p in (first, second):
                if p is not None and p.poll() is None:
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait(timeout=10)


def test_kill_9_under_load_loses_no_answered_change_and_no_billed_spend():
    """A short bench/crash.py: two SIGKILLs under mixed load (see bench/README.md)."""
    import sys
    script = Path(__file__).resolve().parents[2] / "bench" / "crash.py"
    run = subprocess.run([sys.executable, str(script), "--bin", str(conduit_binary()), "--iterations", "2",
                          "--clients", "4", "--min-s", "1", "--max-s", "2.5"],
                         capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "crash: OK" in run.stdout, run.stdout
