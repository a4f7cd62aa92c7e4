"""The agent's snapshot API (``/v1/vms/{uuid}/snapshots``, issue 12): both mechanisms, on libvirt's test driver.

- libvirt snapshots (the KVM flavor; the test driver has the snapshot API): a running VM's snapshot holds its
  state, a revert brings it back running, names and disks are checked by field.
- offline qcow2 snapshots (the Xen flavor, emulated on the test driver): the disks are real qcow2 files in a
  temporary directory, so qemu-img really snapshots, reverts and deletes them; the bytes written after a
  snapshot are gone after the revert (qemu-io reads them back). A running VM is refused by name.
"""

from __future__ import annotations

import os
import stat
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from corral.agent.service import Agent
from tests.agent.conftest import Api, spec

MARK = "0x5a"


def qemu_img(*args: str) -> str:
    return subprocess.run(["qemu-img", *args], capture_output=True, text=True, check=True, timeout=60).stdout


def holds(path: Path, pattern: str, length: str = "64k") -> bool:
    """Do the image's first ``length`` bytes all equal ``pattern`` (qemu-io's verified read)?"""
    done = subprocess.run(["qemu-io", "-f", "qcow2", "-c", f"read -P {pattern} 0 {length}", str(path)],
                          capture_output=True, text=True, timeout=60, check=False)
    return done.returncode == 0 and "verification failed" not in done.stdout


def qcow2(path: Path) -> Path:
    qemu_img("create", "-q", "-f", "qcow2", str(path), "16M")
    return path


def snaps(api: Api, vm_id: str) -> dict[str, Any]:
    body: dict[str, Any] = api.get(f"/v1/vms/{vm_id}/snapshots", expect=200).json()
    return body


# ------------------------------------------------------------------------------------------- libvirt (KVM)


def test_a_running_vm_is_snapshotted_and_reverted_through_libvirt(agent_factory: Callable[..., Agent]) -> None:
    api = Api(agent_factory())
    data = spec(disks=[{"id": str(uuid.uuid4()), "source": "/var/lib/corral/images/a.qcow2", "format": "qcow2"},
                       {"id": str(uuid.uuid4()), "device": "cdrom", "source": "/isos/x.iso"}])
    vm_id = api.create(data, start=True)["id"]
    assert snaps(api, vm_id) == {"mechanism": "libvirt", "items": []}

    made = api.post(f"/v1/vms/{vm_id}/snapshots", json={"name": "before-upgrade", "description": "v1"},
                    expect=201).json()
    assert made["name"] == "before-upgrade" and made["description"] == "v1"
    assert made["vm_state"] == "running" and made["memory"] is True and made["created_at"]
    listed = snaps(api, vm_id)["items"]
    assert [s["name"] for s in listed] == ["before-upgrade"] and listed[0]["current"] is True

    dup = api.post(f"/v1/vms/{vm_id}/snapshots", json={"name": "before-upgrade"}, expect=409).json()
    assert dup["field"] == "name"

    api.post(f"/v1/vms/{vm_id}/destroy", expect=200)
    reverted = api.post(f"/v1/vms/{vm_id}/snapshots/before-upgrade/revert", expect=200).json()
    assert reverted["snapshot"]["name"] == "before-upgrade"
    assert reverted["vm"]["state"] == "up"  # a snapshot taken running comes back running
    assert api.conn().lookupByUUIDString(vm_id).isActive()

    api.delete(f"/v1/vms/{vm_id}/snapshots/before-upgrade", expect=204)
    assert snaps(api, vm_id)["items"] == []
    gone = api.delete(f"/v1/vms/{vm_id}/snapshots/before-upgrade", expect=404).json()
    assert gone["field"] == "name"
    assert api.post(f"/v1/vms/{vm_id}/snapshots/before-upgrade/revert", expect=404).json()["field"] == "name"


