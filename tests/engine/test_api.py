"""REST API behaviour that needs no agent, on SQLite and PostgreSQL: auth, errors, CRUD, pagination, tasks."""

from __future__ import annotations

import uuid
from typing import Any

from corral.engine.db.models import Host, Vm
from corral.engine.db.session import Database
from tests.engine.conftest import Api


def spec(name: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "memory_mib": 256, "vcpus": 1, **extra}


def add_host_row(db_url: str, name: str, *, state: str = "up", cluster: str | None = None,
                 **fields: Any) -> str:
    db = Database(db_url)
    try:
        def q(s: Any) -> str:
            from corral.engine.api.clusters import default_cluster

            cid = cluster or default_cluster(s).id
            h = Host(id=str(uuid.uuid4()), name=name, cluster_id=cid, agent_url=f"http://127.0.0.1:9/{name}",
                     state=state, cpu_flags=[], bridges=[], info={}, **fields)
            s.add(h)
            return h.id
        return db.call(q)
    finally:
        db.dispose()


def set_vm(db_url: str, vm_id: str, **values: Any) -> None:
    db = Database(db_url)
    try:
        db.call(lambda s: s.get(Vm, vm_id).__dict__ and [setattr(s.get(Vm, vm_id), k, v) for k, v in values.items()])
    finally:
        db.dispose()


def test_auth_required_and_errors_are_json(api: Api) -> None:
    resp = api.client.get("/api/v1/clusters")
    assert resp.status_code == 401
    assert resp.json()["code"] == "unauthorized"
    resp = api.client.get("/api/v1/clusters", headers={"Authorization": "Bearer nope"})
    assert resp.status_code == 401 and resp.json()["message"] == "unknown token"
    resp = api.client.get("/api/v1/nothing-here", headers=api.headers)
    assert resp.status_code == 404 and resp.json()["code"] == "not_found"


def test_openapi_published(api: Api) -> None:
    doc = api.client.get("/api/v1/openapi.json", headers=api.headers).json()
    assert "/api/v1/vms/{vm}/start" in doc["paths"]
    assert "/api/v1/tasks/{task_id}" in doc["paths"]


def test_clusters_crud_and_pagination(api: Api) -> None:
    names = [f"c{i}" for i in range(5)]
    for n in names:
        api.post("/clusters", {"name": n, "flavor_policy": "kvm"}, status=201)
    err = api.post("/clusters", {"name": "c0"}, status=409)
    assert err["code"] == "conflict" and err["field"] == "name"
    err = api.post("/clusters", {"name": "bad name!"}, status=422)
    assert err["field"] == "name"
    err = api.post("/clusters", {"name": "x", "flavor_policy": "vmware"}, status=422)
    assert err["field"] == "flavor_policy"
    seen: list[str] = []
    after = None
    while True:
        page = api.get("/clusters", limit=2, **({"after": after} if after else {}))
        seen += [c["name"] for c in page["items"]]
        assert len(page["items"]) <= 2
        after = page["next"]
        if after is None:
            break
    assert sorted(seen) == names and len(seen) == len(set(seen))
    assert [c["name"] for c in api.get("/clusters", name="c3")["items"]] == ["c3"]
    assert api.get("/clusters/c2")["flavor_policy"] == "kvm"
    assert api.call("PATCH", "/clusters/c2", 200, json={"description": "d"})["description"] == "d"  # type: ignore[index]
    assert api.get("/clusters/nope", status=404)["code"] == "not_found"
    api.call("DELETE", "/clusters/c4", 204)
    api.get("/clusters/c4", status=404)


def test_cluster_with_hosts_cannot_be_deleted(api: Api, db_url: str) -> None:
    c = api.post("/clusters", {"name": "busy"}, status=201)
    add_host_row(db_url, "h1", cluster=c["id"])
    assert api.call("DELETE", "/clusters/busy", 409)["code"] == "conflict"  # type: ignore[index]


def test_vm_create_validation_and_show(api: Api) -> None:
    vm = api.post("/vms", spec("web1", disks=[{"source": "/var/lib/images/a.img"}]), status=201)
    assert vm["state"] == "down" and vm["host_id"] is None and not vm["external"]
    assert vm["spec"]["disks"][0]["source"] == "/var/lib/images/a.img"
    err = api.post("/vms", spec("web2", disks=[{"source": "relative.img"}]), status=422)
    assert err["code"] == "invalid" and err["field"] == "disks.0.source"
    err = api.post("/vms", {"name": "x"}, status=422)
    assert err["field"] == "memory_mib"
    err = api.post("/vms", spec("web1"), status=409)
    assert err["field"] == "name"
    err = api.post("/vms?cluster=nope", spec("web3"), status=404)
    assert err["code"] == "not_found"
    shown = api.get(f"/vms/{vm['id']}")
    assert shown["name"] == "web1" and shown["devices_source"] == "spec" and shown["host"] is None
    assert api.get("/vms/web1")["id"] == vm["id"]
    assert api.get(f"/vms/{uuid.uuid4()}", status=404)["code"] == "not_found"


