"""The engine against real agents (libvirt's test driver, one emulating Xen, one KVM), on both databases."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from tests.engine.agents import AgentProc
from tests.engine.conftest import Api


def eventually(check: Callable[[], Any], timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = check()
            if result:
                return result
        except AssertionError:
            if time.monotonic() > deadline:
                raise
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout} s: {check}")
        time.sleep(0.1)


def add_hosts(api: Api, agents: dict[str, AgentProc]) -> dict[str, dict[str, Any]]:
    hosts = {}
    for name, a in agents.items():
        task = api.wait_task(api.post("/hosts", {"name": name, "url": a.url, "token": a.token}, status=202))
        assert task["state"] == "succeeded", task
        assert task["result"]["state"] == "up"
        hosts[name] = api.get(f"/hosts/{name}")
    return hosts


def test_add_hosts_and_see_external_vm(agents: dict[str, AgentProc], api: Api) -> None:
    hosts = add_hosts(api, agents)
    assert hosts["xen-host"]["flavor"] == "xen" and hosts["kvm-host"]["flavor"] == "kvm"
    assert "xenbr0" in hosts["xen-host"]["bridges"] and "br0" in hosts["kvm-host"]["bridges"]
    assert hosts["kvm-host"]["cpu_count"] > 0 and hosts["kvm-host"]["memory_mib"] > 0
    assert api.post("/hosts", {"url": agents["xen-host"].url, "token": "t"}, status=409)["field"] == "url"
    # the test driver's own domain "test" is not Corral's: it shows up as external
    ext = eventually(lambda: api.get("/vms", external=True)["items"])
    assert ext[0]["name"] == "test" and ext[0]["state"] == "up" and ext[0]["host_id"] is not None
    assert api.post(f"/vms/{ext[0]['id']}/start", status=409)["code"] == "conflict"


def test_bad_token_leaves_no_host(agents: dict[str, AgentProc], api: Api) -> None:
    task = api.wait_task(api.post("/hosts", {"url": agents["kvm-host"].url, "token": "wrong" * 5}, status=202))
    assert task["state"] == "failed" and task["error"]["code"] == "agent_refused"
    assert api.get("/hosts")["items"] == []


def test_plan_placement_and_lifecycle(agents: dict[str, AgentProc], api: Api) -> None:
    hosts = add_hosts(api, agents)
    # a NIC on br0: only the KVM host has that bridge
    vm = api.post("/vms", {"name": "web", "memory_mib": 128, "vcpus": 1,
                           "nics": [{"source": "br0"}]}, status=201)
    xen_plan = api.get(f"/vms/{vm['id']}/plan", host="xen-host")
    kvm_plan = api.get(f"/vms/{vm['id']}/plan", host="kvm-host")
    assert xen_plan["flavor"] == "xen" and kvm_plan["flavor"] == "kvm"
    assert xen_plan["decisions"] != kvm_plan["decisions"]

    task = api.wait_task(api.post(f"/vms/{vm['id']}/start", status=202))
    assert task["state"] == "succeeded", task
    assert task["result"]["host"] == "kvm-host"
    shown = api.get(f"/vms/{vm['id']}")
    assert shown["state"] == "up" and shown["host"]["name"] == "kvm-host"
    rejected = {r["host"]: r["reasons"] for r in shown["placement"]["rejected"]}
    assert "missing bridge(s): br0" in rejected["xen-host"]
    assert shown["devices_source"] == "live" and shown["devices"]
    assert api.post(f"/vms/{vm['id']}/start", status=409)["code"] == "conflict"

    for action, expected in (("pause", "paused"), ("resume", "up"), ("stop", "down")):
        task = api.wait_task(api.post(f"/vms/{vm['id']}/{action}", {}, status=202))
        assert task["state"] == "succeeded", task
        assert api.get(f"/vms/{vm['id']}")["state"] == expected

    # an explicit host that fails a filter is refused with the reason
    task = api.wait_task(api.post(f"/vms/{vm['id']}/start", {"host": "xen-host"}, status=202))
    assert task["state"] == "failed" and task["error"]["code"] == "no_host"
    assert "missing bridge(s): br0" in task["error"]["rejections"][0]["reasons"]
    assert api.get(f"/vms/{vm['id']}")["state"] == "down"

    # changes behind the engine's back are picked up by monitoring
    task = api.wait_task(api.post(f"/vms/{vm['id']}/start", {"host": "kvm-host"}, status=202))
    assert task["state"] == "succeeded", task
    resp = agents["kvm-host"].call("POST", f"/v1/vms/{vm['id']}/destroy")
    assert resp.status_code == 200, resp.text
    eventually(lambda: api.get(f"/vms/{vm['id']}")["state"] == "down")
    events = api.get("/events", object_id=vm["id"], type="vm_state")["items"]
    assert events and events[-1]["detail"]["to"] == "down"
    assert hosts["kvm-host"]["id"]

    api.call("DELETE", f"/vms/{vm['id']}", 204)
    assert agents["kvm-host"].call("GET", f"/v1/vms/{vm['id']}").status_code == 404


def test_xen_flavor_refusal_keeps_vm_off_xen(agents: dict[str, AgentProc], api: Api) -> None:
    add_hosts(api, agents)
    vm = api.post("/vms", {"name": "floppy", "memory_mib": 128,
                           "disks": [{"device": "floppy", "source": "/tmp/floppy.img"}]}, status=201)
    plan = api.get(f"/vms/{vm['id']}/plan", host="xen-host")
    assert not plan["ok"] and any(d["outcome"] == "refused" for d in plan["decisions"])
    task = api.wait_task(api.post(f"/vms/{vm['id']}/start", status=202))
    placement = api.get(f"/vms/{vm['id']}")["placement"]
    rejected = {r["host"]: r["reasons"] for r in placement["rejected"]}
    assert any("flavor refuses" in r for r in rejected["xen-host"]), placement
    if task["state"] == "succeeded":
        assert task["result"]["host"] == "kvm-host"


def test_unreachable_host_turns_vms_unknown_then_recovers(agents: dict[str, AgentProc], api: Api) -> None:
    add_hosts(api, agents)
    vm = api.post("/vms", {"name": "survivor", "memory_mib": 128}, status=201)
    task = api.wait_task(api.post(f"/vms/{vm['id']}/start", {"host": "kvm-host"}, status=202))
    assert task["state"] == "succeeded", task
    agents["kvm-host"].kill()
    eventually(lambda: api.get("/hosts/kvm-host")["state"] == "unreachable")
    eventually(lambda: api.get(f"/vms/{vm['id']}")["state"] == "unknown")
    assert api.get("/events", object_type="host", severity="error")["items"]
    agents["kvm-host"].start()
    eventually(lambda: api.get("/hosts/kvm-host")["state"] == "up", timeout=20)
    # the emulated host keeps its domains across restarts; its state comes back from the poll
    eventually(lambda: api.get(f"/vms/{vm['id']}")["state"] in ("up", "down"), timeout=20)


def test_event_stream_brings_changes_before_the_poll(agents: dict[str, AgentProc], db_url: str) -> None:
    """With a 60 s poll, a VM destroyed behind the engine's back is seen through the agent's event stream."""
    from fastapi.testclient import TestClient

    from corral.engine.app import create_app
    from corral.engine.auth import create_token
    from corral.engine.monitor import MonitorSettings

    token = create_token(db_url)
    slow = MonitorSettings(poll_interval=60, flush_interval=0.05, full_every=100, sync_interval=60)
    with TestClient(create_app(db_url, monitor=slow)) as client:
        api = Api(client, token)
        add_hosts(api, {"kvm-host": agents["kvm-host"]})
        vm = api.post("/vms", {"name": "evented", "memory_mib": 64}, status=201)
        assert api.wait_task(api.post(f"/vms/{vm['id']}/start", status=202))["state"] == "succeeded"
        time.sleep(0.5)  # let the stream connect
        assert agents["kvm-host"].call("POST", f"/v1/vms/{vm['id']}/destroy").status_code == 200
        eventually(lambda: api.get(f"/vms/{vm['id']}")["state"] == "down", timeout=5)


def test_vnc_password_never_shown_back_by_a_running_vm(agents: dict[str, AgentProc], api: Api) -> None:
    add_hosts(api, agents)
    vm = api.post("/vms", {"name": "console", "memory_mib": 128, "vcpus": 1, "nics": [{"source": "br0"}],
                           "graphics": {"type": "vnc", "password": "s3cret"}}, status=201)
    task = api.wait_task(api.post(f"/vms/{vm['id']}/start", {"host": "kvm-host"}, status=202))
    assert task["state"] == "succeeded", task
    shown = api.get(f"/vms/{vm['id']}")
    assert shown["devices_source"] == "live"
    assert shown["spec"]["graphics"]["password"] is None and shown["live"]["spec"]["graphics"]["password"] is None
    gfx = next(d for d in shown["devices"] if d["kind"] == "graphics")
    assert gfx["password_set"] is True  # what the host says, without the secret
    changed = api.call("PUT", f"/vms/{vm['id']}/memory", 200, json={"memory_mib": 96})  # answered by the host
    assert changed["memory_mib"] == 96 and changed["spec"]["graphics"]["password"] is None  # type: ignore[index]
    assert "s3cret" not in str(api.get(f"/vms/{vm['id']}")) and "s3cret" not in str(changed)

