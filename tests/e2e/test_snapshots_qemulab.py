"""Snapshots on real QEMU (the QEMU lab's libvirtd, TCG; issue 12): a running VM with a qcow2 disk is
snapshotted with its memory, runs on, and is reverted -- it is running after the revert and its guest's clock
is back where the snapshot was taken (the busybox guest prints its uptime every 5 s on the serial console: the
first tick after the revert shows less uptime than the last tick before it). libvirt lists the snapshot and the
qcow2 image holds it (``qemu-img snapshot -l``)."""

from __future__ import annotations

import re
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from corral.agent.service import Agent, Settings
from tests.agent.conftest import Api
from tests.qemulab import lab_unavailable_reason, qemu_lab
from tests.require import unavailable

pytestmark = pytest.mark.qemulab

UPTIME = re.compile(r"CORRAL-GUEST-(?:TICK|UP).*? uptime=([0-9.]+)")


def wait_for(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.5)


def test_a_running_vm_is_snapshotted_with_memory_and_reverted(tmp_path: Path) -> None:
    lab = qemu_lab()
    if lab is None:
        unavailable(f"QEMU lab unavailable: {lab_unavailable_reason()}")
    import libvirt

    disk = tmp_path / "root.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "16M"], check=True, timeout=60)
    tmp_path.chmod(0o755)
    name = f"corral-e2e-snap-{uuid.uuid4().hex[:8]}"
    vm_id = str(uuid.uuid4())
    spec = {"id": vm_id, "name": name, "memory_mib": 128, "vcpus": 1, "kernel": str(lab.kernel),
            "initrd": str(lab.initrd), "cmdline": "console=ttyS0 panic=-1", "consoles": [{"kind": "serial"}],
            "disks": [{"source": str(disk), "format": "qcow2"}], "nics": []}
    agent = Agent(Settings(libvirt=lab.uri, state_dir=tmp_path / "state", allow_tcg=True, accel="tcg"))
    agent.start()
    conn = libvirt.open(lab.uri)
    try:
        api = Api(agent)

        def console() -> str:
            return str(api.get(f"/v1/vms/{vm_id}/console", params={"tail": 1 << 20}, expect=200).json()["log"])

        def uptimes(text: str) -> list[float]:
            return [float(u) for u in UPTIME.findall(text)]

        api.create(spec, start=True)
        wait_for(lambda: len(uptimes(console())) >= 2, 120, "two uptime lines on the console")

        made = api.post(f"/v1/vms/{vm_id}/snapshots", json={"name": "mem1", "description": "running"},
                        expect=201).json()
        assert made["memory"] is True and made["vm_state"] == "running"
        at_snapshot = uptimes(console())[-1]
        listed = api.get(f"/v1/vms/{vm_id}/snapshots", expect=200).json()
        assert listed["mechanism"] == "libvirt" and [s["name"] for s in listed["items"]] == ["mem1"]
        dom = conn.lookupByUUIDString(vm_id)
        assert [s.getName() for s in dom.listAllSnapshots(0)] == ["mem1"]
        assert "mem1" in subprocess.run(["qemu-img", "snapshot", "-l", "-U", str(disk)], capture_output=True,
                                        text=True, check=True, timeout=60).stdout  # internal, in the image

        # the guest runs on well past the snapshot
        wait_for(lambda: uptimes(console())[-1] >= at_snapshot + 15, 180, "15 s more of guest uptime")
        before = console()
        last = uptimes(before)[-1]
        reverted = api.post(f"/v1/vms/{vm_id}/snapshots/mem1/revert", expect=200).json()
        assert reverted["vm"]["state"] == "up" and dom.isActive()

        def since_revert() -> list[float]:
            now = console()  # appended to, or begun anew when libvirt restarted QEMU to load the snapshot
            return uptimes(now[len(before):] if now.startswith(before) else now)

        after = wait_for(since_revert, 120, "a tick after the revert")
        print(f"uptime at snapshot {at_snapshot}, before revert {last}, first tick after revert {after[0]}")
        assert after[0] < last - 5, (at_snapshot, last, after)  # the guest's memory went back in time

        api.post(f"/v1/vms/{vm_id}/destroy", expect=200)
        api.delete(f"/v1/vms/{vm_id}/snapshots/mem1", expect=204)
        assert api.get(f"/v1/vms/{vm_id}/snapshots", expect=200).json()["items"] == []
        api.delete(f"/v1/vms/{vm_id}", expect=204)
    finally:
        try:
            dom = conn.lookupByUUIDString(vm_id)
            if dom.isActive():
                dom.destroy()
            dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA)
        except libvirt.libvirtError:
            pass
        conn.close()
        agent.stop()
