"""A throwaway PostgreSQL server for the tests: Debian's `postgresql` binaries, a cluster in a temp
directory, listening on 127.0.0.1 on a free port, stopped (and deleted) at exit.

    pg = shared_postgres()      # one per test process, started on first use
    pg.url                      # postgres://conduit:…@127.0.0.1:PORT/conduit
    pg.stop(); pg.start()       # an outage and the recovery (the data stays)

The test command installs the `postgresql` package when missing (scripts/test.sh)."""
from __future__ import annotations

import atexit
import glob
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Optional


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pg_bin() -> Optional[Path]:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: [int(x) for x in p.split("/")[4].split(".")])
    return Path(found[-1]) if found else None


class Postgres:
    def __init__(self) -> None:
        bindir = pg_bin()
        if bindir is None:
            raise RuntimeError("PostgreSQL is not installed (apt-get install postgresql)")
        self.bin = bindir
        self.port = _free_port()
        self.password = secrets.token_hex(12)
        self.dir = Path(tempfile.mkdtemp(prefix="conduit-pg-"))
        os.chmod(self.dir, 0o711)
        self.data = self.dir / "data"
        self.sock = self.dir / "sock"
        self.sock.mkdir()
        # initdb and postgres refuse to run as root: run them as the postgres user.
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres")
            shutil.chown(self.sock, "postgres")
            self.as_user = ["runuser", "-u", "postgres", "--"]
        pw = self.dir / "pw"
        pw.write_text(self.password + "\n")
        if self.as_user:
            shutil.chown(pw, "postgres")
        self._run("initdb", "-D", str(self.data), "-U", "conduit", f"--pwfile={pw}", "-E", "UTF8",
                  "--no-locale", "--auth-local=trust", "--auth-host=scram-sha-256")
        with open(self.data / "postgresql.conf", "a") as f:
            f.write(f"listen_addresses = '127.0.0.1'\nport = {self.port}\n"
                    f"unix_socket_directories = '{self.sock}'\n"
                    "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\nmax_connections = 200\n")
        self.start()
        self._run("createdb", "-h", str(self.sock), "-p", str(self.port), "-U", "conduit", "conduit")
        self.url = f"postgres://conduit:{self.password}@127.0.0.1:{self.port}/conduit"

    def _run(self, tool: str, *args: str) -> None:
        subprocess.run([*self.as_user, str(self.bin / tool), *args], check=True, cwd=self.dir,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=120)

    def start(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.dir / "log"), "-w", "-t", "60", "start")

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def close(self) -> None:
        try:
            self.stop()
        except Exception:
            pass
        shutil.rmtree(self.dir, ignore_errors=True)


_SHARED: Optional[Postgres] = None


def shared_postgres() -> Postgres:
    global _SHARED
    if _SHARED is None:
        _SHARED = Postgres()
        atexit.register(_SHARED.close)
    return _SHARED
