"""Mock Cohere v2 API (chat and embed), stdlib only, for test_provider_cohere.py.

Started in-process (``MockCohere().start()``) on 127.0.0.1, ephemeral port. It answers like Cohere
from the recorded payloads in tests/fixtures/cohere/ AND checks every request it receives the way
Cohere would refuse it: wrong path, method, ``Authorization: Bearer <COHERE_KEY>``, content type,
or a body that is not Cohere v2's shape (OpenAI-only fields, lower-case ``tool_choice``, tool
results without ``tool_call_id``, ...) get a Cohere-style ``{"message": ...}`` 4xx whose message
starts with ``mock:``, so a translation bug shows up as a failed request. Every request is
recorded (``requests``, ``last``) for assertions.

Routes: ``POST /v2/chat`` (``stream: true`` -> SSE ``event: <type>`` / ``data: {json}``, ended
after ``message-end``), ``POST /v2/embed``.

Behaviour by the ``model`` of the request (chat):

* ``cohere-tools``      recorded tool-call answer / tool-call stream (TOOL_CALL)
* ``cohere-max-tokens`` recorded MAX_TOKENS answer (stream: the text stream, finish MAX_TOKENS)
* ``cohere-stream-error`` stream that ends with ``finish_reason: ERROR`` (non-stream: same, whole)
* ``cohere-429``        429 ``{"message"}`` with ``retry-after: 7``
* ``cohere-400``        400 ``{"message"}``
* ``cohere-blocked``    498 (Cohere's "unsafe request": prompt blocked)
* ``cohere-500``        500 ``{"message"}``
* anything else         the recorded text stream; non-stream: its whole answer (COMPLETE)

Embed: the recorded float vectors, one per text (cycled), billed input tokens from the fixture.
"""
from __future__ import annotations

import copy
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Optional

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "cohere"
COHERE_KEY = "co-mock-secret-0123456789abcdef"

CHAT_KEYS = {
    "model", "messages", "tools", "strict_tools", "documents", "citation_options", "response_format",
    "safety_mode", "max_tokens", "stop_sequences", "temperature", "seed", "frequency_penalty",
    "presence_penalty", "k", "p", "logprobs", "tool_choice", "thinking", "priority", "stream",
}
EMBED_KEYS = {"model", "texts", "images", "inputs", "input_type", "embedding_types", "output_dimension",
              "truncate", "max_tokens"}
ROLES = {"system", "user", "assistant", "tool"}


def _jsonl(name: str) -> list[dict]:
    return [json.loads(l) for l in (FIXTURES / name).read_text(encoding="utf-8").splitlines() if l.strip()]


def _json(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text(encoding="utf-8"))


TEXT_STREAM = _jsonl("chat.v2.stream.text.decoded.jsonl")
TOOLS_STREAM = _jsonl("chat.v2.stream.tool_calls.decoded.jsonl")
TOOLS_ANSWER = _json("chat.v2.tool_calls.json")
MAX_TOKENS_ANSWER = _json("chat.v2.max_tokens.json")
EMBED_ANSWER = _json("embed.v2.float.json")


def stream_text(events: list[dict]) -> str:
    return "".join(e["delta"]["message"]["content"]["text"] for e in events if e["type"] == "content-delta")


def assemble(events: list[dict]) -> dict:
    """The whole (non-stream) answer a stream stands for."""
    end = next(e for e in events if e["type"] == "message-end")
    return {
        "id": events[0].get("id", "mock"),
        "message": {"role": "assistant", "content": [{"type": "text", "text": stream_text(events)}]},
        "finish_reason": end["delta"]["finish_reason"],
        "usage": end["delta"]["usage"],
    }


def error_stream() -> list[dict]:
    head = TEXT_STREAM[:4]
    return head + [{"type": "message-end", "delta": {"finish_reason": "ERROR", "error": "mock generation failure",
                                                      "usage": {"tokens": {"input_tokens": 5, "output_tokens": 2}}}}]


# --------------------------------------------------------------------------------------------
# Request checks: what Cohere's v2 API would refuse
# --------------------------------------------------------------------------------------------
def _check_content(where: str, content: Any, allowed: set[str]) -> Optional[str]:
    if isinstance(content, str):
        return None
    if not isinstance(content, list):
        return f"{where}.content must be a string or a list"
    for j, p in enumerate(content):
        t = p.get("type") if isinstance(p, dict) else None
        if t not in allowed:
            return f"{where}.content[{j}] has type {t!r}, allowed {sorted(allowed)}"
        if t == "text" and not isinstance(p.get("text"), str):
            return f"{where}.content[{j}].text must be a string"
        if t == "image_url":
            img = p.get("image_url")
            if not isinstance(img, dict) or not isinstance(img.get("url"), str) or set(img) - {"url", "detail"}:
                return f"{where}.content[{j}].image_url must be {{url, detail?}}"
    return None


