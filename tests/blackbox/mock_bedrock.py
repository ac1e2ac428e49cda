"""A local AWS Bedrock Runtime for the black-box suite (stdlib only).

``MockBedrock`` listens on 127.0.0.1 (port 0, in a thread) and answers like Bedrock Runtime from the
recorded payloads in tests/fixtures/bedrock/ (see its SOURCES.md):

* ``POST /model/{modelId}/converse``        -> converse.text.json (or a tool call / guardrail answer)
* ``POST /model/{modelId}/converse-stream`` -> binary ``application/vnd.amazon.eventstream`` frames:
  the recorded tool-use body (.b64) verbatim, or the recorded text events framed here, written in
  small odd-sized pieces so that frames are split across reads;
* ``POST /model/{modelId}/invoke``          -> Titan / Cohere embedding answers; for ``anthropic.claude*``
  models Claude's Messages API (the body must carry ``anthropic_version: bedrock-2023-05-31`` and no
  ``model``/``stream``): the recorded Anthropic message (tests/fixtures/anthropic/messages.text.json);
* ``POST /model/{modelId}/invoke-with-response-stream`` (Claude) -> the recorded Anthropic text stream,
  each event framed as a ``chunk`` event whose payload is ``{"bytes": <base64 of the event>}``;
* ``GET /image.png``                        -> a tiny PNG (for http(s) image inlining).

It checks every request the way AWS would: the path (model id percent-encoded once), the JSON
content type, and the SigV4 ``Authorization`` header, whose signature it recomputes with
hmac/hashlib from the same test credentials (canonical URI double-encoded, as for every non-S3
service). A bad signature is answered 403 ``InvalidSignatureException``. Every request is recorded
in ``requests`` (path, model, action, headers, parsed body, ``problems``) for the tests to inspect.

Models (the unquoted model id) choose the behaviour:

| model id | behaviour |
|---|---|
| ``mock.tools`` | two parallel tool calls (stream: the recorded tool-use stream); once the history holds a toolResult, the text answer |
| ``mock.guardrail`` | converse.guardrail_intervened.json |
| ``mock.stream-error`` | three text events, then the recorded modelStreamErrorException frame |
| ``mock.json`` | a ``conduit_json_response`` tool call (response_format) |
| ``mock.throttle`` / ``mock.validation`` / ``mock.denied`` / ``mock.missing`` / ``mock.unavailable`` / ``mock.internal`` | 429 ThrottlingException (+retry-after) / 400 ValidationException / 403 AccessDeniedException (type only in ``__type``) / 404 ResourceNotFoundException / 503 ServiceUnavailableException / 500 InternalServerException |
| ``*titan-embed*`` / ``*cohere.embed*`` | embeddings (invoke) |
| anything else | the recorded text answer / text stream |
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import struct
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Optional
from urllib.parse import quote, unquote

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "bedrock"

AUTH_RE = re.compile(
    r"^AWS4-HMAC-SHA256 Credential=(?P<akid>[^/]+)/(?P<date>\d{8})/(?P<region>[a-z0-9-]+)/bedrock/aws4_request, "
    r"SignedHeaders=(?P<signed>[a-z0-9;-]+), Signature=(?P<sig>[0-9a-f]{64})$")
PATH_RE = re.compile(
    r"^/model/(?P<model>[^/]+)/(?P<action>converse|converse-stream|invoke|invoke-with-response-stream)$")
ANTHROPIC_FIXTURES = FIXTURES.parent / "anthropic"
CLAUDE_INVOKE_FIELDS = {"anthropic_version", "anthropic_beta", "max_tokens", "messages", "system", "stop_sequences",
                        "temperature", "top_p", "top_k", "metadata", "tools", "tool_choice", "thinking"}
# 1x1 transparent PNG
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwCAAAAC0lEQVR42mNkYAAAAAYAAjCB0C8AAAAASUVORK5CYII=")


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def frame(headers: dict[str, str], payload: bytes) -> bytes:
    """One eventstream message: prelude, CRC, string headers, payload, CRC."""
    h = b""
    for k, v in headers.items():
        kb, vb = k.encode(), v.encode()
        h += bytes([len(kb)]) + kb + b"\x07" + struct.pack(">H", len(vb)) + vb
    total = 16 + len(h) + len(payload)
    prelude = struct.pack(">II", total, len(h))
    prelude += struct.pack(">I", binascii.crc32(prelude))
    msg = prelude + h + payload
    return msg + struct.pack(">I", binascii.crc32(msg))


def event(name: str, body: Any) -> bytes:
    return frame({":event-type": name, ":content-type": "application/json", ":message-type": "event"},
                 json.dumps(body).encode())


def text_stream_frames() -> list[bytes]:
    out = []
    for line in fixture("converse-stream.text.decoded.jsonl").decode().splitlines():
        if line.strip():
            (name, body), = json.loads(line).items()
            out.append(event(name, body))
    return out


TEXT_STREAM = b"".join(text_stream_frames())
TOOL_STREAM = base64.b64decode(b"".join(fixture("converse-stream.tool_use.recorded.eventstream.b64").split()))
EXCEPTION_FRAME = base64.b64decode(
    b"".join(fixture("converse-stream.modelStreamErrorException.eventstream.b64").split()))
TEXT_ANSWER = json.loads(fixture("converse.text.json"))
GUARDRAIL_ANSWER = json.loads(fixture("converse.guardrail_intervened.json"))

ERRORS = {
    "mock.throttle": (429, "ThrottlingException", "Too many requests, please wait before trying again."),
    "mock.validation": (400, "ValidationException", "The provided model identifier is invalid."),
    "mock.denied": (403, "AccessDeniedException", "You don't have access to the model with the specified model ID."),
    "mock.missing": (404, "ResourceNotFoundException", "Model not found."),
    "mock.unavailable": (503, "ServiceUnavailableException", "Service temporarily unavailable."),
    "mock.internal": (500, "InternalServerException", "Internal server error."),
}


def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


def expected_signature(secret: str, method: str, raw_path: str, headers: dict[str, str], signed: list[str],
                       body: bytes, amz_date: str, region: str) -> str:
    """SigV4 recomputed from the spec: canonical URI = each segment of the sent path encoded again."""
    canonical_uri = "/".join(quote(seg, safe="-_.~") for seg in raw_path.split("/"))
    canonical_headers = "".join(f"{h}:{' '.join(headers.get(h, '').split())}\n" for h in signed)
    creq = "\n".join([method, canonical_uri, "", canonical_headers, ";".join(signed),
                      hashlib.sha256(body).hexdigest()])
    date = amz_date[:8]
    scope = f"{date}/{region}/bedrock/aws4_request"
    sts = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(creq.encode()).hexdigest()])
    key = ("AWS4" + secret).encode()
    for part in (date, region, "bedrock", "aws4_request"):
        key = _hmac(key, part)
    return hmac.new(key, sts.encode(), hashlib.sha256).hexdigest()


class MockBedrock:
    def __init__(self, credentials: dict[str, str]):
        """``credentials``: access key id -> secret access key that the mock accepts."""
        self.credentials = dict(credentials)
        self.requests: list[dict] = []
        self._lock = threading.Lock()
        self.server: Optional[ThreadingHTTPServer] = None
        self.thread: Optional[threading.Thread] = None

    @property
    def url(self) -> str:
        assert self.server is not None
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "MockBedrock":
        mock = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):  # quiet
                pass

            def do_GET(self):
                if self.path == "/image.png":
                    self._send(200, PNG, {"content-type": "image/png"})
                else:
                    self._send(404, b"{}", {"content-type": "application/json"})

            def do_POST(self):
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length)
                mock._handle(self, body)

            def _send(self, status: int, body: bytes, headers: dict[str, str]):
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def last(self, model: Optional[str] = None) -> dict:
        with self._lock:
            for r in reversed(self.requests):
                if model is None or r["model"] == model:
                    return r
        raise AssertionError(f"the mock received no request for {model!r}")

    # -- request checks -------------------------------------------------------------------------
    def _check(self, h: BaseHTTPRequestHandler, raw_path: str, body: bytes) -> tuple[list[str], dict]:
        problems: list[str] = []
        headers = {k.lower(): v for k, v in h.headers.items()}
        auth = {}
        m = AUTH_RE.match(headers.get("authorization", ""))
        if not m:
            problems.append(f"authorization header has the wrong shape: {headers.get('authorization')!r}")
            return problems, auth
        auth = m.groupdict()
        signed = auth["signed"].split(";")
        if signed != sorted(signed):
            problems.append("SignedHeaders not sorted")
        for need in ("host", "x-amz-date", "content-type"):
            if need not in signed:
                problems.append(f"{need} is not signed")
        if "x-amz-security-token" in headers and "x-amz-security-token" not in signed:
            problems.append("x-amz-security-token sent but not signed")
        amz_date = headers.get("x-amz-date", "")
        if not re.fullmatch(r"\d{8}T\d{6}Z", amz_date) or amz_date[:8] != auth["date"]:
            problems.append(f"x-amz-date {amz_date!r} does not match the credential date {auth['date']}")
        if not headers.get("content-type", "").startswith("application/json"):
            problems.append(f"content-type {headers.get('content-type')!r}")
        secret = self.credentials.get(auth["akid"])
        if secret is None:
            problems.append(f"unknown access key id {auth['akid']!r}")
        else:
            want = expected_signature(secret, "POST", raw_path, headers, signed, body, amz_date, auth["region"])
            if want != auth["sig"]:
                problems.append("signature mismatch")
        return problems, auth

    def _handle(self, h: BaseHTTPRequestHandler, body: bytes) -> None:
        raw_path = h.path
        m = PATH_RE.match(raw_path)
        rec: dict[str, Any] = {"path": raw_path, "headers": {k.lower(): v for k, v in h.headers.items()},
                               "model": None, "action": None, "body": None}
        if not m:
            rec["problems"] = [f"unexpected path {raw_path!r}"]
            with self._lock:
                self.requests.append(rec)
            return self._error(h, 404, "UnknownOperationException", "no such operation")
        model = unquote(m["model"])
        rec.update(model=model, action=m["action"])
        problems, auth = self._check(h, raw_path, body)
        # The model id must be percent-encoded once: no raw ':' or '/' in the segment.
        if ":" in m["model"] or quote(model, safe="-_.~") != m["model"]:
            problems.append(f"model id not percent-encoded: {m['model']!r}")
        try:
            rec["body"] = json.loads(body)
        except ValueError:
            problems.append("body is not JSON")
        rec["problems"], rec["auth"] = problems, auth
        with self._lock:
            self.requests.append(rec)
        if problems:
            return self._error(h, 403, "InvalidSignatureException", "; ".join(problems))
        req = rec["body"]
        action = m["action"]
        if model in ERRORS:
            status, kind, msg = ERRORS[model]
            return self._error(h, status, kind, msg, retry_after="7" if status == 429 else None,
                               type_in_body_only=model == "mock.denied")
        if action in ("invoke", "invoke-with-response-stream") and "anthropic.claude" in model:
            return self._claude_invoke(h, req, action == "invoke-with-response-stream")
        if action == "invoke":
            return self._embeddings(h, model, req)
        stream = action == "converse-stream"
        has_result = any("toolResult" in b for msg in req.get("messages", []) for b in msg.get("content", []))
        if model == "mock.tools" and not has_result:
            if stream:
                return self._stream(h, [TOOL_STREAM])
            return self._json(h, 200, {
                "output": {"message": {"role": "assistant", "content": [
                    {"text": "I'll look both up."},
                    {"toolUse": {"toolUseId": "tooluse_paris", "name": "get_temperature", "input": {"city": "Paris"}}},
                    {"toolUse": {"toolUseId": "tooluse_rome", "name": "get_temperature", "input": {"city": "Rome"}}},
                ]}},
                "stopReason": "tool_use", "metrics": {"latencyMs": 10},
                "usage": {"inputTokens": 50, "outputTokens": 30, "totalTokens": 180,
                          "cacheReadInputTokens": 100, "cacheWriteInputTokens": 0}})
        if model == "mock.guardrail":
            return self._json(h, 200, GUARDRAIL_ANSWER)
        if model == "mock.json":
            tool = req.get("toolConfig", {}).get("toolChoice", {}).get("tool", {}).get("name", "?")
            if stream:
                return self._stream(h, [
                    event("messageStart", {"role": "assistant"}),
                    event("contentBlockStart", {"contentBlockIndex": 0,
                                                "start": {"toolUse": {"toolUseId": "t1", "name": tool}}}),
                    event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"toolUse": {"input": '{"answer":'}}}),
                    event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"toolUse": {"input": " 42}"}}}),
                    event("contentBlockStop", {"contentBlockIndex": 0}),
                    event("messageStop", {"stopReason": "tool_use"}),
                    event("metadata", {"usage": {"inputTokens": 5, "outputTokens": 6, "totalTokens": 11}}),
                ])
            return self._json(h, 200, {
                "output": {"message": {"role": "assistant", "content": [
                    {"toolUse": {"toolUseId": "t1", "name": tool, "input": {"answer": 42}}}]}},
                "stopReason": "tool_use", "usage": {"inputTokens": 5, "outputTokens": 6, "totalTokens": 11}})
        if model == "mock.stream-error" and stream:
            return self._stream(h, text_stream_frames()[:3] + [EXCEPTION_FRAME])
        if stream:
            return self._stream(h, [TEXT_STREAM])
        return self._json(h, 200, TEXT_ANSWER)

    # -- answers --------------------------------------------------------------------------------
    def _claude_invoke(self, h, req: dict, stream: bool) -> None:
        """Claude through InvokeModel: Anthropic's Messages body and answers, Bedrock's framing."""
        problem = None
        if req.get("anthropic_version") != "bedrock-2023-05-31":
            problem = f"anthropic_version {req.get('anthropic_version')!r}"
        elif set(req) - CLAUDE_INVOKE_FIELDS:
            problem = f"unexpected fields {sorted(set(req) - CLAUDE_INVOKE_FIELDS)}"
        elif not isinstance(req.get("max_tokens"), int) or not isinstance(req.get("messages"), list):
            problem = "max_tokens and messages are required"
        if problem:
            with self._lock:
                self.requests[-1]["problems"].append(problem)
            return self._error(h, 400, "ValidationException", problem)
        if not stream:
            return self._json(h, 200, json.loads((ANTHROPIC_FIXTURES / "messages.text.json").read_bytes()))
        frames = []
        for line in (ANTHROPIC_FIXTURES / "messages.stream.text.decoded.jsonl").read_text().splitlines():
            if line.strip():
                payload = json.dumps({"bytes": base64.b64encode(line.encode()).decode()}).encode()
                frames.append(frame({":event-type": "chunk", ":content-type": "application/json",
                                     ":message-type": "event"}, payload))
        return self._stream(h, frames)

    def _embeddings(self, h, model: str, req: dict) -> None:
        if "titan-embed" in model:
            text = req.get("inputText")
            if not isinstance(text, str) or set(req) - {"inputText", "dimensions", "normalize"}:
                return self._error(h, 400, "ValidationException", f"bad Titan body: {req}")
            dims = req.get("dimensions", 4)
            vec = [round(0.01 * (i + 1), 4) for i in range(dims)]
            return self._json(h, 200, {"embedding": vec, "embeddingsByType": {"float": vec},
                                       "inputTextTokenCount": len(text.split())})
        if "cohere.embed" in model:
            texts = req.get("texts")
            if not isinstance(texts, list) or not isinstance(req.get("input_type"), str):
                return self._error(h, 400, "ValidationException", f"bad Cohere body: {req}")
            return self._json(h, 200, {"embeddings": [[0.5, -0.25, float(i)] for i in range(len(texts))],
                                       "id": "emb-1", "response_type": "embeddings_floats", "texts": texts})
        return self._error(h, 400, "ValidationException", "not an embedding model")

    def _json(self, h, status: int, obj: Any, headers: Optional[dict] = None) -> None:
        body = json.dumps(obj).encode()
        h.send_response(status)
        h.send_header("content-type", "application/json")
        h.send_header("x-amzn-requestid", "00000000-0000-0000-0000-000000000000")
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.send_header("content-length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    def _error(self, h, status: int, kind: str, message: str, retry_after: Optional[str] = None,
               type_in_body_only: bool = False) -> None:
        headers = {} if type_in_body_only else {"x-amzn-ErrorType": f"{kind}:http://internal.amazon.com/coral/com.amazon.bedrock/"}
        if retry_after:
            headers["retry-after"] = retry_after
        body = {"message": message}
        if type_in_body_only:
            body["__type"] = f"com.amazon.coral.service#{kind}"
        self._json(h, status, body, headers)

    def _stream(self, h, parts: list[bytes]) -> None:
        data = b"".join(parts)
        h.send_response(200)
        h.send_header("content-type", "application/vnd.amazon.eventstream")
        h.send_header("content-length", str(len(data)))
        h.end_headers()
        # Odd-sized writes: frames arrive split across reads.
        i, step = 0, 7
        while i < len(data):
            h.wfile.write(data[i:i + step])
            h.wfile.flush()
            i += step
            step = 7 if step > 300 else step * 3
