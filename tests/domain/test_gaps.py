"""One test per row of ../shared/xen-gaps.md that the domain layer decides (D1-D5, L1, L4, L5, L8-L13, X1, X2).

Each renders a spec, reads the XML back with lxml, and checks the plan's decision for the field.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from lxml import etree

from corral.domain import config as cfg
from corral.domain.flavors import get_flavor
from corral.domain.flavors.base import Decision, Outcome
from corral.domain.read import read_devices
from corral.domain.render import plan, render, render_resolution
from corral.domain.resolve import AGENT_CHANNEL, RefusedError, RenderOptions, Resolution
from corral.domain.spec import SPEC_FORMAT_VERSION, GraphicsType, GuestType, SpecError, VmSpec, parse_spec

from .support import assert_schema_valid, decision, needs_validator, parse, refused_paths, strip

XEN, KVM = get_flavor("xen"), get_flavor("kvm")
PV, PVH, HVM = GuestType.PV, GuestType.PVH, GuestType.HVM
XEN_TYPES = pytest.mark.parametrize("gt", [PV, PVH, HVM], ids=lambda g: g.value)
PV_AND_HVM = pytest.mark.parametrize("gt", [PV, HVM], ids=lambda g: g.value)
NS = {"corral": cfg.CORRAL_NS}


def make(**fields: Any) -> VmSpec:
    data: dict[str, Any] = {"name": "gap", "memory_mib": 1024, "kernel": "/boot/vmlinuz"}
    data.update(fields)
    return parse_spec({k: v for k, v in data.items() if v is not None})


def disk(source: str | None = "/srv/vm/root.img", **fields: Any) -> dict[str, Any]:
    return {"source": source, **fields}


def nic(**fields: Any) -> dict[str, Any]:
    return {"source": "xenbr0", **fields}


def rendered(spec: VmSpec, flavor: Any = XEN, gt: GuestType | None = None,
             options: RenderOptions | None = None) -> tuple[etree._Element, Resolution]:
    xml, res = render_resolution(spec, flavor, gt, options)
    return parse(xml), res


def refusal(spec: VmSpec, flavor: Any = XEN, gt: GuestType | None = None) -> tuple[RefusedError, list[Decision]]:
    with pytest.raises(RefusedError) as info:
        render(spec, flavor, gt)
    return info.value, plan(spec, flavor, gt)


def the(root: etree._Element, path: str) -> etree._Element:
    found = root.findall(path, NS)
    assert len(found) == 1, f"{len(found)} elements at {path}, expected one"
    return found[0]


# --- D1 --------------------------------------------------------------------------------------------------------


@needs_validator
@PV_AND_HVM
def test_D1_user_aliases_and_identity_without_alias_address_driver(gt: GuestType) -> None:
    consoles = [{"kind": "pv"}] if gt is PV else [{"kind": "serial"}, {"kind": "serial"}, {"kind": "pv"}]
    spec = make(guest_type=gt.value,
                disks=[disk(), disk("/srv/vm/data.qcow2", format="qcow2"), disk("/srv/iso/a.iso", device="cdrom"),
                       disk("/dev/vg0/scratch", source_type="block")],
                nics=[nic(), nic(source_type="network", source="default", mac="00:16:3e:01:02:03")],
                consoles=consoles, graphics={}, guest_agent={}, balloon={})
    xml = render(spec, XEN, gt)
    assert_schema_valid(xml)
    root = parse(xml)

    # every device element carries ua-<device id>; graphics has no <alias> in libvirt's schema, its video does
    ids = {d.id for d in spec.devices()}
    aliases = [a.get("name") for a in root.iterfind("devices/*/alias")]
    assert len(aliases) == len(set(aliases))
    assert {a.removeprefix(cfg.ALIAS_PREFIX) for a in aliases if not a.endswith("-video")} == ids - {spec.graphics.id}
    for tag in ("disk", "interface", "channel", "memballoon", "console", "serial"):
        for elem in root.iterfind(f"devices/{tag}"):
            assert elem.find("alias") is not None, f"<{tag}> without a user alias"
    assert root.find(".//address") is None, "Corral never asks for an address"
    meta = the(root, "metadata/corral:vm")
    assert meta.get("format") == str(SPEC_FORMAT_VERSION) and meta.get("guest-type") == gt.value
    assert json.loads(the(meta, "corral:spec").text)["id"] == spec.id == root.findtext("uuid")

    # libxl's live XML: no alias, no address, no driver; NICs gain <target dev='vifD.N'/>
    live = parse(strip(xml, "alias", "address", "driver"))
    for n, iface in enumerate(live.iterfind("devices/interface")):
        etree.SubElement(iface, "target", dev=f"vif7.{n}")
    with_meta = etree.tostring(live, encoding="unicode")
    meta_elem = live.find("metadata")
    live.remove(meta_elem)
    without_meta = etree.tostring(live, encoding="unicode")
    assert read_devices(without_meta)[0].device_id is None, "a foreign domain has no identities"
    for found in (read_devices(with_meta), read_devices(without_meta, spec)):
        by_id = {ld.device_id: ld for ld in found if ld.device_id}
        assert set(by_id) == ids
        for d in spec.disks:
            assert by_id[d.id].matched_by == "target"
        for n in spec.nics:
            assert by_id[n.id].matched_by == "mac" and by_id[n.id].config.target_dev.startswith("vif7.")
        for d in (*spec.consoles, spec.graphics, spec.guest_agent, spec.balloon):
            assert by_id[d.id].matched_by == "order"

    # a disk whose target changed is still found by its source path
    moved = xml.replace("xvda" if gt is PV else "hda", "xvdz" if gt is PV else "hdz")
    moved_found = {ld.device_id: ld for ld in read_devices(strip(moved, "alias"))}
    assert moved_found[spec.disks[0].id].matched_by == "source"

    decisions = plan(spec, XEN, gt)
    assert not refused_paths(decisions)
    device_paths = [*(f"disks.{i}" for i in range(4)), "nics.0", "nics.1",
                    *(f"consoles.{i}" for i in range(len(consoles))), "graphics", "guest_agent", "balloon"]
    for path in device_paths:
        assert any(d.path == path or d.path.startswith(f"{path}.") for d in decisions), f"no decision for {path}"


# --- D2 --------------------------------------------------------------------------------------------------------


@XEN_TYPES
def test_D2_agent_channel_is_xen_channel(gt: GuestType) -> None:
    spec = make(guest_agent={})
    root, _ = rendered(spec, XEN, gt, RenderOptions(channel_dir="/run/corral/ch"))
    channel = the(root, "devices/channel")
    assert channel.get("type") == "unix"
    assert the(channel, "source").attrib == {"mode": "bind", "path": f"/run/corral/ch/{spec.id}.agent"}
    assert the(channel, "target").attrib == {"type": "xen", "name": AGENT_CHANNEL}
    assert root.find("devices/controller[@type='virtio-serial']") is None
    d = decision(plan(spec, XEN, gt), "guest_agent")
    assert d.outcome is Outcome.TRANSLATED and "-> xen" in d.detail and "[D2]" in d.detail

    kvm_root, _ = rendered(spec, KVM)
    assert the(kvm_root, "devices/channel/target").get("type") == "virtio"
    assert decision(plan(spec, KVM), "guest_agent").outcome is Outcome.NATIVE


# --- D3 --------------------------------------------------------------------------------------------------------


@XEN_TYPES
def test_D3_balloon_model_xen_and_hvm_current_memory(gt: GuestType) -> None:
    spec = make(memory_mib=1024, max_memory_mib=2048, balloon={})
    root, _ = rendered(spec, XEN, gt)
    assert [b.get("model") for b in root.iterfind("devices/memballoon")] == ["xen"]
    decisions = plan(spec, XEN, gt)
    assert decision(decisions, "balloon").outcome is Outcome.TRANSLATED
    assert the(root, "memory").text == str(2048 * 1024) and the(root, "memory").get("unit") == "KiB"
    headroom = decision(decisions, "max_memory_mib")
    if gt is HVM:  # below max an HVM guest would run populate-on-demand: start at max, balloon down later
        assert the(root, "currentMemory").text == the(root, "memory").text
        assert headroom.outcome is Outcome.TRANSLATED and "-> at-max-then-balloon" in headroom.detail
    else:
        assert the(root, "currentMemory").text == str(1024 * 1024)
        assert headroom.outcome is Outcome.NATIVE

    kvm_root, _ = rendered(spec, KVM)
    assert the(kvm_root, "devices/memballoon").get("model") == "virtio"
    assert the(kvm_root, "currentMemory").text == str(1024 * 1024)


# --- D4 --------------------------------------------------------------------------------------------------------


@needs_validator
@XEN_TYPES
def test_D4_virtio_disk_and_nic_translated(gt: GuestType) -> None:
    spec = make(disks=[disk(bus="virtio"), disk("/srv/vm/b.img", bus="virtio")], nics=[nic(model="virtio")])
    xml = render(spec, XEN, gt)
    assert_schema_valid(xml)
    root = parse(xml)
    pv = gt is not HVM
    assert [(t.get("dev"), t.get("bus")) for t in root.iterfind("devices/disk/target")] == (
        [("xvda", "xen"), ("xvdb", "xen")] if pv else [("hda", "ide"), ("hdb", "ide")])
    assert the(root, "devices/interface/model").get("type") == ("netfront" if pv else "e1000")
    decisions = plan(spec, XEN, gt)
    for path, becomes in (("disks.0.bus", "xen" if pv else "ide"), ("disks.1.bus", "xen" if pv else "ide"),
                          ("nics.0.model", "netfront" if pv else "e1000")):
        d = decision(decisions, path)
        assert d.outcome is Outcome.TRANSLATED and d.detail.startswith(f"virtio -> {becomes}") and "[D4]" in d.detail


# --- D5 --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("gt", [PV, PVH], ids=lambda g: g.value)
def test_D5_spice_refused_on_pv_counted_on_hvm(gt: GuestType) -> None:
    assert parse_spec({"name": "x", "memory_mib": 512, "graphics": {}}).graphics.type is GraphicsType.VNC
    spice = make(graphics={"type": "spice"})
    err, decisions = refusal(spice, XEN, gt)
    assert [d.path for d in err.decisions] == ["graphics.type"]
    assert refused_paths(decisions) == {"graphics.type"}

    # on HVM: rendered, and QXL's video RAM counts against the guest's memory
    minimum, (model, vram) = XEN.min_memory_mib[HVM], XEN.video["spice"]
    root, _ = rendered(make(memory_mib=minimum + vram, graphics={"type": "spice"}), XEN, HVM)
    assert the(root, "devices/graphics").get("type") == "spice"
    assert the(root, "devices/video/model").attrib["type"] == model
    assert the(root, "devices/video/model").get("vram") == str(vram * 1024)
    too_small = make(memory_mib=minimum + vram - 1, graphics={"type": "spice"})
    err, decisions = refusal(too_small, XEN, HVM)
    assert [d.path for d in err.decisions] == ["memory_mib"]
    assert f"{vram} MiB of it video RAM" in decision(decisions, "memory_mib").detail
    vnc_vram = XEN.video["vnc"][1]
    assert vnc_vram < vram and not refused_paths(plan(make(memory_mib=minimum + vram - 1, graphics={}), XEN, HVM))


# --- L1 --------------------------------------------------------------------------------------------------------


@needs_validator
@XEN_TYPES
def test_L1_qcow2_driver_name_always_rendered(gt: GuestType) -> None:
    spec = make(disks=[disk("/srv/vm/a.qcow2", format="qcow2"), disk("/srv/vm/b.img"),
                       disk("/dev/vg0/c", source_type="block"),
                       disk("/dev/vg0/d", source_type="block", format="qcow2")])
    xml = render(spec, XEN, gt)
    assert_schema_valid(xml)
    drivers = [the(d, "driver").attrib for d in parse(xml).iterfind("devices/disk")]
    assert drivers == [{"name": "qemu", "type": "qcow2"}, {"name": "qemu", "type": "raw"},
                       {"name": "phy", "type": "raw"}, {"name": "qemu", "type": "qcow2"}]
    decisions = plan(spec, XEN, gt)
    for path in ("disks.0.format", "disks.3.format"):
        d = decision(decisions, path)
        assert d.outcome is Outcome.NATIVE and "qemu" in d.detail and "[L1]" in d.detail


# --- L4 --------------------------------------------------------------------------------------------------------


def test_L4_boot_order_as_os_boot_dev() -> None:
    spec = make(kernel=None, boot=["cdrom", "hd"], disks=[disk(None, device="cdrom"), disk()])
    root, _ = rendered(spec, XEN, HVM)
    assert [b.get("dev") for b in root.iterfind("os/boot")] == ["cdrom", "hd"]
    assert root.find("devices//boot") is None, "libxl ignores per-device boot order"
    d = decision(plan(spec, XEN, HVM), "boot")
    assert d.outcome is Outcome.NATIVE and "[L4]" in d.detail

    pv = make(kernel=None, bootloader="pygrub", boot=["cdrom", "hd"], disks=[disk()])
    pv_root, _ = rendered(pv, XEN, PV)
    assert pv_root.find("os/boot") is None and pv_root.findtext("bootloader") == "pygrub"
    assert decision(plan(pv, XEN, PV), "boot").outcome is Outcome.TRANSLATED


# --- L5 --------------------------------------------------------------------------------------------------------


@needs_validator
@pytest.mark.parametrize("flavor_gt", [(XEN, PV), (XEN, PVH), (XEN, HVM), (KVM, None)],
                         ids=["xen-pv", "xen-pvh", "xen-hvm", "kvm"])
def test_L5_empty_cdrom_has_no_source(flavor_gt: tuple[Any, GuestType | None]) -> None:
    flavor, gt = flavor_gt
    spec = make(disks=[disk(None, device="cdrom"), disk("/srv/iso/debian.iso", device="cdrom"), disk()])
    xml, res = render_resolution(spec, flavor, gt)
    assert_schema_valid(xml)
    assert 'file=""' not in xml and "file=''" not in xml and 'dev=""' not in xml
    elems = {a.get("name"): a.getparent() for a in parse(xml).iterfind("devices/disk/alias")}
    empty, full = elems.get(f"ua-{spec.disks[0].id}"), elems[f"ua-{spec.disks[1].id}"]
    assert the(full, "source").get("file") == "/srv/iso/debian.iso" and full.find("readonly") is not None
    d = decision(res.decisions, "disks.0.source")
    assert d.feature == "cdrom.empty"
    if empty is None:  # not rendered at all (a PV guest's drive comes with its media): the plan says so
        assert d.outcome is Outcome.TRANSLATED
    else:
        assert d.outcome is Outcome.NATIVE
        assert empty.get("device") == "cdrom" and empty.find("source") is None and empty.find("readonly") is not None
    if flavor is XEN and gt is HVM:
        assert empty is not None, "an HVM guest keeps its empty IDE CD-ROM drive"
    with pytest.raises(SpecError) as info:
        make(disks=[disk("", device="cdrom")])
    assert info.value.field == "disks.0.source"


# --- L8 --------------------------------------------------------------------------------------------------------


@XEN_TYPES
def test_L8_on_crash_preserve_refused_on_xen(gt: GuestType) -> None:
    err, decisions = refusal(make(on_crash="preserve"), XEN, gt)
    assert [d.path for d in err.decisions] == ["on_crash"] and "[L8]" in str(err)
    assert refused_paths(decisions) == {"on_crash"}
    for action in ("coredump-destroy", "coredump-restart", "destroy", "restart"):
        root, _ = rendered(make(on_crash=action), XEN, gt)
        assert root.findtext("on_crash") == action
    kvm_root, _ = rendered(make(on_crash="preserve"), KVM)
    assert kvm_root.findtext("on_crash") == "preserve"


# --- L9 --------------------------------------------------------------------------------------------------------


@XEN_TYPES
def test_L9_floppy_refused_on_xen(gt: GuestType) -> None:
    spec = make(disks=[disk(), disk("/srv/vm/boot.img", device="floppy")])
    err, decisions = refusal(spec, XEN, gt)
    assert [d.path for d in err.decisions] == ["disks.1.device"]
    assert "floppy" in str(err) and "[L9]" in str(err)
    assert refused_paths(decisions) == {"disks.1.device"}
    kvm_root, _ = rendered(spec, KVM)
    assert the(kvm_root, "devices/disk[@device='floppy']/target").attrib == {"dev": "fda", "bus": "fdc"}


# --- L10 -------------------------------------------------------------------------------------------------------


@XEN_TYPES
def test_L10_filterref_refused_on_xen(gt: GuestType) -> None:
    spec = make(nics=[nic(), nic(filter="clean-traffic")])
    err, decisions = refusal(spec, XEN, gt)
    assert [d.path for d in err.decisions] == ["nics.1.filter"] and "[L10]" in str(err)
    assert refused_paths(decisions) == {"nics.1.filter"}
    kvm_root, _ = rendered(spec, KVM)
    assert [f.get("filter") for f in kvm_root.iterfind("devices/interface/filterref")] == ["clean-traffic"]


# --- L11 -------------------------------------------------------------------------------------------------------


@XEN_TYPES
def test_L11_link_down_emulated_by_agent_on_xen(gt: GuestType) -> None:
    spec = make(nics=[nic(), nic(link="down"), nic(link="down")])
    root, res = rendered(spec, XEN, gt)
    assert res.nic_link_down == [spec.nics[1].id, spec.nics[2].id]
    assert root.find("devices/interface/link") is None
    decisions = plan(spec, XEN, gt)
    for i in (1, 2):
        d = decision(decisions, f"nics.{i}.link")
        assert d.outcome is Outcome.TRANSLATED and "-> agent" in d.detail and "[L11]" in d.detail
    assert not [d for d in decisions if d.path == "nics.0.link"]

    kvm_root, kvm_res = rendered(spec, KVM)
    assert kvm_res.nic_link_down == []
    assert [lk.get("state") for lk in kvm_root.iterfind("devices/interface/link")] == ["down", "down"]


# --- L12 -------------------------------------------------------------------------------------------------------


@XEN_TYPES
def test_L12_vnc_password_not_rendered_on_xen_plan_says_proxy(gt: GuestType) -> None:
    secret = "Zq7sEcr8"
    spec = make(graphics={"password": secret})
    xml = render(spec, XEN, gt)
    root = parse(xml)
    assert the(root, "devices/graphics").get("passwd") is None
    assert secret not in xml, "the password appears somewhere in the Xen domain XML"
    assert the(root, "metadata/corral:vm").get("graphics-password") == "set"
    d = decision(plan(spec, XEN, gt), "graphics.password")
    assert d.outcome is Outcome.TRANSLATED and "-> relay" in d.detail and "[L12]" in d.detail

    kvm_xml = render(spec, KVM)
    assert the(parse(kvm_xml), "devices/graphics").get("passwd") == secret
    assert kvm_xml.count(secret) == 1, "the password leaked into <metadata>"


@XEN_TYPES
@pytest.mark.parametrize("password", ["Zq7sEcr8", None])
@pytest.mark.parametrize("listen", ["0.0.0.0", "192.0.2.7", "::", None])
def test_L12_a_xen_console_never_listens_on_the_network(gt: GuestType, listen: str | None,
                                                        password: str | None) -> None:
    """Issues 15 and 14: the password was dropped while a public listen was rendered as asked (an open VNC).
    On Xen a console listens on dom0's loopback, relayed by the agent; a network address is refused by name,
    with or without a password (none can be rendered)."""
    spec = make(graphics={**({"password": password} if password else {}), **({"listen": listen} if listen else {})})
    if listen is None:  # the spec's default listen is loopback
        root = parse(render(spec, XEN, gt))
        assert [e.get("address") for e in root.findall("devices/graphics/listen")] == ["127.0.0.1"]
        d = decision(plan(spec, XEN, gt), "graphics.listen")
        assert d.outcome is Outcome.NATIVE and "relay" in d.detail
        return
    with pytest.raises(RefusedError) as refused:
        render(spec, XEN, gt)
    assert refused.value.field == "graphics.listen"
    d = decision(plan(spec, XEN, gt), "graphics.listen")
    assert d.outcome is Outcome.REFUSED and "[L12]" in d.detail and "loopback" in d.detail


@pytest.mark.parametrize("listen", ["0.0.0.0", "192.0.2.7", "::"])
def test_a_kvm_console_on_the_network_needs_a_password(listen: str) -> None:
    """KVM renders a VNC password (kept as defence in depth behind the relay): a network address is rendered
    only with one; without, refused by name. Loopback addresses need none."""
    open_spec = make(graphics={"listen": listen})
    with pytest.raises(RefusedError) as refused:
        render(open_spec, KVM)
    assert refused.value.field == "graphics.listen" and "without a password" in str(refused.value)
    root = parse(render(make(graphics={"listen": listen, "password": "Zq7sEcr8"}), KVM))
    assert the(root, "devices/graphics").get("passwd") == "Zq7sEcr8"
    assert the(root, "devices/graphics/listen").get("address") == listen
    for loopback in ("127.0.0.1", "::1"):
        root = parse(render(make(graphics={"listen": loopback}), KVM))
        assert the(root, "devices/graphics/listen").get("address") == loopback


# --- L13 -------------------------------------------------------------------------------------------------------


@needs_validator
@XEN_TYPES
@pytest.mark.parametrize("listen", [None, "127.0.0.1", "::1"])  # network addresses are refused [L12]
def test_L13_explicit_vnc_listen(gt: GuestType, listen: str | None) -> None:
    spec = make(graphics={} if listen is None else {"listen": listen})
    xml = render(spec, XEN, gt)
    assert_schema_valid(xml)
    graphics = the(parse(xml), "devices/graphics")
    address = listen or spec.graphics.listen
    assert address == (listen or "127.0.0.1")
    assert graphics.get("listen") is None  # written once, as the <listen> libvirt documents (issue 15)
    assert the(graphics, "listen").attrib == {"type": "address", "address": address}
    d = decision(plan(spec, XEN, gt), "graphics.listen")
    assert d.outcome is Outcome.NATIVE and address in d.detail and "[L13]" in d.detail


# --- X1 --------------------------------------------------------------------------------------------------------


@XEN_TYPES
def test_X1_minimum_memory_counts_video_ram(gt: GuestType) -> None:
    minimum = XEN.min_memory_mib[gt]
    video = XEN.video["vnc"][1] if gt is HVM else 0  # PV/PVH have no emulated display
    for graphics in (None, {}):
        need = minimum + (video if graphics is not None else 0)
        root, _ = rendered(make(memory_mib=need, graphics=graphics), XEN, gt)
        assert root.findtext("memory") == str(need * 1024)
        err, decisions = refusal(make(memory_mib=need - 1, graphics=graphics), XEN, gt)
        assert [d.path for d in err.decisions] == ["memory_mib"]
        detail = decision(decisions, "memory_mib").detail
        assert f"{need} MiB minimum" in detail and gt.value in detail
        assert ("video RAM" in detail) == (gt is HVM and graphics is not None)


# --- X2 --------------------------------------------------------------------------------------------------------


@XEN_TYPES
def test_X2_max_vcpus_capped_and_hotplug(gt: GuestType) -> None:
    cap = XEN.max_vcpus[gt]
    if gt is not PV:
        assert cap <= 128, "xen-gaps.md X2: at most 128 vCPUs for HVM and PVH guests"
    root, _ = rendered(make(vcpus=1, max_vcpus=cap), XEN, gt)
    assert the(root, "vcpu").text == str(cap) and the(root, "vcpu").get("current") == "1"
    err, decisions = refusal(make(vcpus=1, max_vcpus=cap + 1), XEN, gt)
    assert [d.path for d in err.decisions] == ["max_vcpus"]
    assert str(cap) in decision(decisions, "max_vcpus", "vcpus.maximum").detail
    err, _ = refusal(make(vcpus=cap + 1), XEN, gt)
    assert [d.path for d in err.decisions] == ["vcpus"]

    # the host's CPUs cap it further
    with pytest.raises(RefusedError) as info:
        render(make(vcpus=2, max_vcpus=5), XEN, gt, RenderOptions(host_cpus=4))
    assert [d.path for d in info.value.decisions] == ["max_vcpus"] and "4 CPUs" in str(info.value)

    # hot-plug within the maximum: <vcpu current='2'>4</vcpu>
    spec = make(vcpus=2, max_vcpus=4)
    root, _ = rendered(spec, XEN, gt, RenderOptions(host_cpus=4))
    vcpu = the(root, "vcpu")
    assert (vcpu.text, vcpu.get("current")) == ("4", "2")
    d = decision(plan(spec, XEN, gt), "max_vcpus")
    assert d.outcome is Outcome.NATIVE and d.feature == "vcpus.hotplug" and "[X2]" in d.detail


def test_hvm_cdroms_take_the_qdisk_backend_on_xen() -> None:
    """Issue 20 item 3: an empty HVM CD-ROM of type block was rendered on phy; libxl refused to start it."""
    spec = make(boot=["hd"], disks=[{"device": "cdrom", "source_type": "block"},
                                    {"device": "cdrom", "source": "/dev/sr0", "source_type": "block"},
                                    {"device": "cdrom", "source": "/isos/a.iso"},
                                    {"source": "/dev/vg/disk", "source_type": "block"}])
    root = parse(render(spec, XEN, HVM))
    drivers = [(d.get("device"), d.find("driver").get("name")) for d in root.findall("devices/disk")]
    assert drivers == [("cdrom", "qemu"), ("cdrom", "qemu"), ("cdrom", "qemu"), ("disk", "phy")]
    d = decision(plan(spec, XEN, HVM), "disks.0.driver")
    assert d.outcome is Outcome.TRANSLATED and "phy -> qemu" in d.detail and "Qdisk" in d.detail
    # a PV CD-ROM is a PV disk: its own driver; KVM: always qemu
    pv = parse(render(make(kernel="/k", disks=[{"device": "cdrom", "source": "/dev/sr0", "source_type": "block"}]),
                      XEN, PV))
    assert the(pv, "devices/disk/driver").get("name") == "phy"
