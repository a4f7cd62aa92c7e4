"""Placement against real agents (libvirt's test driver, one emulating Xen, one KVM), on both databases.

Issue 20, item 9: a PV VM was placed on the emulated KVM host and translated to HVM, because free memory
outweighed the translations. Both hosts here have the same memory and load, so only fidelity can choose.
"""

from __future__ import annotations

from tests.engine.agents import AgentProc
from tests.engine.conftest import Api
from tests.engine.test_with_agents import add_hosts


def test_pv_vm_goes_where_it_runs_as_pv(agents: dict[str, AgentProc], api: Api) -> None:
    add_hosts(api, agents)
    vm = api.post("/vms", {"name": "pv", "memory_mib": 128, "guest_type": "pv", "kernel": "/boot/vmlinuz"},
                  status=201)
    task = api.wait_task(api.post(f"/vms/{vm['id']}/start", status=202))
    assert task["state"] == "succeeded", task
    placement = task["result"]["placement"]
    assert task["result"]["host"] == "xen-host", placement
    # the KVM host would run it translated to HVM: one translation more than nothing, but a guest type lost
    assert set(placement["translated"]) == {"xen-host", "kvm-host"}


def test_vm_requiring_a_hypervisor_is_refused_elsewhere(agents: dict[str, AgentProc], api: Api) -> None:
    add_hosts(api, agents)
    vm = api.post("/vms", {"name": "kvm-only", "memory_mib": 128, "hypervisor": "kvm",
                           "nics": [{"source": "xenbr0"}]}, status=201)
    assert api.get(f"/vms/{vm['id']}")["spec"]["hypervisor"] == "kvm"  # stored with the spec
    task = api.wait_task(api.post(f"/vms/{vm['id']}/start", status=202))
    assert task["state"] == "failed", task
    assert task["error"]["code"] == "no_host"
    assert "xen-host: the VM requires a kvm host, this host is xen" in task["error"]["message"]
    assert "kvm-host: missing bridge(s): xenbr0" in task["error"]["message"]
    assert api.post("/vms", {"name": "bad", "memory_mib": 64, "hypervisor": "vmware"},
                    status=422)["field"] == "hypervisor"
