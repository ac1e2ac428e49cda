"""JSON-Schema validation of gateway output against OpenAI's OpenAPI response schemas.

Loads tests/fixtures/openapi/openai-openapi.responses-subset.yaml (24 verbatim schemas of
openai/openai-openapi), rewrites the OpenAPI-3.0 ``nullable: true`` keyword that the 3.1 document
still uses (tricky case T1) into ``anyOf: [<schema>, {"type": "null"}]``, and validates instances
with jsonschema Draft 2020-12, resolving ``#/components/schemas/...`` references inside the
document.

Usage::

    from openapi import validate, CHAT_COMPLETION
    validate(CHAT_COMPLETION, body_dict)        # raises AssertionError with every violation

Responses API (T-R1): OpenAI's own answers send ``usage: null`` (in ``response.created`` /
``response.in_progress``) and ``user: null``, which the spec types as a non-nullable object and string.
Passed-through recordings carry them, so those two properties of the response object accept null here;
and ``response.function_call_arguments.done`` may leave out ``name``, which the spec requires and the
API does not send (recorded). Nothing else is relaxed; Conduit's translated answers satisfy the
unrelaxed schemas (they leave ``usage``/``user`` out rather than send null, and always name the function).

Legacy completion chunks carrying ``usage: null`` (T2) are NOT special-cased: the gateway is
expected to emit schema-valid output (it strips ``usage: null`` from legacy completion chunks).
"""
from __future__ import annotations

import copy
import functools
import json
from pathlib import Path
from typing import Any

import jsonschema
import yaml

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
SPEC_PATH = FIXTURES / "openapi" / "openai-openapi.responses-subset.yaml"
# The Responses API's answers and stream events (closure of Response and ResponseStreamEvent).
RESPONSES_API_SPEC_PATH = FIXTURES / "openapi" / "openai-openapi.responses-api-subset.yaml"

CHAT_COMPLETION = "CreateChatCompletionResponse"
CHAT_COMPLETION_CHUNK = "CreateChatCompletionStreamResponse"
COMPLETION = "CreateCompletionResponse"
# Legacy completion *stream chunk*: CreateCompletionResponse, except that choices[].finish_reason may be
# null. The spec says streamed and non-streamed objects "share the same shape", but finish_reason is
# required and non-nullable there, so no non-final chunk from any provider can conform; a gateway cannot
# invent a finish reason. Everything else (notably `usage`, which must be absent or an object -- T2) is
# validated strictly. Derived in spec() below; not part of the OpenAI document.
COMPLETION_CHUNK = "x-conduit-CompletionStreamChunk"
EMBEDDINGS = "CreateEmbeddingResponse"
MODEL_LIST = "ListModelsResponse"
MODEL = "Model"
ERROR = "ErrorResponse"
RESPONSE = "Response"
RESPONSE_STREAM_EVENT = "ResponseStreamEvent"


def _rewrite_nullable(node: Any) -> Any:
    """Return a copy of ``node`` where every schema with ``nullable: true`` also accepts null."""
    if isinstance(node, list):
        return [_rewrite_nullable(x) for x in node]
    if not isinstance(node, dict):
        return node
    out = {k: _rewrite_nullable(v) for k, v in node.items()}
    nullable = out.pop("nullable", None)
    if nullable is True:
        # Keep annotations outside; the original constraints go into the first branch.
        return {"anyOf": [out, {"type": "null"}]}
    return out


@functools.lru_cache(maxsize=1)
def spec() -> dict:
    with open(SPEC_PATH, encoding="utf-8") as f:
        raw = yaml.safe_load(f)
    with open(RESPONSES_API_SPEC_PATH, encoding="utf-8") as f:
        extra = yaml.safe_load(f)["components"]["schemas"]
    for name, schema in extra.items():
        raw["components"]["schemas"].setdefault(name, schema)
    doc = copy.deepcopy(raw)
    schemas = _rewrite_nullable(raw["components"]["schemas"])
    chunk = copy.deepcopy(schemas[COMPLETION])
    fr = chunk["properties"]["choices"]["items"]["properties"]["finish_reason"]
    chunk["properties"]["choices"]["items"]["properties"]["finish_reason"] = {
        "anyOf": [fr, {"type": "null"}]
    }
    schemas[COMPLETION_CHUNK] = chunk
    # T-R1: what the real API sends as null.
    resp = schemas[RESPONSE]["allOf"][2]["properties"]
    resp["usage"] = {"anyOf": [resp["usage"], {"type": "null"}]}
    user = schemas["ModelResponseProperties"]["properties"]["user"]
    schemas["ModelResponseProperties"]["properties"]["user"] = {"anyOf": [user, {"type": "null"}]}
    args_done = schemas["ResponseFunctionCallArgumentsDoneEvent"]
    args_done["required"] = [r for r in args_done["required"] if r != "name"]
    doc["components"]["schemas"] = schemas
    return doc


def schema_names() -> list[str]:
    return sorted(spec()["components"]["schemas"].keys())


@functools.lru_cache(maxsize=None)
def _validator(name: str) -> jsonschema.protocols.Validator:
    doc = spec()
    if name not in doc["components"]["schemas"]:
        raise KeyError(f"no schema {name!r} in {SPEC_PATH.name}")
    # Root = the whole document (so '#/components/schemas/..' refs resolve) + a $ref to the target.
    root = dict(doc)
    root["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    root["$ref"] = f"#/components/schemas/{name}"
    cls = jsonschema.Draft202012Validator
    cls.check_schema(root)
    return cls(root)


def errors(name: str, instance: Any) -> list[str]:
    v = _validator(name)
    out = []
    for e in sorted(v.iter_errors(instance), key=lambda e: list(e.absolute_path)):
        path = "/".join(str(p) for p in e.absolute_path) or "<root>"
        out.append(f"{path}: {e.message}")
    return out


def validate(name: str, instance: Any) -> None:
    """Assert ``instance`` is valid against components.schemas[name]."""
    errs = errors(name, instance)
    if errs:
        shown = json.dumps(instance)[:1500]
        raise AssertionError(
            f"response does not match OpenAPI schema {name}:\n  "
            + "\n  ".join(errs[:20])
            + f"\ninstance: {shown}"
        )


def is_valid(name: str, instance: Any) -> bool:
    return not errors(name, instance)
