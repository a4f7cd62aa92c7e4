"""The device-model watchdog and what the agent does after every start, on libvirt's test driver emulating Xen.

A device model that dies is what cannot exist here (the test driver runs no qemu): the watchdog is given the
pid lookup and liveness check a real dom0 answers from xenstore and /proc, as plain functions; the domains,
their ids, the agent's locks and the destroy/restart are libvirt's and the agent's own (issue 15, issue 20 item 2).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import libvirt
import pytest

from corral.agent.service import Agent
from corral.agent.watchdog import DeviceModelWatchdog
from tests.agent.conftest import Api, spec, wait_for


class FakeDeviceModels:
    """Device-model pids per domain id, as xenstore would answer them; ``dead`` pids are gone from /proc."""

    def __init__(self) -> None:
        self.pids: dict[int, int] = {}
        self.dead: set[int] = set()
        self.next_pid = 1000

    def find(self, domid: int) -> int | None:
        if domid not in self.pids:
            self.next_pid += 1
            self.pids[domid] = self.next_pid
        pid = self.pids[domid]
        return None if pid in self.dead else pid

    def alive(self, pid: int) -> bool:
        return pid not in self.dead

    def kill(self, domid: int) -> int:
        pid = self.pids[domid]
        self.dead.add(pid)
        return pid


@pytest.fixture
def xen(agent_factory: Callable[..., Agent]) -> Api:
    return Api(agent_factory("xen"))


def _hvm(api: Api, **extra: Any) -> tuple[str, libvirt.virDomain]:
    vm_id = api.create(spec(guest_type="hvm", **extra), start=True)["id"]
    return vm_id, api.conn().lookupByUUIDString(vm_id)


def _watchdog(api: Api, models: FakeDeviceModels) -> DeviceModelWatchdog:
    assert api.agent.vms is not None
    return DeviceModelWatchdog(api.agent.vms, find_pid=models.find, alive=models.alive)


def _events(api: Api) -> list[dict[str, Any]]:
    return api.get("/v1/events?after=0&wait=0").json()["items"]  # type: ignore[no-any-return]


def test_a_lost_device_model_is_destroyed_and_reported(xen: Api) -> None:
    models = FakeDeviceModels()
    vm_id, dom = _hvm(xen)
    dog = _watchdog(xen, models)
    assert dog.check() == []  # first sight: the pid is learnt
    models.kill(dom.ID())
    assert dog.check() == [vm_id]
    assert not dom.isActive()
    kinds = [(e["type"], e["state"]) for e in _events(xen) if e["vm_id"] == vm_id]
    assert ("device_model_lost", "crashed") in kinds
    assert xen.get(f"/v1/vms/{vm_id}").json()["state"] == "crashed"


def test_a_reboot_is_a_new_domain_with_a_new_device_model_not_a_loss(xen: Api) -> None:
    """The pid was cached per VM and never cleared: after a reboot (new domain id, new qemu) the old, dead pid
    was taken for a lost device model and the rebooted guest destroyed."""
    models = FakeDeviceModels()
    _vm_id, dom = _hvm(xen)
    dog = _watchdog(xen, models)
    dog.check()
    old = dom.ID()
    dom.destroy()  # what libxl does on an HVM reboot: the old domain goes, with its qemu...
    models.kill(old)
    dom.create()  # ...and a new domain (a new id) starts with a new qemu
    assert dom.ID() != old
    assert dog.check() == []
    assert dog.check() == []
    assert dom.isActive()
    assert not [e for e in _events(xen) if e["type"] == "device_model_lost"]


def test_the_agents_own_stop_is_not_a_loss(xen: Api) -> None:
    """`corral vm stop` of an HVM guest ended as `crashed`: the watchdog saw qemu die during the agent's destroy."""
    models = FakeDeviceModels()
    vm_id, dom = _hvm(xen)
    dog = _watchdog(xen, models)
    dog.check()
    assert xen.agent.vms is not None
    domid = dom.ID()
    lock = xen.agent.vms.vm_lock(vm_id)
    with lock:  # the agent is in the middle of an action on the VM: its qemu is already gone
        models.kill(domid)
        assert dog.check() == []
    xen.agent.vms.stopping.add(vm_id)  # ...or marked as stopping it (shutdown, destroy)
    try:
        assert dog.check() == []
    finally:
        xen.agent.vms.stopping.discard(vm_id)
    xen.post(f"/v1/vms/{vm_id}/destroy", expect=200)
    assert dog.check() == []
    assert not [e for e in _events(xen) if e["type"] == "device_model_lost"]
    assert xen.get(f"/v1/vms/{vm_id}").json()["state"] == "down"


