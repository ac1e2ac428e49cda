"""Mock Google AI Studio (Gemini API) upstream, stdlib only.

Bound to 127.0.0.1 on an ephemeral port, in a thread. It answers like
``generativelanguage.googleapis.com`` from the recorded payloads in
tests/fixtures/gemini/ (see SOURCES.md there), and checks every request it
receives the way the real API would reject it:

* ``x-goog-api-key`` must be GEMINI_KEY (else 400 API_KEY_INVALID, as Google answers);
  the key must never appear in the URL (``?key=``);
* ``POST /v1beta/models/{model}:generateContent``, ``:streamGenerateContent?alt=sse``,
  ``:embedContent``, ``:batchEmbedContents``; anything else is 404;
* a generateContent body has only Gemini fields, ``contents`` with roles ``user``/``model``
  alternating and non-empty ``parts`` (else 400 INVALID_ARGUMENT with the reason);
* an embedding request names ``models/{model}``.

Violations are also kept in ``problems`` so a test can assert there were none.

Behaviour by model name (the ``{model}`` of the URL):

* ``gemini-text``     text answer; stream = the recorded text SSE body verbatim (CRLF).
* ``gemini-tools``    the recorded functionCall answer (non-stream: generateContent.functionCall.json;
                      stream: the recorded decoded chunks, CRLF framed). When the last turn holds
                      ``functionResponse`` parts (the second leg of a round trip) it answers with text.
* ``gemini-blocked``  the recorded prompt block (no candidates).
* ``gemini-429``      the recorded 429 RESOURCE_EXHAUSTED (RetryInfo 34.4s in the body).
* ``gemini-400``      the recorded 400 INVALID_ARGUMENT.
* ``gemini-cut``      stream: the first recorded text event, then EOF without a finishReason.
* ``gemini-embed``    embedContent / batchEmbedContents with made-up 4-dim vectors (no recording exists).
"""
from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Optional
from urllib.parse import parse_qs, urlsplit

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "gemini"
GEMINI_KEY = "AIza-mock-gemini-secret-0123456789"
# An image the mock serves for the http(s) image test (a 1x1 PNG).
PNG_1x1 = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000100e221bc330000000049454e44ae426082"
)

GENERATE_FIELDS = {"contents", "systemInstruction", "tools", "toolConfig", "generationConfig",
                   "safetySettings", "cachedContent"}
GENERATION_FIELDS = {"temperature", "topP", "topK", "maxOutputTokens", "stopSequences", "seed",
                     "candidateCount", "responseMimeType", "responseSchema", "responseJsonSchema",
                     "presencePenalty", "frequencyPenalty", "thinkingConfig", "responseLogprobs", "logprobs"}
PART_FIELDS = {"text", "inlineData", "fileData", "functionCall", "functionResponse", "thoughtSignature", "thought"}


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def sse_from_jsonl(name: str) -> bytes:
    lines = [l for l in fixture(name).decode().splitlines() if l.strip()]
    return "".join(f"data: {l}\r\n\r\n" for l in lines).encode()


TEXT_SSE = fixture("streamGenerateContent.text.alt-sse.recorded.sse")
# The non-streaming equivalent of the recorded text stream.
TEXT_JSON = {
    "candidates": [{"content": {"parts": [{"text": "The temperature in Paris is 30°C."}], "role": "model"},
                    "finishReason": "STOP", "index": 0}],
    "usageMetadata": {"promptTokenCount": 63, "candidatesTokenCount": 11, "totalTokenCount": 74,
                      "cachedContentTokenCount": 20},
    "modelVersion": "gemini-2.0-flash", "responseId": "ylR8adSIJtii6MEP8OKEyQM",
}


@dataclass
class Received:
    path: str
    query: dict
    headers: dict  # lower-cased names
    body: Any


def _error(code: int, status: str, message: str, reason: Optional[str] = None) -> dict:
    err: dict = {"code": code, "message": message, "status": status}
    if reason:
        err["details"] = [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": reason,
                           "domain": "googleapis.com"}]
    return {"error": err}


