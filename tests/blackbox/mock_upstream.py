"""Mock OpenAI / Azure OpenAI / OpenAI-compatible provider, stdlib only.

Started in-process by the pytest fixtures (``MockUpstream().start()``), bound to 127.0.0.1 on an
ephemeral port. It answers from the recorded provider payloads in tests/fixtures/ and records every
request it receives so tests can assert on what the gateway sent upstream.

Routes (any path prefix before the endpoint is accepted, e.g. ``/v1`` or ``/compat/v1``):

* ``POST {prefix}/chat/completions``, ``POST {prefix}/completions``, ``POST {prefix}/embeddings``
  (OpenAI style; model in the JSON body; ``Authorization: Bearer <openai_key>`` required when the
  prefix is ``/v1``; the ``/compat/...`` prefix takes no key, like a local Ollama).
* ``POST {prefix}/responses`` (OpenAI's Responses API, ``/v1`` prefix, same key) and Azure's
  ``POST /openai/responses?api-version=...`` (model = deployment in the body): the recorded Responses
  payloads of tests/fixtures/openai-responses/ (text; ``mock-tools``: the recorded function call, and
  text once the input holds a ``function_call_output``); streams as ``event:``/``data:`` pairs.
* ``GET {prefix}/responses/{id}`` (and Azure's ``/openai/responses/{id}``): the recorded response with
  that id, as OpenAI returns a stored one (``resp_missing``: 404).
* ``POST /openai/deployments/{deployment}/(chat/completions|completions|embeddings)?api-version=...``
  (Azure style; behaviour chosen by the deployment name; header ``api-key: <azure_key>`` required;
  missing ``api-version`` -> 404 like Azure).

Behaviour is chosen by the upstream model name (or Azure deployment name), see ``BEHAVIOURS``.
Tests may also program a model name with the fault and delay models (see ``FAULTS``):
``mock.set_faults("rt-a", "500", "429:ra=1")`` answers the next two requests for ``rt-a`` with those
faults, in order (``then=`` names a fault for every request after them), and
``mock.set_delay("rt-b", 0.05)`` makes every answer for ``rt-b`` wait 50 ms first
(``mock-delay-<ms>`` model names do the same without programming).

Streams follow real upstream behaviour: when the request has ``stream_options.include_usage: true``
every chunk carries ``usage: null`` and a final ``choices: []`` chunk carries the usage; without it
there is no ``usage`` key and no usage chunk. ``mock-mistral*`` behaves like Mistral instead (usage
on the finish chunk whatever the request says, T18). The Azure chat stream starts with the recorded
``choices: []`` / empty id+model chunk with ``prompt_filter_results`` (T4).

Run standalone for manual poking: ``python mock_upstream.py [port]``.
"""
from __future__ import annotations

import base64
import copy
import json
import re
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Optional
from urllib.parse import parse_qs, urlsplit

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"

OPENAI_KEY = "sk-mock-openai-secret-0123456789"
AZURE_KEY = "mock-azure-secret-abcdef"