def test_a_watchdog_cycle_waits_for_nothing_while_the_agent_acts(xen: Api) -> None:
    """The watchdog never blocks on a VM's lock: it looks again at its next cycle."""
    models = FakeDeviceModels()
    vm_id, _dom = _hvm(xen)
    dog = _watchdog(xen, models)
    assert xen.agent.vms is not None
    lock = xen.agent.vms.vm_lock(vm_id)
    done = threading.Event()
    with lock:
        threading.Thread(target=lambda: (dog.check(), done.set()), daemon=True).start()
        assert done.wait(10), "the watchdog waited for the VM's lock"


def test_restart_policy_restarts_and_applies_what_follows_a_start(xen: Api) -> None:
    models = FakeDeviceModels()
    vm_id, dom = _hvm(xen, memory_mib=256, max_memory_mib=512, on_device_model_lost="restart")
    dog = _watchdog(xen, models)
    # the watchdog skips a VM the agent is still acting on (the start's balloon target): checked until it saw it
    wait_for(lambda: dog.check() == [] and dom.ID() in models.pids, 10, "the watchdog to see the device model")
    models.kill(dom.ID())
    assert dog.check() == [vm_id]
    assert dom.isActive()
    assert dom.info()[2] == 256 * 1024, "the balloon target was not set again after the restart"
    events = [(e["type"], e["state"], e["detail"].get("event")) for e in _events(xen) if e["vm_id"] == vm_id]
    assert ("lifecycle", "up", "restarted") in events


@pytest.mark.parametrize("emulate, expected_kib", [("xen", 256 * 1024), ("kvm", 256 * 1024)])
def test_an_hvm_guest_started_at_max_gets_its_balloon_target(agent_factory: Callable[..., Agent], emulate: str,
                                                              expected_kib: int) -> None:
    """Xen HVM below max is rendered at max ([D3]); nothing lowered it afterwards (issue 15)."""
    api = Api(agent_factory(emulate))
    vm_id, dom = _hvm(api, memory_mib=256, max_memory_mib=1024)
    assert dom.maxMemory() == 1024 * 1024
    assert dom.info()[2] == expected_kib
    inactive = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    if emulate == "xen":  # the definition starts it at max; the agent lowers it once running
        assert f"<currentMemory unit='KiB'>{1024 * 1024}</currentMemory>" in inactive
    # a guest reboot or an on_crash restart (a new domain started without the agent) gets it too
    dom.destroy()
    dom.create()
    assert api.agent.vms is not None
    api.agent.vms.restarted(vm_id)
    assert dom.info()[2] == expected_kib


def test_xen_nic_links_are_reported_as_requested_where_the_host_has_no_vif(xen: Api) -> None:
    """On an emulated host there is no vif to read: the answer says which state was requested."""
    data = spec(guest_type="pv", kernel="/boot/vmlinuz")
    data["nics"][0]["link"] = "down"
    vm_id = xen.create(data, start=True)["id"]
    nic = next(d for d in xen.get(f"/v1/vms/{vm_id}").json()["devices"] if d["kind"] == "nic")
    assert nic["link"] == "down" and nic["link_requested"] == "down"


def _reached_libvirt(resp: Any) -> bool:
    """libvirt's test driver has no virDomainUpdateDeviceFlags: a live media change that passed the agent's own
    checks ends there (the QEMU and Xen labs run the change itself)."""
    body = resp.json()
    return resp.status_code == 409 and body["field"] is None and "virDomainUpdateDeviceFlags" in body["message"]


