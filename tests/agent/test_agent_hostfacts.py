"""A plan for a host checks what that host has (issue 20 item 4): bridges, libvirt networks, files, block
devices, bootloaders. Refused before anything changes, and the plan never says native for them."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from corral.agent.hostfacts import HostView, check_spec, merge
from corral.agent.service import Agent
from corral.domain.spec import VmSpec

from .conftest import BRIDGE, Api, spec


@pytest.mark.parametrize("emulate", ["xen", "kvm"])
def test_a_missing_bridge_is_refused_by_the_plan_and_by_create(agent_factory: Callable[..., Agent],
                                                                emulate: str) -> None:
    api = Api(agent_factory(emulate))
    data = spec(guest_type="pv", kernel="/boot/vmlinuz", nics=[{"source": "xenbr1"}])
    plan = api.post("/v1/vms/plan", json=data, expect=200).json()
    assert plan["ok"] is False
    rows = [d for d in plan["decisions"] if d["path"] == "nics.0.source"]
    assert len(rows) == 1 and rows[0]["outcome"] == "refused", rows  # no "native xenbr1" left beside it
    assert "xenbr1" in rows[0]["detail"] and BRIDGE in rows[0]["detail"]
    body = api.post("/v1/vms", json=data, expect=422).json()
    assert body["field"] == "nics.0.source" and "xenbr1" in body["message"]
    assert api.conn().listAllDomains() == [], "a refused create defined something"
    ok = api.post("/v1/vms/plan", json=spec(guest_type="pv", kernel="/boot/vmlinuz"), expect=200).json()
    assert ok["ok"] is True


def test_a_missing_libvirt_network_is_refused(agent_factory: Callable[..., Agent]) -> None:
    api = Api(agent_factory("kvm"))
    body = api.post("/v1/vms", json=spec(nics=[{"source": "nowhere", "source_type": "network"}]), expect=422).json()
    assert body["field"] == "nics.0.source" and "network nowhere" in body["message"]
    assert api.post("/v1/vms", json=spec(nics=[{"source": "lab", "source_type": "network"}]), expect=201)


def test_hot_plugging_a_nic_on_a_missing_bridge_is_refused(agent_factory: Callable[..., Agent]) -> None:
    api = Api(agent_factory("xen"))
    vm_id = api.create(spec(guest_type="pv", kernel="/boot/vmlinuz"))["id"]
    body = api.post(f"/v1/vms/{vm_id}/devices", json={"nic": {"source": "xenbr9"}}, expect=422).json()
    assert "xenbr9" in body["message"]
    assert len(api.get(f"/v1/vms/{vm_id}").json()["spec"]["nics"]) == 1


def _view(**kw: object) -> HostView:
    return HostView(frozenset({"xenbr0"}), frozenset(), **kw)  # type: ignore[arg-type]


def test_files_block_devices_kernels_and_bootloaders(tmp_path: Path) -> None:
    image = tmp_path / "disk.raw"
    image.write_bytes(b"\0" * 512)
    loader = tmp_path / "pygrub"
    loader.write_text("#!/bin/sh\n")
    data = {
        "id": "5d4f7c1e-2b1a-4c8e-9a5b-0c1d2e3f4a5b", "name": "facts", "memory_mib": 128, "guest_type": "pv",
        "bootloader": str(loader),
        "disks": [{"source": str(image)}, {"source": str(tmp_path / "gone.raw")},
                  {"source": str(tmp_path), "format": "raw"},
                  {"source": str(image), "source_type": "block"},
                  {"device": "cdrom"}],
        "nics": [{"source": "xenbr0"}],
    }
    refusals = {d.path: d.detail for d in check_spec(VmSpec.model_validate(data), _view())}
    assert set(refusals) == {"disks.1.source", "disks.2.source", "disks.3.source", "bootloader"}
    assert "does not exist" in refusals["disks.1.source"]
    assert "directory" in refusals["disks.2.source"]
    assert "not a block device" in refusals["disks.3.source"]
    assert "not executable" in refusals["bootloader"]
    os.chmod(loader, stat.S_IRWXU)
    again = {d.path for d in check_spec(VmSpec.model_validate(data), _view())}
    assert "bootloader" not in again
    kernel = VmSpec.model_validate({**data, "bootloader": None, "kernel": str(tmp_path / "vmlinuz"),
                                    "initrd": str(image)})
    assert {d.path: d.detail for d in check_spec(kernel, _view())}.get("kernel", "").endswith("does not exist on "
                                                                                              "this host")
    # an emulated host has none of the guest's files: only bridges and networks are checked there
    assert check_spec(VmSpec.model_validate(data), _view(files_checked=False)) == []


def test_merge_replaces_the_flavors_decision_for_the_same_field(tmp_path: Path) -> None:
    from corral.domain.flavors import get_flavor
    from corral.domain.resolve import resolve

    data = VmSpec.model_validate({"id": "5d4f7c1e-2b1a-4c8e-9a5b-0c1d2e3f4a5c", "name": "m", "memory_mib": 128,
                                  "guest_type": "pv", "kernel": "/k", "nics": [{"source": "xenbr1"}]})
    res = resolve(data, get_flavor("xen"))
    host = check_spec(data, _view(files_checked=False))
    merged = merge(res.decisions, host)
    assert [d.outcome.value for d in merged if d.path == "nics.0.source"] == ["refused"]
    assert len(merged) == len(res.decisions)


def test_the_format_is_probed_never_trusted(tmp_path: Path) -> None:
    """Gap L1, the raw trap: `web1.qcow2` declared raw would give the guest the qcow2 header as data."""
    qcow2 = tmp_path / "web1.qcow2"
    qcow2.write_bytes(b"QFI\xfb" + b"\0" * 508)
    raw = tmp_path / "data.qcow2"  # a raw image with a misleading name
    raw.write_bytes(b"\0" * 512)

    def refusals(source: Path, fmt: str) -> dict[str, str]:
        data = {"id": "5d4f7c1e-2b1a-4c8e-9a5b-0c1d2e3f4a5d", "name": "fmt", "memory_mib": 128,
                "disks": [{"source": str(source), "format": fmt}]}
        return {d.path: d.detail for d in check_spec(VmSpec.model_validate(data), _view())}

    assert "qcow2 image" in refusals(qcow2, "raw")["disks.0.format"]
    assert refusals(qcow2, "qcow2") == {}
    assert "not a qcow2 image" in refusals(raw, "qcow2")["disks.0.format"]
    assert refusals(raw, "raw") == {}
