"""Cloud-init on real Xen (labs/xen, libvirt's libxl driver; issue 12): a PV guest gets its NoCloud seed as a
PV CD-ROM (``xvdz``, read-only) and sees it, as the lab's busybox guest reports every block device on its
console (``CORRAL-XEN-GUEST-BLOCK <dev> sectors=... read_bytes=...``: the size is the seed's, and it reads).
A read-only PV *disk* would not do: Xen 4.17's qdisk refuses it ("Block node is read-only") and the guest
starts without it, which this test would see. The seed dom0 holds is the very image built here from the same
spec (its bytes are deterministic). An HVM guest starts with the seed as its IDE CD-ROM on the qdisk backend.
The lab guest prints no volume labels (its busybox has no blkid), so the label is checked on the seed itself.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from typing import Any

import httpx
import pytest

from corral.agent.cloudinit import build_iso
from corral.domain.cloudinit import seed_files
from corral.domain.flavors import get_flavor
from corral.domain.spec import parse_spec
from tests.require import unavailable
from tests.xenlab import XenLab, lab_unavailable_reason, xen_lab

pytestmark = pytest.mark.xenlab

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJxt6G9g+a8LegMBJ+yAwHL9mOGHCiLG2pPmu0OuwuJ3 alice@laptop"
BOOT_TIMEOUT_S = 300


def _lab() -> XenLab:
    lab = xen_lab()
    if lab is None:
        unavailable(f"Xen lab unavailable: {lab_unavailable_reason()}")
    return lab


def _wait(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(3)


def test_a_pv_guest_sees_its_seed_and_an_hvm_guest_starts_with_it() -> None:
    lab = _lab()
    http = httpx.Client(base_url=lab.agent_url, headers={"Authorization": f"Bearer {lab.agent_token}"}, timeout=300)
    tag = uuid.uuid4().hex[:8]
    pv: dict[str, Any] = {
        "id": str(uuid.uuid4()), "name": f"corral-ci-pv-{tag}", "memory_mib": 128, "guest_type": "pv",
        "kernel": str(lab.guest_kernel), "initrd": str(lab.guest_initrd), "cmdline": "console=hvc0 panic=-1",
        "consoles": [{"kind": "pv"}], "nics": [{"source": "xenbr0"}], "balloon": None,
        "cloud_init": {"user": "alice", "ssh_authorized_keys": [KEY], "hostname": "seeded"}}
    hvm: dict[str, Any] = {
        "id": str(uuid.uuid4()), "name": f"corral-ci-hvm-{tag}", "memory_mib": 128, "guest_type": "hvm",
        "kernel": str(lab.guest_kernel), "initrd": str(lab.guest_initrd), "cmdline": "console=ttyS0 panic=-1",
        "consoles": [{"kind": "serial"}], "balloon": None, "cloud_init": {"hostname": "seeded-hvm"}}
    made: list[str] = []
    try:
        lab.ssh(f"rm -f /var/log/xen/console/guest-{pv['name']}.log")
        resp = http.post("/v1/vms?start=true", json=pv)
        assert resp.status_code == 201, resp.text
        made.append(pv["id"])
        answer = http.get(f"/v1/vms/{pv['id']}").json()
        seed_dev = [d for d in answer["devices"] if d["id"] == "cloud-init"]
        assert len(seed_dev) == 1 and seed_dev[0]["target"] == "xvdz" and seed_dev[0]["readonly"] is True
        path = seed_dev[0]["source"]

        # the seed in dom0 is the image this spec gives here (MACs as the agent fills them)
        files = seed_files(parse_spec({**pv, "nics": answer["spec"]["nics"]}), get_flavor("xen").mac_prefix)
        assert files is not None
        image = build_iso(files)
        assert lab.ssh(f"sha256sum {path}").stdout.split()[0] == hashlib.sha256(image).hexdigest()
        assert lab.ssh(f"stat -c %a {path}").stdout.strip() == "600"

        def blocks() -> str:
            text = str(http.get(f"/v1/vms/{pv['id']}/console", params={"tail": 100000}).json().get("log") or "")
            return text if "CORRAL-XEN-GUEST-BLOCK xvdz" in text else ""
        log = _wait(blocks, BOOT_TIMEOUT_S, "the PV guest to list xvdz")
        line = next(x for x in log.splitlines() if "CORRAL-XEN-GUEST-BLOCK xvdz" in x)
        print(line)
        assert f"sectors={len(image) // 512}" in line and "read_bytes=16384" in line, line

        # HVM: the seed is an emulated IDE CD-ROM (qdisk); libxl starts the domain with it
        resp = http.post("/v1/vms?start=true", json=hvm)
        assert resp.status_code == 201, resp.text
        made.append(hvm["id"])
        assert resp.json()["state"] == "up"
        blk = lab.ssh(f"virsh -c xen:///system domblklist {hvm['name']} --details").stdout
        assert "cdrom" in blk and "hdd" in blk and "cidata.iso" in blk, blk
    finally:
        for vm_id in made:
            http.post(f"/v1/vms/{vm_id}/destroy")
            http.delete(f"/v1/vms/{vm_id}")
        http.close()