def check_generate(body: Any) -> list[str]:
    """What the real API would refuse in a generateContent body."""
    if not isinstance(body, dict):
        return ["body is not a JSON object"]
    p = [f"unknown field {k!r}" for k in body if k not in GENERATE_FIELDS]
    contents = body.get("contents")
    if not isinstance(contents, list) or not contents:
        return p + ["contents is not specified"]
    prev = None
    for i, c in enumerate(contents):
        role = c.get("role")
        if role not in ("user", "model"):
            p.append(f"contents[{i}].role {role!r}")
        if role == prev:
            p.append(f"contents[{i}] repeats role {role!r}")
        prev = role
        parts = c.get("parts")
        if not isinstance(parts, list) or not parts:
            p.append(f"contents[{i}].parts must not be empty")
            continue
        for j, part in enumerate(parts):
            extra = set(part) - PART_FIELDS
            if extra:
                p.append(f"contents[{i}].parts[{j}] unknown {sorted(extra)}")
            if "functionCall" in part and not isinstance(part["functionCall"].get("args", {}), dict):
                p.append(f"contents[{i}].parts[{j}].functionCall.args must be an object")
            if "functionResponse" in part:
                fr = part["functionResponse"]
                if not isinstance(fr.get("name"), str) or not isinstance(fr.get("response"), dict):
                    p.append(f"contents[{i}].parts[{j}].functionResponse needs name and an object response")
                if role != "user":
                    p.append(f"contents[{i}]: functionResponse outside a user turn")
            if "inlineData" in part:
                d = part["inlineData"]
                if not d.get("mimeType") or not d.get("data"):
                    p.append(f"contents[{i}].parts[{j}].inlineData needs mimeType and data")
    si = body.get("systemInstruction")
    if si is not None and not (isinstance(si, dict) and isinstance(si.get("parts"), list) and si["parts"]):
        p.append("systemInstruction must hold parts")
    gc = body.get("generationConfig", {})
    p += [f"generationConfig.{k} unknown" for k in gc if k not in GENERATION_FIELDS]
    for t in body.get("tools", []):
        for d in t.get("functionDeclarations", []):
            if not d.get("name"):
                p.append("functionDeclaration without name")
    mode = body.get("toolConfig", {}).get("functionCallingConfig", {}).get("mode")
    if mode is not None and mode not in ("AUTO", "ANY", "NONE", "VALIDATED"):
        p.append(f"toolConfig mode {mode!r}")
    return p


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    mock: "MockGemini"

    def log_message(self, *args: Any) -> None:
        pass

    def _send(self, status: int, body: bytes, ctype: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()

    def _json(self, status: int, obj: Any) -> None:
        self._send(status, json.dumps(obj).encode())

    def _stream(self, body: bytes, cut: bool = False) -> None:
        # Close-delimited like Google's front end behind HTTP/1.1: the body ends at EOF.
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Connection", "close")
        self.end_headers()
        # Several writes, split inside events, to exercise the decoder's buffering.
        for i in range(0, len(body), 97):
            self.wfile.write(body[i:i + 97])
            self.wfile.flush()
        self.close_connection = True

    def do_GET(self) -> None:
        if self.path == "/image.png":
            self._send(200, PNG_1x1, "image/png")
        else:
            self._send(404, b"{}")

    def do_POST(self) -> None:
        url = urlsplit(self.path)
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n) if n else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        r = Received(url.path, parse_qs(url.query), {k.lower(): v for k, v in self.headers.items()}, body)
        self.mock.record(r)
        problems = []
        if "key" in r.query:
            problems.append("API key in the URL")
        if r.headers.get("x-goog-api-key") != GEMINI_KEY:
            self.mock.problems.append("bad x-goog-api-key")
            return self._json(400, _error(400, "INVALID_ARGUMENT", "API key not valid. Please pass a valid API key.",
                                          "API_KEY_INVALID"))
        if not r.headers.get("content-type", "").startswith("application/json"):
            problems.append("content-type is not JSON")
        prefix = "/v1beta/models/"
        if not url.path.startswith(prefix) or ":" not in url.path:
            return self._json(404, _error(404, "NOT_FOUND", f"{url.path} not found"))
        model, method = url.path[len(prefix):].rsplit(":", 1)
        if method in ("generateContent", "streamGenerateContent"):
            problems += check_generate(body)
            if method == "streamGenerateContent" and r.query.get("alt") != ["sse"]:
                problems.append("stream without alt=sse")
        elif method == "embedContent":
            if not isinstance(body, dict) or body.get("model") != f"models/{model}" or "content" not in body:
                problems.append("embedContent body")
        elif method == "batchEmbedContents":
            reqs = body.get("requests") if isinstance(body, dict) else None
            if not reqs or any(q.get("model") != f"models/{model}" for q in reqs):
                problems.append("batchEmbedContents body")
        else:
            return self._json(404, _error(404, "NOT_FOUND", f"method {method} not found"))
        if problems:
            self.mock.problems.extend(problems)
            return self._json(400, _error(400, "INVALID_ARGUMENT", "; ".join(problems)))
        self._answer(model, method, body)

    def _answer(self, model: str, method: str, body: dict) -> None:
        stream = method == "streamGenerateContent"
        if model == "gemini-429":
            return self._send(429, fixture("error.429-resource-exhausted.json"))
        if model == "gemini-400":
            return self._send(400, fixture("error.400-invalid-argument.json"))
        if model == "gemini-embed":
            if method == "embedContent":
                return self._json(200, {"embedding": {"values": [0.1, -0.2, 0.3, 0.4]}})
            n = len(body["requests"])
            return self._json(200, {"embeddings": [{"values": [float(i), 0.5, -0.5, 1.0]} for i in range(n)]})
        if model == "gemini-blocked":
            if stream:
                return self._stream(sse_from_jsonl("streamGenerateContent.prompt-blocked.decoded.jsonl"))
            return self._send(200, fixture("generateContent.prompt-blocked.json"))
        if model == "gemini-cut":
            first = TEXT_SSE[: TEXT_SSE.index(b"\r\n\r\n") + 4]
            return self._stream(first)
        if model == "gemini-tools":
            last = body["contents"][-1]
            answered = any("functionResponse" in p for p in last["parts"])
            if not answered:
                if stream:
                    return self._stream(sse_from_jsonl("streamGenerateContent.functionCall.decoded.jsonl"))
                return self._send(200, fixture("generateContent.functionCall.json"))
        if stream:
            return self._stream(TEXT_SSE)
        return self._json(200, TEXT_JSON)


class MockGemini:
    def __init__(self) -> None:
        self.received: list[Received] = []
        self.problems: list[str] = []
        self._lock = threading.Lock()
        handler = type("Handler", (_Handler,), {"mock": self})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> "MockGemini":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def record(self, r: Received) -> None:
        with self._lock:
            self.received.append(r)

    def last(self, model: Optional[str] = None) -> Received:
        with self._lock:
            for r in reversed(self.received):
                if model is None or f"/models/{model}:" in r.path:
                    return r
        raise AssertionError(f"the mock received no request for {model}")


if __name__ == "__main__":  # manual poking
    m = MockGemini().start()
    print(m.url, flush=True)
    threading.Event().wait()
