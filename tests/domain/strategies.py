"""Hypothesis strategies for VmSpecs, as JSON-like dicts (what the CLI and the APIs receive).

``vm_specs()`` draws anything the spec accepts: every bus, device, format, NIC model, graphics type,
console kind, CPU mode, lifecycle action, memory and vCPU counts up to the spec's own bounds, text with any
character XML can carry. ``Limits`` narrows the draw to what a flavor is documented to run (xen-gaps.md,
the issue), so a second property can demand that such specs always render.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st

from corral.domain.spec import (
    BootDevice,
    ConsoleKind,
    CpuMode,
    DiskBus,
    DiskDevice,
    DiskFormat,
    DiskSource,
    FeaturePolicy,
    GraphicsType,
    GuestType,
    LifecycleAction,
    LinkState,
    NicModel,
    NicSource,
)

# Characters XML 1.0 can carry (of the C0 controls only tab, CR and LF; no surrogates, no U+FFFE/U+FFFF);
# paths take any of them but CR and LF (libvirt's schema takes a path as one line).
_PRINTABLE = st.characters(exclude_categories=("Cs", "Cc"), exclude_characters="\ufffe\uffff")
_XML_CHAR = _PRINTABLE | st.sampled_from("\t\n\r")
_PATH_CHAR = _PRINTABLE | st.just("\t")

NAMES = st.from_regex(r"[A-Za-z0-9._-]{1,64}", fullmatch=True).filter(lambda n: n != "test")  # test driver's own
ABS_PATHS = st.builds(lambda s: "/" + s, st.text(_PATH_CHAR, min_size=1, max_size=40))
# Disks may share a source (the same ISO twice): draw from a small pool often enough to make that common.
DISK_PATHS = st.one_of(ABS_PATHS, st.sampled_from(["/srv/iso/shared.iso", "/var/lib/images/a.img"]))
BLOCK_PATHS = st.builds(lambda s: "/dev/" + s, st.from_regex(r"[a-z][a-z0-9/_-]{0,20}", fullmatch=True))
BRIDGES = st.from_regex(r"[A-Za-z0-9._:-]{1,15}", fullmatch=True)
NETWORKS = st.from_regex(r"[A-Za-z0-9._-]{1,64}", fullmatch=True)
FILTERS = st.from_regex(r"[A-Za-z_][A-Za-z0-9._-]{0,63}", fullmatch=True)
CPU_MODELS = st.from_regex(r"[A-Za-z0-9_.-]{1,64}", fullmatch=True)
CPU_FEATURES = st.from_regex(r"[a-z0-9_.-]{1,40}", fullmatch=True)
LISTEN = st.ip_addresses().map(str)
LOOPBACK_LISTEN = st.sampled_from(["127.0.0.1", "127.0.0.53", "::1"])
PASSWORDS = st.text(_XML_CHAR, min_size=1, max_size=8)
FREE_TEXT = st.text(_XML_CHAR, max_size=200)


@st.composite
def macs(draw: st.DrawFn) -> str:
    octets = draw(st.lists(st.integers(0, 255), min_size=6, max_size=6))
    octets[0] &= 0xFE  # unicast
    text = ":".join(f"{o:02x}" for o in octets)
    return text.upper() if draw(st.booleans()) else text


@dataclass(frozen=True)
class Limits:
    """What a flavor runs, per the gap table; the defaults allow everything the spec accepts."""

    guest_types: tuple[GuestType, ...] = tuple(GuestType)
    floppy: bool = True
    readonly_file_disk: bool = True  # a read-only disk (not a CD-ROM) on a file
    readonly_block_disk: bool = True  # a read-only disk (not a CD-ROM) on a block device
    nic_filter: bool = True
    crash_preserve: bool = True
    cpu_custom: bool = True
    cpu_features: bool = True
    spice: bool = True
    public_console: bool = True  # a console on a network address, with a password (issue 14: never without)
    bootloader: bool = True
    needs_kernel_or_bootloader: bool = False
    max_consoles: int = 4
    pv_consoles: int = 4
    max_disks: int = 6
    min_memory_mib: int = 1
    max_memory_mib: int = 16 * 1024 * 1024
    max_vcpus: int = 4096


@st.composite
def vm_specs(draw: st.DrawFn, limits: Limits = Limits()) -> dict[str, Any]:
    lim = limits
    n_disks = draw(st.integers(0, lim.max_disks))
    n_nics = draw(st.integers(0, 4))
    consoles = draw(st.lists(st.sampled_from(ConsoleKind), max_size=lim.max_consoles))
    while consoles.count(ConsoleKind.PV) > lim.pv_consoles:
        consoles.remove(ConsoleKind.PV)
    has = {k: draw(st.booleans()) for k in ("graphics", "agent", "balloon")}
    n_ids = n_disks + n_nics + len(consoles) + sum(has.values())
    ids = iter(str(u) for u in draw(st.lists(st.uuids(version=4), min_size=n_ids, max_size=n_ids, unique=True)))

    memory = draw(st.one_of(st.integers(lim.min_memory_mib, max(lim.min_memory_mib, 4096)),
                            st.integers(lim.min_memory_mib, lim.max_memory_mib)))
    vcpus = draw(st.one_of(st.integers(1, min(8, lim.max_vcpus)), st.integers(1, lim.max_vcpus)))
    spec: dict[str, Any] = {
        "id": str(draw(st.uuids(version=4))),
        "name": draw(NAMES),
        "description": draw(FREE_TEXT),
        "memory_mib": memory,
        "vcpus": vcpus,
        "guest_type": draw(st.sampled_from(lim.guest_types)).value,
        "boot": [b.value for b in draw(st.permutations(list(BootDevice)))[:draw(st.integers(0, 3))]],
    }
    if draw(st.booleans()):
        spec["max_memory_mib"] = draw(st.integers(memory, lim.max_memory_mib))
    if draw(st.booleans()):
        spec["max_vcpus"] = draw(st.integers(vcpus, lim.max_vcpus))

    boot = draw(st.sampled_from(["kernel", "bootloader", None] if lim.bootloader else ["kernel", None]))
    if lim.needs_kernel_or_bootloader and boot is None:
        boot = "kernel"
    if boot == "kernel":
        spec["kernel"] = draw(ABS_PATHS)
        if draw(st.booleans()):
            spec["initrd"] = draw(ABS_PATHS)
        if draw(st.booleans()):
            spec["cmdline"] = draw(st.text(_XML_CHAR, min_size=1, max_size=80))
    elif boot == "bootloader":
        spec["bootloader"] = draw(st.one_of(ABS_PATHS, st.from_regex(r"[A-Za-z0-9._-]{1,64}", fullmatch=True)))

    modes = [m for m in CpuMode if lim.cpu_custom or m is not CpuMode.CUSTOM]
    if draw(st.booleans()):
        mode = draw(st.sampled_from(modes))
        feats = draw(st.lists(CPU_FEATURES, max_size=3 if lim.cpu_features else 0, unique=True))
        spec["cpu"] = {"mode": mode.value, "model": draw(CPU_MODELS) if mode is CpuMode.CUSTOM else None,
                       "features": [{"name": f, "policy": draw(st.sampled_from(FeaturePolicy)).value}
                                    for f in feats]}

    devices = [d for d in DiskDevice if lim.floppy or d is not DiskDevice.FLOPPY]
    spec["disks"] = []
    for _ in range(n_disks):
        device = draw(st.sampled_from(devices))
        source_type = draw(st.sampled_from(DiskSource))
        empty = device is DiskDevice.CDROM and draw(st.booleans())
        source = None if empty else draw(BLOCK_PATHS if source_type is DiskSource.BLOCK else DISK_PATHS)
        spec["disks"].append({"id": next(ids), "device": device.value, "source_type": source_type.value,
                              "source": source, "format": draw(st.sampled_from(DiskFormat)).value,
                              "bus": draw(st.sampled_from(DiskBus)).value,
                              "readonly": draw(st.booleans()) if device is not DiskDevice.DISK or (
                                  lim.readonly_file_disk if source_type is DiskSource.FILE
                                  else lim.readonly_block_disk) else False})

    mac_list = draw(st.lists(macs(), min_size=n_nics, max_size=n_nics, unique_by=str.lower))
    spec["nics"] = []
    for i in range(n_nics):
        source_type = draw(st.sampled_from(NicSource))
        spec["nics"].append({
            "id": next(ids), "mac": mac_list[i] if draw(st.booleans()) else None,
            "source_type": source_type.value,
            "source": draw(BRIDGES if source_type is NicSource.BRIDGE else NETWORKS),
            "model": draw(st.sampled_from(NicModel)).value, "link": draw(st.sampled_from(LinkState)).value,
            "filter": draw(FILTERS) if lim.nic_filter and draw(st.booleans()) else None})

    spec["consoles"] = [{"id": next(ids), "kind": k.value} for k in consoles]
    if has["graphics"]:
        types = [g for g in GraphicsType if lim.spice or g is not GraphicsType.SPICE]
        gfx: dict[str, Any] = {"id": next(ids), "type": draw(st.sampled_from(types)).value,
                               "password": draw(st.none() | PASSWORDS)}
        if draw(st.booleans()):
            public = lim.public_console and gfx["password"] is not None
            gfx["listen"] = draw(LISTEN if public else LOOPBACK_LISTEN)
        spec["graphics"] = gfx
    spec["guest_agent"] = {"id": next(ids)} if has["agent"] else None
    spec["balloon"] = {"id": next(ids)} if has["balloon"] else None

    actions = list(LifecycleAction)
    plain = [a for a in actions if not a.value.startswith("coredump")]
    crash = [a for a in actions if lim.crash_preserve or a is not LifecycleAction.PRESERVE]
    spec["on_poweroff"] = draw(st.sampled_from(plain)).value
    spec["on_reboot"] = draw(st.sampled_from(plain)).value
    spec["on_crash"] = draw(st.sampled_from(crash)).value
    return spec
