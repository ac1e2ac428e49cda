"""A local DynamoDB for the tests: dynalite (npm, `npm ci`) on 127.0.0.1 on a free port, its tables
kept on disk (`--path`) so that it can be stopped and started again (an outage and the recovery).

    ddb = Dynalite().start()
    ddb.env          # AWS_ENDPOINT_URL_DYNAMODB, region and dummy credentials for the SDK
    ddb.stop(); ddb.start()
    ddb.close()"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Optional

REPO_ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Dynalite:
    def __init__(self) -> None:
        self.cli = REPO_ROOT / "node_modules/dynalite/cli.js"
        if not self.cli.exists():
            raise RuntimeError("dynalite not installed (npm ci)")
        self.port = _free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="conduit-dynalite-"))
        self.proc: Optional[subprocess.Popen] = None
        self.env = {
            "AWS_ENDPOINT_URL_DYNAMODB": f"http://127.0.0.1:{self.port}",
            "AWS_REGION": "us-east-1",
            "AWS_ACCESS_KEY_ID": "local",
            "AWS_SECRET_ACCESS_KEY": "local",
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def start(self) -> "Dynalite":
        self.proc = subprocess.Popen(
            ["node", str(self.cli), "--host", "127.0.0.1", "--port", str(self.port), "--path", str(self.dir / "db"),
             "--createTableMs", "0", "--deleteTableMs", "0", "--updateTableMs", "0"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("dynalite did not start")
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
        self.proc = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
