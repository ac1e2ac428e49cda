"""The fault matrix's store cases on the native server with SQLite (issue 12).

Two real ways a running server's SQLite file stops taking writes:

* ``read-only``: ``chattr +i`` on the database and its WAL (the ``-shm`` index stays writable: SQLite
  maps it, and an immutable mapping would kill the process, which is not the fault under test).
  Every write then fails with EPERM, which SQLite reports as SQLITE_IOERR_WRITE; a plain ``chmod``
  cannot do this to a running server, whose file descriptors are already open for writing, and
  remounting read-only is refused while files are open for writing (EBUSY).
* ``disk-full``: the database on a 4 MiB tmpfs that a filler file then fills (ENOSPC, SQLITE_FULL).

Both need root (``mount``, ``chattr``); the test skips, saying so, where they are not allowed.

What the README promises, checked here: admin writes answer 503 ``store_unavailable`` and change
nothing (a key created during the fault does not exist afterwards; a PATCH or rotation is not
half-applied); admission needs no write on this store (it is in the server's memory), so requests
keep being served, and their usage records and spend are held in memory and written when the file
takes writes again — without a restart; and a restart afterwards finds every record and the spend.
"""
from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from conftest import AZURE_KEY_ENV, MASTER_KEY, OPENAI_KEY_ENV, build_config
from helpers import assert_error_body, auth, chat_body
from mock_upstream import AZURE_KEY, OPENAI_KEY
from targets import ServerTarget, target_name

pytestmark = pytest.mark.skipif(target_name() != "server", reason="the native server's SQLite store")

ENV = {"CONDUIT_MASTER_KEY": MASTER_KEY, OPENAI_KEY_ENV: OPENAI_KEY, AZURE_KEY_ENV: AZURE_KEY}


class ReadOnly:
    name = "read-only"

    def __init__(self):
        self.dir = Path(tempfile.mkdtemp(prefix="conduit-ro-"))

    def available(self) -> str | None:
        if shutil.which("chattr") is None:
            return "no chattr"
        probe = self.dir / "probe"
        probe.write_text("x")
        r = subprocess.run(["chattr", "+i", str(probe)], capture_output=True, text=True)
        subprocess.run(["chattr", "-i", str(probe)], capture_output=True)
        probe.unlink()
        return None if r.returncode == 0 else f"chattr +i not allowed here: {r.stderr.strip()}"

    def files(self):
        return [self.dir / "conduit.db", self.dir / "conduit.db-wal"]

    def inject(self):
        subprocess.run(["chattr", "+i", *map(str, self.files())], check=True)

    def clear(self):
        subprocess.run(["chattr", "-i", *map(str, self.files())], check=True)

    def cleanup(self):
        subprocess.run(["chattr", "-i", *map(str, self.files())], capture_output=True)
        shutil.rmtree(self.dir, ignore_errors=True)


class DiskFull:
    name = "disk-full"

    def __init__(self):
        self.dir = Path(tempfile.mkdtemp(prefix="conduit-full-"))
        self.mounted = False

    def available(self) -> str | None:
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(self.dir)],
                           capture_output=True, text=True)
        if r.returncode != 0:
            return f"cannot mount a tmpfs here: {r.stderr.strip()}"
        self.mounted = True
        return None

    def inject(self):
        with open(self.dir / "filler", "wb") as f:
            try:
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
            except OSError:
                pass
        # the last partial blocks too
        try:
            with open(self.dir / "filler2", "wb") as f:
                while True:
                    f.write(b"\0" * 512)
                    f.flush()
        except OSError:
            pass

    def clear(self):
        for name in ("filler", "filler2"):
            (self.dir / name).unlink(missing_ok=True)

    def cleanup(self):
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.dir)], capture_output=True)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(params=[ReadOnly, DiskFull], ids=["read-only", "disk-full"])
def fault(request):
    f = request.param()
    why = f.available()
    if why:
        f.cleanup()
        pytest.skip(why)
    yield f
    f.cleanup()


def _config(mock_url: str) -> str:
    return build_config(mock_url).replace(
        'deployments = [{ provider = "openai", model = "gpt-4o-mini" }]',
        'deployments = [{ provider = "openai", model = "gpt-4o-mini", price = { input = 1.0, output = 2.0 } }]')


