"""Read-only media on Xen [X6], as measured on the Xen lab (docs/xen-readonly.md): Xen 4.17's qdisk backend
refuses a read-only *disk* ("Block node is read-only") and libxl starts the guest without it, saying nothing;
a PV CD-ROM (``device='cdrom'``) with media at start is seen by the guest. So a CD-ROM is a real CD-ROM on every
Xen guest type, and a read-only disk on a file is refused by field (``disks.N.readonly``) before anything is
defined; a read-only block device (blkback) is rendered as asked. KVM renders all of them as asked.
"""

from __future__ import annotations

from typing import Any

import pytest

from corral.domain.flavors import features as feat
from corral.domain.flavors import get_flavor
from corral.domain.flavors.base import Outcome
from corral.domain.flavors.features import Feature
from corral.domain.render import plan, render
from corral.domain.resolve import RefusedError
from corral.domain.spec import DiskSource, GuestType, VmSpec, parse_spec

from .support import decision, parse, refused_paths

XEN, KVM = get_flavor("xen"), get_flavor("kvm")
PV, PVH, HVM = GuestType.PV, GuestType.PVH, GuestType.HVM
PV_TYPES = pytest.mark.parametrize("gt", [PV, PVH], ids=lambda g: g.value)


def make(gt: GuestType, *disks: dict[str, Any]) -> VmSpec:
    return parse_spec({"name": "ro", "memory_mib": 256, "guest_type": gt.value, "kernel": "/boot/vmlinuz",
                       "disks": [{"source": "/srv/vm/root.img"}, *disks]})


@PV_TYPES
def test_a_pv_cdrom_with_media_is_a_real_pv_cdrom_not_a_readonly_disk(gt: GuestType) -> None:
    spec = make(gt, {"device": "cdrom", "source": "/isos/install.iso"})
    cd = parse(render(spec, XEN, gt)).findall("devices/disk")[1]
    assert cd.get("device") == "cdrom", "a read-only PV disk is dropped by qdisk at start [X6]"
    assert cd.find("target").get("bus") == "xen" and cd.find("target").get("dev") == "xvdb"
    assert cd.find("readonly") is not None and cd.find("driver").get("name") == "qemu"
    assert cd.find("source").get("file") == "/isos/install.iso"
    d = decision(plan(spec, XEN, gt), "disks.1.device")
    assert d.outcome is Outcome.NATIVE and "X6" in d.detail


@PV_TYPES
@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_a_readonly_file_disk_on_pv_is_refused_by_field_with_the_measured_reason(gt: GuestType, fmt: str) -> None:
    spec = make(gt, {"source": f"/srv/vm/golden.{fmt}", "format": fmt, "readonly": True})
    with pytest.raises(RefusedError) as info:
        render(spec, XEN, gt)
    assert [d.path for d in info.value.decisions] == ["disks.1.readonly"]
    assert "Block node is read-only" in str(info.value) and "device: cdrom" in str(info.value)
    decisions = plan(spec, XEN, gt)
    assert refused_paths(decisions) == {"disks.1.readonly"}
    assert decision(decisions, "disks.1.readonly").feature == Feature.DISK_READONLY_FILE


@PV_TYPES
def test_a_readonly_block_disk_on_pv_is_rendered_on_blkback(gt: GuestType) -> None:
    spec = make(gt, {"source": "/dev/vg/golden", "source_type": "block", "readonly": True})
    disk = parse(render(spec, XEN, gt)).findall("devices/disk")[1]
    assert disk.get("device") == "disk" and disk.find("readonly") is not None
    assert disk.find("driver").get("name") == "phy"
    assert decision(plan(spec, XEN, gt), "disks.1.readonly").outcome is Outcome.NATIVE


def test_a_writable_disk_asks_no_readonly_rule() -> None:
    decisions = plan(make(PV), XEN, PV)
    assert not [d for d in decisions if d.path.endswith(".readonly")]


@pytest.mark.parametrize("source_type", ["file", "block"])
def test_kvm_renders_readonly_disks_as_asked(source_type: str) -> None:
    source = "/srv/vm/golden.raw" if source_type == "file" else "/dev/vg/golden"
    spec = make(HVM, {"source": source, "source_type": source_type, "readonly": True})
    disk = parse(render(spec, KVM, HVM)).findall("devices/disk")[1]
    assert disk.get("device") == "disk" and disk.find("readonly") is not None
    assert decision(plan(spec, KVM, HVM), "disks.1.readonly").outcome is Outcome.NATIVE


def test_readonly_features_cover_every_disk_source() -> None:
    assert set(feat.READONLY_SOURCE) == set(DiskSource)


@PV_TYPES
def test_pv_cdrom_media_does_not_change_while_the_vm_runs(gt: GuestType) -> None:
    """A PV CD-ROM's media is fixed while the domain runs (measured: libxl refuses it); HVM's changes [X4]."""
    for feature in (Feature.CDROM_CHANGE_LIVE, Feature.CDROM_INSERT_LIVE):
        rule = XEN.rule(feature, gt)
        assert rule.outcome is Outcome.REFUSED and "X6" in rule.reason
    assert XEN.rule(Feature.CDROM_CHANGE_LIVE, HVM).outcome is Outcome.NATIVE
    assert KVM.rule(Feature.CDROM_CHANGE_LIVE, HVM).outcome is Outcome.NATIVE


@pytest.mark.parametrize("source_type", ["file", "block"])
def test_a_readonly_disk_on_hvm_is_refused_with_libxls_reason(source_type: str) -> None:
    """Measured: libxl fails the start ('qemu-xen doesn't support read-only IDE disk drivers'), for any backend."""
    source = "/srv/vm/golden.raw" if source_type == "file" else "/dev/vg/golden"
    spec = make(HVM, {"source": source, "source_type": source_type, "readonly": True})
    with pytest.raises(RefusedError) as info:
        render(spec, XEN, HVM)
    assert [d.path for d in info.value.decisions] == ["disks.1.readonly"]
    assert "read-only IDE disk drivers" in str(info.value)
    # the image as a CD-ROM works: an emulated IDE CD-ROM on qdisk
    cd = parse(render(make(HVM, {"source": source, "source_type": source_type, "device": "cdrom"}), XEN, HVM))
    assert cd.findall("devices/disk")[1].get("device") == "cdrom"
