"""A local DynamoDB that has what dynalite lacks: moto's server mode (`moto[server]`, PyPI) on
127.0.0.1 on a free port, in its own process group, with `TransactWriteItems` (cancellation
reasons included) and `ReturnValuesOnConditionCheckFailure`. The tables are created as
`template.yaml` declares them (keys: `pk`; usage: `pk`, `sk`, TTL on `expires_at`), so the servers
under test run without `dynamodb_create_tables`. moto's request recorder is on: `operations()`
lists the DynamoDB calls the gateway made (operation, request body), in arrival order.

    ddb = MotoDynamo().start()
    ddb.env            # AWS_ENDPOINT_URL_DYNAMODB, region and dummy credentials for the SDK
    ddb.reset_log(); ...; ddb.operations()
    ddb.close()

`LostAnswerProxy` stands between the code under test and moto: it forwards every request, and for
the next n requests of one operation answers 500 `InternalServerError` after moto has done them
(an answer lost on the way back, which the SDK retries)."""
from __future__ import annotations

import base64
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Optional
from urllib.parse import urlsplit

import httpx


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MotoDynamo:
    def __init__(self, keys_table: str = "conduit-keys", usage_table: str = "conduit-usage") -> None:
        self.keys_table, self.usage_table = keys_table, usage_table
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.dir = Path(tempfile.mkdtemp(prefix="conduit-moto-"))
        self.recording = self.dir / "requests.jsonl"
        self.proc: Optional[subprocess.Popen] = None
        self.env = {
            "AWS_ENDPOINT_URL_DYNAMODB": self.url,
            "AWS_REGION": "us-east-1",
            "AWS_ACCESS_KEY_ID": "local",
            "AWS_SECRET_ACCESS_KEY": "local",
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def start(self) -> "MotoDynamo":
        # moto_server is `python -m moto.server` of the interpreter running the tests (the venv's).
        env = {**os.environ, **self.env, "MOTO_ENABLE_RECORDING": "true",
               "MOTO_RECORDER_FILEPATH": str(self.recording)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "--host", "127.0.0.1", "--port", str(self.port)],
            env=env, cwd=self.dir, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{self.url}/moto-api/", timeout=1).status_code < 500:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.close()
                raise RuntimeError("moto_server did not start")
            time.sleep(0.1)
        self._create_tables()
        self.reset_log()
        return self

    def _create_tables(self) -> None:
        import boto3  # a dependency of moto

        ddb = boto3.client("dynamodb", endpoint_url=self.url, region_name="us-east-1",
                           aws_access_key_id="local", aws_secret_access_key="local")
        ddb.create_table(TableName=self.keys_table, BillingMode="PAY_PER_REQUEST",
                         AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
                         KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}])
        ddb.create_table(TableName=self.usage_table, BillingMode="PAY_PER_REQUEST",
                         AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"},
                                               {"AttributeName": "sk", "AttributeType": "S"}],
                         KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"},
                                    {"AttributeName": "sk", "KeyType": "RANGE"}])
        ddb.update_time_to_live(TableName=self.usage_table, TimeToLiveSpecification={
            "AttributeName": "expires_at", "Enabled": True})

    def reset_log(self) -> None:
        httpx.post(f"{self.url}/moto-api/recorder/reset-recording", timeout=5).raise_for_status()

    def operations(self) -> list[tuple[str, dict]]:
        """The DynamoDB calls recorded since the last `reset_log`: (operation, request body)."""
        out = []
        if not self.recording.exists():
            return out
        for line in self.recording.read_text().splitlines():
            if not line.strip():
                continue
            entry = json.loads(line)
            headers = {k.lower(): v for k, v in entry.get("headers", {}).items()}
            target = headers.get("x-amz-target", "")
            if not target.startswith("DynamoDB_"):
                continue
            body = entry.get("body") or ""
            if entry.get("body_encoded"):
                body = base64.b64decode(body).decode("utf-8", "replace")
            out.append((target.split(".", 1)[1], json.loads(body) if body else {}))
        return out

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
        self.proc = None
        shutil.rmtree(self.dir, ignore_errors=True)


class _LosingHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    proxy: "LostAnswerProxy"

    def log_message(self, format, *args) -> None:
        pass

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        operation = self.headers.get("X-Amz-Target", "").rpartition(".")[2]
        up = urlsplit(self.proxy.upstream)
        conn = http.client.HTTPConnection(up.hostname, up.port, timeout=30)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection", "keep-alive")}
            conn.request("POST", self.path, body=body, headers=headers)
            resp = conn.getresponse()
            status, data = resp.status, resp.read()
            content_type = resp.getheader("Content-Type", "application/x-amz-json-1.0")
        finally:
            conn.close()
        if self.proxy._take(operation):
            status, content_type = 500, "application/x-amz-json-1.0"
            data = json.dumps({"__type": "com.amazonaws.dynamodb.v20120810#InternalServerError",
                               "message": "Internal server error"}).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        pass  # peers closing keep-alive connections


class LostAnswerProxy:
    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.lost = 0
        self._left, self._operation = 0, ""
        self._lock = threading.Lock()
        self._server: Optional[_Server] = None

    def start(self) -> "LostAnswerProxy":
        self._server = _Server(("127.0.0.1", 0), type("Bound", (_LosingHandler,), {"proxy": self}))
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
        return self

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def lose_next(self, operation: str, n: int = 1) -> None:
        with self._lock:
            self._left, self._operation = n, operation

    def _take(self, operation: str) -> bool:
        with self._lock:
            if self._left > 0 and operation == self._operation:
                self._left -= 1
                self.lost += 1
                return True
            return False

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
