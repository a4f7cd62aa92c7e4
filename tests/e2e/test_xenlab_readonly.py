"""Read-only media on real Xen (labs/xen; Xen 4.17, libvirt 9.0, qemu 7.2 as qdisk) [X6], docs/xen-readonly.md.

* A PV guest given an ISO as its CD-ROM sees it: the lab's busybox guest prints
  ``CORRAL-XEN-GUEST-BLOCK xvda sectors=<the ISO's size / 512> read_bytes=...`` for it. Before the fix the
  CD-ROM was rendered as a read-only PV disk, which qdisk refuses ("Block node is read-only") while libxl starts
  the guest without it: the guest listed no xvda.
* A live media change of that CD-ROM is refused by field (``media``) before anything changes (libxl cannot
  change a running PV guest's media), and the guest keeps its ISO.
* A read-only disk on a file is refused by field (``disks.0.readonly``) before anything is defined in dom0.
"""

from __future__ import annotations

import io
import subprocess
import time
import uuid
from typing import Any

import httpx
import pytest

from tests.require import unavailable
from tests.xenlab import XenLab, lab_unavailable_reason, xen_lab

pytestmark = pytest.mark.xenlab

BOOT_TIMEOUT_S = 300


def _lab() -> XenLab:
    lab = xen_lab()
    if lab is None:
        unavailable(f"Xen lab unavailable: {lab_unavailable_reason()}")
    return lab


def _iso() -> bytes:
    """A small ISO 9660 image (one 1 MiB file): its size, not its label, is what the guest reports."""
    import pycdlib

    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, vol_ident="CORRALRO")
    data = b"corral read-only media\n" * 48000
    iso.add_fp(io.BytesIO(data), len(data), "/DATA.TXT;1")
    out = io.BytesIO()
    iso.write_fp(out)
    iso.close()
    return out.getvalue()


def _wait(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(3)


def _defined(lab: XenLab) -> set[str]:
    return set(lab.ssh("virsh -c xen:///system list --all --name", timeout=120).stdout.split())


def test_a_pv_guest_sees_its_iso_cdrom_and_a_readonly_file_disk_is_refused_before_defining() -> None:
    lab = _lab()
    http = httpx.Client(base_url=lab.agent_url, headers={"Authorization": f"Bearer {lab.agent_token}"}, timeout=300)
    tag = uuid.uuid4().hex[:8]
    iso_path = f"/var/lib/corral-lab/ro-{tag}.iso"
    image = _iso()
    put = subprocess.run(lab.ssh_argv(f"cat > {iso_path}"), input=image, capture_output=True, timeout=180,
                         check=False)
    assert put.returncode == 0, put.stderr
    base: dict[str, Any] = {
        "memory_mib": 128, "guest_type": "pv", "kernel": str(lab.guest_kernel), "initrd": str(lab.guest_initrd),
        "cmdline": "console=hvc0 panic=-1", "consoles": [{"kind": "pv"}], "balloon": None}
    cd_id = str(uuid.uuid4())
    pv = {**base, "id": str(uuid.uuid4()), "name": f"corral-ci-ro-{tag}",
          "disks": [{"id": cd_id, "device": "cdrom", "source": iso_path}]}
    made: list[str] = []
    try:
        # the refused case first: nothing may reach dom0's libvirt
        refused = {**base, "id": str(uuid.uuid4()), "name": f"corral-ci-rodisk-{tag}",
                   "disks": [{"source": iso_path, "format": "raw", "readonly": True}]}
        resp = http.post("/v1/vms?start=true", json=refused)
        assert resp.status_code == 422, resp.text
        assert "disks.0.readonly" in resp.text and "Block node is read-only" in resp.text, resp.text
        assert refused["name"] not in _defined(lab)

        lab.ssh(f"rm -f /var/log/xen/console/guest-{pv['name']}.log")
        resp = http.post("/v1/vms?start=true", json=pv)
        assert resp.status_code == 201, resp.text
        made.append(pv["id"])
        live = lab.ssh(f"virsh -c xen:///system dumpxml {pv['name']}", timeout=120).stdout
        assert "device='cdrom'" in live and iso_path in live, live

        def blocks() -> str:
            text = str(http.get(f"/v1/vms/{pv['id']}/console", params={"tail": 100000}).json().get("log") or "")
            return text if "CORRAL-XEN-GUEST-TICK" in text else ""
        log = _wait(blocks, BOOT_TIMEOUT_S, "the PV guest to list its block devices")
        lines = [x for x in log.splitlines() if "CORRAL-XEN-GUEST-BLOCK" in x]
        print(lines)
        assert any(f"xvda sectors={len(image) // 512} " in x and "read_bytes=0" not in x for x in lines), lines

        # the media of a running PV CD-ROM stays: refused by field, the definition unchanged
        resp = http.patch(f"/v1/vms/{pv['id']}/devices/{cd_id}", json={"media": None})
        assert resp.status_code == 409 and resp.json()["field"] == "media", resp.text
        assert http.get(f"/v1/vms/{pv['id']}").json()["spec"]["disks"][0]["source"] == iso_path
    finally:
        for vm_id in made:
            http.post(f"/v1/vms/{vm_id}/destroy")
            http.delete(f"/v1/vms/{vm_id}")
        lab.ssh(f"rm -f {iso_path}")
        http.close()
