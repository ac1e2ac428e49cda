"""One gateway for the front-door suites (test_frontdoor_messages.py, test_frontdoor_responses.py).

``FrontDoorEnv.start()`` starts the four mock providers (OpenAI / OpenAI-compatible, Anthropic, Gemini,
Bedrock) and a gateway (targets.make_target(), so on every platform) whose config has one provider per
mock and the aliases in ``ALIASES``; ``stop()`` ends them all. Each test module makes its own.
"""
from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field

import httpx

from conftest import MASTER_KEY
from helpers import auth
from mock_anthropic import ANTHROPIC_KEY, MockAnthropic
from mock_bedrock import MockBedrock
from mock_gemini import GEMINI_KEY, MockGemini
from mock_upstream import OPENAI_KEY, MockUpstream
from targets import make_target

AKID, SECRET = "AKIDFRONTDOOR0000001", "frontdoor-secret/Key+example"
BEDROCK_CLAUDE = "anthropic.claude-3-5-sonnet-20240620-v1:0"

# alias -> (provider, upstream model)
ALIASES: dict[str, tuple[str, str]] = {
    # OpenAI (the Responses API passes through) and an OpenAI-compatible host (translated)
    "oai": ("openai", "gpt-4o-mini"),
    "oai-tools": ("openai", "mock-tools"),
    "oai-429": ("openai", "mock-error-429"),
    "compat": ("local", "llama3.2"),
    "compat-tools": ("local", "mock-tools"),
    # Anthropic (the Messages API passes through)
    "claude": ("claude", "claude-text"),
    "claude-tools": ("claude", "claude-tools"),
    "claude-json": ("claude", "claude-json"),
    "claude-429": ("claude", "claude-429"),
    "claude-stream-error": ("claude", "claude-stream-error"),
    "claude-slow": ("claude", "claude-slow"),
    # Gemini (translated)
    "gem": ("google", "gemini-text"),
    "gem-tools": ("google", "gemini-tools"),
    # Bedrock: Converse (translated), Claude through InvokeModel (the Messages API passes through)
    "bedrock": ("aws", "mock.text"),
    "bedrock-tools": ("aws", "mock.tools"),
    "bedrock-json": ("aws", "mock.json"),
    "bedrock-claude": ("aws", BEDROCK_CLAUDE),
}


def config(openai_url: str, anthropic_url: str, gemini_url: str, bedrock_url: str) -> str:
    lines = [f"""
[providers.openai]
kind = "openai"
base_url = "{openai_url}/v1"
api_key_env = "FD_OPENAI_API_KEY"

[providers.local]
kind = "openai-compatible"
base_url = "{openai_url}/compat/v1"

[providers.claude]
kind = "anthropic"
base_url = "{anthropic_url}"
api_key_env = "FD_ANTHROPIC_API_KEY"

[providers.google]
kind = "gemini"
base_url = "{gemini_url}"
api_key_env = "FD_GEMINI_API_KEY"

[providers.aws]
kind = "bedrock"
region = "us-east-1"
base_url = "{bedrock_url}"
access_key_id_env = "FD_AWS_ACCESS_KEY_ID"
secret_access_key_env = "FD_AWS_SECRET_ACCESS_KEY"
session_token_env = "FD_AWS_SESSION_TOKEN_UNSET"

[gateway]
upstream_timeout_ms = 5000
"""]
    for alias, (prov, model) in ALIASES.items():
        lines.append(f'[models."{alias}"]\ndeployments = [{{ provider = "{prov}", model = "{model}" }}]\n')
    # With a price, for keys with a budget.
    lines.append('[models."claude-priced"]\ndeployments = [{ provider = "claude", model = "claude-text", '
                 'price = { input = 3.0, output = 15.0 } }]\n')
    # A fallback: the first deployment answers 429, the second serves.
    lines.append('[models."fallback"]\ndeployments = [{ provider = "openai", model = "mock-error-429" }, '
                 '{ provider = "claude", model = "claude-text" }]\n')
    return "\n".join(lines)


@dataclass
class FrontDoorEnv:
    openai: MockUpstream = field(default_factory=MockUpstream)
    anthropic: MockAnthropic = field(default_factory=MockAnthropic)
    gemini: MockGemini = field(default_factory=MockGemini)
    bedrock: MockBedrock = field(default_factory=lambda: MockBedrock({AKID: SECRET}))
    base: str = ""

    def start(self) -> "FrontDoorEnv":
        self.openai.start()
        self.anthropic.start()
        self.gemini.start()
        self.bedrock.start()
        self.target = make_target()
        self.base = self.target.start(
            config(self.openai.url, self.anthropic.url, self.gemini.url, self.bedrock.url),
            {"CONDUIT_MASTER_KEY": MASTER_KEY, "FD_OPENAI_API_KEY": OPENAI_KEY,
             "FD_ANTHROPIC_API_KEY": ANTHROPIC_KEY, "FD_GEMINI_API_KEY": GEMINI_KEY,
             "FD_AWS_ACCESS_KEY_ID": AKID, "FD_AWS_SECRET_ACCESS_KEY": SECRET})
        deadline = time.monotonic() + 15
        while True:
            try:
                if httpx.get(self.base + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the gateway never answered /health")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        self.target.stop()
        for m in (self.openai, self.anthropic, self.gemini, self.bedrock):
            m.stop()

    def create_key(self, **fields) -> dict:
        body = {"name": f"fd-{uuid.uuid4().hex[:8]}", **fields}
        r = httpx.post(self.base + "/admin/keys", json=body, headers=auth(MASTER_KEY), timeout=10)
        assert r.status_code == 201, r.text
        return r.json()

    def usage(self, key_id: str, count: int, timeout: float = 5.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        while True:
            r = httpx.get(self.base + "/admin/usage", params={"key_id": key_id}, headers=auth(MASTER_KEY),
                          timeout=10)
            data = r.json().get("data", [])
            if len(data) >= count or time.monotonic() > deadline:
                return data
            time.sleep(0.05)
