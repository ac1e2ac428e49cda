"""Virtual keys through the admin API: record shape, the three auth headers, disabled / expired /
deleted / rotated keys, PATCH partial updates, no secret material in records, admin auth and errors."""
from __future__ import annotations

import datetime as dt
import json
import time

import httpx
import openai
import pytest

from conftest import MASTER_KEY
from helpers import (assert_error_response, assert_no_secret_material, auth, chat_body, user_msg)

RECORD_KEYS = {"id", "name", "enabled", "expires_at", "allowed_models", "metadata", "limits", "budget",
               "created_at", "updated_at"}
IRE = "invalid_request_error"


def _rfc3339(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, tz=dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_rfc3339(s: str) -> float:
    return dt.datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()


def _chat_status(http: httpx.Client, headers: dict, model: str = "chat") -> httpx.Response:
    return http.post("/v1/chat/completions", json=chat_body(model), headers=headers)


def _works(http, key: str) -> bool:
    r = _chat_status(http, auth(key))
    if r.status_code == 200:
        return True
    assert_error_response(r, 401, type_=IRE, code="invalid_api_key")
    return False


def _contract(rec: dict) -> dict:
    """The contract fields of a record (servers may add live/extra fields, e.g. current spend)."""
    return {k: rec.get(k) for k in RECORD_KEYS}


def _check_record(rec: dict, *, with_key: bool = False) -> None:
    """Contract fields present (extra, additive fields are tolerated); `key` only at creation/rotation;
    nothing that looks like the key's hash."""
    missing = RECORD_KEYS - set(rec)
    assert not missing, f"record lacks {sorted(missing)}: {rec}"
    assert ("key" in rec) is with_key, f"`key` {'missing from' if with_key else 'present in'} record: {sorted(rec)}"
    hashy = [k for k in rec if "hash" in k.lower() or "secret" in k.lower()]
    assert not hashy, f"record exposes {hashy}"
    assert rec["id"].startswith("key_"), rec["id"]
    assert isinstance(rec["enabled"], bool)
    assert isinstance(rec["allowed_models"], list) and isinstance(rec["metadata"], dict)
    assert set(rec["limits"]) == {"rpm", "rpd", "tpm"}, rec["limits"]
    if not with_key:
        assert_no_secret_material(rec)
    else:
        assert_no_secret_material({k: v for k, v in rec.items() if k != "key"}, rec["key"])


# ---- create / read ------------------------------------------------------------------------------
def test_create_defaults(admin):
    r = admin.create_key_raw({"name": "bb-defaults"})
    assert r.status_code == 201, r.text
    assert r.headers.get("x-request-id")
    rec = r.json()
    _check_record(rec, with_key=True)
    assert rec["key"].startswith("condt_") and len(rec["key"]) >= 30
    assert rec["name"] == "bb-defaults" and rec["enabled"] is True and rec["expires_at"] is None
    assert rec["allowed_models"] == [] and rec["metadata"] == {} and rec["budget"] is None
    assert rec["limits"] == {"rpm": None, "rpd": None, "tpm": None}
    assert abs(_parse_rfc3339(rec["created_at"]) - time.time()) < 120


def test_create_all_fields(admin):
    exp = int(time.time()) + 86400
    rec = admin.create_key(name="bb-full", enabled=True, expires_at=_rfc3339(exp),
                           allowed_models=["chat", "fam-*"], metadata={"team": "bb", "n": 1},
                           limits={"rpm": 100, "rpd": 1000, "tpm": 50000},
                           budget={"max_usd": 12.5, "period": "monthly"})
    _check_record(rec, with_key=True)
    assert rec["allowed_models"] == ["chat", "fam-*"] and rec["metadata"] == {"team": "bb", "n": 1}
    assert rec["limits"] == {"rpm": 100, "rpd": 1000, "tpm": 50000}
    assert rec["budget"] == {"max_usd": 12.5, "period": "monthly"}
    assert abs(_parse_rfc3339(rec["expires_at"]) - exp) < 1


def test_expires_at_unix_seconds_returned_as_rfc3339(admin):
    exp = int(time.time()) + 3600
    rec = admin.create_key(expires_at=exp)
    assert isinstance(rec["expires_at"], str), rec["expires_at"]
    assert abs(_parse_rfc3339(rec["expires_at"]) - exp) < 1


def test_get_and_list_never_expose_key(admin):
    created = admin.create_key(name="bb-secret-check")
    key_id, key = created["id"], created["key"]
    got = admin.get_key(key_id)
    assert got.status_code == 200 and got.headers.get("x-request-id")
    rec = got.json()
    _check_record(rec)
    assert _contract(rec) == _contract(created)
    lst = admin.list_keys()
    assert lst.status_code == 200
    body = lst.json()
    assert isinstance(body.get("data"), list), body.keys()
    ids = [x["id"] for x in body["data"]]
    assert key_id in ids
    for x in body["data"]:
        _check_record(x)
    assert_no_secret_material(body, key)
    assert key not in lst.text and key[len("condt_"):] not in lst.text


# ---- the three auth headers -----------------------------------------------------------------
@pytest.mark.parametrize("header", ["authorization", "x-api-key", "api-key"])
def test_auth_headers(http, admin, mock, marker, header):
    key = admin.create_key()["key"]
    h = {"Authorization": f"Bearer {key}"} if header == "authorization" else {header: key}
    r = http.post("/v1/chat/completions", json=chat_body("chat", marker), headers=h)
    assert r.status_code == 200, r.text
    assert r.json()["model"] == "chat"
    rec = mock.with_marker(marker)[-1]
    assert key not in json.dumps(rec.headers), "virtual key forwarded to the provider"
    bad = {"Authorization": "Bearer condt_wrong"} if header == "authorization" else {header: "condt_wrong"}
    assert_error_response(http.post("/v1/chat/completions", json=chat_body("chat"), headers=bad), 401,
                          type_=IRE, code="invalid_api_key")


# ---- disabled / expired / deleted / rotated -------------------------------------------------------
def test_disabled_key(http, admin):
    rec = admin.create_key(enabled=False)
    assert rec["enabled"] is False
    assert not _works(http, rec["key"])
    r = admin.patch_key(rec["id"], {"enabled": True})
    assert r.status_code == 200 and r.json()["enabled"] is True
    assert _works(http, rec["key"])
    assert admin.patch_key(rec["id"], {"enabled": False}).status_code == 200
    assert not _works(http, rec["key"]), "disabling must take effect at once"


@pytest.mark.parametrize("fmt", ["rfc3339", "unix"])
def test_expired_key(http, admin, fmt):
    past = int(time.time()) - 3600
    rec = admin.create_key(expires_at=_rfc3339(past) if fmt == "rfc3339" else past)
    assert not _works(http, rec["key"])
    # moving the expiry into the future revives it; clearing it (null) too
    assert admin.patch_key(rec["id"], {"expires_at": int(time.time()) + 3600}).status_code == 200
    assert _works(http, rec["key"])
    assert admin.patch_key(rec["id"], {"expires_at": past}).status_code == 200
    assert not _works(http, rec["key"])
    r = admin.patch_key(rec["id"], {"expires_at": None})
    assert r.status_code == 200 and r.json()["expires_at"] is None
    assert _works(http, rec["key"])


def test_expired_key_sdk(make_client, admin):
    rec = admin.create_key(expires_at=_rfc3339(time.time() - 60))
    with pytest.raises(openai.AuthenticationError) as ei:
        make_client(rec["key"]).chat.completions.create(model="chat", messages=user_msg("x"))
    assert ei.value.code == "invalid_api_key"


def test_delete_key(http, admin):
    rec = admin.create_key()
    assert _works(http, rec["key"])
    r = admin.delete_key(rec["id"])
    assert r.status_code == 200, r.text
    body = r.json()
    assert body.get("id") == rec["id"] and body.get("deleted") is True, body
    assert_no_secret_material(body, rec["key"])
    assert not _works(http, rec["key"]), "a deleted key must stop working at once"
    assert_error_response(admin.get_key(rec["id"]), 404, code="not_found")
    assert_error_response(admin.delete_key(rec["id"]), 404, code="not_found")
    assert rec["id"] not in [x["id"] for x in admin.list_keys().json()["data"]]


def test_rotate_key(http, admin):
    rec = admin.create_key(name="bb-rotate", allowed_models=["chat"])
    old = rec["key"]
    assert _works(http, old)
    r = admin.rotate_key(rec["id"])
    assert r.status_code == 200, r.text
    new = r.json()["key"]
    assert new.startswith("condt_") and new != old
    assert not _works(http, old), "the old key must stop working after rotation"
    assert _works(http, new)
    after = admin.get_key(rec["id"]).json()
    assert after["id"] == rec["id"] and after["name"] == "bb-rotate" and after["allowed_models"] == ["chat"]
    assert_no_secret_material(after, new, old)


# ---- PATCH -----------------------------------------------------------------------------------
def test_patch_allowed_models_takes_effect(http, admin):
    rec = admin.create_key(allowed_models=["chat"])
    h = auth(rec["key"])
    assert _chat_status(http, h, "chat").status_code == 200
    assert_error_response(_chat_status(http, h, "fam-alpha"), 403, type_=IRE, code="model_not_allowed")
    r = admin.patch_key(rec["id"], {"allowed_models": ["fam-*"]})
    assert r.status_code == 200 and r.json()["allowed_models"] == ["fam-*"]
    assert _chat_status(http, h, "fam-alpha").status_code == 200
    assert _chat_status(http, h, "fam-beta").status_code == 200
    assert_error_response(_chat_status(http, h, "chat"), 403, type_=IRE, code="model_not_allowed")
    r = admin.patch_key(rec["id"], {"allowed_models": None})
    assert r.status_code == 200 and r.json()["allowed_models"] == []
    assert _chat_status(http, h, "chat").status_code == 200


def test_patch_is_partial(admin):
    rec = admin.create_key(name="bb-partial", allowed_models=["chat"], metadata={"a": 1},
                           limits={"rpm": 5, "rpd": None, "tpm": None},
                           budget={"max_usd": 3, "period": "daily"})
    r = admin.patch_key(rec["id"], {"metadata": {"b": 2}})
    assert r.status_code == 200, r.text
    got = r.json()
    _check_record(got)
    assert got["metadata"] == {"b": 2}
    assert got["name"] == "bb-partial" and got["allowed_models"] == ["chat"]
    assert got["limits"]["rpm"] == 5 and got["budget"]["period"] == "daily"
    assert got["created_at"] == rec["created_at"]
    assert _parse_rfc3339(got["updated_at"]) >= _parse_rfc3339(rec["updated_at"])
    assert _contract(admin.get_key(rec["id"]).json()) == _contract(got)
    r = admin.patch_key(rec["id"], {"budget": None, "name": "bb-renamed"})
    assert r.status_code == 200
    assert r.json()["budget"] is None and r.json()["name"] == "bb-renamed"
    assert r.json()["metadata"] == {"b": 2}


# ---- admin auth & errors --------------------------------------------------------------------------
@pytest.mark.parametrize("headers", [
    {},
    {"Authorization": "Bearer wrong-master-key"},
    {"Authorization": "Bearer " + MASTER_KEY[:-1]},
])
def test_admin_requires_master_key(http, headers):
    for method, path in [("GET", "/admin/keys"), ("POST", "/admin/keys"), ("GET", "/admin/usage"),
                         ("GET", "/admin/keys/key_whatever")]:
        r = http.request(method, path, headers=headers, json={"name": "x"} if method == "POST" else None)
        assert_error_response(r, 401)


def test_virtual_key_is_not_admin(http, api_key):
    assert_error_response(http.get("/admin/keys", headers=auth(api_key)), 401)


def test_admin_unknown_id_404(admin):
    for r in (admin.get_key("key_doesnotexist"), admin.patch_key("key_doesnotexist", {"name": "x"}),
              admin.delete_key("key_doesnotexist"), admin.rotate_key("key_doesnotexist")):
        assert_error_response(r, 404, code="not_found")


@pytest.mark.parametrize("body", [
    {},
    {"enabled": True},
    {"name": 123},
    {"name": "x", "allowed_models": "chat"},
    {"name": "x", "expires_at": "not a date"},
    {"name": "x", "budget": {"max_usd": 1, "period": "hourly"}},
    {"name": "x", "limits": {"rpm": "many"}},
    [],
])
def test_admin_invalid_body_400(admin, body):
    assert_error_response(admin.create_key_raw(body), 400, type_=IRE)


def test_admin_malformed_json_400(admin):
    r = admin.http.post("/admin/keys", content=b"{name", headers={"Content-Type": "application/json"})
    assert_error_response(r, 400, type_=IRE)


def test_admin_patch_invalid_400(admin):
    rec = admin.create_key()
    assert_error_response(admin.patch_key(rec["id"], {"enabled": "yes"}), 400, type_=IRE)
    assert admin.get_key(rec["id"]).json()["enabled"] is True
