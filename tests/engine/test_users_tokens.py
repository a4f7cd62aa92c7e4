"""Users, tokens and the audit trail through the REST API (issue 14), on SQLite and PostgreSQL: tokens with an
owner, a role ceiling, an expiry and revocation (401 JSON naming why), users managed by admins, and events that
name who made each change, also from a task that runs after the request."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import update

from corral.engine.db.models import ApiToken, utcnow
from corral.engine.db.session import Database
from tests.engine.conftest import Api

PW = "long-enough-pw"


def user_token(api: Api, name: str, role: str, **body: Any) -> dict[str, str]:
    api.post("/users", {"username": name, "role": role, "password": PW}, status=201)
    t = api.post("/tokens", {"name": f"{name}-cli", "user": name, **body}, status=201)
    return {"Authorization": f"Bearer {t['token']}"}


def call(api: Api, method: str, path: str, headers: dict[str, str], **kw: Any) -> tuple[int, Any]:
    r = api.client.request(method, "/api/v1" + path, headers=headers, **kw)
    return r.status_code, r.json() if r.content else None


def test_users_are_managed_by_admins(api: Api) -> None:
    created = api.post("/users", {"username": "vera", "role": "viewer", "password": PW}, status=201)
    assert created["role"] == "viewer" and not created["disabled"] and "password" not in created
    assert api.post("/users", {"username": "vera", "role": "viewer", "password": PW}, status=409)["field"] == \
        "username"
    assert api.post("/users", {"username": "x", "role": "root", "password": PW}, status=422)["field"] == "role"
    assert api.post("/users", {"username": "short", "password": "abc"}, status=422)["field"] == "password"
    assert [u["username"] for u in api.get("/users")["items"]] == ["vera"]
    vera = user_token(api, "vera2", "viewer")
    assert call(api, "GET", "/users", vera)[0] == 403
    token_id = call(api, "GET", "/tokens", vera)[1]["items"][0]["id"]
    assert call(api, "GET", "/users/me", vera)[1] == {"username": "vera2", "role": "viewer", "actor": "vera2",
                                                      "token_id": token_id, "token_name": "vera2-cli"}
    me = api.get("/users/me")
    assert me["username"] is None and me["role"] == "admin" and me["actor"] == "token:admin"


def test_role_change_and_disable_apply_at_once(api: Api) -> None:
    otto = user_token(api, "otto", "operator")
    vm = {"name": "v1", "memory_mib": 64}
    assert call(api, "POST", "/vms", otto, json=vm)[0] == 201  # cached now, as operator
    assert api.call("PATCH", "/users/otto", 200, json={"role": "viewer"})["role"] == "viewer"
    status, body = call(api, "POST", "/vms", otto, json={**vm, "name": "v2"})
    assert status == 403 and body["code"] == "forbidden" and "operator" in body["message"]
    api.call("PATCH", "/users/otto", 200, json={"disabled": True})
    status, body = call(api, "GET", "/vms", otto)
    assert status == 401 and body["code"] == "unauthorized" and "disabled" in body["message"]
    api.call("PATCH", "/users/otto", 200, json={"disabled": False, "role": "operator"})
    assert call(api, "GET", "/vms", otto)[0] == 200
    assert api.call("PATCH", "/users/otto", 422, json={"password": "abc"})["field"] == "password"


def test_admin_cannot_lock_themselves_out(api: Api) -> None:
    ada = user_token(api, "ada", "admin")
    status, body = call(api, "PATCH", "/users/ada", ada, json={"disabled": True})
    assert status == 409 and body["field"] == "disabled"
    status, body = call(api, "PATCH", "/users/ada", ada, json={"role": "viewer"})
    assert status == 409 and body["field"] == "role"


def test_tokens_owner_ceiling_expiry_revocation(api: Api, db_url: str) -> None:
    vera = user_token(api, "vera", "viewer", expires="30d")
    mine = call(api, "GET", "/tokens", vera)[1]["items"]
    assert [(t["name"], t["user"], t["role"], t["state"]) for t in mine] == [("vera-cli", "vera", "viewer", "active")]
    assert timedelta(days=29) < _parse(mine[0]["expires_at"]) - utcnow() <= timedelta(days=30)
    # a viewer makes tokens for themselves only, never above their role
    status, body = call(api, "POST", "/tokens", vera, json={"name": "t2", "role": "admin"})
    assert status == 403 and body["field"] == "role"
    status, body = call(api, "POST", "/tokens", vera, json={"name": "t3", "user": "nobody"})
    assert status == 404 and body["field"] == "user"
    api.post("/users", {"username": "otto", "role": "operator", "password": PW}, status=201)
    status, body = call(api, "POST", "/tokens", vera, json={"name": "t4", "user": "otto"})
    assert status == 403 and body["field"] == "user"
    assert api.post("/tokens", {"name": "t5", "expires": "soon"}, status=422)["field"] == "expires"
    status, body = call(api, "POST", "/tokens", vera, json={"name": "t6", "expires": "never"})
    assert status == 201 and body["expires_at"] is None and body["token"].startswith("crl_")
    t6 = {"Authorization": f"Bearer {body['token']}"}
    # an operator's token restricted to viewer acts as a viewer
    ro = api.post("/tokens", {"name": "ro", "user": "otto", "role": "viewer"}, status=201)
    status, body = call(api, "POST", "/vms", {"Authorization": f"Bearer {ro['token']}"},
                        json={"name": "x", "memory_mib": 64})
    assert status == 403
    # the admin sees everyone's tokens, vera only hers; vera cannot revoke otto's
    assert {t["name"] for t in api.get("/tokens")["items"]} >= {"vera-cli", "t6", "ro", "admin"}
    assert {t["name"] for t in call(api, "GET", "/tokens", vera)[1]["items"]} == {"vera-cli", "t6"}
    assert call(api, "DELETE", f"/tokens/{ro['id']}", vera)[0] == 404
    # revoked: 401 at once, the row stays as revoked
    revoked = call(api, "DELETE", "/tokens/t6", vera)[1]
    assert revoked["state"] == "revoked" and revoked["revoked_at"]
    status, body = call(api, "GET", "/vms", t6)
    assert status == 401 and body == {"code": "unauthorized", "message": "this token was revoked", "field": None}
    # expired: 401 naming it (the row's expiry moved into the past; the cache never outlives it)
    db = Database(db_url)
    try:
        db.call(lambda s: s.execute(update(ApiToken).where(ApiToken.name == "vera-cli")
                                    .values(expires_at=utcnow() - timedelta(seconds=1))))
    finally:
        db.dispose()
    api.client.app.state.corral.tokens.forget_all()  # type: ignore[attr-defined]
    status, body = call(api, "GET", "/vms", vera)
    assert status == 401 and body["message"] == "this token has expired"
    assert [t["state"] for t in api.get("/tokens", user="vera")["items"]] == ["expired", "revoked"]
    assert call(api, "GET", "/vms", {"Authorization": "Bearer crl_nope"})[1]["message"] == "unknown token"


def _parse(value: str) -> Any:
    from datetime import datetime

    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def test_events_name_their_actor_also_from_tasks(api: Api) -> None:
    otto = user_token(api, "otto", "operator")
    status, vm = call(api, "POST", "/vms", otto, json={"name": "audited", "memory_mib": 64})
    assert status == 201
    r = api.client.post(f"/api/v1/vms/{vm['id']}/start", headers=otto)
    assert r.status_code == 202
    task = api.wait_task(r.json())
    assert task["state"] == "failed"  # no host: the task records its failure later, in the background
    by_otto = api.get("/events", user="otto")["items"]
    assert {"vm_created", "task_failed"} <= {e["type"] for e in by_otto}
    assert all(e["actor"] == "otto" for e in by_otto)
    created = [e for e in api.get("/events")["items"] if e["type"] == "user_created"]
    assert created and created[0]["actor"] == "token:admin"
    assert api.get("/events", user="nobody")["items"] == []
