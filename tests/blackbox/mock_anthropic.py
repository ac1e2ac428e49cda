"""Mock Anthropic Messages API, stdlib only (http.server on 127.0.0.1, port 0, in a thread).

It answers ``POST /v1/messages`` from the recorded payloads in tests/fixtures/anthropic/ and checks
every request the way Anthropic does before answering: the headers (``x-api-key``,
``anthropic-version: 2023-06-01``, JSON content type), and the body shape (``model``, a positive
``max_tokens``, ``messages`` alternating user/assistant and starting with user, non-empty content, a
top-level ``system`` instead of system messages, ``tool_result`` blocks first in the user message that
follows the ``tool_use`` they answer, no OpenAI-only fields). A request that fails a check gets a 400 in
Anthropic's error shape whose message starts with ``mock:`` so a test sees what was wrong.

``POST /v1/messages/count_tokens`` is checked the same way (no ``max_tokens``, ``stream`` or sampling
fields, which the real endpoint refuses) and answers ``{"input_tokens": COUNT_BASE + <bytes of messages
and system> // 10}``.

Every request is recorded (``requests``: path, lower-cased headers, parsed body). The behaviour is
chosen by the upstream model name (``BEHAVIOURS``).
"""
from __future__ import annotations

import copy
import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Optional

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "anthropic"

ANTHROPIC_KEY = "sk-ant-mock-secret-0123456789"
VERSION = "2023-06-01"
RETRY_AFTER = "7"
COUNT_BASE = 1000
SLOW_PAUSE = 2.5
COUNT_ALLOWED = {"model", "messages", "system", "tools", "tool_choice", "thinking", "mcp_servers"}

BEHAVIOURS = {
    "claude-text": "messages.text.json; stream: messages.stream.text.recorded.sse (raw bytes)",
    "claude-tools": "messages.text_and_tool_use.no_args.json; stream: messages.stream.tool_use.docs-example.sse",
    "claude-text-tool": "stream: messages.stream.text_then_tool_use.decoded.jsonl framed as SSE",
    "claude-refusal": "messages.refusal.json",
    "claude-cache": "messages.text.json with cache_read_input_tokens=100, cache_creation_input_tokens=50",
    "claude-json": "a json_response tool_use answer (checks the forced tool_choice); stream likewise",
    "claude-400": "400 error.400-invalid_request_error.json",
    "claude-429": "429 rate_limit_error with retry-after",
    "claude-529": "529 overloaded_error",
    "claude-500": "500 api_error",
    "claude-stream-error": "stream: message_start, a text delta, then the docs' overloaded `error` event",
    "claude-slow": "stream: the recorded text stream with a SLOW_PAUSE s silence after message_start",
}

ALLOWED = {"model", "max_tokens", "messages", "system", "stop_sequences", "temperature", "top_p", "top_k",
           "metadata", "tools", "tool_choice", "stream", "thinking", "service_tier"}


