"""Snapshots on the real Xen lab (issue 12): libvirt's libxl driver has no snapshot API, measured here each run;
the agent in dom0 takes offline internal qcow2 snapshots of a stopped PV guest's disk with qemu-img, reverts
them (bytes written into the image after the snapshot, with qemu-io in dom0, are gone), deletes them, and refuses
a running guest by name with the measured reason. Run against the lab's agent, or a development agent in dom0
(``CORRAL_XENLAB_AGENT_URL``, docs/labs.md)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from corral.domain.flavors.xen import NO_SNAPSHOT_API
from tests.require import unavailable
from tests.xenlab import XenLab, lab_unavailable_reason, xen_lab

pytestmark = pytest.mark.xenlab


@pytest.fixture(scope="module")
def lab() -> XenLab:
    lab = xen_lab()
    if lab is None:
        unavailable(f"Xen lab unavailable: {lab_unavailable_reason()}")
    return lab


@pytest.fixture
def agent(lab: XenLab) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=lab.agent_url, headers={"Authorization": f"Bearer {lab.agent_token}"},
                      timeout=300) as client:
        yield client


def call(agent: httpx.Client, method: str, path: str, expect: int, **kw: Any) -> Any:
    r = agent.request(method, path, **kw)
    assert r.status_code == expect, (method, path, r.status_code, r.text)
    return r.json() if r.content else None


def dom0(lab: XenLab, cmd: str) -> tuple[int, str]:
    done = lab.ssh(cmd, timeout=120)
    return done.returncode, done.stdout + done.stderr


def test_libxl_has_no_snapshot_api_as_the_flavor_says(lab: XenLab) -> None:
    """The message the Xen flavor quotes is what libvirt answers today (a running domain is asked the same)."""
    import libvirt

    conn = libvirt.open(lab.libvirt_uri)
    try:
        dom = next(iter(conn.listAllDomains(0)), None)  # dom0 at least
        assert dom is not None
        with pytest.raises(libvirt.libvirtError) as err:
            dom.snapshotCreateXML("<domainsnapshot><name>probe</name></domainsnapshot>", 0)
        assert err.value.get_error_code() == libvirt.VIR_ERR_NO_SUPPORT
        assert err.value.get_error_message() == NO_SNAPSHOT_API
        with pytest.raises(libvirt.libvirtError) as err:
            dom.listAllSnapshots(0)
        assert err.value.get_error_code() == libvirt.VIR_ERR_NO_SUPPORT
    finally:
        conn.close()


def test_offline_snapshot_and_revert_of_a_pv_guest_live_refused(lab: XenLab, agent: httpx.Client) -> None:
    tag = uuid.uuid4().hex[:8]
    where = f"/var/lib/corral-snaptest-{tag}"
    disk = f"{where}/root.qcow2"
    rc, out = dom0(lab, f"mkdir -p {where} && qemu-img create -q -f qcow2 {disk} 16M")
    assert rc == 0, out
    vm_id = str(uuid.uuid4())
    spec = {"id": vm_id, "name": f"snap-xen-{tag}", "guest_type": "pv", "memory_mib": 128, "vcpus": 1,
            "kernel": str(lab.guest_kernel), "initrd": str(lab.guest_initrd), "cmdline": "console=hvc0 panic=-1",
            "disks": [{"source": disk, "format": "qcow2"}], "nics": []}
    try:
        assert call(agent, "POST", "/v1/vms?start=true", 201, json=spec)["state"] == "up"

        # running: refused by name, with libxl's own answer
        for method, path, body in (("POST", "", {"name": "live"}), ("POST", "/x/revert", None)):
            refusal = call(agent, method, f"/v1/vms/{vm_id}/snapshots{path}", 409, json=body)
            assert refusal["code"] == "unsupported" and refusal["field"] == "state"
            assert refusal["feature"] == "snapshot.live"
            assert f"live snapshots: libxl has no snapshot API (measured: '{NO_SNAPSHOT_API}')" in refusal["message"]
        listed = call(agent, "GET", f"/v1/vms/{vm_id}/snapshots", 200)
        assert listed == {"mechanism": "offline-qcow2", "items": []}

        # stopped: qemu-img takes it, inside the image
        call(agent, "POST", f"/v1/vms/{vm_id}/destroy", 200)
        made = call(agent, "POST", f"/v1/vms/{vm_id}/snapshots", 201, json={"name": "clean", "description": "d"})
        assert made["name"] == "clean" and made["memory"] is False
        rc, out = dom0(lab, f"qemu-img snapshot -l {disk}")
        assert rc == 0 and "clean" in out, out
        assert [s["name"] for s in call(agent, "GET", f"/v1/vms/{vm_id}/snapshots", 200)["items"]] == ["clean"]

        # written after the snapshot, gone after the revert
        rc, out = dom0(lab, f"qemu-io -f qcow2 -c 'write -P 0x5a 0 64k' {disk}")
        assert rc == 0, out
        rc, out = dom0(lab, f"qemu-io -f qcow2 -c 'read -P 0x5a 0 64k' {disk}")
        assert rc == 0 and "verification failed" not in out, out
        reverted = call(agent, "POST", f"/v1/vms/{vm_id}/snapshots/clean/revert", 200)
        assert reverted["vm"]["state"] == "down"
        rc, out = dom0(lab, f"qemu-io -f qcow2 -c 'read -P 0 0 64k' {disk}")
        assert rc == 0 and "verification failed" not in out, out  # zeros again

        call(agent, "DELETE", f"/v1/vms/{vm_id}/snapshots/clean", 204)
        rc, out = dom0(lab, f"qemu-img snapshot -l {disk}")
        assert rc == 0 and "clean" not in out, out
        assert call(agent, "GET", f"/v1/vms/{vm_id}/snapshots", 200)["items"] == []
    finally:
        agent.post(f"/v1/vms/{vm_id}/destroy")
        agent.delete(f"/v1/vms/{vm_id}")
        dom0(lab, f"rm -rf {where}")