def test_vm_list_filters_and_pages(api: Api, db_url: str) -> None:
    api.post("/clusters", {"name": "other"}, status=201)
    ids = [api.post("/vms", spec(f"vm{i:02d}"), status=201)["id"] for i in range(7)]
    api.post("/vms?cluster=other", spec("elsewhere"), status=201)
    host = add_host_row(db_url, "hostA")
    set_vm(db_url, ids[0], state="up", host_id=host, last_host_id=host)
    set_vm(db_url, ids[1], state="up", host_id=host, last_host_id=host)
    everything: list[str] = []
    after = None
    while True:
        page = api.get("/vms", limit=3, **({"after": after} if after else {}))
        everything += [v["id"] for v in page["items"]]
        after = page["next"]
        if after is None:
            break
    assert len(everything) == 8 and everything == sorted(everything)
    up = api.get("/vms", state="up")["items"]
    assert sorted(v["id"] for v in up) == sorted(ids[:2])
    assert {v["host_name"] for v in up} == {"hostA"}
    assert len(api.get("/vms", host="hostA")["items"]) == 2
    assert [v["name"] for v in api.get("/vms", cluster="other")["items"]] == ["elsewhere"]
    assert [v["name"] for v in api.get("/vms", name="vm03")["items"]] == ["vm03"]
    assert api.get("/vms", host="nohost", status=404)["field"] == "host"
    assert api.get("/vms", limit=0, status=422)["field"] == "limit"


def test_vm_update_only_when_down_and_delete(api: Api, db_url: str) -> None:
    vm = api.post("/vms", spec("db1"), status=201)
    changed = api.call("PUT", f"/vms/{vm['id']}", 200, json=spec("db1", memory_mib=1024))
    assert changed["memory_mib"] == 1024 and changed["spec"]["id"] == vm["id"]  # type: ignore[index]
    err = api.call("PUT", f"/vms/{vm['id']}", 422, json={**spec("db1"), "id": str(uuid.uuid4())})
    assert err["field"] == "id"  # type: ignore[index]
    err = api.call("PUT", f"/vms/{vm['id']}", 422, json=spec("db1", vcpus=0))
    assert err["field"] == "vcpus"  # type: ignore[index]
    host = add_host_row(db_url, "hostB")
    set_vm(db_url, vm["id"], state="up", host_id=host, last_host_id=host)
    assert api.call("PUT", f"/vms/{vm['id']}", 409, json=spec("db1"))["code"] == "conflict"  # type: ignore[index]
    assert api.call("DELETE", f"/vms/{vm['id']}", 409)["code"] == "conflict"  # type: ignore[index]
    # a running VM cannot be started again; a down one cannot be paused
    assert api.post(f"/vms/{vm['id']}/start", status=409)["code"] == "conflict"
    set_vm(db_url, vm["id"], state="down", host_id=None, last_host_id=None)
    assert api.post(f"/vms/{vm['id']}/pause", status=409)["code"] == "conflict"
    api.call("DELETE", f"/vms/{vm['id']}", 204)
    api.get(f"/vms/{vm['id']}", status=404)


def test_start_without_hosts_fails_task_with_reason(api: Api, db_url: str) -> None:
    vm = api.post("/vms", spec("lonely"), status=201)
    add_host_row(db_url, "down-host", state="maintenance")
    resp = api.client.post(f"/api/v1/vms/{vm['id']}/start", headers=api.headers)
    assert resp.status_code == 202 and resp.headers["location"].startswith("/api/v1/tasks/")
    task = api.wait_task(resp.json())
    assert task["state"] == "failed" and task["error"]["code"] == "no_host"
    assert "host is maintenance" in task["error"]["rejections"][0]["reasons"]
    shown = api.get(f"/vms/{vm['id']}")
    assert shown["state"] == "down"
    assert shown["placement"]["host_id"] is None
    assert shown["placement"]["rejected"][0]["host"] == "down-host"
    events = api.get("/events", object_id=vm["id"], severity="warning")["items"]
    assert [e["type"] for e in events] == ["vm_no_host"]
    assert events[0]["object_name"] == "lonely"
    newest = api.get("/events", order="desc", limit=2)
    assert newest["items"][0]["id"] > newest["items"][1]["id"]
    older = api.get("/events", order="desc", limit=2, after=newest["next"])["items"]
    assert older and older[0]["id"] < newest["items"][1]["id"]
    errors = api.get("/events", min_severity="error")["items"]
    assert any(e["type"] == "task_failed" for e in errors)
    assert api.get("/tasks", object_id=vm["id"])["items"][0]["id"] == task["id"]
    assert api.get("/tasks/nope", status=404)["code"] == "not_found"
    assert api.post(f"/vms/{vm['id']}/start?host=ghost", status=404)["field"] == "host"


