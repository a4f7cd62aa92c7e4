"""Storage domains on the real Xen lab, through the engine with dom0's agent as its host (issue 12).

* a ``dir`` domain in dom0: a qcow2 image uploaded through the engine, a PV guest booting with it as its disk
  sees it whole (``CORRAL-XEN-GUEST-BLOCK xvda sectors=<virtual size / 512>``: read as qcow2, not as the
  ~200 KiB file a raw reading would give);
* an ``nfs`` domain on the NFS lab (nfs-ganesha in user space on the build host, NFSv4 only, reached from dom0
  as 10.0.2.2 through QEMU's user network): mounted by libvirt in dom0, the uploaded image lands in the export
  on the build host, and a PV guest boots from it;
* the raw trap: that qcow2 image declared raw is refused by field (``disks.0.format``) before anything is
  defined in dom0;
* an export dom0 cannot mount: the host shows the domain in error with libvirt's mount error, and a VM with a
  disk in it is not placed there, with that reason.

dom0 has the kernel's NFS client but not nfs-common's mount.nfs, so the nfs domain gives mount(8) the server's
address itself (``mount_options: ["addr=10.0.2.2"]``, as the kernel takes it) and NFSv4 (no rpcbind needed).
Measured times are printed (``-s``) for docs/storage.md.
"""

from __future__ import annotations

import shlex
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.test_scenario import (
    Backend,
    Engine,
    _add_host,
    _console,
    _undefine,
    _wait,
    _xen_backend,
    engine,  # noqa: F401  (a fixture)
)
from tests.nfslab import NfsLab, lab_unavailable_reason, nfs_lab
from tests.require import unavailable

pytestmark = pytest.mark.xenlab

MiB = 1 << 20
VIRTUAL = 48 * MiB  # the image's virtual size: what the guest must see
ROOT = "/var/lib/corral-xs"  # where this file's domains live in dom0


@pytest.fixture(autouse=True)
def _host_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    """The engine started for each test takes the lab's kernel and a volume's path as host paths (an admin's
    setting, corral.engine.hostpaths): autouse, so it is set before the engine fixture starts the engine."""
    monkeypatch.setenv("CORRAL_HOST_PATHS", "/var/lib/corral-lab:" + ROOT)


@pytest.fixture
def xen() -> Iterator[Backend]:
    b = _xen_backend()
    try:
        yield b
    finally:
        for fn in reversed(b.cleanup):
            fn()


@pytest.fixture
def nfs() -> NfsLab:
    lab = nfs_lab()
    if lab is None:
        unavailable(f"NFS lab unavailable: {lab_unavailable_reason()}")
    return lab


def _image(tmp_path: Path) -> bytes:
    path = tmp_path / "disk.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), str(VIRTUAL)], check=True, timeout=60)
    return path.read_bytes()


def _upload(engine: Engine, name: str, storage: str, data: bytes) -> dict[str, Any]:  # noqa: F811
    image: dict[str, Any] = engine.call("PUT", f"/images/{name}", params={"storage": storage}, content=data,
                                        expect=201)
    assert image["format"] == "qcow2" and image["capacity_bytes"] == VIRTUAL, image
    return image


def _drop_pool(b: Backend, name: str) -> None:
    """After a failed run the engine is gone but its pool may stay defined (and mounted) in dom0."""
    b.sh(f"{b.virsh} pool-destroy {name} >/dev/null 2>&1; {b.virsh} pool-undefine {name} >/dev/null 2>&1; true")


def _pv(b: Backend, name: str, disk: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "memory_mib": 128, "vcpus": 1, "guest_type": "pv", "kernel": b.kernel,
            "initrd": b.initrd, "cmdline": b.cmdline, "consoles": [{"kind": "pv"}], "disks": [disk]}


def _boots_and_sees_its_disk(engine: Engine, b: Backend, vm: dict[str, Any], host: dict[str, Any],  # noqa: F811
                             path: str) -> float:
    """Start the VM; wait for its console to list xvda at the image's virtual size; seconds from the start call."""
    t0 = time.monotonic()
    engine.run("POST", f"/vms/{vm['id']}/start", json={"host": host["id"]})
    line = f"CORRAL-XEN-GUEST-BLOCK xvda sectors={VIRTUAL // 512} read_bytes=16384"
    _wait(lambda: line in _console(engine, vm["id"]), 600, f"the guest's console line {line!r}", every=3)
    took = time.monotonic() - t0
    xml = b.sh(f"{b.virsh} dumpxml {shlex.quote(vm['name'])}")
    assert f"<source file='{path}'" in xml and "type='qcow2'" in xml, xml
    engine.run("POST", f"/vms/{vm['id']}/stop", json={"timeout": 3})
    return took


