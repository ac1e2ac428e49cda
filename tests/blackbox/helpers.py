"""Assertion helpers shared by the black-box tests (HTTP-only; no gateway internals)."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Iterable, Optional

import httpx

import openapi

ERROR_KEYS = {"message", "type", "param", "code"}
HEX64 = re.compile(r"(?i)(?<![0-9a-f])[0-9a-f]{64}(?![0-9a-f])")


def user_msg(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def chat_body(model: str, text: str = "hello", **extra: Any) -> dict:
    return {"model": model, "messages": user_msg(text), **extra}


def auth(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def assert_error_body(body: Any, *, type_: Optional[str] = None, code: Any = ..., param: Any = ...,
                      message: Optional[str] = None) -> dict:
    """Exact envelope ``{"error": {"message","type","param","code"}}``; returns the inner error."""
    assert isinstance(body, dict), f"error body is not a JSON object: {body!r}"
    assert set(body.keys()) == {"error"}, f"error envelope keys {sorted(body)} != ['error']: {body}"
    err = body["error"]
    assert isinstance(err, dict), body
    assert set(err.keys()) == ERROR_KEYS, f"error keys {sorted(err)} != {sorted(ERROR_KEYS)}: {body}"
    assert isinstance(err["message"], str) and err["message"], f"empty/non-string message: {body}"
    assert isinstance(err["type"], str) and err["type"], body
    assert err["param"] is None or isinstance(err["param"], str), body
    assert err["code"] is None or isinstance(err["code"], str), body
    if type_ is not None:
        assert err["type"] == type_, f"error.type {err['type']!r} != {type_!r}: {body}"
    if code is not ...:
        assert err["code"] == code, f"error.code {err['code']!r} != {code!r}: {body}"
    if param is not ...:
        assert err["param"] == param, f"error.param {err['param']!r} != {param!r}: {body}"
    if message is not None:
        assert err["message"] == message, f"error.message {err['message']!r} != {message!r}"
    openapi.validate(openapi.ERROR, body)
    return err


def assert_error_response(r: httpx.Response, status: int, **kw: Any) -> dict:
    assert r.status_code == status, f"status {r.status_code} != {status}: {r.text[:500]}"
    assert r.headers.get("x-request-id"), f"no x-request-id on {status} response"
    ctype = r.headers.get("content-type", "")
    assert ctype.startswith("application/json"), f"error content-type {ctype!r}"
    try:
        body = r.json()
    except ValueError:
        raise AssertionError(f"error body is not JSON: {r.text[:300]!r}") from None
    return assert_error_body(body, **kw)


def assert_sdk_error(exc: Any, status: int, **kw: Any) -> dict:
    """For an openai.APIStatusError: status + exact envelope of the raw response body."""
    assert exc.status_code == status, f"status {exc.status_code} != {status}: {exc}"
    return assert_error_response(exc.response, status, **kw)


# ------------------------------------------------------------------------------------------
# SSE
# ------------------------------------------------------------------------------------------
@dataclass
class SSEEvent:
    data: str
    event: Optional[str] = None

    @property
    def is_done(self) -> bool:
        return self.data.strip() == "[DONE]"

    def json(self) -> Any:
        return json.loads(self.data)


def parse_sse(text: str) -> list[SSEEvent]:
    """Parse an SSE body (LF or CRLF). Comments (``:``) are ignored; multi-line data joined."""
    events: list[SSEEvent] = []
    data_lines: list[str] = []
    ev_name: Optional[str] = None
    for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        if line == "":
            if data_lines:
                events.append(SSEEvent("\n".join(data_lines), ev_name))
            data_lines, ev_name = [], None
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "data":
            data_lines.append(value)
        elif name == "event":
            ev_name = value
    if data_lines:
        events.append(SSEEvent("\n".join(data_lines), ev_name))
    return events


def stream_raw(http: httpx.Client, path: str, key: str, body: dict, headers: Optional[dict] = None
               ) -> tuple[httpx.Response, str, list[SSEEvent]]:
    """POST a streaming request, read the whole body (tolerating an abrupt end), parse SSE."""
    h = {**auth(key), **(headers or {})}
    with http.stream("POST", path, json=body, headers=h) as r:
        chunks = []
        try:
            for b in r.iter_bytes():
                chunks.append(b)
        except httpx.HTTPError as e:  # abrupt close: keep what arrived
            chunks.append(f"\n\n<<transport error: {type(e).__name__}>>".encode())
        text = b"".join(chunks).decode("utf-8", "replace")
    return r, text, parse_sse(text)


def data_payloads(events: Iterable[SSEEvent]) -> list[dict]:
    return [e.json() for e in events if not e.is_done]


def assert_no_secret_material(obj: Any, *secrets: str) -> None:
    text = json.dumps(obj)
    m = HEX64.search(text)
    assert m is None, f"64-hex string (key hash?) exposed: {m.group(0)} in {text[:400]}"
    for s in secrets:
        if s:
            assert s not in text, f"secret {s[:12]}... exposed in {text[:400]}"


def chunk_dicts(chunks: Iterable[Any]) -> list[dict]:
    """SDK chunk objects -> the JSON dicts they were parsed from (exact wire fields)."""
    out = []
    for c in chunks:
        # openai models keep unknown/extra fields; to_dict() drops unset fields but keeps explicit nulls
        out.append(c.to_dict(mode="json", exclude_unset=True))
    return out
