"""What the simulated hosts do: VM lifecycle, events with resume, generated VMs, stats, random disturbances."""

from __future__ import annotations

import asyncio
import json

import pytest
from fastapi.testclient import TestClient

from corral.domain.resolve import resolve
from corral.domain.spec import VmSpec
from corral.simulate import Simulator, SimulatorSettings
from corral.simulate.simvm import PAUSED, RUNNING, SHUTOFF, derive_token
from tests.simulate.conftest import KVM_HOST, XEN_HOST, fresh_name, vm_spec


def states(client: TestClient, prefix: str, after: int, vm_id: str) -> list[str]:
    items = client.get(f"{prefix}/v1/events?after={after}&wait=0").json()["items"]
    return [e["state"] for e in items if e["vm_id"] == vm_id]


@pytest.mark.parametrize("prefix", [KVM_HOST, XEN_HOST])
def test_vm_lifecycle(sim: Simulator, sim_client: TestClient, prefix: str) -> None:
    before = sim_client.get(f"{prefix}/v1/events?wait=0&after=0").json()["last"]
    name = fresh_name()
    created = sim_client.post(f"{prefix}/v1/vms", json=vm_spec(name))
    assert created.status_code == 201
    vm = created.json()
    vm_id = vm["id"]
    assert (vm["state"], vm["libvirt_state"], vm["domain_id"], vm["external"]) == ("down", "shutoff", None, False)
    assert all(n["mac"] for n in vm["spec"]["nics"])
    assert any(v["id"] == vm_id for v in sim_client.get(f"{prefix}/v1/vms").json()["items"])

    started = sim_client.post(f"{prefix}/v1/vms/{vm_id}/start").json()
    assert (started["state"], started["reason"]) == ("up", 1) and started["domain_id"]
    assert sim_client.post(f"{prefix}/v1/vms/{vm_id}/reboot").json()["state"] == "up"
    assert sim_client.post(f"{prefix}/v1/vms/{vm_id}/pause").json()["state"] == "paused"
    assert sim_client.post(f"{prefix}/v1/vms/{vm_id}/resume").json()["state"] == "up"
    done = sim_client.post(f"{prefix}/v1/vms/{vm_id}/shutdown", json={"timeout": 30})
    assert done.status_code == 200
    assert (done.json()["state"], done.json()["stopped_by"]) == ("down", "shutdown")

    sim_client.post(f"{prefix}/v1/vms/{vm_id}/start")
    forced = sim_client.post(f"{prefix}/v1/vms/{vm_id}/shutdown", json={"timeout": 0, "force": True}).json()
    assert forced["state"] == "down"
    # the flavor says whether libvirt's graceful destroy exists (libxl: no, destroyed at once)
    graceful = sim.host(int(prefix.rsplit("/", 1)[1])).flavor.graceful_destroy  # type: ignore[union-attr]
    assert forced["stopped_by"] == ("destroy-graceful" if graceful else "destroy")
    assert graceful is (prefix == KVM_HOST)

    sim_client.post(f"{prefix}/v1/vms/{vm_id}/start")
    sim_client.post(f"{prefix}/v1/vms/{vm_id}/pause")
    # a shutdown that times out without force is a failure naming the state, as the agent answers it
    waited = sim_client.post(f"{prefix}/v1/vms/{vm_id}/shutdown", json={"timeout": 0.2})
    assert waited.status_code == 409
    assert waited.json() == {
        "code": "timeout", "field": "timeout", "state": "paused",  # a paused guest cannot shut down
        "message": f"VM {name} did not stop within 0.2 s of the shutdown request: it is still paused (the guest "
                   "ignored the request or is still shutting down); shut down again with force, or stop it"}
    assert sim_client.post(f"{prefix}/v1/vms/{vm_id}/destroy").json()["state"] == "down"
    assert sim_client.delete(f"{prefix}/v1/vms/{vm_id}").status_code == 204
    assert sim_client.get(f"{prefix}/v1/vms/{vm_id}").status_code == 404

    assert states(sim_client, prefix, before, vm_id) == [
        "down", "up", "paused", "up", "shutting_down", "down",  # define, start, pause, resume, shutdown
        "up", "down",  # start, forced shutdown
        "up", "paused", "down",  # start, pause, destroy
        "deleted"]