# Upstream model / deployment names understood by the mock.
BEHAVIOURS = {
    "mock-error-500": "500 with an OpenAI server_error body",
    "mock-error-400": "400 with the recorded OpenAI unsupported_parameter error",
    "mock-error-429": "429 rate_limit_exceeded (+ retry-after header)",
    "mock-hang": "sleeps HANG_SECONDS before answering (longer than the gateway timeout)",
    "mock-garbage": "200 with a non-JSON body",
    "mock-stream-fail": "stream: 2 chunks then the connection is cut (no [DONE]); non-stream: connection cut",
    "mock-slow-stream": "stream events spaced SLOW_GAP seconds apart",
    "mock-error-in-200": "200 with an OpenAI error object as the body (some compatible hosts do this)",
    "mock-error-after-content": "stream: 2 chunks (role, content), then an OpenAI error event",
    "mock-drip": "stream: 2 chunks, then an event that never ends, one byte every DRIP_GAP seconds",
    "mock-close-delimited": "stream body without chunked encoding or Content-Length, ended by closing the connection",
    "mock-tools": "recorded OpenAI tool_calls stream (non-stream: assembled from it)",
    "mock-cached": "like the default, but usage reports prompt_tokens_details.cached_tokens = CACHED_TOKENS",
    "mock-mistral": "Mistral-like text stream: usage on the finish chunk even without stream_options",
    "mock-mistral-tools": "recorded Mistral tool_calls stream verbatim",
    "mock-delay-<ms>": "the normal answer after <ms> milliseconds",
    "<anything else>": "recorded OpenAI payload (or Azure for the Azure routes)",
}
# Fault models, programmed per upstream model name with MockUpstream.set_faults().
FAULTS = {
    "ok": "the model's normal answer",
    "500": "500 with an OpenAI server_error body",
    "503[:ra=S]": "503 server_error (with Retry-After: S when given)",
    "429[:ra=S]": "429 rate_limit_exceeded with Retry-After: S (default 1)",
    "400": "400 with the recorded OpenAI unsupported_parameter error",
    "context": "400 context_length_exceeded",
    "cut": "the connection is cut before any answer",
    "hang": "no answer for HANG_SECONDS, then the connection is cut",
    "stream-cut-first": "stream: 200 and headers, then the connection is cut before the first event",
    "stream-error-first": "stream: 200, then an OpenAI error event as the first event",
    "stream-stall-first=S": "stream: 200 and headers, then S seconds before the first event",
    "stream-cut-after": "stream: 2 chunks with content, then the connection is cut",
    "502": "502 with an OpenAI server_error body",
    "reset-headers": "200 and its headers (a Content-Length, or a stream's), then the connection is reset (SO_LINGER 0)",
    "reset-body": "non-stream: 200, headers and half the body, then a reset; stream: 2 chunks with content, then a reset",
    "garbage": "200 with a non-JSON (HTML) body, stream or not",
    "error-in-200": "200 with an OpenAI error object as its JSON body, stream or not",
    "error-after": "stream: 2 chunks with content, then an OpenAI error event (non-stream: the normal answer)",
    "drip": "200 and headers, then one byte every DRIP_GAP s: a body that never ends (stream: after 2 chunks, an event that never ends)",
    "huge=N": "200 with an N-byte body (stream: one N-byte event after 2 chunks with content)",
    "stall=S": "no answer for S s, watching the connection: a close by the gateway is recorded (closed_by_peer)",
    "slow=S": "stream: the first chunks, then a content chunk every S s for 60 chunks; a close by the gateway is recorded",
}
_CONTEXT_ERROR = {
    "error": {
        "message": "This model's maximum context length is 128000 tokens. However, your messages resulted in "
        "131072 tokens. Please reduce the length of the messages.",
        "type": "invalid_request_error",
        "param": "messages",
        "code": "context_length_exceeded",
    }
}
HANG_SECONDS = 6.0
DRIP_GAP = 0.2
DRIP_BYTES = 40
SLOW_GAP = 0.2
CACHED_TOKENS = 64

_PROVIDER_ERROR_500 = {
    "error": {
        "message": "The server had an error while processing your request. Sorry about that!",
        "type": "server_error",
        "param": None,
        "code": None,
    }
}
_PROVIDER_ERROR_429 = {
    "error": {
        "message": "Rate limit reached for gpt-4o-mini in organization org-mock on requests per min (RPM): "
        "Limit 3, Used 3, Requested 1. Please try again in 20s.",
        "type": "requests",
        "param": None,
        "code": "rate_limit_exceeded",
    }
}
GARBAGE_BODY = b"<html><body><h1>502 Bad Gateway</h1>upstream proxy hiccup</body></html>"


# --------------------------------------------------------------------------------------------
# Fixture loading
# --------------------------------------------------------------------------------------------
def _read_sse_json(path: Path) -> list[dict]:
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("data: ") and line[6:].strip() != "[DONE]":
            out.append(json.loads(line[6:]))
    return out


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(l) for l in path.read_text(encoding="utf-8").splitlines() if l.strip()]


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def assemble_chat_completion(chunks: list[dict]) -> dict:
    """Build the non-streaming ``chat.completion`` equivalent of a recorded chunk stream.

    (No recorded non-streaming OpenAI chat completion exists in the fixtures; this derives one.)
    """
    first = next(c for c in chunks if c.get("choices"))
    content: Optional[str] = None
    tool_calls: dict[int, dict] = {}
    finish = None
    usage = None
    extra_choice: dict = {}
    for c in chunks:
        if c.get("usage"):
            usage = c["usage"]
        for ch in c.get("choices", []):
            d = ch.get("delta") or {}
            if d.get("content") is not None:
                content = (content or "") + d["content"]
            for i, tc in enumerate(d.get("tool_calls") or []):
                idx = tc.get("index", i)
                slot = tool_calls.setdefault(
                    idx, {"id": None, "type": "function", "function": {"name": "", "arguments": ""}}
                )
                if tc.get("id"):
                    slot["id"] = tc["id"]
                fn = tc.get("function") or {}
                if fn.get("name"):
                    slot["function"]["name"] = fn["name"]
                slot["function"]["arguments"] += fn.get("arguments") or ""
            if ch.get("finish_reason"):
                finish = ch["finish_reason"]
            if "content_filter_results" in ch and ch["content_filter_results"]:
                extra_choice["content_filter_results"] = ch["content_filter_results"]
    message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": None, "annotations": []}
    if tool_calls:
        message["tool_calls"] = [tool_calls[k] for k in sorted(tool_calls)]
    out: dict[str, Any] = {
        "id": first["id"],
        "object": "chat.completion",
        "created": first["created"],
        "model": first["model"],
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish, **extra_choice}],
    }
    if usage:
        out["usage"] = usage
    for k in ("service_tier", "system_fingerprint", "prompt_filter_results"):
        for c in chunks:
            if k in c:
                out[k] = c[k]
                break
    return out


