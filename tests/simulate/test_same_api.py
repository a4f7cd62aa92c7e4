"""The simulated agents answer as the real agent does: same routes, same document keys, same error bodies."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from corral.domain.flavors import get_flavor
from corral.domain.matrix import flavor_matrix
from tests.simulate.conftest import KVM_HOST, XEN_HOST, cleanup, fresh_name, vm_spec

REAL = ""  # the real agent answers at the root


def operations(schema: dict[str, Any]) -> set[tuple[str, str]]:
    return {(path, method) for path, item in schema["paths"].items() for method in item}


def test_openapi_has_the_agents_paths_and_methods(real_agent: Any, sim_client: TestClient) -> None:
    from corral.agent.app import create_app

    real = create_app(real_agent).openapi()
    for prefix in (KVM_HOST, XEN_HOST):
        resp = sim_client.get(f"{prefix}/v1/openapi.json")
        assert resp.status_code == 200
        simulated = resp.json()
        assert operations(simulated) == operations(real)
        assert len(operations(real)) >= 15
        assert simulated == real  # parameters, bodies and response schemas too


def test_health_and_openapi_authentication(real_client: TestClient, sim_client: TestClient) -> None:
    for client, prefix in ((real_client, REAL), (sim_client, KVM_HOST)):
        health = client.get(f"{prefix}/v1/health", headers={"Authorization": ""})
        assert health.status_code == 200
        assert health.json() == real_client.get("/v1/health").json()
        denied = client.get(f"{prefix}/v1/openapi.json", headers={"Authorization": ""})
        assert denied.status_code == 401


def _keys(doc: dict[str, Any]) -> set[str]:
    return set(doc)


def test_host_document_has_the_agents_keys(real_client: TestClient, sim_client: TestClient) -> None:
    real = real_client.get("/v1/host").json()
    for prefix, flavor in ((KVM_HOST, "kvm"), (XEN_HOST, "xen")):
        sim = sim_client.get(f"{prefix}/v1/host").json()
        assert _keys(sim) == _keys(real)
        assert _keys(sim["cpu"]) == _keys(real["cpu"])
        assert all(_keys(d) == {"source", "value"} for d in sim["detection"] + real["detection"])
        assert [_keys(c) for c in sim["numa_cells"]] == [_keys(c) for c in real["numa_cells"]]
        assert _keys(sim["hardware_check"]) == _keys(real["hardware_check"])
        assert {k for i in sim["hardware_check"]["items"] for k in i} == {"name", "ok", "detail"}
        assert _keys(sim["tools"]) == _keys(real["tools"])
        assert sim["flavor"] == flavor and sim["hypervisor"] == flavor and sim["emulated"] is False
        assert sim["hardware_check"]["ok"] is True
        assert sim["capabilities"] == flavor_matrix(get_flavor(flavor))
        assert "br0" in sim["bridges"]
        assert sim["cpu"]["count"] > 0 and sim["memory_mib"] > sim["free_memory_mib"] > 0
    assert real["capabilities"] == sim_client.get(f"{KVM_HOST}/v1/host").json()["capabilities"]
    xen = sim_client.get(f"{XEN_HOST}/v1/host").json()
    assert {"source": "/proc/xen/capabilities", "value": "control_d"} in xen["detection"]
    assert [i["name"] for i in xen["hardware_check"]["items"]][:2] == ["xen dom0", "hypervisor"]

    real_stats = real_client.get("/v1/host/stats").json()
    kvm_stats = sim_client.get(f"{KVM_HOST}/v1/host/stats").json()
    assert _keys(kvm_stats) == _keys(real_stats)
    for part in ("cpu", "memory", "vms"):
        assert _keys(kvm_stats[part]) == _keys(real_stats[part])
    assert sim_client.get(f"{XEN_HOST}/v1/host/stats").json()["cpu"].keys() == {"count"}  # libxl: no node stats


@pytest.fixture
def twin(real_client: TestClient, sim_client: TestClient) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """One started VM, created with the same spec (ids included) on the real agent and on simulated KVM host 1."""
    name = fresh_name()
    created = real_client.post("/v1/vms?start=true", json=vm_spec(name))
    assert created.status_code == 201, created.text
    spec = created.json()["spec"]
    simulated = sim_client.post(f"{KVM_HOST}/v1/vms?start=true", json=spec)
    assert simulated.status_code == 201, simulated.text
    try:
        yield spec["id"], name, spec
    finally:
        cleanup(real_client, REAL, spec["id"])
        cleanup(sim_client, KVM_HOST, spec["id"])


def test_vm_documents_have_the_agents_keys(real_client: TestClient, sim_client: TestClient,
                                            twin: tuple[str, str, dict[str, Any]]) -> None:
    vm_id, _name, spec = twin
    real_item = next(v for v in real_client.get("/v1/vms").json()["items"] if v["id"] == vm_id)
    sim_items = sim_client.get(f"{KVM_HOST}/v1/vms").json()["items"]
    sim_item = next(v for v in sim_items if v["id"] == vm_id)
    assert _keys(sim_item) == _keys(real_item)
    assert all(_keys(v) == _keys(real_item) for v in sim_items)
    same = ("id", "name", "state", "libvirt_state", "reason", "external", "memory_mib", "vcpus", "spec",
            "guest_type", "fault")
    assert {k: sim_item[k] for k in same} == {k: real_item[k] for k in same}
    assert sim_item["spec"] == spec and "devices" not in sim_item
    assert sim_item["stats"]["cpu_time"] >= 0 and sim_item["stats"]["balloon_current"] == 256 * 1024

    real_detail = real_client.get(f"/v1/vms/{vm_id}").json()
    sim_detail = sim_client.get(f"{KVM_HOST}/v1/vms/{vm_id}").json()
    assert _keys(sim_detail) == _keys(real_detail)
    real_devices = {d["kind"]: _keys(d) for d in real_detail["devices"]}
    sim_devices = {d["kind"]: _keys(d) for d in sim_detail["devices"]}
    for kind in real_devices.keys() & sim_devices.keys():
        assert sim_devices[kind] == real_devices[kind], kind
    identified = {(d["kind"], d["id"]) for d in sim_detail["devices"] if d["id"]}
    assert identified == {(d["kind"], d["id"]) for d in real_detail["devices"] if d["id"]}
    assert {"disk", "nic", "graphics", "serial", "balloon"} <= {kind for kind, _ in identified}

    # every simulated VM, on either flavor, has the same document shape
    for prefix in (KVM_HOST, XEN_HOST):
        for item in sim_client.get(f"{prefix}/v1/vms").json()["items"]:
            detail = sim_client.get(f"{prefix}/v1/vms/{item['id']}").json()
            assert _keys(detail) == _keys(real_detail)
            assert detail["spec"] == item["spec"]


def test_action_answers_have_the_agents_keys(real_client: TestClient, sim_client: TestClient) -> None:
    """Create and the lifecycle actions answer a VmInfo without devices (shutdown adds ``stopped_by``)."""
    created = real_client.post("/v1/vms?start=true", json=vm_spec(fresh_name()))
    assert created.status_code == 201, created.text
    real, spec = created.json(), created.json()["spec"]  # the same ids for the simulated twin
    simulated = sim_client.post(f"{KVM_HOST}/v1/vms?start=true", json=spec)
    assert simulated.status_code == 201, simulated.text
    sim = simulated.json()
    try:
        assert _keys(sim) == _keys(real) and "devices" not in real
        for action, body in (("pause", None), ("resume", None), ("reboot", None), ("destroy", None),
                             ("start", None), ("shutdown", {"timeout": 0, "force": True})):
            answers = _both(real_client, sim_client, "POST", f"/v1/vms/{spec['id']}/{action}", json=body)
            assert [a.status_code for a in answers] == [200, 200], [a.text for a in answers]
            real, sim = (a.json() for a in answers)
            assert _keys(sim) == _keys(real) and real["state"] == sim["state"], action
    finally:
        cleanup(real_client, REAL, spec["id"])
        cleanup(sim_client, KVM_HOST, spec["id"])


def _both(real_client: TestClient, sim_client: TestClient, method: str, path: str,
          **kwargs: Any) -> tuple[Any, Any]:
    real = real_client.request(method, path, **kwargs)
    sim = sim_client.request(method, f"{KVM_HOST}{path}", **kwargs)
    return real, sim


def assert_same(real: Any, sim: Any, status: int) -> dict[str, Any]:
    assert (real.status_code, sim.status_code) == (status, status), (real.text, sim.text)
    assert sim.json() == real.json()
    body: dict[str, Any] = sim.json()
    return body


def test_error_bodies_are_the_agents(real_client: TestClient, sim_client: TestClient,
                                     twin: tuple[str, str, dict[str, Any]]) -> None:
    vm_id, name, _spec = twin

    for headers in ({"Authorization": ""}, {"Authorization": "Bearer not-the-token-at-all"}):
        body = assert_same(*_both(real_client, sim_client, "GET", "/v1/vms", headers=headers), 401)
        assert body == {"code": "unauthorized", "message": "a valid bearer token is required", "field": None}

    unknown = str(uuid.uuid4())
    body = assert_same(*_both(real_client, sim_client, "GET", f"/v1/vms/{unknown}"), 404)
    assert body["code"] == "not_found" and unknown in body["message"] and "field" in body
    assert_same(*_both(real_client, sim_client, "GET", "/v1/vms/not-a-uuid"), 404)
    assert_same(*_both(real_client, sim_client, "POST", f"/v1/vms/{unknown}/start"), 404)

    body = assert_same(*_both(real_client, sim_client, "POST", "/v1/vms",
                              json={"name": "bad name", "memory_mib": 0}), 422)
    assert body["code"] == "invalid" and body["field"] == "name"
    assert {e["field"] for e in body["errors"]} == {"name", "memory_mib"}
    body = assert_same(*_both(real_client, sim_client, "POST", "/v1/vms",
                              json={**vm_spec(fresh_name()), "disks": [{"source": "relative.img"}]}), 422)
    assert body["field"] == "disks.0.source"
    assert_same(*_both(real_client, sim_client, "POST", "/v1/vms", json=[1, 2]), 422)
    assert_same(*_both(real_client, sim_client, "POST", "/v1/vms/plan", json="spec"), 422)
    refused = {**vm_spec(fresh_name()), "bootloader": "pygrub"}  # QEMU has no host-side bootloader
    body = assert_same(*_both(real_client, sim_client, "POST", "/v1/vms", json=refused), 422)
    assert body["code"] == "refused" and body["field"] == "bootloader" and body["decisions"]

    body = assert_same(*_both(real_client, sim_client, "POST", f"/v1/vms/{vm_id}/start"), 409)
    assert body == {"code": "conflict", "message": f"VM {name} is already running", "field": None}
    assert_same(*_both(real_client, sim_client, "POST", f"/v1/vms/{vm_id}/resume"), 409)
    assert_same(*_both(real_client, sim_client, "DELETE", f"/v1/vms/{vm_id}"), 409)
    assert_same(*_both(real_client, sim_client, "POST", "/v1/vms", json={**vm_spec(name)}), 409)
    assert_same(*_both(real_client, sim_client, "POST", f"/v1/vms/{vm_id}/frobnicate"), 422)
    assert_same(*_both(real_client, sim_client, "POST", f"/v1/vms/{vm_id}/shutdown", json={"timeout": -1}), 422)
    assert_same(*_both(real_client, sim_client, "POST", f"/v1/vms/{vm_id}/devices", json={"tape": {}}), 422)
    assert_same(*_both(real_client, sim_client, "PUT", f"/v1/vms/{vm_id}/memory", json={"memory_mib": "x"}), 422)
    assert_same(*_both(real_client, sim_client, "PUT", f"/v1/vms/{vm_id}/memory", json={"memory_mib": 99999}),
                422)
    assert_same(*_both(real_client, sim_client, "PATCH", f"/v1/vms/{vm_id}/devices/{unknown}",
                       json={"link": "down"}), 404)
    assert_same(*_both(real_client, sim_client, "GET", "/v1/events?after=x&wait=0"), 422)
    assert_same(*_both(real_client, sim_client, "GET", "/v1/events?after=0&wait=61"), 422)
    assert_same(*_both(real_client, sim_client, "GET", f"/v1/vms/{vm_id}/console?tail=0"), 422)
    assert_same(*_both(real_client, sim_client, "GET", "/v1/no-such-route"), 404)

    real, sim = _both(real_client, sim_client, "POST", f"/v1/vms/{vm_id}/destroy")
    assert real.status_code == sim.status_code == 200
    assert sim.json()["state"] == real.json()["state"] == "down"
    body = assert_same(*_both(real_client, sim_client, "POST", f"/v1/vms/{vm_id}/pause"), 409)
    assert body["message"] == f"cannot pause VM {name}: it is shutoff"
    assert_same(*_both(real_client, sim_client, "POST", f"/v1/vms/{vm_id}/destroy"), 409)


def test_plan_answers_like_the_agent(real_client: TestClient, sim_client: TestClient) -> None:
    spec = vm_spec(fresh_name())
    real = real_client.post("/v1/vms/plan", json=spec)
    sim = sim_client.post(f"{KVM_HOST}/v1/vms/plan", json=spec)
    assert real.status_code == sim.status_code == 200
    assert _keys(sim.json()) == _keys(real.json()) == {"flavor", "guest_type", "ok", "decisions"}
    assert sim.json()["flavor"] == "kvm" and sim.json()["ok"] is True
    xen = sim_client.post(f"{XEN_HOST}/v1/vms/plan", json={**spec, "guest_type": "pv", "bootloader": "pygrub"})
    assert xen.json()["flavor"] == "xen" and xen.json()["guest_type"] == "pv" and xen.json()["ok"] is True


def test_event_items_have_the_agents_keys(real_client: TestClient, sim_client: TestClient) -> None:
    real = real_client.get("/v1/events?after=0&wait=0").json()
    sim = sim_client.get(f"{KVM_HOST}/v1/events?after=0&wait=0").json()
    assert _keys(sim) == _keys(real) == {"items", "last"}
    assert real["items"] and sim["items"]
    assert all(_keys(e) == _keys(real["items"][0]) for e in sim["items"])
    first = sim["items"][0]
    assert first["seq"] == 1 and first["type"] == "agent" and first["state"] == "recovered"
    assert _keys(first["detail"]) == {"managed", "external", "running"}