def check_chat(body: Any) -> Optional[str]:
    if not isinstance(body, dict):
        return "body must be a JSON object"
    extra = set(body) - CHAT_KEYS
    if extra:
        return f"unknown fields {sorted(extra)}"
    if not isinstance(body.get("model"), str) or not body["model"]:
        return "model is required"
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        return "messages must be a non-empty list"
    tool_ids: set[str] = set()
    for i, m in enumerate(msgs):
        where = f"messages[{i}]"
        role = m.get("role") if isinstance(m, dict) else None
        if role not in ROLES:
            return f"{where}.role {role!r} is not one of {sorted(ROLES)}"
        if role == "system":
            err = _check_content(where, m.get("content"), {"text"})
        elif role == "user":
            err = _check_content(where, m.get("content"), {"text", "image_url"})
        elif role == "assistant":
            if set(m) - {"role", "content", "tool_calls", "tool_plan", "citations"}:
                return f"{where} has unknown fields {sorted(set(m) - {'role', 'content', 'tool_calls', 'tool_plan'})}"
            err = None
            if "content" in m:
                err = _check_content(where, m["content"], {"text"})
            for j, tc in enumerate(m.get("tool_calls") or []):
                f = tc.get("function") or {}
                if tc.get("type") != "function" or not isinstance(tc.get("id"), str) \
                        or not isinstance(f.get("name"), str) or not isinstance(f.get("arguments"), str):
                    return f"{where}.tool_calls[{j}] must be {{id, type: function, function: {{name, arguments: str}}}}"
                tool_ids.add(tc["id"])
        else:  # tool
            if set(m) - {"role", "tool_call_id", "content"}:
                return f"{where} has unknown fields"
            if m.get("tool_call_id") not in tool_ids:
                return f"{where}.tool_call_id {m.get('tool_call_id')!r} answers no earlier tool call"
            err = _check_content(where, m.get("content"), {"text", "document"})
        if err:
            return err
    for i, t in enumerate(body.get("tools") or []):
        f = t.get("function") if isinstance(t, dict) else None
        if t.get("type") != "function" or not isinstance(f, dict) or not isinstance(f.get("name"), str):
            return f"tools[{i}] must be {{type: function, function: {{name, ...}}}}"
        if set(f) - {"name", "description", "parameters"}:
            return f"tools[{i}].function has unknown fields {sorted(set(f) - {'name', 'description', 'parameters'})}"
    if "tool_choice" in body and body["tool_choice"] not in ("REQUIRED", "NONE"):
        return f"tool_choice must be REQUIRED or NONE, not {body['tool_choice']!r}"
    if "tool_choice" in body and not body.get("tools"):
        return "tool_choice needs tools"
    rf = body.get("response_format")
    if rf is not None and (rf.get("type") not in ("text", "json_object") or set(rf) - {"type", "json_schema"}):
        return f"response_format {rf!r} is not Cohere's shape"
    if "stop_sequences" in body and not (isinstance(body["stop_sequences"], list)
                                         and all(isinstance(s, str) for s in body["stop_sequences"])):
        return "stop_sequences must be a list of strings"
    if "max_tokens" in body and not (isinstance(body["max_tokens"], int) and body["max_tokens"] > 0):
        return "max_tokens must be a positive integer"
    if "stream" in body and not isinstance(body["stream"], bool):
        return "stream must be a boolean"
    return None


def check_embed(body: Any) -> Optional[str]:
    if not isinstance(body, dict):
        return "body must be a JSON object"
    extra = set(body) - EMBED_KEYS
    if extra:
        return f"unknown fields {sorted(extra)}"
    texts = body.get("texts")
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        return "texts must be a non-empty list of strings"
    if body.get("input_type") not in ("search_document", "search_query", "classification", "clustering"):
        return "input_type is required for embed v3+ models"
    if body.get("embedding_types") != ["float"]:
        return f"mock expects embedding_types ['float'], got {body.get('embedding_types')!r}"
    return None


