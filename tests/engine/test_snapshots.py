"""``/api/v1/vms/{vm}/snapshots`` (issue 12) on SQLite and PostgreSQL, against real agents on the test driver.

The KVM agent takes libvirt snapshots (the test driver has the API): a running VM's snapshot, listed, the VM
stopped and started again by the engine (its domain redefined), reverted (it comes back up, and the engine
says so), deleted. The Xen agent (emulated) takes offline qcow2 snapshots of real qcow2 files: refused while the
VM runs (the task's error names the field and the measured reason), taken once it is stopped, and its revert
undoes bytes written after it. Refusals name their fields.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from sqlalchemy import update

from corral.engine.db.models import Vm
from corral.engine.db.session import Database
from tests.engine.agents import AgentProc
from tests.engine.conftest import Api
from tests.engine.test_with_agents import add_hosts


def vm_body(name: str, *disks: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"name": name, "memory_mib": 128, "vcpus": 1, "disks": list(disks), **extra}


def done(api: Api, method: str, path: str, body: Any = None, state: str = "succeeded") -> dict[str, Any]:
    task = api.call(method, path, 202, json=body)
    assert isinstance(task, dict)
    task = api.wait_task(task)
    assert task["state"] == state, (task.get("error"), task.get("message"))
    return task


def test_kvm_snapshot_of_a_running_vm_listed_reverted_deleted(agents: dict[str, AgentProc], api: Api) -> None:
    add_hosts(api, agents)
    vm = api.post("/vms", vm_body("snap-kvm", {"source": "/var/lib/corral/images/k.qcow2", "format": "qcow2"}),
                  status=201)
    done(api, "POST", f"/vms/{vm['id']}/start?host=kvm-host")

    task = done(api, "POST", "/vms/snap-kvm/snapshots", {"name": "s1", "description": "before"})
    assert task["kind"] == "vm_snapshot_create" and task["object_id"] == vm["id"]
    assert task["result"]["snapshot"]["memory"] is True and task["result"]["host"] == "kvm-host"
    listed = api.get("/vms/snap-kvm/snapshots")
    assert listed["mechanism"] == "libvirt" and listed["host"] == "kvm-host"
    assert [(s["name"], s["description"], s["vm_state"]) for s in listed["items"]] == [("s1", "before", "running")]

    # stopped, and started again by the engine (which redefines the domain): the snapshot stays
    done(api, "POST", "/vms/snap-kvm/stop")
    done(api, "POST", "/vms/snap-kvm/start")
    assert [s["name"] for s in api.get("/vms/snap-kvm/snapshots")["items"]] == ["s1"]
    done(api, "POST", "/vms/snap-kvm/stop")
    assert api.get("/vms/snap-kvm")["state"] == "down"

    task = done(api, "POST", "/vms/snap-kvm/snapshots/s1/revert")
    assert task["result"]["state"] == "up" and task["result"]["snapshot"]["name"] == "s1"
    assert api.get("/vms/snap-kvm")["state"] == "up"  # a snapshot taken running comes back running

    done(api, "DELETE", "/vms/snap-kvm/snapshots/s1")
    assert api.get("/vms/snap-kvm/snapshots")["items"] == []
    failed = done(api, "DELETE", "/vms/snap-kvm/snapshots/s1", state="failed")
    assert failed["error"]["field"] == "name" and failed["error"]["code"] == "not_found"
    kinds = [e["type"] for e in api.get("/events", object_id=vm["id"], limit=200)["items"]]
    assert {"vm_snapshot_created", "vm_snapshot_reverted", "vm_snapshot_deleted"} <= set(kinds)


def test_refusals_name_their_field(agents: dict[str, AgentProc], api: Api, db_url: str) -> None:
    add_hosts(api, agents)
    api.post("/vms", vm_body("snap-new", {"source": "/a.qcow2", "format": "qcow2"}), status=201)
    for body in ({"name": "-x"}, {"name": "a" * 65}, {"name": "ok", "memory": True}, {}):
        answer = api.call("POST", "/vms/snap-new/snapshots", 422, json=body)
        assert isinstance(answer, dict) and answer["field"] in ("name", "memory"), answer
    assert api.call("POST", "/vms/snap-new/snapshots/bad%20name/revert", 422)["field"] == "name"  # type: ignore[index]
    assert api.call("GET", "/vms/nope/snapshots", 404) is not None
    never = api.call("POST", "/vms/snap-new/snapshots", 409, json={"name": "s"})
    assert isinstance(never, dict) and never["field"] == "vm"  # it has not run anywhere: no host has its disks

    vm = api.post("/vms", vm_body("snap-raw", {"source": "/b.raw", "format": "raw"}), status=201)
    done(api, "POST", f"/vms/{vm['id']}/start?host=kvm-host")
    failed = done(api, "POST", "/vms/snap-raw/snapshots", {"name": "s"}, state="failed")
    assert failed["error"]["field"] == "disks.0.format" and "qcow2" in failed["error"]["message"]
    assert api.get("/vms/snap-raw/snapshots")["items"] == []

    # a VM another task holds (here: claimed by a start) is not snapshotted, reverted or deleted from under it
    db = Database(db_url)
    try:
        db.call(lambda s: s.execute(update(Vm).where(Vm.id == vm["id"]).values(state="starting")))
        for method, path in (("POST", "/vms/snap-raw/snapshots"), ("POST", "/vms/snap-raw/snapshots/s/revert"),
                             ("DELETE", "/vms/snap-raw/snapshots/s")):
            busy = api.call(method, path, 409, json={"name": "s"} if path.endswith("snapshots") else None)
            assert isinstance(busy, dict) and busy["code"] == "busy" and busy["field"] == "vm", busy
    finally:
        db.dispose()


def _marked(path: Path, pattern: str) -> bool:
    res = subprocess.run(["qemu-io", "-f", "qcow2", "-c", f"read -P {pattern} 0 64k", str(path)],
                         capture_output=True, text=True, timeout=60, check=False)
    return res.returncode == 0 and "verification failed" not in res.stdout


def test_xen_offline_snapshot_and_revert_live_refused(agents: dict[str, AgentProc], api: Api,
                                                       tmp_path: Path) -> None:
    add_hosts(api, agents)
    disk = tmp_path / "xen-root.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "16M"], check=True, timeout=60)
    vm = api.post("/vms", vm_body("snap-xen", {"source": str(disk), "format": "qcow2"}, guest_type="pv",
                                  kernel="/boot/vmlinuz"), status=201)
    done(api, "POST", f"/vms/{vm['id']}/start?host=xen-host")

    failed = done(api, "POST", "/vms/snap-xen/snapshots", {"name": "s1"}, state="failed")
    assert failed["error"]["field"] == "state" and failed["error"]["code"] == "unsupported"
    assert failed["error"]["feature"] == "snapshot.live"
    assert "libxl has no snapshot API (measured:" in failed["error"]["message"]

    done(api, "POST", "/vms/snap-xen/stop")
    done(api, "POST", "/vms/snap-xen/snapshots", {"name": "s1"})
    listed = api.get("/vms/snap-xen/snapshots")
    assert listed["mechanism"] == "offline-qcow2" and [s["name"] for s in listed["items"]] == ["s1"]
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 0 64k", str(disk)], check=True,
                   capture_output=True, timeout=60)
    assert _marked(disk, "0x5a")
    task = done(api, "POST", "/vms/snap-xen/snapshots/s1/revert")
    assert task["result"]["state"] == "down"
    assert _marked(disk, "0") and not _marked(disk, "0x5a")
    assert api.get("/vms/snap-xen")["state"] == "down"