def fixture_bytes(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def fixture_json(name: str) -> Any:
    return json.loads(fixture_bytes(name))


def jsonl_to_sse(name: str) -> bytes:
    out = []
    for line in fixture_bytes(name).decode().splitlines():
        if line.strip():
            out.append(f"event: {json.loads(line)['type']}\ndata: {line}\n\n")
    return "".join(out).encode()


def error_body(kind: str, message: str) -> bytes:
    return json.dumps({"type": "error", "error": {"type": kind, "message": message},
                       "request_id": "req_mock"}).encode()


def sse(events: list[dict]) -> bytes:
    return "".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n" for e in events).encode()


JSON_ANSWER = {"city": "Paris", "population": 2102650}


def json_tool_stream() -> bytes:
    text = json.dumps(JSON_ANSWER)
    half = len(text) // 2
    return sse([
        {"type": "message_start", "message": {"id": "msg_json_stream", "type": "message", "role": "assistant",
                                              "model": "claude-json", "content": [], "stop_reason": None,
                                              "usage": {"input_tokens": 30, "output_tokens": 1}}},
        {"type": "content_block_start", "index": 0,
         "content_block": {"type": "tool_use", "id": "toolu_json", "name": "json_response", "input": {}}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": text[:half]}},
        {"type": "ping"},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": text[half:]}},
        {"type": "content_block_stop", "index": 0},
        {"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": None},
         "usage": {"output_tokens": 20}},
        {"type": "message_stop"},
    ])


def check_request(path: str, headers: dict[str, str], raw: bytes) -> Optional[str]:
    """What Anthropic would refuse in this request (None when it is fine)."""
    if path != "/v1/messages":
        return f"path {path!r} != '/v1/messages'"
    if headers.get("x-api-key") != ANTHROPIC_KEY:
        return "x-api-key missing or wrong"
    if "authorization" in headers:
        return "unexpected Authorization header"
    if headers.get("anthropic-version") != VERSION:
        return f"anthropic-version {headers.get('anthropic-version')!r} != {VERSION!r}"
    if not headers.get("content-type", "").startswith("application/json"):
        return "content-type is not application/json"
    try:
        body = json.loads(raw)
    except ValueError:
        return "body is not JSON"
    if not isinstance(body, dict):
        return "body is not an object"
    extra = set(body) - ALLOWED
    if extra:
        return f"unexpected fields {sorted(extra)}"
    if not isinstance(body.get("model"), str) or not body["model"]:
        return "model missing"
    mt = body.get("max_tokens")
    if not isinstance(mt, int) or isinstance(mt, bool) or mt < 1:
        return "max_tokens: Field required (a positive integer)"
    system = body.get("system")
    if system is not None and not (isinstance(system, str) or (
            isinstance(system, list) and all(b.get("type") == "text" and b.get("text") for b in system))):
        return "system must be a string or text blocks"
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        return "messages must be a non-empty list"
    prev_tool_ids: set[str] = set()
    for i, m in enumerate(msgs):
        role = m.get("role")
        if role not in ("user", "assistant"):
            return f"messages.{i}.role {role!r} (system messages must go to the top-level system)"
        if i == 0 and role != "user":
            return "first message must use the user role"
        if i > 0 and msgs[i - 1].get("role") == role:
            return f"messages.{i}: roles must alternate between user and assistant"
        content = m.get("content")
        if isinstance(content, str):
            if not content:
                return f"messages.{i}: empty content"
            blocks = []
        elif isinstance(content, list) and content:
            blocks = content
        else:
            return f"messages.{i}: content must be a non-empty string or list"
        seen_other = False
        tool_ids: set[str] = set()
        for j, b in enumerate(blocks):
            t = b.get("type")
            if t == "text":
                if not isinstance(b.get("text"), str) or not b["text"]:
                    return f"messages.{i}.content.{j}: text blocks must be non-empty"
                seen_other = True
            elif t == "image":
                src = b.get("source", {})
                if src.get("type") == "base64":
                    if src.get("media_type") not in ("image/jpeg", "image/png", "image/gif", "image/webp") \
                            or not src.get("data"):
                        return f"messages.{i}.content.{j}: bad base64 image source"
                elif src.get("type") == "url":
                    if not str(src.get("url", "")).startswith(("http://", "https://")):
                        return f"messages.{i}.content.{j}: bad url image source"
                else:
                    return f"messages.{i}.content.{j}: bad image source"
                seen_other = True
            elif t == "tool_use":
                if role != "assistant":
                    return f"messages.{i}.content.{j}: tool_use outside an assistant message"
                if not isinstance(b.get("input"), dict) or not b.get("id") or not b.get("name"):
                    return f"messages.{i}.content.{j}: tool_use needs id, name and an object input"
                tool_ids.add(b["id"])
            elif t == "tool_result":
                if role != "user":
                    return f"messages.{i}.content.{j}: tool_result outside a user message"
                if seen_other:
                    return f"messages.{i}.content.{j}: tool_result blocks must come first"
                if b.get("tool_use_id") not in prev_tool_ids:
                    return f"messages.{i}.content.{j}: tool_use_id {b.get('tool_use_id')!r} has no tool_use " \
                           "in the previous message"
            elif t == "document":
                seen_other = True
            else:
                return f"messages.{i}.content.{j}: unknown block type {t!r}"
        prev_tool_ids = tool_ids
    if "tool_choice" in body:
        tc = body["tool_choice"]
        if not isinstance(tc, dict) or tc.get("type") not in ("auto", "any", "tool", "none"):
            return f"tool_choice {tc!r}"
        if not body.get("tools"):
            return "tool_choice without tools"
    for k, t in enumerate(body.get("tools") or []):
        if set(t) - {"name", "description", "input_schema", "cache_control"} or \
                t.get("input_schema", {}).get("type") != "object":
            return f"tools.{k}: bad tool {t!r}"
    if "stop_sequences" in body and not (isinstance(body["stop_sequences"], list)
                                         and all(isinstance(s, str) for s in body["stop_sequences"])):
        return "stop_sequences must be a list of strings"
    if "temperature" in body and not 0 <= body["temperature"] <= 1:
        return "temperature: must be between 0 and 1"
    if "stream" in body and body["stream"] is not True:
        return "stream must be true when present"
    return None


@dataclass
class Recorded:
    path: str
    headers: dict[str, str]
    body: Any


class MockAnthropic:
    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self.rejected: list[str] = []
        self._lock = threading.Lock()
        self._server: Optional[ThreadingHTTPServer] = None
        self._thread: Optional[threading.Thread] = None
        self.url = ""

    def start(self) -> "MockAnthropic":
        mock = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def do_POST(self) -> None:  # noqa: N802
                raw = self.rfile.read(int(self.headers.get("content-length") or 0))
                headers = {k.lower(): v for k, v in self.headers.items()}
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = None
                with mock._lock:
                    mock.requests.append(Recorded(self.path, headers, body))
                if self.path == "/v1/messages/count_tokens":
                    return mock.count_tokens(self, headers, body)
                problem = check_request(self.path, headers, raw)
                if problem:
                    with mock._lock:
                        mock.rejected.append(problem)
                    status = 401 if "x-api-key" in problem else 404 if problem.startswith("path") else 400
                    kind = {401: "authentication_error", 404: "not_found_error"}.get(status, "invalid_request_error")
                    return self.reply(status, error_body(kind, "mock: " + problem))
                mock.answer(self, body)

            def reply(self, status: int, data: bytes, ctype: str = "application/json",
                      headers: Optional[dict] = None, pieces: int = 1) -> None:
                self.send_response(status)
                self.send_header("content-type", ctype)
                self.send_header("content-length", str(len(data)))
                self.send_header("request-id", "req_mock")
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                # Streams go out in a few uneven pieces, so the gateway sees events split anywhere.
                step = max(1, len(data) // pieces + 7)
                for i in range(0, len(data), step):
                    self.wfile.write(data[i:i + step])
                    self.wfile.flush()
                    if pieces > 1:
                        time.sleep(0.005)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def last(self) -> Recorded:
        with self._lock:
            return self.requests[-1]

    def count(self) -> int:
        with self._lock:
            return len(self.requests)

    # -------------------------------------------------------------------------------- answers
    def count_tokens(self, h: Any, headers: dict[str, str], body: Any) -> None:
        problem = None
        if headers.get("x-api-key") != ANTHROPIC_KEY or headers.get("anthropic-version") != VERSION:
            problem = "count_tokens: x-api-key or anthropic-version missing or wrong"
        elif not isinstance(body, dict) or not body.get("model") or not isinstance(body.get("messages"), list):
            problem = "count_tokens: model and messages are required"
        elif set(body) - COUNT_ALLOWED:
            problem = f"count_tokens: unexpected fields {sorted(set(body) - COUNT_ALLOWED)}"
        if problem:
            with self._lock:
                self.rejected.append(problem)
            return h.reply(400, error_body("invalid_request_error", "mock: " + problem))
        size = len(json.dumps(body["messages"])) + len(json.dumps(body.get("system", "")))
        return h.reply(200, json.dumps({"input_tokens": COUNT_BASE + size // 10}).encode())

    def answer(self, h: Any, body: dict) -> None:
        model = body["model"]
        stream = body.get("stream") is True
        sse_type = "text/event-stream; charset=utf-8"
        if model == "claude-400":
            return h.reply(400, fixture_bytes("error.400-invalid_request_error.json"))
        if model == "claude-429":
            return h.reply(429, error_body("rate_limit_error", "Number of request tokens has exceeded your "
                                                               "per-minute rate limit"),
                           headers={"retry-after": RETRY_AFTER})
        if model == "claude-529":
            return h.reply(529, error_body("overloaded_error", "Overloaded"))
        if model == "claude-500":
            return h.reply(500, error_body("api_error", "Internal server error"))
        if model == "claude-json":
            tc = body.get("tool_choice")
            names = [t["name"] for t in body.get("tools", [])]
            if tc != {"type": "tool", "name": "json_response"} or names != ["json_response"]:
                return h.reply(400, error_body("invalid_request_error", f"mock: expected the forced json_response "
                                                                        f"tool, got {tc!r} {names!r}"))
            if stream:
                return h.reply(200, json_tool_stream(), sse_type, pieces=4)
            msg = {"id": "msg_json", "type": "message", "role": "assistant", "model": "claude-json",
                   "content": [{"type": "tool_use", "id": "toolu_json", "name": "json_response",
                                "input": JSON_ANSWER}],
                   "stop_reason": "tool_use", "stop_sequence": None,
                   "usage": {"input_tokens": 30, "output_tokens": 20}}
            return h.reply(200, json.dumps(msg).encode())
        if stream and model == "claude-slow":
            data = fixture_bytes("messages.stream.text.recorded.sse")
            cut = data.index(b"event: content_block_start")
            h.send_response(200)
            h.send_header("content-type", sse_type)
            h.send_header("content-length", str(len(data)))
            h.end_headers()
            h.wfile.write(data[:cut])
            h.wfile.flush()
            time.sleep(SLOW_PAUSE)
            h.wfile.write(data[cut:])
            h.wfile.flush()
            return None
        if stream:
            if model == "claude-tools":
                data = fixture_bytes("messages.stream.tool_use.docs-example.sse")
            elif model == "claude-text-tool":
                data = jsonl_to_sse("messages.stream.text_then_tool_use.decoded.jsonl")
            elif model == "claude-stream-error":
                start = fixture_bytes("messages.stream.text.recorded.sse")
                cut = start.index(b"event: content_block_stop")
                data = start[:cut] + fixture_bytes("stream.error-event.overloaded.docs-example.sse")
            else:
                data = fixture_bytes("messages.stream.text.recorded.sse")
            return h.reply(200, data, sse_type, pieces=5)
        if model == "claude-tools":
            return h.reply(200, fixture_bytes("messages.text_and_tool_use.no_args.json"))
        if model == "claude-refusal":
            return h.reply(200, fixture_bytes("messages.refusal.json"))
        msg = fixture_json("messages.text.json")
        if model == "claude-cache":
            msg = copy.deepcopy(msg)
            msg["usage"]["cache_read_input_tokens"] = 100
            msg["usage"]["cache_creation_input_tokens"] = 50
        return h.reply(200, json.dumps(msg).encode())


if __name__ == "__main__":  # manual poking
    m = MockAnthropic().start()
    print(m.url, flush=True)
    threading.Event().wait()
