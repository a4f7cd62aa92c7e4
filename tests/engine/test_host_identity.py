"""Issue 20 item 8, on real agents (libvirt's test driver) and both databases: a host has one identity (its
agent's ``host_uuid``), Domain-0 (UUID all zeros on every Xen host) is each host's control domain and not a VM,
and the engine records only the agent events that happen after the host was added, with the agent's time."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from corral.engine.app import create_app
from corral.engine.auth import create_token
from tests.engine.agents import AgentProc
from tests.engine.conftest import FAST, Api
from tests.engine.test_with_agents import add_hosts, eventually

ZERO = "00000000-0000-0000-0000-000000000000"
DOMAIN0 = f"""<domain type='test'><name>Domain-0</name><uuid>{ZERO}</uuid><memory unit='MiB'>512</memory>
<vcpu>2</vcpu><os><type>xen</type></os></domain>"""


def _agent_vm(agent: AgentProc, name: str) -> str:
    """A VM made on the agent directly, behind the engine's back, and running; returns its id."""
    resp = agent.call("POST", "/v1/vms", params={"start": "true"}, json={"name": name, "memory_mib": 128})
    assert resp.status_code == 201, resp.text
    return str(resp.json()["id"])


def _memory_event(agent: AgentProc, vm_id: str, memory_mib: int) -> None:
    """The agent publishes a ``device`` event (change ``memory``) for this."""
    resp = agent.call("PUT", f"/v1/vms/{vm_id}/memory", json={"memory_mib": memory_mib})
    assert resp.status_code == 200, resp.text


def _device_events(api: Api, vm_id: str) -> list[dict[str, Any]]:
    return list(api.get("/events", object_id=vm_id, type="agent_device", limit=1000)["items"])


def _memory_sizes(events: list[dict[str, Any]]) -> list[int]:
    return sorted(e["detail"]["agent_event"]["detail"]["memory_mib"] for e in events)


def test_the_same_agent_is_one_host_whatever_its_url(agents: dict[str, AgentProc], api: Api) -> None:
    hosts = add_hosts(api, agents)
    xen, kvm = hosts["xen-host"], hosts["kvm-host"]
    # two emulated agents on one test driver are two hosts: each has its own identity
    assert xen["host_uuid"] and kvm["host_uuid"] and xen["host_uuid"] != kvm["host_uuid"]
    assert agents["xen-host"].call("GET", "/v1/host").json()["host_uuid"] == xen["host_uuid"]

    other_spelling = agents["xen-host"].url.replace("127.0.0.1", "localhost")
    refused = api.post("/hosts", {"name": "again", "url": other_spelling, "token": agents["xen-host"].token},
                       status=409)
    assert refused["code"] == "conflict" and refused["field"] == "url" and refused["host"] == "xen-host"
    assert "xen-host" in refused["message"] and xen["host_uuid"] in refused["message"]
    assert sorted(h["name"] for h in api.get("/hosts")["items"]) == ["kvm-host", "xen-host"]


def test_identity_survives_an_agent_restart(agents: dict[str, AgentProc], api: Api) -> None:
    """The test driver has no host UUID: the agent's, kept in its state dir, is the same after a restart, so
    the host comes back as itself (re-activation does not take it for another host)."""
    host = add_hosts(api, {"kvm-host": agents["kvm-host"]})["kvm-host"]
    agents["kvm-host"].stop()
    agents["kvm-host"].start()
    assert agents["kvm-host"].call("GET", "/v1/host").json()["host_uuid"] == host["host_uuid"]
    task = api.wait_task(api.post("/hosts/kvm-host/activate", status=202))
    assert task["state"] == "succeeded", task
    assert api.get("/hosts/kvm-host")["host_uuid"] == host["host_uuid"]


def test_only_events_after_the_add_are_recorded_with_the_agents_time(agents: dict[str, AgentProc],
                                                                      api: Api) -> None:
    agent = agents["kvm-host"]
    vm_id = _agent_vm(agent, "before")  # the engine has never had this VM
    _memory_event(agent, vm_id, 96)  # the agent's backlog: before the host is added
    host = add_hosts(api, {"kvm-host": agent})["kvm-host"]
    _memory_event(agent, vm_id, 80)  # after

    events = eventually(lambda: _device_events(api, vm_id))
    assert _memory_sizes(events) == [80]
    # the agent's startup event ("recovered") and the VM's start are the backlog too
    assert not api.get("/events", object_id=host["id"], type="agent_agent")["items"]
    (event,) = events
    agent_time = event["detail"]["agent_event"]["time"]
    assert abs(datetime.fromisoformat(event["time"]).timestamp() - agent_time) < 0.001


