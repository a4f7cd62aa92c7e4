"""The agent's HTTP fast path (``corral.agent.fastpath``): it answers its calls itself, exactly as the FastAPI
routes would, and hands everything unusual to them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from fastapi.routing import APIRoute

from corral.agent.app import create_app
from corral.agent.service import Agent

from .conftest import AUTH, TOKEN, Api, spec


def without_routes(agent: Agent, *paths: tuple[str, str]) -> Api:
    """An API whose FastAPI app lacks these (method, path) routes: only the fast path can answer them."""
    api = Api(agent)
    app = create_app(agent, token=TOKEN)
    app.router.routes = [r for r in app.router.routes
                         if not (isinstance(r, APIRoute) and any(r.path == p and m in r.methods for m, p in paths))]
    from fastapi.testclient import TestClient

    api.client = TestClient(app)
    return api


def comparable(info: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in info.items() if k != "stats"}  # CPU time moves between two reads


def test_fast_path_answers_without_the_routes(agent_factory: Callable[..., Agent]) -> None:
    api = without_routes(agent_factory(), ("GET", "/v1/vms"), ("POST", "/v1/vms"), ("GET", "/v1/vms/{vm_id}"),
                         ("POST", "/v1/vms/{vm_id}/{action}"), ("GET", "/v1/health"))
    assert api.get("/v1/health", auth=False, expect=200).json()["status"] == "ok"
    vm = api.post("/v1/vms?start=true", json=spec(), expect=201).json()
    assert vm["state"] == "up" and isinstance(vm["domain_id"], int)
    assert [v["id"] for v in api.get("/v1/vms", expect=200).json()["items"]] == [vm["id"]]
    assert api.get(f"/v1/vms/{vm['id']}", expect=200).json()["devices"]
    for action, state in (("pause", "paused"), ("resume", "up"), ("reboot", "up"), ("destroy", "down")):
        assert api.post(f"/v1/vms/{vm['id']}/{action}", expect=200).json()["state"] == state
    # the errors the handlers raise are answered by the fast path too
    assert api.post(f"/v1/vms/{vm['id']}/destroy", expect=409).json()["code"] == "conflict"
    assert api.post("/v1/vms", json=spec(name=vm["name"]), expect=409).json()["field"] == "name"
    bad = api.post("/v1/vms", json={**spec(), "memory_mib": -1}, expect=422).json()
    assert bad["field"] == "memory_mib"
    # unusual requests go to FastAPI, whose routes are gone here: so they were not answered by the fast path
    assert api.get("/v1/vms?x=1").status_code == 404
    assert api.post(f"/v1/vms/{vm['id']}/destroy", json={"x": 1}).status_code == 404
    assert api.post("/v1/vms", content=b"[1]", headers={"Content-Type": "application/json"}).status_code == 404


def test_fast_path_and_routes_answer_alike(api: Api) -> None:
    """Each call once through the fast path and once through FastAPI (a query parameter the fast path does
    not take sends it there; FastAPI ignores it): the same status and the same body."""
    created = api.post("/v1/vms?start=true", json=spec(), expect=201).json()
    routed = api.post("/v1/vms?start=True", json=spec(), expect=201).json()
    assert set(created) == set(routed) and created["state"] == routed["state"] == "up"
    vm_id = created["id"]
    fast, slow = api.get(f"/v1/vms/{vm_id}").json(), api.get(f"/v1/vms/{vm_id}?via=fastapi").json()
    assert comparable(fast) == comparable(slow)
    assert [comparable(v) for v in api.get("/v1/vms").json()["items"]] == \
        [comparable(v) for v in api.get("/v1/vms?via=fastapi").json()["items"]]
    assert api.get("/v1/health").json() == api.get("/v1/health?via=fastapi").json()
    for path in (f"/v1/vms/{vm_id}/start", "/v1/vms/00000000-0000-0000-0000-000000000000/pause"):
        fast_resp, slow_resp = api.post(path), api.post(path + "?via=fastapi")
        assert (fast_resp.status_code, fast_resp.json()) == (slow_resp.status_code, slow_resp.json())
    invalid = {**spec(), "disks": [{"source": "relative/path"}]}
    fast_resp, slow_resp = api.post("/v1/vms", json=invalid), api.post("/v1/vms?start=no", json=invalid)
    assert fast_resp.status_code == slow_resp.status_code == 422
    assert fast_resp.json() == slow_resp.json()


@pytest.mark.parametrize("body", [b"", b"{not json", b"[]", b"null", b'"spec"'])
def test_bodies_the_fast_path_leaves_to_fastapi(api: Api, body: bytes) -> None:
    resp = api.post("/v1/vms", content=body, headers={**AUTH, "Content-Type": "application/json"})
    assert resp.status_code == 422 and resp.json()["code"] == "invalid"
    assert api.get("/v1/vms").json()["items"] == []


def test_fast_path_is_behind_authentication(api: Api) -> None:
    for method, path in (("GET", "/v1/vms"), ("POST", "/v1/vms"), ("GET", f"/v1/vms/{spec()['id']}"),
                         ("POST", f"/v1/vms/{spec()['id']}/start")):
        resp = api.request(method, path, auth=False, json=spec() if method == "POST" else None)
        assert resp.status_code == 401 and resp.json()["code"] == "unauthorized"
    assert api.get("/v1/vms").json()["items"] == []
