"""The live-XML reader on hand-made cases libvirt produces: reordered disks, no aliases, foreign devices."""

from __future__ import annotations

from lxml import etree

from corral.domain.flavors import get_flavor
from corral.domain.read import read_devices
from corral.domain.render import render
from corral.domain.spec import GuestType, parse_spec

from .support import parse, strip

XEN, KVM = get_flavor("xen"), get_flavor("kvm")


def test_disks_sharing_a_source_keep_their_identity_when_libvirt_reorders_them() -> None:
    iso = "/srv/iso/debian.iso"
    spec = parse_spec({"name": "r", "memory_mib": 512, "disks": [
        {"source": iso, "device": "cdrom"}, {"source": "/srv/vm/a.img"}, {"source": iso, "device": "cdrom"}]})
    root = parse(strip(render(spec, KVM), "alias"))
    devices = root.find("devices")
    disks = devices.findall("disk")
    for d in disks:  # libvirt lists disks in its own order: put them in reverse
        devices.remove(d)
        devices.insert(0, d)
    assert [d.find("target").get("dev") for d in devices.findall("disk")] == [
        d.find("target").get("dev") for d in reversed(disks)]
    found = {ld.key: ld for ld in read_devices(etree.tostring(root, encoding="unicode")) if ld.kind != "controller"}
    targets = [d.find("target").get("dev") for d in disks]
    for disk_spec, target in zip(spec.disks, targets, strict=True):
        assert found[f"target:{target}"].device_id == disk_spec.id
        assert found[f"target:{target}"].matched_by == "target"


def test_devices_corral_does_not_model_are_read_without_identity() -> None:
    spec = parse_spec({"name": "r", "memory_mib": 512, "guest_type": "hvm", "nics": [{"source": "br0"}]})
    root = parse(render(spec, XEN, GuestType.HVM))
    devices = root.find("devices")
    etree.SubElement(devices, "input", type="tablet", bus="usb")
    etree.SubElement(devices, "sound", model="ich6")
    found = read_devices(etree.tostring(root, encoding="unicode"))
    extra = [ld for ld in found if ld.kind in ("input", "sound")]
    assert [ld.kind for ld in extra] == ["input", "sound"]
    assert all(ld.device_id is None and ld.matched_by == "none" for ld in extra)
    assert {ld.device_id for ld in found if ld.kind == "nic"} == {spec.nics[0].id}


def test_a_nic_whose_mac_changed_is_not_mistaken_for_another() -> None:
    spec = parse_spec({"name": "r", "memory_mib": 512, "guest_type": "pv", "bootloader": "pygrub",
                       "nics": [{"source": "br0"}, {"source": "br1"}]})
    xml = strip(render(spec, XEN, GuestType.PV), "alias")
    root = parse(xml)
    root.find("devices/interface/mac").set("address", "00:16:3e:ff:ff:ff")
    found = [ld for ld in read_devices(etree.tostring(root, encoding="unicode")) if ld.kind == "nic"]
    assert [ld.device_id for ld in found] == [None, spec.nics[1].id]