def test_create_start_plan_and_changes(sim_client: TestClient) -> None:
    spec = vm_spec(fresh_name())
    plan = sim_client.post(f"{XEN_HOST}/v1/vms/plan", json=spec).json()
    assert plan["flavor"] == "xen" and plan["ok"] is True
    vm = sim_client.post(f"{XEN_HOST}/v1/vms?start=true", json=spec).json()
    vm_id = vm["id"]
    assert vm["state"] == "up" and vm["spec"]["nics"][0]["mac"].startswith("00:16:3e")
    nic = vm["spec"]["nics"][0]["id"]
    down = sim_client.patch(f"{XEN_HOST}/v1/vms/{vm_id}/devices/{nic}", json={"link": "down"}).json()
    assert next(d for d in down["devices"] if d["id"] == nic)["link"] == "down"
    grown = sim_client.put(f"{XEN_HOST}/v1/vms/{vm_id}/vcpus", json={"vcpus": 1}).json()
    assert grown["vcpus"] == 1
    shrunk = sim_client.put(f"{XEN_HOST}/v1/vms/{vm_id}/memory", json={"memory_mib": 128}).json()
    assert shrunk["spec"]["memory_mib"] == 128 and shrunk["stats"]["balloon_maximum"] == 256 * 1024
    plugged = sim_client.post(f"{XEN_HOST}/v1/vms/{vm_id}/devices",
                              json={"disk": {"source": "/var/lib/corral/images/extra.img"}}).json()
    assert len(plugged["spec"]["disks"]) == 2
    extra = plugged["spec"]["disks"][1]["id"]
    unplugged = sim_client.delete(f"{XEN_HOST}/v1/vms/{vm_id}/devices/{extra}").json()
    assert len(unplugged["spec"]["disks"]) == 1
    # an HVM serial port writes to a file the agent reads (xenconsoled never sees it); a PV console is the daemon's
    console = sim_client.get(f"{XEN_HOST}/v1/vms/{vm_id}/console?tail=10").json()
    serial = vm["spec"]["consoles"][0]["id"]
    assert console["path"] == f"/var/lib/corral/consoles/{spec['name']}-{serial}.log" and len(console["log"]) <= 10
    pv = next(v for v in sim_client.get(f"{XEN_HOST}/v1/vms").json()["items"] if v["guest_type"] == "pv")
    console = sim_client.get(f"{XEN_HOST}/v1/vms/{pv['id']}/console").json()
    assert console["path"] == f"/var/log/xen/console/guest-{pv['name']}.log"
    kinds = [e["detail"].get("change") for e in
             sim_client.get(f"{XEN_HOST}/v1/events?after=0&wait=0").json()["items"] if e["type"] == "device"]
    assert kinds == ["link", "vcpus", "memory", "attached", "detached"]


def test_events_resume_after_a_sequence_number(sim_client: TestClient) -> None:
    vm_id = sim_client.get(f"{KVM_HOST}/v1/vms").json()["items"][0]["id"]
    for action in ("destroy", "start", "pause", "resume"):
        sim_client.post(f"{KVM_HOST}/v1/vms/{vm_id}/{action}")
    every = sim_client.get(f"{KVM_HOST}/v1/events?after=0&wait=0").json()
    seqs = [e["seq"] for e in every["items"]]
    assert seqs == list(range(1, len(seqs) + 1)) and every["last"] == seqs[-1] >= 5
    middle = seqs[2]
    rest = sim_client.get(f"{KVM_HOST}/v1/events?after={middle}&wait=0").json()
    assert [e["seq"] for e in rest["items"]] == seqs[middle:]
    assert rest["items"] == every["items"][middle:]
    by_header = sim_client.get(f"{KVM_HOST}/v1/events?wait=0", headers={"Last-Event-ID": str(middle)}).json()
    assert by_header == rest
    empty = sim_client.get(f"{KVM_HOST}/v1/events?after={every['last']}&wait=0").json()
    assert empty == {"items": [], "last": every["last"]}
    # another host keeps its own sequence
    assert sim_client.get(f"{XEN_HOST}/v1/events?after=0&wait=0").json()["last"] == 1


