"""Every error path of the agent API: bad input, unknown ids, refused settings, wrong state, auth.

Every answer with status >= 400 is checked by ``Api`` to be ``{"code", "message", "field", ...}``.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import libvirt
import pytest

from corral.agent.service import Agent

from .conftest import BRIDGE, Api, spec

# ---- authentication ----------------------------------------------------------------------------------

ENDPOINTS = [
    ("GET", "/v1/host"), ("GET", "/v1/host/stats"), ("GET", "/v1/vms"), ("GET", "/v1/vms/{id}"),
    ("POST", "/v1/vms"), ("POST", "/v1/vms/plan"), ("POST", "/v1/vms/{id}/start"),
    ("POST", "/v1/vms/{id}/shutdown"), ("POST", "/v1/vms/{id}/destroy"), ("POST", "/v1/vms/{id}/reboot"),
    ("POST", "/v1/vms/{id}/pause"), ("POST", "/v1/vms/{id}/resume"), ("DELETE", "/v1/vms/{id}"),
    ("PATCH", "/v1/vms/{id}/devices/{dev}"), ("POST", "/v1/vms/{id}/devices"),
    ("DELETE", "/v1/vms/{id}/devices/{dev}"), ("PUT", "/v1/vms/{id}/memory"), ("PUT", "/v1/vms/{id}/vcpus"),
    ("GET", "/v1/vms/{id}/console"), ("GET", "/v1/events?wait=0"), ("GET", "/v1/events"),
    ("GET", "/v1/openapi.json"),
]


@pytest.mark.parametrize("header", [None, "Bearer wrong-token-wrong-token", "Basic Y29ycmFsOnRlc3Q=", "Bearer "],
                         ids=["missing", "wrong", "basic", "empty"])
def test_every_endpoint_but_health_needs_the_token(agent_factory: Callable[..., Agent], header: str | None) -> None:
    api = Api(agent_factory())
    data = spec()
    vm_id = api.create(data, start=True)["id"]
    dev = data["disks"][0]["id"]
    headers = {"Authorization": header} if header is not None else {}
    for method, path in ENDPOINTS:
        url = path.format(id=vm_id, dev=dev)
        body = {"json": spec()} if method in ("POST", "PUT", "PATCH") else {}
        resp = api.request(method, url, auth=False, headers=headers, **body)
        assert resp.status_code == 401, (method, url, resp.status_code)
        assert resp.json()["code"] == "unauthorized"
    # nothing was done on the way: the VM is still running, defined once, alone
    assert [d.name() for d in api.conn().listAllDomains(0)] == [data["name"]]
    assert api.conn().lookupByUUIDString(vm_id).isActive()
    assert api.get("/v1/health", auth=False, headers=headers, expect=200).json()["status"] == "ok"


def test_the_scheme_is_case_insensitive(agent_factory: Callable[..., Agent]) -> None:
    from .conftest import TOKEN

    api = Api(agent_factory())
    api.get("/v1/vms", auth=False, headers={"Authorization": f"bearer {TOKEN}"}, expect=200)


# ---- bad input -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("change", "field"), [
    ({"memory_mib": None}, "memory_mib"),
    ({"memory_mib": 0}, "memory_mib"),
    ({"name": "has space"}, "name"),
    ({"id": "not-a-uuid"}, "id"),
    ({"disks": [{"source": "relative/path.raw"}]}, "disks.0.source"),
    ({"disks": [{"source": "/a.raw"}, {"device": "disk"}]}, "disks.1.source"),
    ({"nics": [{"source": BRIDGE, "mac": "01:00:00:00:00:01"}]}, "nics.0.mac"),
    ({"nics": [{"source": BRIDGE, "model": "pcnet"}]}, "nics.0.model"),
    ({"max_vcpus": 1, "vcpus": 2}, "max_vcpus"),
    ({"unknown_field": 1}, "unknown_field"),
    ({"format_version": 99}, "format_version"),
])
def test_bad_spec_is_422_with_the_field_path(api: Api, change: dict[str, Any], field: str) -> None:
    data = {**spec(), **change}
    if change.get("memory_mib", 1) is None:
        del data["memory_mib"]
    for path in ("/v1/vms", "/v1/vms/plan"):
        body = api.post(path, json=data, expect=422).json()
        assert body["code"] == "invalid"
        assert body["field"] == field, body
        assert any(e["field"] == field for e in body["errors"])
    assert api.conn().listAllDomains(0) == []


@pytest.mark.parametrize("payload", [[1, 2], "a string", 5])
def test_a_body_that_is_not_an_object(api: Api, payload: Any) -> None:
    body = api.post("/v1/vms", json=payload, expect=422).json()
    assert body["code"] == "invalid" and body["field"] == "body"


def test_a_body_that_is_not_json(api: Api) -> None:
    body = api.post("/v1/vms", content=b"{not json", headers={"Content-Type": "application/json"},
                    expect=422).json()
    assert body["code"] == "invalid"


def test_bad_action_bodies(api: Api) -> None:
    data = spec(max_memory_mib=512, max_vcpus=2)
    vm_id = api.create(data, start=True)["id"]
    url = f"/v1/vms/{vm_id}"
    for payload, field in (({"timeout": "soon"}, "timeout"), ({"timeout": -1}, "timeout"),
                           ({"timeout": True}, "timeout"), ({"force": "yes"}, "force"), ([1], "body")):
        body = api.post(f"{url}/shutdown", json=payload, expect=422).json()
        assert body["field"] == field
    assert api.conn().lookupByUUIDString(vm_id).isActive()
    assert api.put(f"{url}/memory", json={"memory_mib": "lots"}, expect=422).json()["field"] == "memory_mib"
    assert api.put(f"{url}/memory", json={"memory_mib": 1024}, expect=422).json()["field"] == "memory_mib"
    assert api.put(f"{url}/memory", json={"memory_mib": 0}, expect=422).json()["field"] == "memory_mib"
    assert api.put(f"{url}/vcpus", json={"vcpus": 3}, expect=422).json()["field"] == "vcpus"
    assert api.put(f"{url}/vcpus", json={"vcpus": True}, expect=422).json()["field"] == "vcpus"
    assert api.put(f"{url}/vcpus", json=[2], expect=422).json()["field"] == "vcpus"
    assert api.post(f"{url}/explode", expect=422).json()["field"] == "action"
    for payload in ({}, {"disk": {}, "nic": {}}, {"cdrom": {}}, {"disk": "x"}):
        api.post(f"{url}/devices", json=payload, expect=422)
    body = api.post(f"{url}/devices", json={"disk": {"source": "no/slash"}}, expect=422).json()
    assert body["field"] == "disk.source"
    body = api.post(f"{url}/devices", json={"nic": {"source": BRIDGE, "mac": "zz"}}, expect=422).json()
    assert body["field"] == "nic.mac"
    dev = data["disks"][0]["id"]
    api.patch(f"{url}/devices/{dev}", json={"media": "/x.iso", "link": "up"}, expect=422)
    api.patch(f"{url}/devices/{dev}", json=["x"], expect=422)
    body = api.patch(f"{url}/devices/{dev}", json={"media": "/x.iso"}, expect=422).json()  # a disk, not a CD-ROM
    assert body["field"] == "media"
    after = api.get(url, expect=200).json()
    assert after["spec"]["memory_mib"] == 256 and after["spec"]["vcpus"] == 1 and after["state"] == "up"


# ---- unknown ids --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("vm_id", [str(uuid.uuid4()), "not-a-uuid"])
def test_unknown_vm_is_404(api: Api, vm_id: str) -> None:
    api.create(spec())  # another VM exists; it must not answer for the unknown one
    dev = str(uuid.uuid4())
    calls = [("GET", ""), ("DELETE", ""), ("GET", "/console"), ("PUT", "/memory"), ("PUT", "/vcpus"),
             ("PATCH", f"/devices/{dev}"), ("DELETE", f"/devices/{dev}"), ("POST", "/devices"),
             *[("POST", f"/{a}") for a in ("start", "shutdown", "destroy", "reboot", "pause", "resume")]]
    bodies = {"/memory": {"memory_mib": 64}, "/vcpus": {"vcpus": 1}, f"/devices/{dev}": {"link": "up"},
              "/devices": {"disk": {"source": "/x.raw"}}}
    for method, suffix in calls:
        kw = {"json": bodies[suffix]} if suffix in bodies and method != "DELETE" else {}
        body = api.request(method, f"/v1/vms/{vm_id}{suffix}", expect=404, **kw).json()
        assert body["code"] == "not_found", (method, suffix)


def test_unknown_device_is_404(api: Api) -> None:
    vm_id = api.create(spec())["id"]
    dev = str(uuid.uuid4())
    body = api.patch(f"/v1/vms/{vm_id}/devices/{dev}", json={"link": "down"}, expect=404).json()
    assert body["code"] == "not_found" and body["field"] == "device_id"
    assert api.delete(f"/v1/vms/{vm_id}/devices/{dev}", expect=404).json()["code"] == "not_found"


# ---- refused settings ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("change", "path"), [
    ({"disks": [{"source": "/images/boot.img", "device": "floppy"}]}, "disks.0.device"),
    ({"nics": [{"source": BRIDGE, "filter": "clean-traffic"}]}, "nics.0.filter"),
    ({"cpu": {"mode": "custom", "model": "Skylake-Server"}}, "cpu.mode"),
])
def test_settings_a_xen_host_refuses_are_422_and_nothing_is_defined(agent_factory: Callable[..., Agent],
                                                                      change: dict[str, Any], path: str) -> None:
    xen = Api(agent_factory("xen"))
    data = spec(**change)
    for start in ("false", "true"):
        body = xen.post(f"/v1/vms?start={start}", json=data, expect=422).json()
        assert body["code"] == "refused" and body["field"] == path
        assert "Xen" in body["message"]
        refused = [d for d in body["decisions"] if d["outcome"] == "refused"]
        assert [d["path"] for d in refused] == [path] and refused[0]["detail"]
    assert xen.conn().listAllDomains(0) == []
    assert xen.get("/v1/vms", expect=200).json()["items"] == []
    # the same spec is fine on a KVM host
    kvm = Api(agent_factory("kvm"))
    assert kvm.create(data)["name"] == data["name"]


def test_every_refusal_is_listed_at_once(agent_factory: Callable[..., Agent]) -> None:
    api = Api(agent_factory("xen"))
    data = spec(disks=[{"source": "/a.img", "device": "floppy"}],
                nics=[{"source": BRIDGE, "filter": "clean-traffic"}])
    body = api.post("/v1/vms", json=data, expect=422).json()
    assert {d["path"] for d in body["decisions"]} == {"disks.0.device", "nics.0.filter"}


def test_refused_hotplug_leaves_the_vm_as_it_was(agent_factory: Callable[..., Agent]) -> None:
    api = Api(agent_factory("xen"))
    vm_id = api.create(spec())["id"]
    dom = api.conn().lookupByUUIDString(vm_id)
    before = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    body = api.post(f"/v1/vms/{vm_id}/devices", json={"disk": {"source": "/f.img", "device": "floppy"}},
                    expect=422).json()
    assert body["code"] == "refused" and body["decisions"][0]["path"].endswith(".device")
    body = api.post(f"/v1/vms/{vm_id}/devices", json={"nic": {"source": BRIDGE, "filter": "clean-traffic"}},
                    expect=422).json()
    assert body["code"] == "refused"
    assert dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE) == before


# ---- wrong state and duplicates: every action is safe to retry ------------------------------------------------


def test_wrong_state_is_409_and_changes_nothing(api: Api) -> None:
    vm_id = api.create(spec(), start=True)["id"]
    url = f"/v1/vms/{vm_id}"
    dom = api.conn().lookupByUUIDString(vm_id)
    domain_id = dom.ID()
    body = api.post(f"{url}/start", expect=409).json()
    assert body["code"] == "conflict" and "already running" in body["message"]
    body = api.delete(url, expect=409).json()
    assert body["code"] == "conflict" and "running" in body["message"]
    assert dom.isActive() and dom.ID() == domain_id  # untouched
    api.post(f"{url}/resume", expect=409)
    api.post(f"{url}/pause", expect=200)
    body = api.post(f"{url}/pause", expect=409).json()
    assert "paused" in body["message"]
    api.post(f"{url}/reboot", expect=409)
    api.post(f"{url}/resume", expect=200)
    api.post(f"{url}/destroy", expect=200)
    for action in ("destroy", "shutdown", "pause", "resume", "reboot"):
        body = api.post(f"{url}/{action}", expect=409).json()
        assert body["code"] == "conflict", action
    assert dom.state()[0] == libvirt.VIR_DOMAIN_SHUTOFF


def test_duplicate_id_or_name_is_409(api: Api) -> None:
    data = spec()
    api.create(data)
    body = api.post("/v1/vms", json=data, expect=409).json()
    assert body["code"] == "conflict" and body["field"] == "id"
    body = api.post("/v1/vms", json={**data, "id": str(uuid.uuid4())}, expect=409).json()
    assert body["field"] == "name"
    assert len(api.conn().listAllDomains(0)) == 1


def test_libvirt_down_is_503(agent_factory: Callable[..., Agent]) -> None:
    agent = agent_factory()
    api = Api(agent)
    agent.connection.close()  # gone, and closed on purpose: no reconnect
    body = api.get("/v1/vms", expect=503).json()
    assert body["code"] == "unavailable"
    assert api.get("/v1/health", auth=False, expect=200).json()["libvirt"] is False