class Fixtures:
    def __init__(self, root: Path = FIXTURES):
        self.chat_stream = _read_sse_json(root / "openai/chat.completions.stream.text.include_usage.sse")
        self.tools_stream = _read_sse_json(root / "openai/chat.completions.stream.tool_calls.include_usage.sse")
        self.completion_stream = _read_jsonl(root / "openai/completions.stream.include_usage.decoded.jsonl")
        self.completion = _read_json(root / "openai/completions.text.length.json")
        self.embeddings = _read_json(root / "openai/embeddings.float.json")
        self.error_400 = _read_json(root / "openai/error.400-invalid_request_error.unsupported_parameter.json")
        self.azure_stream = _read_jsonl(
            root / "azure/chat.completions.stream.model-router.content_filter_results.decoded.jsonl"
        )
        self.mistral_tools_stream = _read_jsonl(root / "mistral/chat.completion.chunks.tool_calls.decoded.jsonl")
        self.responses_text_stream = _read_jsonl(root / "openai-responses/issue-20047-openai-responses.chunks.txt")
        self.responses_tool_stream = _read_jsonl(root / "openai-responses/issue-19493-gpt-5.1-tool-call.chunks.txt")
        self.responses_text = _read_json(root / "openai-responses/issue-20047-openai-responses.json")
        self.chat = assemble_chat_completion(self.chat_stream)
        self.tools = assemble_chat_completion(self.tools_stream)
        self.azure_chat = assemble_chat_completion(self.azure_stream)
        self.mistral_stream = self._mistral_text_stream()

    def _mistral_text_stream(self) -> list[dict]:
        """Mistral-style text stream: the recorded Mistral first chunk and usage numbers, the text
        deltas of the recorded OpenAI stream, usage on the finish chunk, no usage:null fields (T18)."""
        m_first = self.mistral_tools_stream[0]
        m_usage = self.mistral_tools_stream[-1]["usage"]
        base = {k: m_first[k] for k in ("id", "object", "created", "model")}
        out = [copy.deepcopy(m_first)]
        for c in self.chat_stream[1:]:
            for ch in c.get("choices", []):
                if ch["delta"].get("content"):
                    out.append({**base, "choices": [
                        {"index": 0, "delta": {"content": ch["delta"]["content"]}, "finish_reason": None, "logprobs": None}
                    ]})
        out.append({**base, "choices": [{"index": 0, "delta": {"content": ""}, "finish_reason": "stop", "logprobs": None}],
                    "usage": dict(m_usage)})
        return out

    @property
    def chat_usage(self) -> dict:
        return self.chat_stream[-1]["usage"]

    @property
    def chat_text(self) -> str:
        return self.chat["choices"][0]["message"]["content"]


# --------------------------------------------------------------------------------------------
# Request recording
# --------------------------------------------------------------------------------------------
@dataclass
class RecordedRequest:
    method: str
    path: str  # without query
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-cased names
    raw_body: bytes
    body: Any  # parsed JSON or None
    api: str  # "openai" | "compat" | "azure" | "unknown"
    endpoint: str  # "chat" | "completions" | "embeddings" | ""
    model: Optional[str]  # body model, or Azure deployment
    received_at: float = field(default_factory=time.monotonic)

    def contains(self, needle: str) -> bool:
        return needle.encode() in self.raw_body


# --------------------------------------------------------------------------------------------
# HTTP handler
# --------------------------------------------------------------------------------------------
_AZURE_RE = re.compile(r"^/openai/deployments/([^/]+)/(chat/completions|completions|embeddings)$")
_AZURE_RESPONSES_RE = re.compile(r"^/openai/responses$")
_RESPONSE_GET_RE = re.compile(r"^(/[^?]*?)?/responses/([^/]+)$")
_OPENAI_RE = re.compile(r"^(/[^?]*?)?/(chat/completions|completions|embeddings|responses)$")
_ENDPOINT = {"chat/completions": "chat", "completions": "completions", "embeddings": "embeddings",
             "responses": "responses"}


