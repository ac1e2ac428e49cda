"""Session fixtures for the black-box suite.

* ``mock``     : the in-process mock provider (mock_upstream.MockUpstream).
* ``gateway``  : the gateway under test (targets.make_target(), env CONDUIT_TARGET), configured with
                 three providers pointing at the mock and one alias per mock behaviour (ALIASES).
* ``admin``    : httpx-based admin API helper (master key).
* ``api_key``  : a virtual key allowed to use every alias; ``client``: an openai.OpenAI on it.
* ``make_client(key)``: openai.OpenAI(base_url=BASE+"/v1", api_key=key, max_retries=0).
* ``marker``   : a unique string to put in a prompt so the matching upstream request can be found.
"""
from __future__ import annotations

import os
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import httpx
import openai
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from mock_upstream import AZURE_KEY, OPENAI_KEY, MockUpstream  # noqa: E402
from targets import Target, TargetError, make_target, target_name  # noqa: E402
import dev_proxy  # noqa: E402

if target_name() == "worker":
    dev_proxy.install()  # every client of this run: see dev_proxy's doc (wrangler dev's keep-alive race)

# stable for the whole process even if this module is imported twice (e.g. --import-mode=importlib)
MASTER_KEY = os.environ.setdefault("BB_CONDUIT_MASTER_KEY", "bb-master-" + uuid.uuid4().hex)
OPENAI_KEY_ENV = "BB_OPENAI_API_KEY"
AZURE_KEY_ENV = "BB_AZURE_OPENAI_API_KEY"
AZURE_API_VERSION = "2024-10-21"
UPSTREAM_TIMEOUT_MS = 1500
# GET /metrics (server): this token, or the master key
METRICS_TOKEN_ENV = "BB_METRICS_TOKEN"
METRICS_TOKEN = os.environ.setdefault("BB_METRICS_TOKEN_VALUE", "bb-metrics-" + uuid.uuid4().hex)
MAX_BODY_BYTES = 1048576

# alias -> (provider name in config, upstream model / Azure deployment)
ALIASES: dict[str, tuple[str, str]] = {
    "chat": ("openai", "gpt-4o-mini"),
    "cached": ("openai", "mock-cached"),
    "tools": ("openai", "mock-tools"),
    "slow": ("openai", "mock-slow-stream"),
    "stream-cut": ("openai", "mock-stream-fail"),
    "close-delim": ("openai", "mock-close-delimited"),
    "fail-500": ("openai", "mock-error-500"),
    "fail-400": ("openai", "mock-error-400"),
    "fail-429": ("openai", "mock-error-429"),
    "hang": ("openai", "mock-hang"),
    "garbage": ("openai", "mock-garbage"),
    "error-in-200": ("openai", "mock-error-in-200"),
    "error-after-content": ("openai", "mock-error-after-content"),
    "drip": ("openai", "mock-drip"),
    "instruct": ("openai", "gpt-3.5-turbo-instruct"),
    "embed": ("openai", "text-embedding-3-small"),
    "local-chat": ("local", "llama3.2"),
    "mistral": ("local", "mock-mistral"),
    "mistral-tools": ("local", "mock-mistral-tools"),
    "azure-chat": ("az", "gpt5nano-deploy"),
    "azure-instruct": ("az", "instruct-deploy"),
    "azure-embed": ("az", "embed-deploy"),
    "azure-fail-500": ("az", "mock-error-500"),
    # for allowed_models exact / prefix* tests
    "fam-alpha": ("openai", "gpt-4o-mini"),
    "fam-beta": ("openai", "gpt-4o-mini"),
    "other-gamma": ("openai", "gpt-4o-mini"),
}

# Aliases whose mock model has no built-in price get one (USD per million tokens), so that
# billing of their failures can be checked.
PRICES: dict[str, str] = {
    "stream-cut": "{ input = 1.0, output = 2.0 }",
    "error-after-content": "{ input = 1.0, output = 2.0 }",
}


def build_config(mock_url: str) -> str:
    lines = [
        "[server]",
        'listen = "127.0.0.1:0"',
        f'metrics_token_env = "{METRICS_TOKEN_ENV}"',
        "",
        "[providers.openai]",
        'kind = "openai"',
        f'base_url = "{mock_url}/v1"',
        f'api_key_env = "{OPENAI_KEY_ENV}"',
        "",
        "[providers.az]",
        'kind = "azure"',
        f'base_url = "{mock_url}"',
        f'api_version = "{AZURE_API_VERSION}"',
        f'api_key_env = "{AZURE_KEY_ENV}"',
        "",
        "[providers.local]",
        'kind = "openai-compatible"',
        f'base_url = "{mock_url}/compat/v1"',
        "",
        "[gateway]",
        f"max_body_bytes = {MAX_BODY_BYTES}",
        f"upstream_timeout_ms = {UPSTREAM_TIMEOUT_MS}",
        # Revocation at once on every platform (test_keys); the default delay: test_hot_keys.
        "revocation_delay_ms = 0",
        "",
    ]
    for alias, (prov, model) in ALIASES.items():
        lines.append(f'[models."{alias}"]')
        price = f", price = {PRICES[alias]}" if alias in PRICES else ""
        lines.append(f'deployments = [{{ provider = "{prov}", model = "{model}"{price} }}]')
        lines.append("")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------
