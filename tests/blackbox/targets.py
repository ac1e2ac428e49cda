"""Ways to start the gateway under test.

A *target* turns a config TOML + environment into a running gateway reachable over HTTP:

    target = make_target()                  # chosen by env CONDUIT_TARGET (default "server")
    base_url = target.start(config_toml, env)   # e.g. "http://127.0.0.1:41234"
    ...
    target.stop()

The generic tests only use HTTP (OpenAI-compatible endpoints + admin API), so later targets
(worker, lambda, ...) only need to implement ``start``/``stop`` (and may leave ``binary``/
``database_path`` as None).
"""
from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Optional

REPO_ROOT = Path(__file__).resolve().parents[2]
LISTEN_RE = re.compile(r"^conduit listening on (http://127\.0\.0\.1:(\d+))\s*$")


class TargetError(RuntimeError):
    pass


class Target:
    """Interface: start(config_toml, env) -> base_url; stop()."""

    name = "abstract"

    def start(self, config_toml: str, env: dict[str, str]) -> str:  # pragma: no cover - interface
        raise NotImplementedError

    def stop(self) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    # Optional diagnostics, used in failure messages.
    def logs(self) -> str:
        return ""


def conduit_binary() -> Path:
    p = Path(os.environ.get("CONDUIT_BIN") or "target/release/conduit")
    if not p.is_absolute():
        p = REPO_ROOT / p
    return p