class _ClientGone(Exception):
    pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "mock-upstream/1.0"
    mock: "MockUpstream"  # set on the subclass

    def log_message(self, format: str, *args: Any) -> None:  # silence
        pass

    # ---- plumbing ---------------------------------------------------------------------------
    def _read_body(self) -> bytes:
        te = (self.headers.get("Transfer-Encoding") or "").lower()
        if "chunked" in te:
            data = b""
            while True:
                line = self.rfile.readline()
                size = int(line.split(b";")[0].strip() or b"0", 16)
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
        self._send_bytes(status, body, "application/json", headers)

    def _send_bytes(self, status: int, body: bytes, ctype: str, headers: Optional[dict] = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("x-request-id", f"req_mock_{id(self):x}")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()

    def _start_stream(self, close_delimited: bool = False) -> None:
        self._close_delimited = close_delimited
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        if close_delimited:
            self.send_header("Connection", "close")
            self.close_connection = True
        else:
            self.send_header("Transfer-Encoding", "chunked")
        self.send_header("x-request-id", f"req_mock_{id(self):x}")
        self.end_headers()
        self.wfile.flush()

    def _chunk(self, data: bytes) -> None:
        try:
            if getattr(self, "_close_delimited", False):
                if data:
                    self.wfile.write(data)
            else:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, OSError) as e:
            raise _ClientGone() from e

    def _event(self, obj: Any) -> None:
        payload = obj if isinstance(obj, str) else json.dumps(obj, separators=(",", ":"))
        self._chunk(f"data: {payload}\n\n".encode())

    def _end_stream(self) -> None:
        self._chunk(b"")  # zero-length chunk terminates the chunked body ("0\r\n\r\n")

    def _cut_connection(self) -> None:
        """Close the TCP connection abruptly (RST), without finishing the HTTP message."""
        self.close_connection = True
        try:
            self.wfile.flush()
        except OSError:
            pass
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        try:
            self.connection.close()
        except OSError:
            pass

    def _error(self, status: int, message: str, type_: str = "invalid_request_error", code: Optional[str] = None,
               param: Optional[str] = None) -> None:
        self._send_json(status, {"error": {"message": message, "type": type_, "param": param, "code": code}})

    # ---- methods ----------------------------------------------------------------------------
    def do_GET(self) -> None:
        self._record_and_dispatch("GET")

    def do_POST(self) -> None:
        self._record_and_dispatch("POST")

    def do_PUT(self) -> None:
        self._record_and_dispatch("PUT")

    def do_DELETE(self) -> None:
        self._record_and_dispatch("DELETE")

    def _record_and_dispatch(self, method: str) -> None:
        try:
            raw = self._read_body()
        except Exception:
            self.close_connection = True
            return
        parts = urlsplit(self.path)
        path, query = parts.path, parse_qs(parts.query, keep_blank_values=True)
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        api, endpoint, model = "unknown", "", None
        m = _AZURE_RE.match(path)
        if m:
            api, endpoint, model = "azure", _ENDPOINT[m.group(2)], m.group(1)
        elif _AZURE_RESPONSES_RE.match(path):
            api, endpoint = "azure", "responses"
            model = body.get("model") if isinstance(body, dict) else None
        elif method == "GET" and _RESPONSE_GET_RE.match(path):
            m = _RESPONSE_GET_RE.match(path)
            api = "azure" if (m.group(1) or "") == "/openai" else "openai"
            endpoint, model = "responses-get", m.group(2)
        else:
            m = _OPENAI_RE.match(path)
            if m:
                prefix = m.group(1) or ""
                api = "compat" if prefix.startswith("/compat") else "openai"
                endpoint = _ENDPOINT[m.group(2)]
                model = body.get("model") if isinstance(body, dict) else None
        rec = RecordedRequest(
            method=method, path=path, query=query,
            headers={k.lower(): v for k, v in self.headers.items()},
            raw_body=raw, body=body, api=api, endpoint=endpoint, model=model,
        )
        self.mock._record(rec)
        try:
            self._dispatch(rec)
        except _ClientGone:
            self.close_connection = True
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _dispatch(self, r: RecordedRequest) -> None:
        mock = self.mock
        if r.api == "unknown":
            return self._error(404, f"Invalid URL ({r.method} {r.path})", code="unknown_url")
        if r.endpoint == "responses-get":
            if r.api == "openai" and r.headers.get("authorization") != f"Bearer {mock.openai_key}":
                return self._error(401, "Incorrect API key provided: mock.", code="invalid_api_key")
            if r.model == "resp_missing":
                return self._error(404, "Response with id 'resp_missing' not found.", param="response_id")
            stored = copy.deepcopy(mock.fx.responses_text)
            stored["id"] = r.model
            return self._send_json(200, stored)
        if r.method != "POST":
            return self._error(405, f"Method {r.method} not allowed", code="method_not_allowed")
        # --- auth ---
        if r.api == "openai":
            if r.headers.get("authorization") != f"Bearer {mock.openai_key}":
                return self._error(401, "Incorrect API key provided: mock.", code="invalid_api_key")
        elif r.api == "azure":
            if "api-version" not in r.query:
                return self._send_json(404, {"error": {"code": "404", "message": "Resource not found"}})
            if r.headers.get("api-key") != mock.azure_key:
                return self._send_json(401, {"error": {
                    "code": "401",
                    "message": "Access denied due to invalid subscription key or wrong API endpoint. "
                               "Make sure to provide a valid key for an active subscription and use a "
                               "correct regional API endpoint for your resource."}})
        if not isinstance(r.body, dict):
            return self._error(400, "We could not parse the JSON body of your request.", code=None)
        if r.api != "azure" and not r.model:
            return self._error(400, "you must provide a model parameter", param="model")

        model = r.model or ""
        stream = bool(r.body.get("stream"))
        include_usage = bool((r.body.get("stream_options") or {}).get("include_usage"))

        # --- programmed delay and fault models ---
        delay = mock.delay_for(model)
        if delay and mock._stopping.wait(delay):
            return self._cut_connection()
        fault = mock._take_fault(model)
        self._fault_model = model
        if fault and fault != "ok" and self._fault(fault, stream, include_usage):
            return

        # --- behaviours independent of the endpoint ---
        if model == "mock-error-500":
            return self._send_json(500, _PROVIDER_ERROR_500)
        if model == "mock-error-400":
            return self._send_json(400, mock.fx.error_400)
        if model == "mock-error-429":
            return self._send_json(429, _PROVIDER_ERROR_429, {"retry-after": "20"})
        if model == "mock-hang":
            mock._stopping.wait(mock.hang_seconds)
            if mock._stopping.is_set():
                return self._cut_connection()
            # fall through to a normal answer (the gateway should have given up already)
        if model == "mock-garbage":
            return self._send_bytes(200, GARBAGE_BODY, "text/html")
        if model == "mock-error-in-200":
            return self._send_json(200, _PROVIDER_ERROR_500)
        if model == "mock-stream-fail" and not stream:
            return self._cut_connection()

        fx = mock.fx
        if r.endpoint == "embeddings":
            inp = r.body.get("input")
            n = len(inp) if isinstance(inp, list) and inp and not isinstance(inp[0], int) else 1
            out = copy.deepcopy(fx.embeddings)
            vecs = fx.embeddings["data"]
            out["data"] = [{**copy.deepcopy(vecs[i % len(vecs)]), "index": i} for i in range(n)]
            if r.body.get("encoding_format") == "base64":  # real API: little-endian float32, base64 (T3)
                for d in out["data"]:
                    d["embedding"] = base64.b64encode(
                        struct.pack(f"<{len(d['embedding'])}f", *d["embedding"])).decode()
            return self._send_json(200, out)

        if r.endpoint == "responses":
            return self._responses(r.body, model, stream)

        if r.endpoint == "completions":
            if not stream:
                return self._send_json(200, fx.completion)
            return self._stream(fx.completion_stream, include_usage, model)

        # chat
        if r.api == "azure":
            chunks, full = fx.azure_stream, fx.azure_chat
        elif model == "mock-tools":
            chunks, full = fx.tools_stream, fx.tools
        elif model == "mock-mistral":
            chunks, full = fx.mistral_stream, assemble_chat_completion(fx.mistral_stream)
        elif model == "mock-mistral-tools":
            chunks, full = fx.mistral_tools_stream, assemble_chat_completion(fx.mistral_tools_stream)
        elif model == "mock-cached":
            chunks, full = copy.deepcopy(fx.chat_stream), copy.deepcopy(fx.chat)
            chunks[-1]["usage"]["prompt_tokens_details"]["cached_tokens"] = CACHED_TOKENS
            full["usage"]["prompt_tokens_details"]["cached_tokens"] = CACHED_TOKENS
        else:
            chunks, full = fx.chat_stream, fx.chat
        if not stream:
            return self._send_json(200, full)
        return self._stream(chunks, include_usage, model, verbatim=model.startswith("mock-mistral"))

    def _fault(self, fault: str, stream: bool, include_usage: bool) -> bool:
        """Answers with fault model ``fault`` (see FAULTS); False when the normal answer should follow."""
        name, _, arg = fault.partition(":")
        name, _, value = name.partition("=")
        retry_after = arg[3:] if arg.startswith("ra=") else None
        if name == "500":
            self._send_json(500, _PROVIDER_ERROR_500)
        elif name == "503":
            self._send_json(503, _PROVIDER_ERROR_500, {"retry-after": retry_after} if retry_after else None)
        elif name == "429":
            self._send_json(429, _PROVIDER_ERROR_429, {"retry-after": retry_after or "1"})
        elif name == "400":
            self._send_json(400, self.mock.fx.error_400)
        elif name == "context":
            self._send_json(400, _CONTEXT_ERROR)
        elif name == "cut":
            self._cut_connection()
        elif name == "hang":
            self.mock._stopping.wait(self.mock.hang_seconds)
            self._cut_connection()
        elif name == "stream-cut-first" and stream:
            self._start_stream()
            self._cut_connection()
        elif name == "stream-error-first" and stream:
            self._start_stream()
            self._event(_PROVIDER_ERROR_500)
            self._event("[DONE]")
            self._end_stream()
        elif name == "stream-stall-first":
            if not stream:
                return self.mock._stopping.wait(float(value or 1)) or False
            self._start_stream()
            if self.mock._stopping.wait(float(value or 1)):
                self._cut_connection()
                return True
            self._stream(self.mock.fx.chat_stream, include_usage, "", headers_sent=True)
        elif name == "stream-cut-after" and stream:
            self._stream(self.mock.fx.chat_stream, include_usage, "mock-stream-fail")
        elif name == "502":
            self._send_json(502, _PROVIDER_ERROR_500)
        elif name == "reset-headers":
            if stream:
                self._start_stream()
            else:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "4096")
                self.end_headers()
            self._cut_connection()
        elif name == "reset-body" and not stream:
            body = json.dumps(self.mock.fx.chat).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self._cut_connection()
        elif name == "reset-body":
            self._stream(self.mock.fx.chat_stream, include_usage, "mock-stream-fail")
        elif name == "garbage":
            self._send_bytes(200, GARBAGE_BODY, "text/html")
        elif name == "error-in-200":
            self._send_json(200, _PROVIDER_ERROR_500)
        elif name == "error-after" and stream:
            self._stream(self.mock.fx.chat_stream, include_usage, "mock-error-after-content")
        elif name == "drip" and stream:
            self._stream(self.mock.fx.chat_stream, include_usage, "mock-drip")
        elif name == "drip":
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", "100000")
            self.end_headers()
            self._drip(b"{")
        elif name == "huge":
            self._huge(int(value), stream)
        elif name == "stall":
            self._stall(float(value or 1))
        elif name == "slow" and stream:
            self._slow(float(value or 0.2), include_usage)
        elif name.startswith("stream-") or name in ("error-after", "slow"):
            return False  # a stream fault on a non-stream request: the normal answer
        else:
            raise ValueError(f"unknown fault model {fault!r}")
        return True

    def _drip(self, first: bytes) -> None:
        """Writes ``first``, then one byte every DRIP_GAP s until the peer goes or DRIP_BYTES are sent."""
        try:
            self.wfile.write(first)
            self.wfile.flush()
            for _ in range(DRIP_BYTES):
                if self.mock._stopping.wait(DRIP_GAP):
                    break
                self.wfile.write(b" ")
                self.wfile.flush()
        except OSError:
            self.mock._closed_by_peer(self._fault_model)
            return
        self._cut_connection()

    def _huge(self, size: int, stream: bool) -> None:
        """A ``size``-byte answer, sent in 64 KiB writes (stops when the peer goes)."""
        piece = b"x" * 65536
        try:
            if stream:
                self._start_stream()
                for ev in self.mock.fx.chat_stream[:2]:  # role, then content
                    self._event(ev)
                self._chunk(b'data: {"pad":"')
                left = size
                while left > 0:
                    self._chunk(piece[:left])
                    left -= len(piece)
                self._chunk(b'"}\n\n')
                self._event("[DONE]")
                self._end_stream()
                return
            head = b'{"id":"chatcmpl-huge","object":"chat.completion","created":1,"model":"m","choices":[],"pad":"'
            tail = b'"}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(size))
            self.end_headers()
            self.wfile.write(head)
            left = size - len(head) - len(tail)
            while left > 0:
                self.wfile.write(piece[:left])
                left -= len(piece)
            self.wfile.write(tail)
            self.wfile.flush()
        except (_ClientGone, OSError):
            self.mock._closed_by_peer(self._fault_model)
            self.close_connection = True

    def _peer_closed(self, wait: float) -> bool:
        """Waits up to ``wait`` s for the peer to close the connection; True if it did."""
        import select
        readable, _, _ = select.select([self.connection], [], [], wait)
        if not readable:
            return False
        try:
            return self.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    def _stall(self, seconds: float) -> None:
        until = time.monotonic() + seconds
        while time.monotonic() < until and not self.mock._stopping.is_set():
            if self._peer_closed(min(0.05, max(0.0, until - time.monotonic()))):
                self.mock._closed_by_peer(self._fault_model)
                self.close_connection = True
                return
        self._send_json(200, self.mock.fx.chat)

    def _slow(self, gap: float, include_usage: bool) -> None:
        first = self.mock.fx.chat_stream[0]
        base = {k: first[k] for k in ("id", "object", "created", "model")}
        try:
            self._start_stream()
            self._event(first)
            for _ in range(60):
                if self._peer_closed(gap):
                    raise _ClientGone()
                self._event({**base, "choices": [{"index": 0, "delta": {"content": "tick "}, "finish_reason": None}]})
            self._event({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
            if include_usage:
                self._event({**base, "choices": [], "usage": {"prompt_tokens": 10, "completion_tokens": 60,
                                                              "total_tokens": 70}})
            self._event("[DONE]")
            self._end_stream()
        except (_ClientGone, OSError):
            self.mock._closed_by_peer(self._fault_model)
            self.close_connection = True

    def _responses(self, body: dict, model: str, stream: bool) -> None:
        """The Responses API from the recorded payloads (the real API refuses chat-only fields)."""
        for bad in ("messages", "stream_options", "max_tokens"):
            if bad in body:
                return self._error(400, f"Unknown parameter: '{bad}'.", param=bad, code="unknown_parameter")
        if "input" not in body:
            return self._error(400, "Missing required parameter: 'input'.", param="input",
                               code="missing_required_parameter")
        fx = self.mock.fx
        items = body["input"] if isinstance(body["input"], list) else []
        answered = any(isinstance(i, dict) and i.get("type") == "function_call_output" for i in items)
        events = copy.deepcopy(fx.responses_tool_stream if model == "mock-tools" and not answered
                               else fx.responses_text_stream)
        if not stream:
            if model == "mock-tools" and not answered:
                return self._send_json(200, events[-1]["response"])
            return self._send_json(200, fx.responses_text)
        self._start_stream()
        for ev in events:
            self._chunk(f"event: {ev['type']}\ndata: {json.dumps(ev, separators=(',', ':'))}\n\n".encode())
        self._end_stream()

    def _stream(self, chunks: list[dict], include_usage: bool, model: str, verbatim: bool = False,
                headers_sent: bool = False) -> None:
        """Replay ``chunks`` (recorded with include_usage=true) the way the real API would."""
        events: list[dict] = []
        for c in chunks:
            c = copy.deepcopy(c)
            if not verbatim and not include_usage:
                if c.get("usage") and c.get("choices") == []:
                    continue  # the usage-only chunk exists only when asked for
                c.pop("usage", None)
            events.append(c)
        if not headers_sent:
            self._start_stream(close_delimited=model == "mock-close-delimited")
        gap = self.mock.slow_gap if model == "mock-slow-stream" else 0.0
        for i, ev in enumerate(events):
            if model == "mock-stream-fail" and i == 2:
                return self._cut_connection()
            if model == "mock-error-after-content" and i == 2:
                self._event(_PROVIDER_ERROR_500)
                return self._end_stream()
            if model == "mock-drip" and i == 2:
                self._chunk(b"data: {")
                for _ in range(DRIP_BYTES):
                    if self.mock._stopping.wait(DRIP_GAP):
                        break
                    try:
                        self._chunk(b"x")
                    except OSError:
                        return  # the gateway gave up on us, as it should
                return self._cut_connection()
            if gap and i:
                if self.mock._stopping.wait(gap):
                    return self._cut_connection()
            self._event(ev)
        if gap:
            self.mock._stopping.wait(gap)
        self._event("[DONE]")
        self._end_stream()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def handle_error(self, request: Any, client_address: Any) -> None:
        import sys

        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError, OSError)):
            return  # peers closing pooled keep-alive connections abruptly is normal
        super().handle_error(request, client_address)


