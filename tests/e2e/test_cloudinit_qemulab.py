"""Cloud-init on real QEMU (labs/qemu, TCG; issue 12): a VM with ``cloud_init`` boots with the agent's NoCloud
seed as an IDE CD-ROM, and the guest sees it: ``sr0`` among its block devices, with the volume label ``cidata``
(the lab guest prints ``disks=`` and ``iso_labels=``, read at the ISO 9660 volume descriptor). Without
``cloud_init`` there is no CD-ROM at all."""

from __future__ import annotations

import io
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pycdlib
import pytest
import yaml

from tests.e2e.test_agent_qemulab import (
    BOOT_TIMEOUT_S,
    MARKER,
    TOKEN,
    AgentProcess,
    _console,
    _make_bridge,
    wait_for,
)
from tests.qemulab import lab_unavailable_reason, qemu_lab
from tests.require import unavailable

pytestmark = pytest.mark.qemulab

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJxt6G9g+a8LegMBJ+yAwHL9mOGHCiLG2pPmu0OuwuJ3 alice@laptop"


def _guest_line(log: str) -> str:
    return next(line for line in log.splitlines() if line.startswith(MARKER))


def test_the_guest_sees_its_cidata_seed(tmp_path: Path) -> None:
    lab = qemu_lab()
    if lab is None:
        unavailable(f"QEMU lab unavailable: {lab_unavailable_reason()}")
    import libvirt

    conn = libvirt.open(lab.uri)
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    state_dir = tmp_path / "state"
    bridge = _make_bridge()
    if bridge is None:
        unavailable("cannot add a bridge on this host: the agent's hardware check would fail for want of one")
    ids: list[str] = []
    agent = None

    def spec(cloud_init: dict[str, Any] | None) -> dict[str, Any]:
        vm_id = str(uuid.uuid4())
        ids.append(vm_id)
        return {"id": vm_id, "name": f"corral-e2e-ci-{uuid.uuid4().hex[:8]}", "memory_mib": 192, "vcpus": 1,
                "kernel": str(lab.kernel), "initrd": str(lab.initrd), "cmdline": "console=ttyS0 panic=-1",
                "consoles": [{"kind": "serial"}], "nics": [{"source": bridge}], "on_reboot": "destroy",
                "cloud_init": cloud_init}

    try:
        agent = AgentProcess(lab.uri, state_dir, token_file, tmp_path / "agent.log")
        with_seed = spec({"user": "alice", "ssh_authorized_keys": [KEY], "hostname": "seeded"})
        plain = spec(None)
        for body in (with_seed, plain):
            agent.call("POST", "/v1/vms?start=true", expect=201, json=body)
        logs = {body["id"]: wait_for(lambda b=body: MARKER in (t := _console(agent, b["id"])) and t,
                                     BOOT_TIMEOUT_S, f"{MARKER} of {body['name']}")
                for body in (with_seed, plain)}
        seeded, unseeded = _guest_line(logs[with_seed["id"]]), _guest_line(logs[plain["id"]])
        print(seeded)
        print(unseeded)
        assert "disks=sr0" in seeded and "iso_labels=sr0:cidata" in seeded, seeded
        assert "sr0" not in unseeded and "iso_labels= " in unseeded, unseeded

        # what QEMU was given is the agent's seed, read-only, at the fixed target
        dom = conn.lookupByUUIDString(with_seed["id"])
        assert "hdd" in subprocess.run(["virsh", "-c", lab.uri, "domblklist", with_seed["name"]],
                                       capture_output=True, text=True, check=True).stdout
        seed = state_dir / "cloud-init" / with_seed["id"] / "cidata.iso"
        assert str(seed) in dom.XMLDesc(0)
        iso = pycdlib.PyCdlib()
        iso.open(str(seed))
        out = io.BytesIO()
        iso.get_file_from_iso_fp(out, rr_path="/meta-data")
        iso.close()
        assert yaml.safe_load(out.getvalue())["local-hostname"] == "seeded"
        live = agent.call("GET", f"/v1/vms/{with_seed['id']}")["devices"]
        assert [d["target"] for d in live if d["id"] == "cloud-init"] == ["hdd"]
    finally:
        if agent is not None:
            for vm_id in ids:
                try:
                    dom = conn.lookupByUUIDString(vm_id)
                except libvirt.libvirtError:
                    continue
                if dom.isActive():
                    dom.destroy()
                dom.undefine()
            agent.stop()
        conn.close()
        subprocess.run(["ip", "link", "del", bridge], capture_output=True, check=False)