def test_hosts_and_generated_vms() -> None:
    sim = Simulator(SimulatorSettings(hosts=10, vms_per_host=12, seed=3, xen_ratio=0.3))
    assert sim.flavor_counts() == {"kvm": 7, "xen": 3} and sim.vm_count() == 120
    names = [vm.name for h in sim.hosts for vm in h.vms.values()]
    assert len(set(names)) == len(names)
    for host in sim.hosts:
        for vm in host.vms.values():
            text = vm.spec_text
            spec = VmSpec.model_validate_json(text)
            assert json.loads(text) == spec.model_dump(mode="json")
            assert (spec.id, spec.name, spec.memory_mib, spec.vcpus) == (vm.uuid, vm.name, vm.mem, vm.vcpus)
            res = resolve(spec, host.profile.flavor, None, host.options)
            assert not res.refused and res.guest_type.value == vm.gt
            assert vm.state in (RUNNING, SHUTOFF)
    for name, guest_types in (("xen", {"hvm", "pv", "pvh"}), ("kvm", {"hvm"})):
        assert {vm.gt for h in sim.hosts if h.flavor_name == name for vm in h.vms.values()} == guest_types
    again = Simulator(SimulatorSettings(hosts=10, vms_per_host=12, seed=3, xen_ratio=0.3))
    assert [list(h.vms) for h in again.hosts] == [list(h.vms) for h in sim.hosts]
    assert again.token == sim.token == derive_token(3)
    assert Simulator(SimulatorSettings(hosts=1, vms_per_host=1, seed=4)).token != sim.token


def test_stats_move_with_time() -> None:
    sim = Simulator(SimulatorSettings(hosts=2, vms_per_host=10, seed=5))
    for host in sim.hosts:
        running = next(vm for vm in host.vms.values() if vm.state == RUNNING)
        now = 1_000_000.0
        early, later = host.stats(running, now), host.stats(running, now + 3600)
        assert later["cpu_time"] > early["cpu_time"] > 0
        assert early["vcpu_current"] == running.vcpus and early["balloon_maximum"] == running.max_mem * 1024
        balloons = {host.stats(running, now + 30 * k)["balloon_current"] for k in range(200)}
        assert len(balloons) > 1 and max(balloons) == running.mem * 1024
        assert ("balloon_rss" in early) is host.profile.kind.detailed_stats
        item = json.loads(host.info_json(running, now))
        assert item["stats"] == early and item["memory_mib"] == early["balloon_current"] // 1024
        stopped = next((vm for vm in host.vms.values() if vm.state == SHUTOFF), None)
        if stopped is not None:
            assert set(host.stats(stopped, now)) == {"balloon_current", "balloon_maximum", "vcpu_current",
                                                     "vcpu_maximum"}


def test_random_disturbances_publish_events() -> None:
    async def run() -> None:
        sim = Simulator(SimulatorSettings(hosts=3, vms_per_host=20, seed=11, crash_share=0.3,
                                          resume_after=(0.01, 0.02)))
        before = {h.n: h.bus.last_seq for h in sim.hosts}
        changed = sum(sim.disturb() for _ in range(30))
        assert changed > 0
        events = [e for h in sim.hosts for e in h.bus.since(before[h.n])]
        assert {e.state for e in events} <= {"paused", "crashed"} and len(events) == changed
        assert any(vm.state == PAUSED for h in sim.hosts for vm in h.vms.values())
        await asyncio.sleep(0.1)  # the paused ones resume
        assert not any(vm.state == PAUSED for h in sim.hosts for vm in h.vms.values())
        assert any(e.state == "up" and e.detail["event"] == "resumed"
                   for h in sim.hosts for e in h.bus.since(before[h.n]))
        task = asyncio.create_task(sim.run_disturbances())
        await asyncio.sleep(0.05)
        task.cancel()

    asyncio.run(run())


def test_unknown_host_and_index(sim_client: TestClient) -> None:
    missing = sim_client.get("/hosts/99/v1/health")
    assert missing.status_code == 404 and missing.json()["code"] == "not_found"
    assert sim_client.get("/hosts/0/v1/vms").status_code == 404
    assert sim_client.get("/elsewhere").status_code == 404
    index = sim_client.get("/").json()
    assert index["hosts"] == 4 and index["flavors"] == {"kvm": 2, "xen": 2} and index["vms"] == 12