def test_hosts_add_unreachable_and_remove_rules(api: Api, db_url: str) -> None:
    task = api.post("/hosts", {"url": "http://127.0.0.1:9", "token": "x" * 20, "name": "ghost"}, status=202)
    task = api.wait_task(task)
    assert task["state"] == "failed" and task["error"]["code"] == "unreachable"
    assert api.get("/hosts", name="ghost")["items"] == []  # a failed add leaves nothing behind
    assert api.post("/hosts", {"url": "ftp://x"}, status=422)["field"] == "url"
    host = add_host_row(db_url, "busyhost")
    vm = api.post("/vms", spec("runner"), status=201)
    set_vm(db_url, vm["id"], state="up", host_id=host, last_host_id=host)
    assert api.post(f"/hosts/{host}/maintenance", status=409)["code"] == "conflict"
    assert api.call("DELETE", "/hosts/busyhost", 409)["code"] == "conflict"  # type: ignore[index]
    set_vm(db_url, vm["id"], state="down", host_id=None)
    assert api.post(f"/hosts/{host}/maintenance")["state"] == "maintenance"
    assert api.get("/hosts", state="maintenance")["items"][0]["name"] == "busyhost"
    api.call("DELETE", "/hosts/busyhost", 204)
    assert api.get(f"/vms/{vm['id']}")["last_host_id"] is None
    api.get("/hosts/busyhost", status=404)


def test_vnc_password_is_write_only(api: Api, db_url: str) -> None:
    """Stored (any host must render it), never shown back; a spec read, edited and written back keeps it."""
    def stored(vm_id: str) -> Any:
        db = Database(db_url)
        try:
            return db.read(lambda s: (s.get(Vm, vm_id).spec or {}).get("graphics", {}).get("password"))
        finally:
            db.dispose()

    vm = api.post("/vms", spec("vnc1", graphics={"type": "vnc", "password": "s3cret"}), status=201)
    assert vm["spec"]["graphics"]["password"] is None
    assert api.get(f"/vms/{vm['id']}")["spec"]["graphics"]["password"] is None
    assert stored(vm["id"]) == "s3cret"
    edited = {**api.get(f"/vms/{vm['id']}")["spec"], "memory_mib": 512}
    changed = api.call("PUT", f"/vms/{vm['id']}", 200, json=edited)
    assert changed["spec"]["graphics"]["password"] is None and changed["memory_mib"] == 512  # type: ignore[index]
    assert stored(vm["id"]) == "s3cret"  # kept: the spec written back had none
    renewed = {**edited, "graphics": {**edited["graphics"], "password": "n3w"}}
    api.call("PUT", f"/vms/{vm['id']}", 200, json=renewed)
    assert stored(vm["id"]) == "n3w"
    replaced = {**edited, "graphics": {"type": "vnc"}}  # another graphics device: nothing carried over
    api.call("PUT", f"/vms/{vm['id']}", 200, json=replaced)
    assert stored(vm["id"]) is None


def test_ssh_host_without_name_is_refused_naming_the_field(api: Api) -> None:
    err = api.post("/hosts", {"ssh": {"address": "192.0.2.7", "password": "x", "trust_on_first_use": True}},
                   status=422)
    assert err["field"] == "name" and "needs a name" in err["message"]
    assert api.get("/hosts")["items"] == []


def test_reinstall_options_keep_what_the_override_leaves_out() -> None:
    from corral.engine.deploy import DeployOptions, stored_options

    host = Host(deploy={"options": {"agent_port": 9443, "agent_url": "https://nat.example:9443",
                                    "libvirt_uri": "xen:///system"}})
    merged = stored_options(host, DeployOptions.model_validate({"allow_tcg": True}))
    assert (merged.allow_tcg, merged.agent_port, merged.agent_url, merged.libvirt_uri) == (
        True, 9443, "https://nat.example:9443", "xen:///system")
    assert stored_options(host).agent_port == 9443 and stored_options(Host(deploy={})).agent_port == 8470
