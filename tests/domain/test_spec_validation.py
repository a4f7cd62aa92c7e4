"""VmSpec validation: every invalid value is refused by parse_spec with the path of the offending field."""

from __future__ import annotations

from typing import Any

import pytest

from corral.domain.spec import SpecError, VmSpec, parse_spec

DISK = "7f0c1d3e-5a7b-4c2d-9e1f-0a1b2c3d4e5f"
NIC = "1b2c3d4e-5f60-4718-8293-a4b5c6d7e8f9"


def base(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"name": "vm1", "memory_mib": 512}
    data.update(changes)
    return {k: v for k, v in data.items() if v is not ...}


def disk(**changes: Any) -> dict[str, Any]:
    return {"source": "/var/lib/images/a.img", **changes}


def nic(**changes: Any) -> dict[str, Any]:
    return {"source": "br0", **changes}


INVALID = [
    # name
    ("name-empty", base(name=""), "name"),
    ("name-space", base(name="my vm"), "name"),
    ("name-slash", base(name="a/b"), "name"),
    ("name-too-long", base(name="a" * 65), "name"),
    ("name-missing", base(name=...), "name"),
    ("name-trailing-newline", base(name="vm1\n"), "name"),
    # memory and vCPUs
    ("memory-zero", base(memory_mib=0), "memory_mib"),
    ("memory-negative", base(memory_mib=-512), "memory_mib"),
    ("memory-text", base(memory_mib="lots"), "memory_mib"),
    ("memory-missing", base(memory_mib=...), "memory_mib"),
    ("memory-too-big", base(memory_mib=16 * 1024 * 1024 + 1), "memory_mib"),
    ("max-memory-below-memory", base(max_memory_mib=256), "max_memory_mib"),
    ("vcpus-zero", base(vcpus=0), "vcpus"),
    ("max-vcpus-below-vcpus", base(vcpus=4, max_vcpus=2), "max_vcpus"),
    # guest type and boot
    ("guest-type", base(guest_type="paravirt"), "guest_type"),
    ("boot-repeated", base(boot=["hd", "hd"]), "boot"),
    ("boot-unknown", base(boot=["hd", "floppy"]), "boot.1"),
    ("kernel-relative", base(kernel="boot/vmlinuz"), "kernel"),
    ("initrd-relative", base(kernel="/boot/vmlinuz", initrd="initrd.img"), "initrd"),
    ("initrd-without-kernel", base(initrd="/boot/initrd.img"), "initrd"),
    ("cmdline-without-kernel", base(cmdline="console=hvc0"), "cmdline"),
    ("kernel-and-bootloader", base(kernel="/boot/vmlinuz", bootloader="pygrub"), "bootloader"),
    ("bootloader-not-a-path", base(bootloader="py grub"), "bootloader"),
    ("kernel-control-char", base(kernel="/boot/vm\x1blinuz"), "kernel"),
    ("kernel-root", base(kernel="/"), "kernel"),
    ("kernel-newline", base(kernel="/boot/vmlinuz\n"), "kernel"),
    ("initrd-carriage-return", base(kernel="/boot/vmlinuz", initrd="/boot/init\rrd"), "initrd"),
    ("bootloader-trailing-newline", base(bootloader="pygrub\n"), "bootloader"),
    ("cmdline-control-char", base(kernel="/boot/vmlinuz", cmdline="console=\x07"), "cmdline"),
    ("description-too-long", base(description="x" * 4097), "description"),
    ("description-control-char", base(description="tab ok, bell not\x07"), "description"),
    ("description-noncharacter", base(description="\ufffe"), "description"),
    # CPU
    ("cpu-custom-without-model", base(cpu={"mode": "custom"}), "cpu.model"),
    ("cpu-model-without-custom", base(cpu={"mode": "host-model", "model": "Haswell"}), "cpu.model"),
    ("cpu-mode", base(cpu={"mode": "emulated"}), "cpu.mode"),
    ("cpu-feature-name", base(cpu={"features": [{"name": "AVX!"}]}), "cpu.features.0.name"),
    ("cpu-feature-policy", base(cpu={"features": [{"name": "avx", "policy": "optional"}]}),
     "cpu.features.0.policy"),
    # disks
    ("disk-source-relative", base(disks=[disk(source="images/a.img")]), "disks.0.source"),
    ("disk-source-empty-string", base(disks=[disk(source="")]), "disks.0.source"),
    ("disk-source-root", base(disks=[disk(source="/")]), "disks.0.source"),
    ("disk-source-control-char", base(disks=[disk(source="/a\x01.img")]), "disks.0.source"),
    ("disk-source-newline", base(disks=[disk(source="/a\n.img")]), "disks.0.source"),
    ("disk-source-carriage-return", base(disks=[disk(source="/a.img\r")]), "disks.0.source"),
    ("disk-without-source", base(disks=[disk(), {"device": "disk"}]), "disks.1.source"),
    ("floppy-without-source", base(disks=[{"device": "floppy", "source": None}]), "disks.0.source"),
    ("disk-format", base(disks=[disk(format="vmdk")]), "disks.0.format"),
    ("disk-bus", base(disks=[disk(bus="usb")]), "disks.0.bus"),
    ("disk-device", base(disks=[disk(device="lun")]), "disks.0.device"),
    ("disk-source-type", base(disks=[disk(source_type="network")]), "disks.0.source_type"),
    ("disk-id-not-uuid", base(disks=[disk(id="disk-1")]), "disks.0.id"),
    ("disk-unknown-field", base(disks=[disk(cache="none")]), "disks.0.cache"),
    # NICs
    ("mac-not-hex", base(nics=[nic(mac="00:16:3e:zz:00:01")]), "nics.0.mac"),
    ("mac-short", base(nics=[nic(mac="00:16:3e:00:01")]), "nics.0.mac"),
    ("mac-no-colons", base(nics=[nic(mac="00163e000001")]), "nics.0.mac"),
    ("mac-trailing-newline", base(nics=[nic(mac="00:16:3e:00:00:01\n")]), "nics.0.mac"),
    ("mac-multicast", base(nics=[nic(mac="01:00:5e:00:00:01")]), "nics.0.mac"),
    ("mac-repeated", base(nics=[nic(mac="00:16:3e:00:00:01"), nic(mac="00:16:3E:00:00:01")]), "nics.1.mac"),
    ("nic-source-missing", base(nics=[{"model": "virtio"}]), "nics.0.source"),
    ("bridge-name-too-long", base(nics=[nic(source="br-far-too-long-name")]), "nics.0.source"),
    ("bridge-name-trailing-newline", base(nics=[nic(source="br0\n")]), "nics.0.source"),
    ("network-name-invalid", base(nics=[nic(source_type="network", source="my net")]), "nics.0.source"),
    ("nic-model", base(nics=[nic(model="ne2k_pci")]), "nics.0.model"),
    ("nic-link", base(nics=[nic(link="sideways")]), "nics.0.link"),
    ("nic-filter", base(nics=[nic(filter="clean traffic")]), "nics.0.filter"),
    ("nic-filter-not-a-name", base(nics=[nic(filter="1-no-ip-spoofing")]), "nics.0.filter"),
    # graphics and consoles
    ("graphics-type", base(graphics={"type": "sdl"}), "graphics.type"),
    ("graphics-password-too-long", base(graphics={"password": "123456789"}), "graphics.password"),
    ("graphics-password-empty", base(graphics={"password": ""}), "graphics.password"),
    ("graphics-password-control-char", base(graphics={"password": "ab\x01"}), "graphics.password"),
    ("graphics-listen-name", base(graphics={"listen": "localhost"}), "graphics.listen"),
    ("graphics-listen-not-an-address", base(graphics={"listen": "::::"}), "graphics.listen"),
    ("graphics-listen-short-ipv4", base(graphics={"listen": "10.1"}), "graphics.listen"),
    ("console-kind", base(consoles=[{"kind": "parallel"}]), "consoles.0.kind"),
    # lifecycle
    ("coredump-on-poweroff", base(on_poweroff="coredump-restart"), "on_poweroff"),
    ("coredump-on-reboot", base(on_reboot="coredump-destroy"), "on_reboot"),
    ("on-crash-unknown", base(on_crash="explode"), "on_crash"),
    ("device-model-policy", base(on_device_model_lost="ignore"), "on_device_model_lost"),
    # identities and format
    ("device-ids-repeated", base(disks=[disk(id=DISK)], nics=[nic(id=DISK)]), "nics.0.id"),
    ("device-ids-repeated-single", base(consoles=[{"id": NIC}], balloon={"id": NIC}), "balloon.id"),
    ("spec-id", base(id="vm-1"), "id"),
    ("format-version", base(format_version=2), "format_version"),
    ("unknown-field", base(colour="blue"), "colour"),
]