def test_libvirt_snapshots_survive_the_undefine_and_define_of_an_engine_start(
        agent_factory: Callable[..., Agent]) -> None:
    """The engine redefines a VM at each start: libvirt refuses to undefine a domain with snapshots, so the
    agent keeps their metadata and gives it back to the new definition (the current one stays current)."""
    api = Api(agent_factory())
    data = spec(disks=[{"source": "/a.qcow2", "format": "qcow2"}])
    vm_id = api.create(data)["id"]
    for name in ("one", "two"):
        api.post(f"/v1/vms/{vm_id}/snapshots", json={"name": name, "description": name.upper()}, expect=201)
    before = snaps(api, vm_id)["items"]
    api.delete(f"/v1/vms/{vm_id}", expect=204)
    assert api.conn().listAllDomains(0) == []
    api.create(data)
    after = snaps(api, vm_id)["items"]
    assert after == before and [s["current"] for s in after] == [False, True]
    api.post(f"/v1/vms/{vm_id}/snapshots/one/revert", expect=200)


def test_kept_snapshot_metadata_is_private(agent_factory: Callable[..., Agent], tmp_path: Path) -> None:
    """The kept snapshot XML is libvirt's SECURE form (a VNC password may be in it): 0600 in a 0700 folder,
    whatever the umask."""
    from corral.agent import snapshot_meta

    api = Api(agent_factory())
    vm_id = api.create(spec(disks=[{"source": "/a.qcow2", "format": "qcow2"}]))["id"]
    api.post(f"/v1/vms/{vm_id}/snapshots", json={"name": "one"}, expect=201)
    old = os.umask(0o022)
    try:
        assert snapshot_meta.keep(api.conn().lookupByUUIDString(vm_id), tmp_path)
    finally:
        os.umask(old)
    where = tmp_path / "snapshots" / vm_id / "libvirt"
    assert stat.S_IMODE(where.stat().st_mode) == 0o700
    files = list(where.iterdir())
    assert files and all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in files if f.suffix == ".xml")


@pytest.mark.parametrize(("body", "field"), [
    ({"name": "-starts-with-dash"}, "name"),
    ({"name": "a" * 65}, "name"),
    ({"name": "has space"}, "name"),
    ({}, "name"),
    ({"name": "ok", "description": 5}, "description"),
    ({"name": "ok", "memory": True}, "memory"),
    (["ok"], "body"),
])
def test_bad_snapshot_bodies_are_refused_by_field(agent_factory: Callable[..., Agent], body: Any,
                                                  field: str) -> None:
    api = Api(agent_factory())
    vm_id = api.create(spec(disks=[{"source": "/a.qcow2", "format": "qcow2"}]))["id"]
    answer = api.post(f"/v1/vms/{vm_id}/snapshots", json=body, expect=422).json()
    assert answer["field"] == field
    assert snaps(api, vm_id)["items"] == []


def test_a_raw_disk_is_refused_by_field_and_no_snapshot_is_taken(agent_factory: Callable[..., Agent]) -> None:
    api = Api(agent_factory())
    data = spec(disks=[{"source": "/a.qcow2", "format": "qcow2"}, {"source": "/b.raw", "format": "raw"}])
    vm_id = api.create(data)["id"]
    answer = api.post(f"/v1/vms/{vm_id}/snapshots", json={"name": "s"}, expect=422).json()
    assert answer["code"] == "refused" and answer["field"] == "disks.1.format"
    assert "/b.raw" in answer["message"] and "qcow2" in answer["message"]
    assert snaps(api, vm_id)["items"] == []


def test_an_unknown_vm_is_404(agent_factory: Callable[..., Agent]) -> None:
    api = Api(agent_factory())
    api.get(f"/v1/vms/{uuid.uuid4()}/snapshots", expect=404)


# ------------------------------------------------------------------------------------------- offline qcow2 (Xen)


def xen_vm(api: Api, tmp_path: Path, *disks: dict[str, Any]) -> str:
    data = spec(guest_type="pv", kernel="/boot/vmlinuz", nics=[], disks=list(disks))
    return str(api.create(data)["id"])