class ServerTarget(Target):
    """Runs the native binary: ``conduit serve --config FILE --listen 127.0.0.1:0 --database DB``."""

    name = "server"
    STARTUP_TIMEOUT = 30.0

    def __init__(self, binary: Optional[Path] = None, *, database: Optional[Path] = None,
                 use_config_file: bool = True):
        self.binary = Path(binary) if binary else conduit_binary()
        self._database = Path(database) if database else None
        self._use_config_file = use_config_file  # False: pass the TOML in env CONDUIT_CONFIG
        self.proc: Optional[subprocess.Popen] = None
        self.tmpdir: Optional[tempfile.TemporaryDirectory] = None
        self.config_path: Optional[Path] = None
        self.database_path: Optional[Path] = None
        self.base_url: Optional[str] = None
        self.env: dict[str, str] = {}
        self._stderr_lines: list[str] = []
        self._stdout_lines: list[str] = []
        self._threads: list[threading.Thread] = []

    def _pump(self, stream, sink: list[str], q: Optional[queue.Queue]) -> None:
        for raw in iter(stream.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\n")
            sink.append(line)
            if q is not None:
                q.put(line)
        if q is not None:
            q.put(None)

    def start(self, config_toml: str, env: dict[str, str]) -> str:
        if not self.binary.exists():
            raise TargetError(f"conduit binary not found at {self.binary} (set CONDUIT_BIN)")
        self.tmpdir = tempfile.TemporaryDirectory(prefix="conduit-bb-")
        d = Path(self.tmpdir.name)
        self.config_path = d / "conduit.toml"
        self.config_path.write_text(config_toml, encoding="utf-8")
        self.database_path = self._database or (d / "conduit.db")
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("CONDUIT_")}
        full_env.setdefault("RUST_LOG", "info")
        full_env.update(env)
        cmd = [str(self.binary), "serve"]
        if self._use_config_file:
            cmd += ["--config", str(self.config_path)]
        else:
            full_env["CONDUIT_CONFIG"] = config_toml
        cmd += ["--listen", "127.0.0.1:0", "--database", str(self.database_path)]
        self.env = full_env
        self.proc = subprocess.Popen(cmd, cwd=d, env=full_env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        q: queue.Queue = queue.Queue()
        self._threads = [
            threading.Thread(target=self._pump, args=(self.proc.stdout, self._stdout_lines, q), daemon=True),
            threading.Thread(target=self._pump, args=(self.proc.stderr, self._stderr_lines, None), daemon=True),
        ]
        for t in self._threads:
            t.start()
        deadline = time.monotonic() + self.STARTUP_TIMEOUT
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                self.stop()
                raise TargetError(f"conduit did not print its listening line within {self.STARTUP_TIMEOUT}s\n"
                                  + self.logs())
            try:
                line = q.get(timeout=min(left, 0.5))
            except queue.Empty:
                if self.proc.poll() is not None:
                    time.sleep(0.2)  # let the stderr pump finish
                    raise TargetError(f"conduit exited with {self.proc.returncode} before listening\n" + self.logs())
                continue
            if line is None:
                self.proc.wait(timeout=5)
                time.sleep(0.2)
                raise TargetError(f"conduit closed stdout (exit {self.proc.returncode}) before listening\n"
                                  + self.logs())
            m = LISTEN_RE.match(line)
            if m:
                self.base_url = m.group(1)
                return self.base_url

    def stop(self, timeout: float = 5.0) -> Optional[int]:
        rc = None
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(timeout=5)
            rc = self.proc.returncode
            for t in self._threads:
                t.join(timeout=1)
            for s in (self.proc.stdout, self.proc.stderr):
                try:
                    s.close()
                except Exception:
                    pass
            self.proc = None
        if self.tmpdir is not None:
            self.tmpdir.cleanup()
            self.tmpdir = None
        return rc

    @property
    def stdout_lines(self) -> list[str]:
        return list(self._stdout_lines)

    def logs(self, last: int = 80) -> str:
        out = self._stdout_lines[-20:]
        err = self._stderr_lines[-last:]
        return ("--- conduit stdout ---\n" + "\n".join(out) + "\n--- conduit stderr (tail) ---\n" + "\n".join(err))


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _dev_vars_value(v: str) -> str:
    """A .dev.vars (dotenv) value: single quotes keep newlines and double quotes as they are."""
    if "'" not in v:
        return "'" + v + "'"
    if "`" not in v:
        return "`" + v + "`"
    raise TargetError("value holds both ' and ` and cannot be written to .dev.vars")


class WorkerTarget(Target):
    """The Cloudflare Worker under ``wrangler dev --local`` (workerd, local KV and Durable Objects).

    As the README documents: the root wrangler.toml and a ``.dev.vars`` holding CONDUIT_CONFIG,
    CONDUIT_MASTER_KEY and the provider secrets. Each instance gets its own directory (a copy of
    wrangler.toml pointing at the prebuilt bundle, so no build runs here), port and state.
    """

    name = "worker"
    STARTUP_TIMEOUT = 120.0

    def __init__(self) -> None:
        self.proc: Optional[subprocess.Popen] = None
        self.tmpdir: Optional[tempfile.TemporaryDirectory] = None
        self.base_url: Optional[str] = None
        self._lines: list[str] = []
        self._threads: list[threading.Thread] = []

    def start(self, config_toml: str, env: dict[str, str]) -> str:
        bundle = REPO_ROOT / "platforms/cloudflare/build/index.js"
        wrangler = REPO_ROOT / "node_modules/.bin/wrangler"
        if not bundle.exists():
            raise TargetError(f"worker bundle not built: {bundle} (run sh scripts/build-worker.sh)")
        if not wrangler.exists():
            raise TargetError("wrangler not installed (npm ci)")
        self.tmpdir = tempfile.TemporaryDirectory(prefix="conduit-worker-")
        d = Path(self.tmpdir.name)
        self._config_env = (config_toml, env)
        toml = (REPO_ROOT / "wrangler.toml").read_text(encoding="utf-8")
        toml = re.sub(r'^main = ".*"$', f'main = "{bundle}"', toml, flags=re.M)
        toml = re.sub(r"^\[build\]\n(?:(?!\[).*\n)*", "", toml, flags=re.M)
        (d / "wrangler.toml").write_text(toml, encoding="utf-8")
        dev_vars = {"CONDUIT_CONFIG": config_toml, **env}
        (d / ".dev.vars").write_text(
            "".join(f"{k}={_dev_vars_value(v)}\n" for k, v in dev_vars.items()), encoding="utf-8")
        return self._launch(d)

    def kill_and_restart(self) -> str:
        """Kills wrangler dev and its workerd at once (SIGKILL: the isolate dies with what it
        holds in memory), then starts it again on the same persisted state (KV, Durable Objects)."""
        assert self.proc is not None and self.tmpdir is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=5)
        for t in self._threads:
            t.join(timeout=1)
        return self._launch(Path(self.tmpdir.name))

    def _launch(self, d: Path) -> str:
        wrangler = REPO_ROOT / "node_modules/.bin/wrangler"
        port = _free_port()
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("CONDUIT_")}
        full_env.update({"WRANGLER_SEND_METRICS": "false", "CLOUDFLARE_CF_FETCH_ENABLED": "false",
                         "WRANGLER_HIDE_BANNER": "true", "WRANGLER_LOG_PATH": str(d / "logs"),
                         "NO_COLOR": "1", "FORCE_COLOR": "0"})
        cmd = [str(wrangler), "dev", "--config", str(d / "wrangler.toml"), "--local", "--ip", "127.0.0.1",
               "--port", str(port), "--inspector-port", str(_free_port()),
               "--show-interactive-dev-session=false", "--persist-to", str(d / "state")]
        self.proc = subprocess.Popen(cmd, cwd=d, env=full_env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        q: queue.Queue = queue.Queue()
        t = threading.Thread(target=self._pump, args=(q,), daemon=True)
        t.start()
        self._threads = [t]
        ready = f"Ready on http://127.0.0.1:{port}"
        deadline = time.monotonic() + self.STARTUP_TIMEOUT
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                self.stop()
                raise TargetError(f"wrangler dev not ready within {self.STARTUP_TIMEOUT}s\n" + self.logs())
            try:
                line = q.get(timeout=min(left, 0.5))
            except queue.Empty:
                if self.proc.poll() is not None:
                    raise TargetError(f"wrangler dev exited with {self.proc.returncode}\n" + self.logs())
                continue
            if line is None:
                raise TargetError("wrangler dev closed its output before it was ready\n" + self.logs())
            if ready in line:
                self.base_url = f"http://127.0.0.1:{port}"
                return self.base_url

    def _pump(self, q: queue.Queue) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            self._lines.append(line)
            q.put(line)
        q.put(None)

    def stop(self) -> None:
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(timeout=5)
            for t in self._threads:
                t.join(timeout=1)
            self.proc = None
        if self.tmpdir is not None:
            self.tmpdir.cleanup()
            self.tmpdir = None

    def logs(self, last: int = 80) -> str:
        return "--- wrangler dev (tail) ---\n" + "\n".join(self._lines[-last:])


class LambdaTarget(Target):
    """The Lambda function run as Lambda runs it: ``conduit-lambda-local`` (the real
    ``conduit-lambda`` binary behind a Runtime API and a Function-URL front), against a
    local DynamoDB (dynalite from npm) that each instance starts for itself.
    ``CONDUIT_LAMBDA_LOCAL`` names the runner (default target/release/conduit-lambda-local);
    ``CONDUIT_LAMBDA_FUNCTION`` the function binary (default: the runner's sibling
    ``conduit-lambda``; the test command passes ``sam build``'s bootstrap, the artifact
    ``sam deploy`` ships).
    """

    name = "lambda"
    STARTUP_TIMEOUT = 60.0

    def __init__(self, instances: Optional[int] = None) -> None:
        # --instances of the runner (default: its own, 10); 1 keeps every request in one container.
        self.instances = instances
        # Optional: maps dynalite's URL to the one the function is given (a fault proxy in front).
        self.dynamodb_front = None
        self.procs: list[subprocess.Popen] = []
        self.base_url: Optional[str] = None
        self._lines: list[str] = []
        self._threads: list[threading.Thread] = []
        self.tmpdir: Optional[tempfile.TemporaryDirectory] = None

    def _spawn(self, cmd: list[str], env: dict[str, str], q: Optional[queue.Queue]) -> subprocess.Popen:
        p = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             start_new_session=True)
        self.procs.append(p)

        def pump() -> None:
            assert p.stdout is not None
            for raw in p.stdout:
                line = raw.decode("utf-8", "replace").rstrip("\n")
                self._lines.append(line)
                if q is not None:
                    q.put(line)
            if q is not None:
                q.put(None)

        t = threading.Thread(target=pump, daemon=True)
        t.start()
        self._threads.append(t)
        return p

    def start(self, config_toml: str, env: dict[str, str]) -> str:
        runner = Path(os.environ.get("CONDUIT_LAMBDA_LOCAL") or "target/release/conduit-lambda-local")
        if not runner.is_absolute():
            runner = REPO_ROOT / runner
        dynalite = REPO_ROOT / "node_modules/dynalite/cli.js"
        if not runner.exists():
            raise TargetError(f"{runner} not built (cargo build --release -p conduit-lambda)")
        if not dynalite.exists():
            raise TargetError("dynalite not installed (npm ci)")
        self.tmpdir = tempfile.TemporaryDirectory(prefix="conduit-lambda-")
        ddb_port = _free_port()
        base_env = {k: v for k, v in os.environ.items() if not k.startswith("CONDUIT_") and not k.startswith("AWS_")}
        self._spawn(["node", str(dynalite), "--host", "127.0.0.1", "--port", str(ddb_port), "--createTableMs", "0",
                     "--deleteTableMs", "0", "--updateTableMs", "0"], base_env, None)
        import socket
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", ddb_port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise TargetError("dynalite did not start\n" + self.logs())
                time.sleep(0.05)
        full_env = dict(base_env)
        ddb_url = f"http://127.0.0.1:{ddb_port}"
        if self.dynamodb_front is not None:
            ddb_url = self.dynamodb_front(ddb_url)
        full_env.update({"AWS_ENDPOINT_URL_DYNAMODB": ddb_url, "AWS_REGION": "us-east-1",
                         "AWS_ACCESS_KEY_ID": "local", "AWS_SECRET_ACCESS_KEY": "local",
                         "AWS_EC2_METADATA_DISABLED": "true", "CONDUIT_CONFIG": config_toml})
        full_env.update(env)
        q: queue.Queue = queue.Queue()
        cmd = [str(runner), "--listen", "127.0.0.1:0"]
        function = os.environ.get("CONDUIT_LAMBDA_FUNCTION")
        if function:
            cmd += ["--function", str(Path(function) if Path(function).is_absolute() else REPO_ROOT / function)]
        if self.instances:
            cmd += ["--instances", str(self.instances)]
        self._spawn(cmd, full_env, q)
        deadline = time.monotonic() + self.STARTUP_TIMEOUT
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                self.stop()
                raise TargetError("conduit-lambda-local did not start\n" + self.logs())
            try:
                line = q.get(timeout=min(left, 0.5))
            except queue.Empty:
                continue
            if line is None:
                raise TargetError("conduit-lambda-local exited\n" + self.logs())
            m = re.match(r"^conduit-lambda-local listening on (http://127\.0\.0\.1:\d+)", line)
            if m:
                self.base_url = m.group(1)
                return self.base_url

    def stop(self) -> None:
        for p in reversed(self.procs):
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for p in reversed(self.procs):
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait(timeout=5)
        self.procs = []
        for t in self._threads:
            t.join(timeout=1)
        if self.tmpdir is not None:
            self.tmpdir.cleanup()
            self.tmpdir = None

    def logs(self, last: int = 80) -> str:
        return "--- lambda (tail) ---\n" + "\n".join(self._lines[-last:])


class PostgresServerTarget(ServerTarget):
    """The native server with `[server] store = "postgres"`, on the test process's throwaway
    PostgreSQL (tests/blackbox/pg.py): keys, admission state and usage live in the database."""

    name = "server-postgres"

    def start(self, config_toml: str, env: dict[str, str]) -> str:
        from pg import shared_postgres

        pg = shared_postgres()
        if "[server]\n" in config_toml:
            config_toml = config_toml.replace("[server]\n", '[server]\nstore = "postgres"\n', 1)
        else:
            config_toml = '[server]\nstore = "postgres"\n' + config_toml
        return super().start(config_toml, {**env, "CONDUIT_POSTGRES_URL": pg.url})


TARGETS = {"server": ServerTarget, "server-postgres": PostgresServerTarget, "worker": WorkerTarget,
           "lambda": LambdaTarget}


def target_name() -> str:
    return os.environ.get("CONDUIT_TARGET", "server").strip() or "server"


def make_target(name: Optional[str] = None) -> Target:
    name = name or target_name()
    try:
        return TARGETS[name]()
    except KeyError:
        raise TargetError(f"unknown CONDUIT_TARGET {name!r}; known: {', '.join(sorted(TARGETS))}") from None