@pytest.mark.parametrize(("data", "path"), [pytest.param(d, p, id=i) for i, d, p in INVALID])
def test_invalid_value_is_refused_with_its_field_path(data: dict[str, Any], path: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_spec(data)
    err = info.value
    paths = [p for p, _ in err.errors]
    assert path in paths, f"expected an error at {path}, got {err.errors}"
    assert all(p for p in paths), f"an error without a field path: {err.errors}"
    assert f"{path}: " in str(err)
    assert err.field == paths[0]


@pytest.mark.parametrize("data", [None, [], "vm1", 42])
def test_non_mapping_input_is_refused(data: Any) -> None:
    with pytest.raises(SpecError):
        parse_spec(data)


def test_several_invalid_fields_are_all_reported() -> None:
    with pytest.raises(SpecError) as info:
        parse_spec(base(name="", memory_mib=0, disks=[disk(source="rel")], nics=[nic(mac="zz")]))
    paths = {p for p, _ in info.value.errors}
    assert {"name", "memory_mib", "disks.0.source", "nics.0.mac"} <= paths


def test_accepted_edge_values() -> None:
    spec = parse_spec(base(
        name="A" * 60 + "._-9", memory_mib=16 * 1024 * 1024, vcpus=4096,
        description="tab\tand newline\n and ünïcödé ✓",
        disks=[{"device": "cdrom"}, disk(source="/srv/my images/ä.qcow2", format="qcow2")],
        nics=[nic(mac="00:16:3E:AB:CD:EF"), nic(source_type="network", source="default", filter="_x.y-z")],
        graphics={"listen": "::1", "password": "s3cr3t!"},
        kernel="/boot/vmlinuz", initrd="/boot/initrd.img", cmdline="root=/dev/xvda1 console=hvc0",
        on_crash="coredump-restart", boot=["cdrom", "hd", "network"]))
    assert isinstance(spec, VmSpec)
    assert spec.disks[0].source is None and spec.disks[0].readonly, "an empty CD-ROM is read-only"
    assert spec.nics[0].mac == "00:16:3e:ab:cd:ef", "MACs are normalised to lower case"
    # 2 disks, 2 NICs, graphics, and the defaults: one serial console, one balloon
    assert len({d.id for d in spec.devices()}) == len(spec.devices()) == 7
    again = parse_spec(spec.model_dump(mode="json"))
    assert again == spec, "a dumped spec parses back to itself"


def test_graphics_listen_accepts_ipv4_and_ipv6() -> None:
    for address in ("0.0.0.0", "192.0.2.10", "::", "fe80::1", "2001:db8::8:800:200c:417a"):
        assert parse_spec(base(graphics={"listen": address})).graphics is not None