# pytest hooks
# ------------------------------------------------------------------------------------------
_ACTIVE_TARGET: Optional[Target] = None


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if dev_proxy.resent:
        terminalreporter.write_line(
            f"wrangler dev's proxy lost {dev_proxy.resent} request(s) before the Worker; sent again (dev_proxy.py)")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)  # lets fixtures see the outcome (test_ui screenshots failures)
    if rep.failed and _ACTIVE_TARGET is not None and "gateway" in getattr(item, "fixturenames", ()):
        logs = _ACTIVE_TARGET.logs()
        if logs:
            rep.sections.append(("conduit logs", logs[-6000:]))


# ------------------------------------------------------------------------------------------
# fixtures
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def mock() -> MockUpstream:
    m = MockUpstream().start()
    yield m
    m.stop()


@dataclass
class Gateway:
    base_url: str
    target: Target
    config: str
    env: dict[str, str]

    @property
    def v1(self) -> str:
        return self.base_url + "/v1"


@pytest.fixture(scope="session")
def gateway(mock: MockUpstream) -> Gateway:
    global _ACTIVE_TARGET
    config = build_config(mock.url)
    env = {
        "CONDUIT_MASTER_KEY": MASTER_KEY,
        OPENAI_KEY_ENV: OPENAI_KEY,
        AZURE_KEY_ENV: AZURE_KEY,
        METRICS_TOKEN_ENV: METRICS_TOKEN,
    }
    try:
        target = make_target()
        base = target.start(config, env)
    except TargetError as e:
        pytest.fail(f"could not start gateway target {target_name()!r}: {e}", pytrace=False)
    _ACTIVE_TARGET = target
    # wait until it answers
    deadline = time.monotonic() + 10
    while True:
        try:
            if httpx.get(base + "/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            logs = target.logs()
            target.stop()
            pytest.fail("gateway never answered GET /health\n" + logs, pytrace=False)
        time.sleep(0.05)
    yield Gateway(base_url=base, target=target, config=config, env=env)
    _ACTIVE_TARGET = None
    target.stop()


class Admin:
    """Thin admin API client. Methods return httpx.Response unless noted."""

    def __init__(self, base_url: str, master_key: str):
        self.http = httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {master_key}"},
                                 timeout=10)

    def create_key_raw(self, body: Any) -> httpx.Response:
        return self.http.post("/admin/keys", json=body)

    def create_key(self, name: Optional[str] = None, **fields: Any) -> dict:
        body = {"name": name or f"bb-{uuid.uuid4().hex[:8]}", **fields}
        r = self.create_key_raw(body)
        assert r.status_code == 201, f"POST /admin/keys -> {r.status_code} {r.text}"
        rec = r.json()
        assert isinstance(rec.get("key"), str) and rec["key"].startswith("condt_"), rec
        return rec

    def list_keys(self) -> httpx.Response:
        return self.http.get("/admin/keys")

    def get_key(self, key_id: str) -> httpx.Response:
        return self.http.get(f"/admin/keys/{key_id}")

    def patch_key(self, key_id: str, body: Any) -> httpx.Response:
        return self.http.patch(f"/admin/keys/{key_id}", json=body)

    def delete_key(self, key_id: str) -> httpx.Response:
        return self.http.delete(f"/admin/keys/{key_id}")

    def rotate_key(self, key_id: str) -> httpx.Response:
        return self.http.post(f"/admin/keys/{key_id}/rotate")

    def usage(self, **params: Any) -> httpx.Response:
        return self.http.get("/admin/usage", params={k: v for k, v in params.items() if v is not None})

    def wait_usage(self, key_id: str, count: int, timeout: float = 3.0, **params: Any) -> dict:
        """Poll GET /admin/usage?key_id= until it lists >= count records (usage is written off the
        hot path). Returns the last JSON body."""
        deadline = time.monotonic() + timeout
        while True:
            r = self.usage(key_id=key_id, **params)
            assert r.status_code == 200, f"GET /admin/usage -> {r.status_code} {r.text}"
            body = r.json()
            if len(body.get("data", [])) >= count or time.monotonic() > deadline:
                return body
            time.sleep(0.05)


@pytest.fixture(scope="session")
def admin(gateway: Gateway) -> Admin:
    a = Admin(gateway.base_url, MASTER_KEY)
    yield a
    a.http.close()


@pytest.fixture(scope="session")
def api_key(admin: Admin) -> str:
    """A key without model restrictions (allowed_models empty = every alias)."""
    return admin.create_key(name="bb-session-all-models")["key"]


@pytest.fixture(scope="session")
def make_client(gateway: Gateway) -> Callable[..., openai.OpenAI]:
    clients: list[openai.OpenAI] = []

    def _make(key: str, **kw: Any) -> openai.OpenAI:
        kw.setdefault("max_retries", 0)
        kw.setdefault("timeout", 15.0)
        c = openai.OpenAI(base_url=gateway.v1, api_key=key, **kw)
        clients.append(c)
        return c

    yield _make
    for c in clients:
        c.close()


@pytest.fixture(scope="session")
def client(make_client, api_key) -> openai.OpenAI:
    return make_client(api_key)


@pytest.fixture(scope="session")
def http(gateway: Gateway) -> httpx.Client:
    """Raw HTTP client on the gateway (no auth header by default)."""
    c = httpx.Client(base_url=gateway.base_url, timeout=15)
    yield c
    c.close()


@pytest.fixture
def marker() -> str:
    return "bbmark-" + uuid.uuid4().hex


def user_msg(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]