def test_xen_hvm_live_insert_into_a_drive_that_started_empty_is_refused(xen: Api) -> None:
    """X4 (measured on the lab): Debian's Xen qemu segfaults on a live insert into an HVM CD-ROM that was empty
    when the domain started. Refused by field before anything changes; a drive started with media goes on."""
    data = spec(guest_type="hvm", disks=[{"source": "/var/lib/corral/images/a.raw"}, {"device": "cdrom"},
                                         {"device": "cdrom", "source": "/isos/first.iso"}])
    vm_id = xen.create(data, start=True)["id"]
    empty_cd, full_cd = (d["id"] for d in xen.get(f"/v1/vms/{vm_id}").json()["spec"]["disks"][1:])
    body = xen.patch(f"/v1/vms/{vm_id}/devices/{empty_cd}", json={"media": "/isos/a.iso"}, expect=409).json()
    assert body["code"] == "unsupported" and body["field"] == "media" and "X4" in body["message"]
    assert xen.get(f"/v1/vms/{vm_id}").json()["spec"]["disks"][1]["source"] is None, "the refusal changed the spec"
    # the drive that started with media passes the check (and reaches libvirt)
    assert _reached_libvirt(xen.patch(f"/v1/vms/{vm_id}/devices/{full_cd}", json={"media": "/isos/second.iso"}))
    # while the VM is down media goes in, and the next start has it: then the drive did not start empty
    xen.post(f"/v1/vms/{vm_id}/destroy", expect=200)
    xen.patch(f"/v1/vms/{vm_id}/devices/{empty_cd}", json={"media": "/isos/a.iso"}, expect=200)
    xen.post(f"/v1/vms/{vm_id}/start", expect=200)
    assert _reached_libvirt(xen.patch(f"/v1/vms/{vm_id}/devices/{empty_cd}", json={"media": "/isos/b.iso"}))
    # a domain the agent did not see start (the agent restarted meanwhile): a drive empty now counts as started
    # empty; one with media does not
    assert xen.agent.vms is not None
    xen.agent.vms.registry.started_empty.pop(vm_id)
    assert _reached_libvirt(xen.patch(f"/v1/vms/{vm_id}/devices/{empty_cd}", json={"media": "/isos/b.iso"}))
    xen.post(f"/v1/vms/{vm_id}/destroy", expect=200)
    xen.patch(f"/v1/vms/{vm_id}/devices/{empty_cd}", json={"media": None}, expect=200)
    xen.post(f"/v1/vms/{vm_id}/start", expect=200)
    xen.agent.vms.registry.started_empty.pop(vm_id)
    body = xen.patch(f"/v1/vms/{vm_id}/devices/{empty_cd}", json={"media": "/isos/a.iso"}, expect=409).json()
    assert body["field"] == "media"


def test_kvm_live_insert_into_an_empty_drive_is_not_refused(agent_factory: Callable[..., Agent]) -> None:
    api = Api(agent_factory("kvm"))
    vm_id = api.create(spec(disks=[{"source": "/var/lib/corral/images/a.raw"}, {"device": "cdrom"}]),
                       start=True)["id"]
    cd = api.get(f"/v1/vms/{vm_id}").json()["spec"]["disks"][1]["id"]
    assert _reached_libvirt(api.patch(f"/v1/vms/{vm_id}/devices/{cd}", json={"media": "/isos/a.iso"}))


def test_a_vm_defined_during_a_list_cycle_is_not_forgotten(agent_factory: Callable[..., Agent]) -> None:
    """Seen on the Xen lab: the engine's start re-defined a VM while a stats cycle ran; the cycle, which read the
    registry after libvirt, took the new VM for one gone from libvirt and dropped it (and with it what the agent
    knew of its start). The registry is now read first."""
    api = Api(agent_factory("kvm"))
    assert api.agent.vms is not None
    reg = api.agent.vms.registry
    real = reg.stats.all
    made: dict[str, str] = {}

    def read_then_define(conn: libvirt.virConnect) -> Any:
        records = real(conn)
        if not made:  # defined once libvirt was read, before the cycle looks at what it found
            made["id"] = api.create(spec(), start=True)["id"]
        return records

    reg.stats.all = read_then_define  # type: ignore[method-assign]
    try:
        reg.list()
    finally:
        reg.stats.all = real  # type: ignore[method-assign]
    assert made["id"] in reg.vms
    assert made["id"] in reg.started_empty, "what the agent saw at start is gone"
