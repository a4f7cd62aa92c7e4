"""Cloud-init through the engine (issue 12): ``cloud_init`` is stored and answered as given, refused by field,
planned and started with its seed on the chosen host (real agents emulating Xen and KVM on the test driver),
and a changed spec makes a new seed at the next start; the seed never becomes a disk of the stored spec."""

from __future__ import annotations

import io
from typing import Any

import pycdlib
import yaml

from tests.engine.agents import AgentProc
from tests.engine.conftest import Api
from tests.engine.test_with_agents import add_hosts

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJxt6G9g+a8LegMBJ+yAwHL9mOGHCiLG2pPmu0OuwuJ3 alice@laptop"


def user_data(agent: AgentProc, vm_id: str) -> dict[str, Any]:
    iso = pycdlib.PyCdlib()
    iso.open(str(agent.root / "state" / "cloud-init" / vm_id / "cidata.iso"))
    out = io.BytesIO()
    iso.get_file_from_iso_fp(out, rr_path="/user-data")
    iso.close()
    data = yaml.safe_load(out.getvalue())
    assert isinstance(data, dict)
    return data


def test_cloud_init_through_the_engine(agents: dict[str, AgentProc], api: Api) -> None:
    add_hosts(api, agents)
    bad = api.post("/vms", {"name": "ci-bad", "memory_mib": 128, "cloud_init": {"hostname": "bad_name"}},
                   status=422)
    assert bad["field"] == "cloud_init.hostname", bad
    cloud_init = {"user": "alice", "ssh_authorized_keys": [KEY], "hostname": "web1",
                  "network": {"mode": "static", "address": "192.0.2.10/24", "gateway": "192.0.2.1"}}
    vm = api.post("/vms", {"name": "ci-web", "memory_mib": 128, "guest_type": "pv", "kernel": "/boot/vmlinuz",
                           "nics": [{"source": "xenbr0"}], "cloud_init": cloud_init}, status=201)
    stored = api.get(f"/vms/{vm['id']}")["spec"]["cloud_init"]
    assert stored["user"] == "alice" and stored["ssh_authorized_keys"] == [KEY]
    assert stored["network"]["address"] == "192.0.2.10/24"

    plan = api.get(f"/vms/{vm['id']}/plan", host="xen-host")
    seed = next(d for d in plan["decisions"] if d["path"] == "cloud_init")
    assert seed["outcome"] == "native" and "CD-ROM xvdz" in seed["detail"]

    task = api.wait_task(api.post(f"/vms/{vm['id']}/start", status=202))
    assert task["state"] == "succeeded", task
    shown = api.get(f"/vms/{vm['id']}")
    assert shown["host"]["name"] == "xen-host"
    live = [d for d in shown["devices"] if d.get("id") == "cloud-init"]
    assert len(live) == 1 and live[0]["target"] == "xvdz" and live[0]["readonly"] is True
    assert shown["spec"]["disks"] == []  # the seed is the host's device, not one of the VM's disks
    assert user_data(agents["xen-host"], vm["id"])["user"] == "alice"

    # a change of the data while the VM is down gives the guest a new seed at its next start
    task = api.wait_task(api.post(f"/vms/{vm['id']}/stop", {}, status=202))
    assert task["state"] == "succeeded", task
    spec = api.get(f"/vms/{vm['id']}")["spec"]
    spec["cloud_init"]["user"] = "bob"
    api.call("PUT", f"/vms/{vm['id']}", 200, json=spec)
    task = api.wait_task(api.post(f"/vms/{vm['id']}/start", status=202))
    assert task["state"] == "succeeded", task
    assert user_data(agents["xen-host"], vm["id"])["user"] == "bob"
    assert api.get(f"/vms/{vm['id']}")["spec"]["disks"] == []
    task = api.wait_task(api.post(f"/vms/{vm['id']}/stop", {}, status=202))
    api.call("DELETE", f"/vms/{vm['id']}", 204)
    assert not (agents["xen-host"].root / "state" / "cloud-init" / vm["id"]).exists()
