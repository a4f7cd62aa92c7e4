"""The simulated agents answer as the real agent does: same routes, same error bodies, and the same values where
a real host and libvirt's test driver agree (flavor, guest types, capability matrix, the hardware check's items,
plans, action states, device identities and settings), for a KVM and a Xen host alike (issue 15)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from corral.domain.flavors import get_flavor
from corral.domain.flavors.base import Flavor
from corral.domain.matrix import flavor_matrix
from corral.domain.spec import parse_spec
from tests.simulate.conftest import KVM_HOST, XEN_HOST, cleanup, fresh_name, vm_spec

REAL = ""  # the real agent answers at the root
SIM_HOST = {"kvm": KVM_HOST, "xen": XEN_HOST}


class Pair:
    """A real agent emulating one flavor on the test driver, and the simulated host of that flavor."""

    def __init__(self, name: str, real: TestClient, sim: TestClient) -> None:
        self.name, self.real, self.sim, self.prefix = name, real, sim, SIM_HOST[name]
        self.flavor: Flavor = get_flavor(name)

    def both(self, method: str, path: str, **kwargs: Any) -> tuple[Any, Any]:
        return self.real.request(method, path, **kwargs), self.sim.request(method, f"{self.prefix}{path}", **kwargs)


@pytest.fixture(params=["kvm", "xen"])
def pair(request: pytest.FixtureRequest, sim_client: TestClient) -> Pair:
    real = request.getfixturevalue("real_client" if request.param == "kvm" else "real_xen_client")
    return Pair(request.param, real, sim_client)


def full_spec(**fields: Any) -> dict[str, Any]:
    """A spec with every id set, so that both sides derive the same MACs and device ids from it."""
    data: dict[str, Any] = parse_spec({**vm_spec(fresh_name()), **fields}).model_dump(mode="json")
    return data


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


def test_host_document_matches_the_agents(pair: Pair) -> None:
    real, sim = (r.json() for r in pair.both("GET", "/v1/host"))
    assert _keys(sim) == _keys(real)
    assert _keys(sim["cpu"]) == _keys(real["cpu"])
    assert all(_keys(d) == {"source", "value"} for d in sim["detection"] + real["detection"])
    # (the Xen agent's test driver of its own has no NUMA topology)
    assert all(_keys(c) == {"id", "memory_mib", "cpus"} for c in sim["numa_cells"] + real["numa_cells"])
    assert _keys(sim["tools"]) == _keys(real["tools"])
    assert sim["tools"] == {name: name in pair.flavor.host_tools for name in real["tools"]}
    # what the flavor says, on both sides
    for key in ("flavor", "hypervisor", "accel", "guest_types", "capabilities", "bridges"):
        assert sim[key] == real[key], key
    assert sim["flavor"] == pair.name and sim["capabilities"] == flavor_matrix(pair.flavor)
    assert sim["guest_types"] == [g.value for g in pair.flavor.guest_types]
    assert (sim["emulated"], real["emulated"]) == (False, True)
    assert sim["uri"] == pair.flavor.default_uri and sim["detection"][0]["source"] == "libvirt getType()"
    assert sim["cpu"]["count"] > 0 and sim["memory_mib"] > sim["free_memory_mib"] > 0
    assert sim["host_uuid"] and sim["host_uuid"] != pair.sim.get(f"{SIM_HOST['kvm' if pair.name == 'xen' else 'xen']}"
                                                                 "/v1/host").json()["host_uuid"]

    # the hardware check: the flavor's checks, all passing on the simulated (real, healthy) host; on the emulated
    # one the agent runs those that mean something on the test driver, and they answer alike
    checks = pair.flavor.host_checks.checks
    assert _keys(sim["hardware_check"]) == _keys(real["hardware_check"]) == {"ok", "items"}
    assert [i["name"] for i in sim["hardware_check"]["items"]] == [c.name for c in checks]
    assert sim["hardware_check"]["ok"] is real["hardware_check"]["ok"] is True
    assert all(i["ok"] is True for i in sim["hardware_check"]["items"])
    emulated = {c.name for c in checks if c.emulated}
    assert [(i["name"], i["ok"]) for i in sim["hardware_check"]["items"] if i["name"] in emulated] == \
        [(i["name"], i["ok"]) for i in real["hardware_check"]["items"] if i["name"] != "emulated"]

    real_stats, sim_stats = (r.json() for r in pair.both("GET", "/v1/host/stats"))
    assert _keys(sim_stats) == _keys(real_stats)
    for part in ("memory", "vms"):
        assert _keys(sim_stats[part]) == _keys(real_stats[part])
    # node CPU times where the flavor's driver has them (the test driver always answers them)
    node = {"kernel_ns", "user_ns", "idle_ns", "iowait_ns"}
    assert _keys(sim_stats["cpu"]) == {"count"} | (node if pair.flavor.node_cpu_stats else set())
    assert _keys(real_stats["cpu"]) == {"count"} | node


def test_simulated_xen_host_is_a_dom0(sim_client: TestClient) -> None:
    xen = sim_client.get(f"{XEN_HOST}/v1/host").json()
    assert {"source": "/proc/xen/capabilities", "value": "control_d"} in xen["detection"]
    assert [i["name"] for i in xen["hardware_check"]["items"]][:2] == ["xen dom0", "hypervisor"]
    assert not {"vmx", "svm"} & set(xen["cpu"]["flags"])  # Xen keeps them from dom0
    assert sim_client.get(f"{XEN_HOST}/v1/host/stats").json()["cpu"].keys() == {"count"}  # libxl: no node stats


@pytest.fixture
def twin(pair: Pair) -> Iterator[tuple[Pair, str, str, dict[str, Any]]]:
    """One started VM, created with the same spec (ids included) on the real agent and on the simulated host."""
    name = fresh_name()
    created = pair.real.post("/v1/vms?start=true", json=vm_spec(name))
    assert created.status_code == 201, created.text
    spec = created.json()["spec"]
    simulated = pair.sim.post(f"{pair.prefix}/v1/vms?start=true", json=spec)
    assert simulated.status_code == 201, simulated.text
    try:
        yield pair, spec["id"], name, spec
    finally:
        cleanup(pair.real, REAL, spec["id"])
        cleanup(pair.sim, pair.prefix, spec["id"])


# what a VM document says the same way on a real host and on the test driver (not: domain_id, stats)
SAME_VM_VALUES = ("id", "name", "state", "libvirt_state", "reason", "external", "memory_mib", "vcpus", "spec",
                  "guest_type", "fault")
# what a live device says that depends on the running domain or the host's paths, not on the spec and flavor:
# host-side names and ports, ptys, console log paths (an emulated agent renders no console log dir)
LIVE_DEVICE_KEYS = {"vif", "port", "path", "log"}


def _identified(devices: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(d["kind"], d["id"]): {k: v for k, v in d.items() if k not in LIVE_DEVICE_KEYS}
            for d in devices if d["id"]}


def test_vm_documents_match_the_agents(twin: tuple[Pair, str, str, dict[str, Any]]) -> None:
    pair, vm_id, _name, spec = twin
    real_items, sim_items = (r.json()["items"] for r in pair.both("GET", "/v1/vms"))
    real_item = next(v for v in real_items if v["id"] == vm_id)
    sim_item = next(v for v in sim_items if v["id"] == vm_id)
    assert _keys(sim_item) == _keys(real_item)
    assert all(_keys(v) == _keys(real_item) for v in sim_items)
    assert {k: sim_item[k] for k in SAME_VM_VALUES} == {k: real_item[k] for k in SAME_VM_VALUES}
    assert sim_item["spec"] == spec and "devices" not in sim_item
    assert sim_item["stats"]["cpu_time"] >= 0 and sim_item["stats"]["balloon_current"] == 256 * 1024

    real_detail, sim_detail = (r.json() for r in pair.both("GET", f"/v1/vms/{vm_id}"))
    assert _keys(sim_detail) == _keys(real_detail)
    assert {k: sim_detail[k] for k in SAME_VM_VALUES} == {k: real_detail[k] for k in SAME_VM_VALUES}
    # every device the spec asked for: same kind, id, alias, match, bus, model, MAC, link (and link_requested
    # where the flavor leaves the link to the agent), format, driver...
    sim_devices, real_devices = _identified(sim_detail["devices"]), _identified(real_detail["devices"])
    assert sim_devices == real_devices
    assert {"disk", "nic", "graphics", "serial", "balloon"} <= {kind for kind, _ in sim_devices}

    # every simulated VM, on either flavor, has the same document shape
    for prefix in (KVM_HOST, XEN_HOST):
        for item in pair.sim.get(f"{prefix}/v1/vms").json()["items"]:
            detail = pair.sim.get(f"{prefix}/v1/vms/{item['id']}").json()
            assert _keys(detail) == _keys(real_detail)
            assert detail["spec"] == item["spec"]


def test_action_answers_match_the_agents(pair: Pair) -> None:
    """Create and the lifecycle actions answer a VmInfo without devices, in the same state, for the same reason;
    a shutdown says how the VM stopped."""
    created = pair.real.post("/v1/vms?start=true", json=vm_spec(fresh_name()))
    assert created.status_code == 201, created.text
    real, spec = created.json(), created.json()["spec"]  # the same ids for the simulated twin
    simulated = pair.sim.post(f"{pair.prefix}/v1/vms?start=true", json=spec)
    assert simulated.status_code == 201, simulated.text
    sim = simulated.json()
    vm_id = spec["id"]
    try:
        assert _keys(sim) == _keys(real) and "devices" not in real
        assert {k: sim[k] for k in SAME_VM_VALUES} == {k: real[k] for k in SAME_VM_VALUES}
        # the test driver's guest obeys a shutdown at once; the simulated one within shutdown_seconds
        for action, body in (("pause", None), ("resume", None), ("reboot", None), ("destroy", None),
                             ("start", None), ("shutdown", {"timeout": 30}), ("start", None)):
            answers = pair.both("POST", f"/v1/vms/{vm_id}/{action}", json=body)
            assert [a.status_code for a in answers] == [200, 200], [a.text for a in answers]
            real, sim = (a.json() for a in answers)
            assert _keys(sim) == _keys(real), action
            # a reboot: the test driver says booted again; QEMU keeps the reason (a guest reset is no new boot)
            same = [k for k in SAME_VM_VALUES if not (action == "reboot" and k == "reason")]
            assert {k: sim[k] for k in same} == {k: real[k] for k in same}, action
            assert sim.get("stopped_by") == real.get("stopped_by"), action
        assert sim["state"] == "up"

        # a guest that does not stop in time (the test driver's always does): without force a 409 naming the
        # state (corral.agent.errors.TimedOut), with force destroyed as the flavor can (no graceful destroy: at once)
        timed_out = pair.sim.post(f"{pair.prefix}/v1/vms/{vm_id}/shutdown", json={"timeout": 0})
        assert timed_out.status_code == 409
        body = timed_out.json()
        assert (body["code"], body["field"], body["state"]) == ("timeout", "timeout", "up")
        assert body["message"].startswith(f"VM {spec['name']} did not stop within 0 s of the shutdown request")
        forced = pair.sim.post(f"{pair.prefix}/v1/vms/{vm_id}/shutdown", json={"timeout": 0, "force": True})
        assert forced.status_code == 200
        assert (forced.json()["state"], forced.json()["stopped_by"]) == \
            ("down", "destroy-graceful" if pair.flavor.graceful_destroy else "destroy")
    finally:
        cleanup(pair.real, REAL, vm_id)
        cleanup(pair.sim, pair.prefix, vm_id)


def assert_same(real: Any, sim: Any, status: int) -> dict[str, Any]:
    assert (real.status_code, sim.status_code) == (status, status), (real.text, sim.text)
    assert sim.json() == real.json()
    body: dict[str, Any] = sim.json()
    return body


def test_error_bodies_are_the_agents(twin: tuple[Pair, str, str, dict[str, Any]]) -> None:
    pair, vm_id, name, _spec = twin
    both = pair.both

    for headers in ({"Authorization": ""}, {"Authorization": "Bearer not-the-token-at-all"}):
        body = assert_same(*both("GET", "/v1/vms", headers=headers), 401)
        assert body == {"code": "unauthorized", "message": "a valid bearer token is required", "field": None}

    unknown = str(uuid.uuid4())
    body = assert_same(*both("GET", f"/v1/vms/{unknown}"), 404)
    assert body["code"] == "not_found" and unknown in body["message"] and "field" in body
    assert_same(*both("GET", "/v1/vms/not-a-uuid"), 404)
    assert_same(*both("POST", f"/v1/vms/{unknown}/start"), 404)

    body = assert_same(*both("POST", "/v1/vms", json={"name": "bad name", "memory_mib": 0}), 422)
    assert body["code"] == "invalid" and body["field"] == "name"
    assert {e["field"] for e in body["errors"]} == {"name", "memory_mib"}
    body = assert_same(*both("POST", "/v1/vms", json={**vm_spec(fresh_name()), "disks": [{"source": "relative.img"}]}),
                       422)
    assert body["field"] == "disks.0.source"
    assert_same(*both("POST", "/v1/vms", json=[1, 2]), 422)
    assert_same(*both("POST", "/v1/vms/plan", json="spec"), 422)
    refused = {**vm_spec(fresh_name()), "bootloader": "pygrub"}  # neither QEMU nor an HVM Xen guest has one
    body = assert_same(*both("POST", "/v1/vms", json=refused), 422)
    assert body["code"] == "refused" and body["field"] == "bootloader" and body["decisions"]
    missing = {**vm_spec(fresh_name()), "nics": [{"source": "no-such-bridge"}]}
    body = assert_same(*both("POST", "/v1/vms", json=missing), 422)
    assert body["code"] == "refused" and body["field"] == "nics.0.source"

    body = assert_same(*both("POST", f"/v1/vms/{vm_id}/start"), 409)
    assert body == {"code": "conflict", "message": f"VM {name} is already running", "field": None}
    assert_same(*both("POST", f"/v1/vms/{vm_id}/resume"), 409)
    assert_same(*both("DELETE", f"/v1/vms/{vm_id}"), 409)
    assert_same(*both("POST", "/v1/vms", json={**vm_spec(name)}), 409)
    assert_same(*both("POST", f"/v1/vms/{vm_id}/frobnicate"), 422)
    assert_same(*both("POST", f"/v1/vms/{vm_id}/shutdown", json={"timeout": -1}), 422)
    assert_same(*both("POST", f"/v1/vms/{vm_id}/devices", json={"tape": {}}), 422)
    assert_same(*both("PUT", f"/v1/vms/{vm_id}/memory", json={"memory_mib": "x"}), 422)
    assert_same(*both("PUT", f"/v1/vms/{vm_id}/memory", json={"memory_mib": 99999}), 422)
    assert_same(*both("PATCH", f"/v1/vms/{vm_id}/devices/{unknown}", json={"link": "down"}), 404)
    assert_same(*both("POST", f"/v1/vms/{vm_id}/devices", json={"nic": {"source": "no-such-bridge"}}), 422)
    assert_same(*both("GET", "/v1/events?after=x&wait=0"), 422)
    assert_same(*both("GET", "/v1/events?after=0&wait=61"), 422)
    assert_same(*both("GET", f"/v1/vms/{vm_id}/console?tail=0"), 422)
    assert_same(*both("GET", "/v1/no-such-route"), 404)

    real, sim = both("POST", f"/v1/vms/{vm_id}/destroy")
    assert real.status_code == sim.status_code == 200
    assert sim.json()["state"] == real.json()["state"] == "down"
    body = assert_same(*both("POST", f"/v1/vms/{vm_id}/pause"), 409)
    assert body["message"] == f"cannot pause VM {name}: it is shutoff"
    assert_same(*both("POST", f"/v1/vms/{vm_id}/destroy"), 409)


def _plan_specs() -> list[dict[str, Any]]:
    """Specs whose plans differ between the flavors: native, translated, refused, guest types, host refusals."""
    return [
        full_spec(),
        full_spec(guest_type="pv", bootloader="pygrub", consoles=[{"kind": "pv"}]),
        full_spec(guest_type="pvh", kernel="/var/lib/corral/kernels/vmlinuz", consoles=[{"kind": "pv"}]),
        full_spec(disks=[{"source": "/var/lib/corral/images/a.qcow2", "format": "qcow2", "bus": "virtio"},
                         {"device": "cdrom", "source": None}],
                  nics=[{"source": "br0", "model": "virtio", "link": "down"}], guest_agent={}, max_memory_mib=512,
                  graphics={"type": "vnc", "listen": "0.0.0.0", "password": "secret12"}),
        full_spec(consoles=[{"kind": "serial"}, {"kind": "pv"}, {"kind": "pv"}], on_crash="coredump-restart"),
        full_spec(nics=[{"source": "no-such-bridge"}, {"source_type": "network", "source": "no-such-network"}]),
    ]


def test_plan_decisions_match_the_agents(pair: Pair) -> None:
    """A plan is the flavor's decisions plus what the host lacks: the same, value for value."""
    outcomes = set()
    for spec in _plan_specs():
        real, sim = pair.both("POST", "/v1/vms/plan", json=spec)
        assert real.status_code == sim.status_code == 200, (real.text, sim.text)
        assert _keys(sim.json()) == {"flavor", "guest_type", "ok", "decisions"}
        assert sim.json() == real.json(), spec
        assert sim.json()["flavor"] == pair.name
        outcomes |= {d["outcome"] for d in sim.json()["decisions"]}
    assert outcomes == {"native", "translated", "refused"}


def test_event_items_have_the_agents_keys(real_client: TestClient, sim_client: TestClient) -> None:
    real = real_client.get("/v1/events?after=0&wait=0").json()
    sim = sim_client.get(f"{KVM_HOST}/v1/events?after=0&wait=0").json()
    assert _keys(sim) == _keys(real) == {"items", "last"}
    assert real["items"] and sim["items"]
    assert all(_keys(e) == _keys(real["items"][0]) for e in sim["items"])
    first = sim["items"][0]
    assert first["seq"] == 1 and first["type"] == "agent" and first["state"] == "recovered"
    assert _keys(first["detail"]) == {"managed", "external", "running"}