# --------------------------------------------------------------------------------------------
# Public object
# --------------------------------------------------------------------------------------------
class MockUpstream:
    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, openai_key: str = OPENAI_KEY,
                 azure_key: str = AZURE_KEY, hang_seconds: float = HANG_SECONDS, slow_gap: float = SLOW_GAP):
        self.host, self.port = host, port
        self.openai_key, self.azure_key = openai_key, azure_key
        self.hang_seconds, self.slow_gap = hang_seconds, slow_gap
        self.fx = Fixtures()
        self._requests: list[RecordedRequest] = []
        self._faults: dict[str, list[str]] = {}
        self._fault_after: dict[str, str] = {}
        self._delays: dict[str, float] = {}
        self._closed: dict[str, int] = {}
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._stopping = threading.Event()
        self._server: Optional[_Server] = None
        self._thread: Optional[threading.Thread] = None

    # lifecycle
    def start(self) -> "MockUpstream":
        handler = type("BoundHandler", (_Handler,), {"mock": self})
        self._server = _Server((self.host, self.port), handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="mock-upstream", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._server:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> "MockUpstream":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # fault and delay models
    def set_faults(self, model: str, *faults: str, then: Optional[str] = None) -> None:
        """The next requests for ``model`` get ``faults`` in order (FAULTS), then ``then`` (None: normal)."""
        for f in (*faults, *([then] if then else [])):
            base = f.partition(":")[0].partition("=")[0]
            if not any(k.partition("[")[0].partition("=")[0] == base for k in FAULTS):
                raise ValueError(f"unknown fault model {f!r}")
        with self._lock:
            self._faults[model] = list(faults)
            if then:
                self._fault_after[model] = then
            else:
                self._fault_after.pop(model, None)

    def set_delay(self, model: str, seconds: float) -> None:
        """Every answer for ``model`` waits ``seconds`` first (0: no wait)."""
        with self._lock:
            self._delays[model] = seconds

    def delay_for(self, model: str) -> float:
        m = re.fullmatch(r"mock-delay-(\d+)", model)
        if m:
            return int(m.group(1)) / 1000
        with self._lock:
            return self._delays.get(model, 0.0)

    def _take_fault(self, model: str) -> Optional[str]:
        with self._lock:
            queue = self._faults.get(model)
            if queue:
                return queue.pop(0)
            return self._fault_after.get(model)

    def _closed_by_peer(self, model: str) -> None:
        with self._cond:
            self._closed[model] = self._closed.get(model, 0) + 1
            self._cond.notify_all()

    def closed_by_peer(self, model: str, timeout: float = 0.0) -> int:
        """How many answers for ``model`` the gateway closed before their end (``stall``, ``slow``,
        ``huge``, ``drip``), waiting up to ``timeout`` s for at least one."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self._closed.get(model) and time.monotonic() < deadline:
                self._cond.wait(max(0.0, deadline - time.monotonic()))
            return self._closed.get(model, 0)

    # recording
    def _record(self, r: RecordedRequest) -> None:
        with self._cond:
            self._requests.append(r)
            self._cond.notify_all()

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def clear(self) -> None:
        with self._lock:
            self._requests.clear()

    def for_model(self, model: str) -> list[RecordedRequest]:
        """Requests that asked for upstream ``model`` (body model or Azure deployment), in arrival order."""
        return self.find(lambda r: r.model == model)

    def find(self, pred: Callable[[RecordedRequest], bool]) -> list[RecordedRequest]:
        return [r for r in self.requests if pred(r)]

    def with_marker(self, marker: str) -> list[RecordedRequest]:
        """Requests whose raw body contains ``marker`` (put a unique marker in each test's prompt)."""
        return self.find(lambda r: r.contains(marker))

    def wait_for(self, pred: Callable[[RecordedRequest], bool], timeout: float = 3.0) -> list[RecordedRequest]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = [r for r in self._requests if pred(r)]
                left = deadline - time.monotonic()
                if found or left <= 0:
                    return found
                self._cond.wait(left)


if __name__ == "__main__":  # pragma: no cover - manual use
    import sys

    m = MockUpstream(port=int(sys.argv[1]) if len(sys.argv) > 1 else 0).start()
    print(f"mock upstream on {m.url} (openai key {m.openai_key!r}, azure key {m.azure_key!r})", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        m.stop()
