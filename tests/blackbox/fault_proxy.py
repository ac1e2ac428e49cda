"""A fault-injecting HTTP proxy for the DynamoDB API, bound to 127.0.0.1, in front of dynalite.

Every request is forwarded to the upstream (dynalite) unless a fault is programmed; the next ``n``
requests (optionally only those of one operation, read from ``X-Amz-Target``) get the fault
instead, as DynamoDB itself answers it:

* ``throttle``: 400 ``ThrottlingException`` (what DynamoDB answers a table or account over its rate);
* ``500``: 500 ``InternalServerError``;
* ``lost``: the request is forwarded and done upstream, but its answer is lost: 500
  ``InternalServerError`` as if the connection failed after the write (the SDK retries it).

    proxy = FaultProxy("http://127.0.0.1:8000").start()
    proxy.url                      # AWS_ENDPOINT_URL_DYNAMODB for the code under test
    proxy.fail_next(3, "throttle", operation="GetItem")
    proxy.faulted, proxy.seen      # counters by operation
    proxy.stop()
"""
from __future__ import annotations

import http.client
import json
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Optional
from urllib.parse import urlsplit

FAULT_BODIES = {
    "throttle": (400, {"__type": "com.amazonaws.dynamodb.v20120810#ThrottlingException",
                       "message": "Rate of requests exceeds the allowed throughput."}),
    "500": (500, {"__type": "com.amazonaws.dynamodb.v20120810#InternalServerError",
                  "message": "Internal server error"}),
}
FAULT_BODIES["lost"] = FAULT_BODIES["500"]  # answered after forwarding (see the module doc)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    proxy: "FaultProxy"

    def log_message(self, format, *args) -> None:  # silence
        pass

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        target = self.headers.get("X-Amz-Target", "")
        operation = target.rpartition(".")[2]
        fault = self.proxy._take(operation)
        if fault is not None and fault != "lost":
            return self._fault(fault)
        up = urlsplit(self.proxy.upstream)
        conn = http.client.HTTPConnection(up.hostname, up.port, timeout=30)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection", "keep-alive")}
            conn.request("POST", self.path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
        except OSError:
            self.send_response(502)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        finally:
            conn.close()
        if fault == "lost":
            return self._fault(fault)
        self.send_response(resp.status)
        for k, v in resp.getheaders():
            if k.lower() not in ("connection", "keep-alive", "transfer-encoding", "content-length", "date", "server"):
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _fault(self, fault: str) -> None:
        status, obj = FAULT_BODIES[fault]
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/x-amz-json-1.0")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("x-amzn-RequestId", "fault-proxy")
        self.end_headers()
        self.wfile.write(data)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request, client_address) -> None:
        pass  # peers closing keep-alive connections


class FaultProxy:
    def __init__(self, upstream: str):
        self.upstream = upstream
        self.seen: Counter = Counter()
        self.faulted: Counter = Counter()
        self._lock = threading.Lock()
        self._left = 0
        self._kind: Optional[str] = None
        self._operation: Optional[str] = None
        self._server: Optional[_Server] = None

    def start(self) -> "FaultProxy":
        handler = type("BoundHandler", (_Handler,), {"proxy": self})
        self._server = _Server(("127.0.0.1", 0), handler)
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
        return self

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def fail_next(self, n: int, kind: str, operation: Optional[str] = None) -> None:
        """The next ``n`` requests (of ``operation`` only, when given) get fault ``kind``."""
        if kind not in FAULT_BODIES:
            raise ValueError(f"unknown fault {kind!r}")
        with self._lock:
            self._left, self._kind, self._operation = n, kind, operation

    def clear(self) -> None:
        self.fail_next(0, "500")

    def reset_counts(self) -> None:
        with self._lock:
            self.seen.clear()
            self.faulted.clear()

    def _take(self, operation: str) -> Optional[str]:
        with self._lock:
            self.seen[operation] += 1
            if self._left > 0 and self._operation in (None, operation):
                self._left -= 1
                self.faulted[operation] += 1
                return self._kind
            return None

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