def test_pv_guest_boots_from_a_qcow2_volume_in_a_dir_domain(engine: Engine, xen: Backend,  # noqa: F811
                                                             tmp_path: Path) -> None:
    b, tag = xen, uuid.uuid4().hex[:6]
    domain, image_name, name = f"xs-dir-{tag}", f"xs-img-{tag}", f"xs-dir-{tag}"
    host = _add_host(engine, b)
    b.cleanup.append(lambda: b.sh(f"rm -rf {ROOT}/{domain}"))
    b.cleanup.append(lambda: _drop_pool(b, domain))
    b.cleanup.append(lambda: _undefine(b, name))

    d = engine.call("POST", "/storage-domains", json={"name": domain, "type": "dir", "path": f"{ROOT}/{domain}"},
                    expect=201)
    assert [(h["host"], h["state"]) for h in d["hosts"]] == [(host["name"], "active")], d
    image = _upload(engine, image_name, domain, _image(tmp_path))
    assert image["host"] == host["name"] and image["path"] == f"{ROOT}/{domain}/{image_name}"
    assert "qcow2" in b.sh(f"qemu-img info {image['path']}")

    vm = engine.call("POST", "/vms", json=_pv(b, name, {"volume": image_name}), expect=201)
    took = _boots_and_sees_its_disk(engine, b, vm, host, image["path"])
    print(f"\n[xenlab storage] dir: PV guest saw its qcow2 disk {took:.1f} s after the start call")

    engine.call("DELETE", f"/vms/{vm['id']}", expect=204)
    engine.run("DELETE", f"/images/{image_name}")
    engine.call("DELETE", f"/storage-domains/{domain}", expect=204)


def test_pv_guest_boots_from_the_nfs_domain_and_the_raw_trap_is_refused(engine: Engine, xen: Backend,  # noqa: F811
                                                                        nfs: NfsLab, tmp_path: Path) -> None:
    b, tag = xen, uuid.uuid4().hex[:6]
    domain, image_name, name, trap = f"xs-nfs-{tag}", f"xs-nfsimg-{tag}", f"xs-nfs-{tag}", f"xs-trap-{tag}"
    host = _add_host(engine, b)
    mnt = f"{ROOT}/{domain}"
    b.cleanup.append(lambda: b.sh(f"umount {mnt} 2>/dev/null; rmdir {mnt} 2>/dev/null; true"))
    b.cleanup.append(lambda: _drop_pool(b, domain))
    b.cleanup.append(lambda: _undefine(b, trap))
    b.cleanup.append(lambda: _undefine(b, name))

    # the domain: libvirt in dom0 mounts the build host's ganesha export, NFSv4 on the lab's port
    t0 = time.monotonic()
    d = engine.call("POST", "/storage-domains", expect=201, json={
        "name": domain, "type": "nfs", "path": mnt,
        "source": {"host": nfs.guest_host, "dir": nfs.export, "port": nfs.port, "nfs_version": 4,
                   "mount_options": [f"addr={nfs.guest_host}"]}})
    mounted = time.monotonic() - t0
    assert d["shared"] is True and [(h["host"], h["state"], h["reason"]) for h in d["hosts"]] == \
        [(host["name"], "active", "")], d
    mounts = b.sh(f"grep ' {mnt} ' /proc/mounts")
    assert f"{nfs.guest_host}:{nfs.export} {mnt} nfs4 " in mounts and "vers=4" in mounts, mounts
    shown = {s["domain"]: s for s in engine.call("GET", f"/hosts/{host['id']}")["storage"]}
    assert shown[domain]["state"] == "active" and shown[domain]["shared"] is True

    # the image, uploaded through the engine and dom0's agent, is a file of the export on the build host
    t1 = time.monotonic()
    image = _upload(engine, image_name, domain, _image(tmp_path))
    uploaded = time.monotonic() - t1
    assert image["shared"] is True and image["host"] is None and image["path"] == f"{mnt}/{image_name}", image
    on_server = nfs.dir / image_name
    info = subprocess.run(["qemu-img", "info", "--output", "json", str(on_server)], capture_output=True,
                          text=True, check=True, timeout=60).stdout
    assert '"format": "qcow2"' in info and f'"virtual-size": {VIRTUAL}' in info, info

    vm = engine.call("POST", "/vms", json=_pv(b, name, {"volume": image_name}), expect=201)
    took = _boots_and_sees_its_disk(engine, b, vm, host, image["path"])
    print(f"\n[xenlab storage] nfs: domain created (mounted in dom0) in {mounted:.1f} s; 48 MiB-virtual qcow2 "
          f"({len(_image(tmp_path))} bytes) uploaded in {uploaded:.1f} s; PV guest saw its disk {took:.1f} s after "
          f"the start call")

    # the raw trap: the same qcow2 file declared raw is refused by field, and nothing is defined in dom0
    trapped = engine.call("POST", "/vms", expect=201,
                          json=_pv(b, trap, {"source": image["path"], "format": "raw"}))
    task = engine.wait_task(engine.call("POST", f"/vms/{trapped['id']}/start", json={"host": host["id"]},
                                        expect=202))
    assert task["state"] == "failed", task
    error = repr(task["error"])
    assert "disks.0.format" in error and "qcow2" in error and "declared raw" in error, error
    assert trap not in b.sh(f"{b.virsh} list --all --name")
    assert engine.call("GET", f"/vms/{trapped['id']}")["state"] == "down"
    plan = engine.call("GET", f"/vms/{trapped['id']}/plan", params={"host": host["id"]})
    refused = {d["path"]: d for d in plan["decisions"] if d["outcome"] == "refused"}
    assert "disks.0.format" in refused, plan["decisions"]

    for v in (vm, trapped):
        engine.call("DELETE", f"/vms/{v['id']}", expect=204)
    engine.run("DELETE", f"/images/{image_name}")
    assert not on_server.exists()
    engine.call("DELETE", f"/storage-domains/{domain}", expect=204)
    assert f" {mnt} " not in b.sh("cat /proc/mounts")


