"""Live migration through the engine with real test-driver agents as processes, on SQLite and PostgreSQL
(issue 13). libvirt's test driver has no migration, so these tests see everything up to and around the agent's
refusal: the destination the scheduler picks (placement's filters minus the VM's own host), the refusals by
field before any task, a VM that cannot go anywhere (every host's reason), and a failed migration leaving the
VM running on its source with the reason in the task, the VM and an event. The real migration runs on the QEMU
pair (tests/e2e/test_engine_migration_qemupair.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.engine.agents import AgentProc
from tests.engine.conftest import Api
from tests.engine.test_with_agents import add_hosts


@pytest.fixture
def trio(tmp_path: Path) -> Iterator[dict[str, AgentProc]]:
    """Two KVM hosts with br0 and a Xen host without it, all in the default cluster."""
    procs = {"kvm-a": AgentProc("kvm-a", "kvm", ["br0"], tmp_path / "a"),
             "kvm-b": AgentProc("kvm-b", "kvm", ["br0"], tmp_path / "b"),
             "xen-c": AgentProc("xen-c", "xen", ["xenbr0"], tmp_path / "c")}
    try:
        for a in procs.values():
            a.start()
        yield procs
    finally:
        for a in procs.values():
            a.stop()


def running_vm(api: Api, name: str, host: str) -> dict[str, Any]:
    vm = api.post("/vms", {"name": name, "memory_mib": 128, "vcpus": 1, "nics": [{"source": "br0"}]}, status=201)
    task = api.wait_task(api.post(f"/vms/{vm['id']}/start", {"host": host}, status=202))
    assert task["state"] == "succeeded", task
    return vm


def events(api: Api, vm_id: str) -> list[dict[str, Any]]:
    return list(api.get("/events", object_id=vm_id, limit=200)["items"])


def test_the_scheduler_picks_the_other_host_and_the_failure_leaves_the_vm_on_its_source(
        trio: dict[str, AgentProc], api: Api) -> None:
    hosts = add_hosts(api, trio)
    vm = running_vm(api, "mover", "kvm-a")
    shown = api.get(f"/vms/{vm['id']}")
    macs = [n["mac"] for n in shown["spec"]["nics"]]
    task = api.post(f"/vms/{vm['id']}/migrate", status=202)
    assert task["kind"] == "vm_migrate" and task["object_id"] == vm["id"]
    task = api.wait_task(task)
    # the test driver has no migration: the source's agent refuses it by the call's name
    assert task["state"] == "failed", task
    assert task["error"]["code"] == "unsupported" and "virDomainMigrateToURI3" in task["error"]["message"], task
    after = api.get(f"/vms/{vm['id']}")
    assert (after["state"], after["host"]["name"]) == ("up", "kvm-a"), after
    assert "migration failed" in after["state_reason"] and "virDomainMigrateToURI3" in after["state_reason"]
    assert [n["mac"] for n in after["spec"]["nics"]] == macs
    evs = {e["type"]: e for e in events(api, vm["id"])}
    started = evs["vm_migration_started"]["detail"]
    # the destination: kvm-b, the only other host with br0; the source and the Xen host rejected with reasons
    assert started["host"] == "kvm-b" and started["host_id"] == hosts["kvm-b"]["id"]
    rejected = {r["host"]: r["reasons"] for r in started["rejected"]}
    assert rejected["kvm-a"] == ["the VM runs here (the migration's source)"]
    assert rejected["xen-c"] == ["a running VM moves only between hosts of one hypervisor: this host is xen, the VM "
                                 "runs on kvm (kvm)"], rejected
    # the CPU check: the VM names no CPU model (the hypervisor's default), so there is nothing to compare
    assert started["cpu"]["result"] == "not_checked" and "names no CPU" in started["cpu"]["detail"]
    assert started["endpoint"]["mechanism"] == "peer2peer"
    assert "virDomainMigrateToURI3" in evs["vm_migration_failed"]["message"]
    assert evs["vm_migration_failed"]["severity"] == "error"
    # a finished task cannot be cancelled; an unknown one is 404
    assert api.call("DELETE", f"/tasks/{task['id']}", 409)["message"].endswith("failed already")  # type: ignore[index]
    assert api.call("DELETE", "/tasks/no-such-task", 404)["field"] == "task_id"  # type: ignore[index]


def test_refusals_name_the_field_before_any_task(trio: dict[str, AgentProc], api: Api) -> None:
    add_hosts(api, trio)
    vm = running_vm(api, "stayer", "kvm-a")
    same = api.post(f"/vms/{vm['id']}/migrate", {"host": "kvm-a"}, status=409)
    assert same["field"] == "host" and "already" in same["message"]
    assert api.post(f"/vms/{vm['id']}/migrate", {"host": "nowhere"}, status=404)["field"] == "host"
    assert api.post(f"/vms/{vm['id']}/migrate", {"bandwidth_mib": 0}, status=422)["field"].endswith("bandwidth_mib")
    assert api.post(f"/vms/{vm['id']}/migrate", {"speed": 3}, status=422)["field"].endswith("speed")
    assert api.post(f"/vms/{vm['id']}/migrate", {"live": "sometimes"}, status=422)["field"].endswith("live")
    down = api.post("/vms", {"name": "sleeper", "memory_mib": 128}, status=201)
    refused = api.post(f"/vms/{down['id']}/migrate", status=409)
    assert refused["state"] == "down" and "only a running VM" in refused["message"]
    assert api.get(f"/vms/{vm['id']}")["state"] == "up"
    assert not [t for t in api.get("/tasks", object_id=vm["id"])["items"] if t["kind"] == "vm_migrate"]


def test_a_named_host_must_pass_placement(trio: dict[str, AgentProc], api: Api) -> None:
    add_hosts(api, trio)
    vm = running_vm(api, "picky", "kvm-a")
    task = api.wait_task(api.post(f"/vms/{vm['id']}/migrate", {"host": "xen-c"}, status=202))
    assert task["state"] == "failed" and task["error"]["code"] == "no_host", task
    rejected = {r["host"]: r["reasons"] for r in task["error"]["rejections"]}
    # a named host of another hypervisor is refused for that, whatever placement would say
    assert rejected["xen-c"][0].startswith("a running VM moves only between hosts of one hypervisor"), rejected
    assert "kvm-b" not in rejected
    after = api.get(f"/vms/{vm['id']}")
    assert (after["state"], after["host"]["name"]) == ("up", "kvm-a")
    assert "no host can take VM picky" in after["state_reason"]
    assert "vm_migration_failed" in {e["type"] for e in events(api, vm["id"])}