def _start(mock, db: Path) -> tuple[ServerTarget, str]:
    t = ServerTarget(database=db)
    base = t.start(_config(mock.url), ENV)
    return t, base


def _usage(admin: httpx.Client, key_id: str) -> list[dict]:
    r = admin.get("/admin/usage", params={"key_id": key_id, "limit": 100})
    assert r.status_code == 200, r.text
    return r.json()["data"]


def _wait_usage(admin: httpx.Client, key_id: str, count: int, timeout: float) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        data = _usage(admin, key_id)
        if len(data) >= count or time.monotonic() > deadline:
            return data
        time.sleep(0.1)


def test_sqlite_unwritable_then_back(mock, fault):
    db = fault.dir / "conduit.db"
    t, base = _start(mock, db)
    admin = httpx.Client(base_url=base, headers=auth(MASTER_KEY), timeout=15)
    http = httpx.Client(base_url=base, timeout=15)
    try:
        r = admin.post("/admin/keys", json={"name": "before", "limits": {"rpm": 1000},
                                            "budget": {"max_usd": 10, "period": "total"}})
        assert r.status_code == 201, r.text
        key_id, key = r.json()["id"], r.json()["key"]
        assert http.post("/v1/chat/completions", headers=auth(key), json=chat_body("chat")).status_code == 200
        assert len(_wait_usage(admin, key_id, 1, 5)) == 1

        fault.inject()
        # Admin writes need the store: 503, and nothing of them is kept.
        r = admin.post("/admin/keys", json={"name": "during-fault"})
        assert r.status_code == 503, r.text
        assert_error_body(r.json(), type_="api_error", code="store_unavailable")
        r = admin.patch(f"/admin/keys/{key_id}", json={"name": "renamed-during-fault"})
        assert r.status_code == 503, r.text
        r = admin.post(f"/admin/keys/{key_id}/rotate")
        assert r.status_code == 503, r.text
        r = admin.delete(f"/admin/keys/{key_id}")
        assert r.status_code == 503, r.text
        # Serving goes on: admission is in memory; records and spend are held, not lost.
        served = 0
        for _ in range(5):
            r = http.post("/v1/chat/completions", headers=auth(key), json=chat_body("chat"))
            assert r.status_code == 200, r.text
            served += 1
        spend_during = admin.get(f"/admin/keys/{key_id}").json()["spend"]
        time.sleep(1.0)
        assert len(_usage(admin, key_id)) == 1, "records written while the file takes no writes?"
        assert t.proc.poll() is None, "the server died"

        fault.clear()
        # Back, without a restart: the held records are written, admin writes work again.
        data = _wait_usage(admin, key_id, 1 + served, 10)
        assert len(data) == 1 + served, data
        r = admin.post("/admin/keys", json={"name": "after-fault"})
        assert r.status_code == 201, r.text
        got = admin.get(f"/admin/keys/{key_id}").json()
        assert got["name"] == "before", got
        assert http.post("/v1/chat/completions", headers=auth(key), json=chat_body("chat")).status_code == 200
        data = _wait_usage(admin, key_id, 2 + served, 5)
        total = sum(d["cost_nano_usd"] for d in data)
        assert total > 0 and all(d["cost_nano_usd"] > 0 for d in data), data
        spend = admin.get(f"/admin/keys/{key_id}").json()["spend"]
        assert spend["spent_nano_usd"] == total, (spend, total)
        assert spend_during["spent_nano_usd"] < total
    finally:
        admin.close()
        http.close()
        t.stop()

    # A restart on the same file finds it all: the records, the spend, and no half-made key.
    t2, base2 = _start(mock, db)
    admin = httpx.Client(base_url=base2, headers=auth(MASTER_KEY), timeout=15)
    try:
        names = sorted(k["name"] for k in admin.get("/admin/keys").json()["data"])
        assert names == ["after-fault", "before"], names
        data = _usage(admin, key_id)
        assert len(data) == 2 + served
        assert admin.get(f"/admin/keys/{key_id}").json()["spend"]["spent_nano_usd"] == total
    finally:
        admin.close()
        t2.stop()