# --------------------------------------------------------------------------------------------
# Server
# --------------------------------------------------------------------------------------------
@dataclass
class CohereRequest:
    method: str
    path: str
    headers: dict[str, str]  # lower-cased names
    raw_body: bytes
    body: Any
    error: Optional[str]  # what the mock refused, if anything
    received_at: float = field(default_factory=time.monotonic)

    def contains(self, needle: str) -> bool:
        return needle.encode() in self.raw_body


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "mock-cohere/1.0"
    mock: "MockCohere"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            data = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return data
                data += self.rfile.read(size)
                self.rfile.readline()
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _send_json(self, status: int, obj: Any, headers: Optional[dict] = None) -> None:
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()

    def _refuse(self, status: int, message: str) -> None:
        self._send_json(status, {"id": "mock-error", "message": message})

    def _stream(self, events: list[dict], finish: Optional[str] = None) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for e in events:
            if finish and e["type"] == "message-end":
                e = copy.deepcopy(e)
                e["delta"]["finish_reason"] = finish
            data = f"event: {e['type']}\ndata: {json.dumps(e, separators=(',', ':'))}\n\n".encode()
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def do_GET(self) -> None:
        self._refuse(404, "mock: not found")

    def do_POST(self) -> None:
        raw = self._read_body()
        headers = {k.lower(): v for k, v in self.headers.items()}
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        error: Optional[str] = None
        status = 400
        if self.path not in ("/v2/chat", "/v2/embed"):
            error, status = f"mock: no route {self.path}", 404
        elif headers.get("authorization") != f"Bearer {self.mock.key}":
            error, status = "mock: invalid api token", 401
        elif not headers.get("content-type", "").startswith("application/json"):
            error = "mock: content-type must be application/json"
        elif body is None:
            error = "mock: body is not JSON"
        else:
            err = check_chat(body) if self.path == "/v2/chat" else check_embed(body)
            if err:
                error = "mock: " + err
        self.mock._record(CohereRequest("POST", self.path, headers, raw, body, error))
        if error:
            return self._refuse(status, error)
        if self.path == "/v2/embed":
            return self._embed(body)
        self._chat(body)

    def _embed(self, body: dict) -> None:
        ans = copy.deepcopy(EMBED_ANSWER)
        vectors = EMBED_ANSWER["embeddings"]["float"]
        ans["texts"] = body["texts"]
        ans["embeddings"]["float"] = [vectors[i % len(vectors)] for i in range(len(body["texts"]))]
        self._send_json(200, ans)

    def _chat(self, body: dict) -> None:
        model, stream = body["model"], body.get("stream") is True
        if model == "cohere-429":
            return self._send_json(429, {"message": "You are using a Trial key, which is limited to 10 API calls / minute."},
                                   {"retry-after": "7"})
        if model == "cohere-400":
            return self._refuse(400, "invalid request: max_tokens is too large for this model")
        if model == "cohere-blocked":
            return self._refuse(498, "blocked input: please adjust your prompt and try again, as it may be a potential violation of our Usage Guidelines")
        if model == "cohere-500":
            return self._refuse(500, "internal server error, this has been reported to our developers")
        if model == "cohere-tools":
            return self._stream(TOOLS_STREAM) if stream else self._send_json(200, TOOLS_ANSWER)
        if model == "cohere-max-tokens":
            return self._stream(TEXT_STREAM, "MAX_TOKENS") if stream else self._send_json(200, MAX_TOKENS_ANSWER)
        if model == "cohere-stream-error":
            return self._stream(error_stream()) if stream else self._send_json(200, {
                **assemble(error_stream()), "error": "mock generation failure"})
        return self._stream(TEXT_STREAM) if stream else self._send_json(200, assemble(TEXT_STREAM))


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        import sys

        if isinstance(sys.exc_info()[1], OSError):
            return
        super().handle_error(request, client_address)


class MockCohere:
    def __init__(self, key: str = COHERE_KEY):
        self.key = key
        self.port = 0
        self._requests: list[CohereRequest] = []
        self._lock = threading.Lock()
        self._server: Optional[_Server] = None

    def start(self) -> "MockCohere":
        handler = type("BoundCohereHandler", (_Handler,), {"mock": self})
        self._server = _Server(("127.0.0.1", 0), handler)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                         name="mock-cohere", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _record(self, r: CohereRequest) -> None:
        with self._lock:
            self._requests.append(r)

    @property
    def requests(self) -> list[CohereRequest]:
        with self._lock:
            return list(self._requests)

    def with_marker(self, marker: str) -> list[CohereRequest]:
        return [r for r in self.requests if r.contains(marker)]

    def find(self, pred: Callable[[CohereRequest], bool]) -> list[CohereRequest]:
        return [r for r in self.requests if pred(r)]
