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

An answer lost after moto has done the write is `fault_proxy.FaultProxy`'s `lost` fault."""
from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

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