def test_xen_offline_snapshot_and_revert_with_qemu_img(agent_factory: Callable[..., Agent], tmp_path: Path) -> None:
    api = Api(agent_factory("xen"))
    root, data = qcow2(tmp_path / "root.qcow2"), qcow2(tmp_path / "data.qcow2")
    iso = tmp_path / "seed.iso"
    iso.write_bytes(b"\0" * 65536)
    vm_id = xen_vm(api, tmp_path, {"source": str(root), "format": "qcow2"},
                   {"source": str(data), "format": "qcow2"},
                   {"source": str(iso), "device": "cdrom"})  # read-only media: skipped
    assert snaps(api, vm_id) == {"mechanism": "offline-qcow2", "items": []}

    made = api.post(f"/v1/vms/{vm_id}/snapshots", json={"name": "clean", "description": "fresh disks"},
                    expect=201).json()
    assert made["name"] == "clean" and made["memory"] is False and made["vm_state"] == "shutoff"
    for disk in (root, data):
        assert "clean" in qemu_img("snapshot", "-l", str(disk))
    listed = snaps(api, vm_id)["items"]
    assert [(s["name"], s["description"]) for s in listed] == [("clean", "fresh disks")] and listed[0]["created_at"]
    assert api.post(f"/v1/vms/{vm_id}/snapshots", json={"name": "clean"}, expect=409).json()["field"] == "name"

    subprocess.run(["qemu-io", "-f", "qcow2", "-c", f"write -P {MARK} 0 64k", str(data)], check=True,
                   capture_output=True, timeout=60)  # the guest writes after the snapshot
    assert holds(data, MARK) and not holds(data, "0")
    reverted = api.post(f"/v1/vms/{vm_id}/snapshots/clean/revert", expect=200).json()
    assert reverted["snapshot"]["name"] == "clean" and reverted["vm"]["state"] == "down"
    assert holds(data, "0") and not holds(data, MARK)  # zeros again: the write is undone

    api.delete(f"/v1/vms/{vm_id}/snapshots/clean", expect=204)
    assert snaps(api, vm_id)["items"] == []
    for disk in (root, data):
        assert "clean" not in qemu_img("snapshot", "-l", str(disk))
    assert api.delete(f"/v1/vms/{vm_id}/snapshots/clean", expect=404).json()["field"] == "name"


def test_xen_refuses_a_live_snapshot_by_name(agent_factory: Callable[..., Agent], tmp_path: Path) -> None:
    api = Api(agent_factory("xen"))
    disk = qcow2(tmp_path / "root.qcow2")
    vm_id = xen_vm(api, tmp_path, {"source": str(disk), "format": "qcow2"})
    api.post(f"/v1/vms/{vm_id}/snapshots", json={"name": "offline"}, expect=201)
    api.post(f"/v1/vms/{vm_id}/start", expect=200)
    for method, path, body in (("POST", "", {"name": "live"}), ("POST", "/offline/revert", None),
                               ("DELETE", "/offline", None)):
        answer = api.request(method, f"/v1/vms/{vm_id}/snapshots{path}", json=body, expect=409).json()
        assert answer["code"] == "unsupported" and answer["field"] == "state"
        assert answer["feature"] == "snapshot.live"
        assert "libxl has no snapshot API (measured: 'this function is not supported by the connection driver: " \
               "virDomainSnapshotCreateXML')" in answer["message"]
    assert [s["name"] for s in snaps(api, vm_id)["items"]] == ["offline"]  # listing a running VM's still works
    assert qemu_img("snapshot", "-l", str(disk)).count("offline") == 1


def test_xen_probes_the_bytes_a_raw_file_declared_qcow2_is_refused(agent_factory: Callable[..., Agent],
                                                                  tmp_path: Path) -> None:
    api = Api(agent_factory("xen"))
    good, raw = qcow2(tmp_path / "root.qcow2"), tmp_path / "data.img"
    raw.write_bytes(b"\0" * 1024 * 1024)
    vm_id = xen_vm(api, tmp_path, {"source": str(good), "format": "qcow2"}, {"source": str(raw), "format": "qcow2"})
    answer = api.post(f"/v1/vms/{vm_id}/snapshots", json={"name": "s"}, expect=422).json()
    assert answer["field"] == "disks.1.format" and "is raw" in answer["message"]
    assert "s" not in {line.split()[1] for line in qemu_img("snapshot", "-l", str(good)).splitlines()[2:]
                       if len(line.split()) > 1}  # nothing taken on the good disk either