def test_events_resume_where_they_were_left(agents: dict[str, AgentProc], db_url: str) -> None:
    """An engine that restarts reads each agent's events after the last one it recorded (nothing twice); an
    agent that restarts starts its sequence numbers again, and its new events are recorded all the same."""
    agent = agents["kvm-host"]
    token = create_token(db_url)
    with TestClient(create_app(db_url, monitor=FAST)) as client:
        api = Api(client, token)
        add_hosts(api, {"kvm-host": agent})
        vm_id = _agent_vm(agent, "resumed")
        for size in (100, 101, 102):
            _memory_event(agent, vm_id, size)
        eventually(lambda: _memory_sizes(_device_events(api, vm_id)) == [100, 101, 102])
    _memory_event(agent, vm_id, 103)  # while the engine is down
    with TestClient(create_app(db_url, monitor=FAST)) as client:
        api = Api(client, token)
        _memory_event(agent, vm_id, 104)
        eventually(lambda: 104 in _memory_sizes(_device_events(api, vm_id)))
        assert _memory_sizes(_device_events(api, vm_id)) == [100, 101, 102, 103, 104]

        agent.stop()  # its event log starts again at 1, lower than the engine's position
        agent.start()
        eventually(lambda: agent.call("GET", f"/v1/vms/{vm_id}").status_code == 200)
        _memory_event(agent, vm_id, 90)
        eventually(lambda: 90 in _memory_sizes(_device_events(api, vm_id)), timeout=30)
        assert _memory_sizes(_device_events(api, vm_id)) == [90, 100, 101, 102, 103, 104]


@pytest.fixture
def xen_hosts(tmp_path: Path) -> Iterator[dict[str, AgentProc]]:
    """Two emulated Xen hosts, each with a running Domain-0 (UUID all zeros, as on every real Xen host)."""
    procs = {name: AgentProc(name, "xen", ["xenbr0"], tmp_path / name) for name in ("xen-a", "xen-b")}
    try:
        for a in procs.values():
            (a.root / "state").mkdir(parents=True)
            (a.root / "state" / "test-driver-domains.json").write_text(json.dumps([{"xml": DOMAIN0,
                                                                                    "active": True}]))
            a.start()
        yield procs
    finally:
        for a in procs.values():
            a.stop()


def test_domain0_is_each_hosts_control_domain_not_a_vm(xen_hosts: dict[str, AgentProc], api: Api) -> None:
    add_hosts(api, xen_hosts)
    for name in xen_hosts:
        shown = eventually(lambda n=name: (api.get(f"/hosts/{n}").get("control_domain") or {}).get("state") == "up"
                           and api.get(f"/hosts/{n}"))
        assert shown["control_domain"]["name"] == "Domain-0" and shown["control_domain"]["id"] == ZERO
        assert "memory_mib" in shown["control_domain"] and "vcpus" in shown["control_domain"]
    # the test driver's own domain "test" is a VM found on a host; Domain-0 is none
    eventually(lambda: api.get("/vms", external=True)["items"])
    assert ZERO not in {v["id"] for v in api.get("/vms", limit=1000)["items"]}
    assert api.get(f"/vms/{ZERO}", status=404)["code"] == "not_found"
    # a host whose only domain besides guests is its Domain-0 can go to maintenance
    stopped = {v["host_id"] for v in api.get("/vms", limit=1000)["items"] if v["state"] == "up"}
    free = next(n for n in xen_hosts if api.get(f"/hosts/{n}")["id"] not in stopped)
    assert api.post(f"/hosts/{free}/maintenance")["state"] == "maintenance"


# ---- the pure rules (corral.engine.reconcile.compute) ----------------------------------------------------


def test_reports_of_two_hosts_with_a_domain0_make_no_vm_and_drop_an_old_row() -> None:
    from corral.engine.reconcile import HostReport, Row, compute

    dom0 = {"id": ZERO, "name": "Domain-0", "state": "up", "external": True, "memory_mib": 1024, "vcpus": 2}
    # a row an earlier engine made of host A's Domain-0
    rows = {ZERO: Row(ZERO, "Domain-0", "up", "A", "A", True)}
    out = compute([HostReport("A", [dom0], True), HostReport("B", [dom0], True)], rows, {"A": "c", "B": "c"},
                  set(), set())
    assert out.inserts == [] and out.deletes == [ZERO]
    assert out.control_domains["A"] == out.control_domains["B"] == {
        "id": ZERO, "name": "Domain-0", "state": "up", "memory_mib": 1024, "vcpus": 2}
    # a host whose full report has none has none; a partial report says nothing of it
    assert compute([HostReport("A", [], True)], {}, {"A": "c"}, set(), set()).control_domains == {"A": None}
    assert compute([HostReport("A", [dom0], False)], {}, {"A": "c"}, set(), set()).control_domains == {}


def test_a_state_from_an_agent_event_keeps_the_events_time() -> None:
    from datetime import UTC

    from corral.engine.reconcile import HostReport, Row, compute

    at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    rows = {"a": Row("a", "a", "up", "H", "H", False)}
    out = compute([HostReport("H", [{"id": "a", "state": "down", "at": at}], False)], rows, {"H": "c"}, set(), set())
    assert out.updates[0]["state_changed_at"] == at and out.events[0]["time"] == at
