"""Native server: clients that send too much or too slowly cannot hold a connection or a task.
A head over max_header_bytes is a 431; a head that does not arrive within header_read_timeout_ms
closes the connection; a body that does not arrive within body_read_timeout_ms (a Content-Length
that lies) is a 408; a chunked body over max_body_bytes is a 413."""
from __future__ import annotations

import json
import socket
import time

import pytest

from conftest import MASTER_KEY, MAX_BODY_BYTES, build_config
from mock_upstream import AZURE_KEY, OPENAI_KEY
from targets import ServerTarget, target_name

pytestmark = pytest.mark.skipif(target_name() != "server", reason="the native server's own HTTP front")

ENV = {"CONDUIT_MASTER_KEY": MASTER_KEY, "BB_OPENAI_API_KEY": OPENAI_KEY, "BB_AZURE_OPENAI_API_KEY": AZURE_KEY}


@pytest.fixture(scope="module")
def strict_server(mock):
    config = build_config(mock.url).replace(
        "[server]\n", "[server]\nheader_read_timeout_ms = 1000\nbody_read_timeout_ms = 1000\n", 1)
    t = ServerTarget()
    base = t.start(config, ENV)
    host, port = base.removeprefix("http://").split(":")
    yield host, int(port)
    t.stop()


def _connect(addr) -> socket.socket:
    s = socket.create_connection(addr, timeout=10)
    s.settimeout(10)
    return s


def _read_all(s: socket.socket) -> bytes:
    out = b""
    while True:
        try:
            b = s.recv(65536)
        except (ConnectionResetError, socket.timeout):
            break
        if not b:
            break
        out += b
    return out


def test_header_over_64k_is_431(strict_server):
    s = _connect(strict_server)
    s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (70 * 1024) + b"\r\n\r\n")
    answer = _read_all(s)
    s.close()
    assert answer.startswith(b"HTTP/1.1 431"), answer[:200]


def test_slow_header_is_dropped_after_the_header_read_timeout(strict_server):
    s = _connect(strict_server)
    started = time.monotonic()
    s.sendall(b"GET /health HTTP/1.1\r\n")
    closed = False
    for ch in b"Host: slow\r\nX-A: bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb\r\n":
        try:
            s.sendall(bytes([ch]))
        except OSError:
            closed = True
            break
        time.sleep(0.1)
        s.settimeout(0.01)
        try:
            if s.recv(1024) == b"":
                closed = True
                break
        except socket.timeout:
            pass
        except OSError:
            closed = True
            break
    elapsed = time.monotonic() - started
    s.close()
    assert closed, "the server kept a connection whose head never finished"
    assert elapsed < 3.5, elapsed


def test_content_length_that_lies_is_408(strict_server):
    s = _connect(strict_server)
    body = json.dumps({"model": "chat", "messages": []}).encode()
    started = time.monotonic()
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Authorization: Bearer condt_whatever\r\nContent-Length: %d\r\n\r\n" % (len(body) + 100) + body)
    answer = _read_all(s)
    s.close()
    assert answer.startswith(b"HTTP/1.1 408"), answer[:300]
    assert b'"request_timeout"' in answer
    assert time.monotonic() - started < 5


def test_chunked_body_over_max_body_bytes_is_413(strict_server):
    s = _connect(strict_server)
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Authorization: Bearer condt_whatever\r\nTransfer-Encoding: chunked\r\n\r\n")
    piece = b"a" * 65536
    sent = 0
    try:
        while sent <= MAX_BODY_BYTES + len(piece):
            s.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
            sent += len(piece)
    except OSError:
        pass  # the server answered and closed before taking it all
    answer = _read_all(s)
    s.close()
    assert answer.startswith(b"HTTP/1.1 413"), answer[:300]