def test_an_export_dom0_cannot_mount_keeps_vms_needing_it_off_the_host(engine: Engine, xen: Backend,  # noqa: F811
                                                                      nfs: NfsLab) -> None:
    """The same server, an export it does not have: libvirt's mount error is the host's reason, shown on the
    host, and a VM with a disk in that domain is not placed there (the reason in the rejection)."""
    b, tag = xen, uuid.uuid4().hex[:6]
    domain, name = f"xs-bad-{tag}", f"xs-bad-{tag}"
    host = _add_host(engine, b)
    mnt = f"{ROOT}/{domain}"
    b.cleanup.append(lambda: b.sh(f"rmdir {mnt} 2>/dev/null; true"))
    b.cleanup.append(lambda: _drop_pool(b, domain))
    d = engine.call("POST", "/storage-domains", expect=201, json={
        "name": domain, "type": "nfs", "path": mnt,
        "source": {"host": nfs.guest_host, "dir": f"/no-such-export-{tag}", "nfs_version": 4,
                   "mount_options": [f"addr={nfs.guest_host}"]}})
    [row] = d["hosts"]
    assert row["state"] == "error" and "mount" in row["reason"], row
    shown = {s["domain"]: s for s in engine.call("GET", f"/hosts/{host['id']}")["storage"]}[domain]
    assert (shown["state"], shown["reason"]) == ("error", row["reason"])
    print(f"\n[xenlab storage] an export dom0 cannot mount: {row['reason']}")

    vm = engine.call("POST", "/vms", expect=201, json=_pv(b, name, {"size_bytes": 16 * MiB, "storage": domain}))
    task = engine.wait_task(engine.call("POST", f"/vms/{vm['id']}/start", json={"host": host["id"]}, expect=202))
    assert task["state"] == "failed" and task["error"]["code"] == "no_host", task
    [reasons] = [r["reasons"] for r in task["error"]["rejections"] if r["host"] == host["name"]]
    assert reasons == [f"storage domain {domain} not active here (error: {row['reason']})"], reasons
    assert name not in b.sh(f"{b.virsh} list --all --name")
    engine.call("DELETE", f"/vms/{vm['id']}", expect=204)
    engine.call("DELETE", f"/storage-domains/{domain}", expect=204)
