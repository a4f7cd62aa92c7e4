"""Host profiles and VM spec templates: what the simulated hosts share, so each host and VM stays small.

A generated VM keeps no spec: its spec JSON is a template of its (flavor, guest type) with the VM's id, name,
size and device ids filled in. The device ids derive from the VM id (``derived_id``), the NIC MAC from the NIC
id (as the agent fills it, ``mac_for``). The JSON is exactly ``VmSpec.model_dump(mode="json")`` of that spec
(a test checks it), compact, in the model's field order.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from corral.domain.flavors import get_flavor
from corral.domain.flavors.base import Flavor
from corral.domain.matrix import flavor_matrix
from corral.domain.resolve import RenderOptions, mac_for, resolve
from corral.domain.spec import GuestType, parse_spec

STATE_DIR = "/var/lib/corral"
XEN_CONSOLE_DIR = "/var/log/xen/console"
SHARED_BRIDGE = "br0"


def compact(data: Any) -> str:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False)


def render_options(flavor: Flavor, cpus: int) -> RenderOptions:
    """The options a real (not emulated) agent of this flavor renders with (see ``VmManager.options``)."""
    console_dir = f"{STATE_DIR}/consoles" if flavor.name == "kvm" else None
    return RenderOptions(host_cpus=cpus, console_log_dir=console_dir, channel_dir=f"{STATE_DIR}/channels")


@dataclass(frozen=True)
class HostProfile:
    """What hosts of one kind share: the flavor, its matrix, versions, CPU family, bridges."""

    flavor: Flavor
    hypervisor: str
    accel: str | None
    uri: str
    driver: str  # libvirt getType()
    libvirt_version: str
    hypervisor_version: str
    cpu_model: str
    cpu_vendor: str
    cpu_flags: tuple[str, ...]
    bridges: tuple[str, ...]
    capabilities: dict[str, dict[str, dict[str, str | None]]]
    dom0_mib: int

    @property
    def xen(self) -> bool:
        return self.flavor.name == "xen"


_COMMON_FLAGS = ("3dnowprefetch", "abm", "adx", "aes", "apic", "avx", "avx2", "bmi1", "bmi2", "clflush",
                 "cmov", "cx16", "cx8", "de", "f16c", "fma", "fpu", "fsgsbase", "fxsr", "lahf_lm", "lm", "mca",
                 "mce", "mmx", "movbe", "msr", "mtrr", "nx", "pae", "pat", "pclmulqdq", "pdpe1gb", "pge",
                 "popcnt", "pse", "pse36", "rdrand", "rdseed", "rdtscp", "sep", "sha_ni", "smap", "smep", "sse",
                 "sse2", "sse4_1", "sse4_2", "ssse3", "syscall", "tsc", "vme", "xsave", "xsaveopt")
_CPUS = {
    "intel": ("Cascadelake-Server-noTSX", "Intel", ("vmx", "avx512f", "avx512bw", "pku")),
    "amd": ("EPYC-Rome", "AMD", ("svm", "clzero", "xsaveerptr", "wbnoinvd")),
}


def _profile(flavor_name: str, cpu: str) -> HostProfile:
    model, vendor, extra = _CPUS[cpu]
    flavor = get_flavor(flavor_name)
    flags = set(_COMMON_FLAGS) | set(extra)
    if flavor_name == "xen":
        # a PV dom0 does not see the virtualization extensions: Xen keeps them
        flags -= {"vmx", "svm"}
        flags.add("hypervisor")
        return HostProfile(flavor, "xen", None, "xen:///system", "Xen", "9.0.0", "4.17.3", model, vendor,
                           tuple(sorted(flags)), (SHARED_BRIDGE, "xenbr0"), flavor_matrix(flavor), 4096)
    return HostProfile(flavor, "kvm", "kvm", "qemu:///system", "QEMU", "10.0.0", "8.2.2", model, vendor,
                       tuple(sorted(flags)), (SHARED_BRIDGE, "virbr0"), flavor_matrix(flavor), 2048)


PROFILES: dict[tuple[str, str], HostProfile] = {(f, c): _profile(f, c) for f in ("xen", "kvm") for c in _CPUS}


def derived_id(vm_id: str, k: int) -> str:
    """A stable device id from the VM id: its last 48 bits mixed with ``k`` (distinct per k, valid UUID)."""
    tail = (int(vm_id[24:], 16) ^ (k * 0x9E3779B97F4B)) & 0xFFFFFFFFFFFF
    return f"{vm_id[:24]}{tail:012x}"


# (guest type asked, extra spec fields) per flavor; a generated VM picks one by weight
SHAPES: dict[str, tuple[tuple[int, GuestType, dict[str, Any]], ...]] = {
    "kvm": ((1, GuestType.HVM, {}),),
    "xen": ((6, GuestType.HVM, {}),
            (2, GuestType.PVH, {"kernel": f"{STATE_DIR}/kernels/vmlinuz", "consoles": [{"kind": "pv"}]}),
            (2, GuestType.PV, {"bootloader": "pygrub", "consoles": [{"kind": "pv"}]})),
}

_S_ID = "5e000000-0000-4000-8000-00000000000"  # + digit 0..5
_S_NAME = "SENTINEL-NAME"
_S_MEM = 999_991
_S_VCPUS = 97
_S_MAC = "02:5e:00:00:00:01"


class SpecTemplate:
    """The spec JSON of generated VMs of one shape on one flavor, with holes for what differs per VM."""

    def __init__(self, index: int, flavor: Flavor, guest_type: GuestType, extra: dict[str, Any]) -> None:
        self.index = index
        self.flavor = flavor
        data: dict[str, Any] = {
            "id": f"{_S_ID}0", "name": _S_NAME, "memory_mib": _S_MEM, "vcpus": _S_VCPUS,
            "guest_type": guest_type.value,
            "disks": [{"id": f"{_S_ID}1", "source": f"{STATE_DIR}/images/{_S_NAME}.img",
                       "format": "qcow2" if flavor.name == "kvm" else "raw"}],
            "nics": [{"id": f"{_S_ID}2", "source": SHARED_BRIDGE, "mac": _S_MAC}],
            "graphics": {"id": f"{_S_ID}3"},
            "consoles": [{"id": f"{_S_ID}4", "kind": "serial"}],
            "balloon": {"id": f"{_S_ID}5"},
            **{k: v for k, v in extra.items() if k != "consoles"},
        }
        for console in extra.get("consoles", []):
            data["consoles"] = [{"id": f"{_S_ID}4", **console}]
        spec = parse_spec(data)
        res = resolve(spec, flavor, None, render_options(flavor, _S_VCPUS))
        if res.refused:
            raise ValueError(f"template {flavor.name}/{guest_type.value} is refused: {res.refused}")
        self.guest_type = res.guest_type.value
        text = compact(spec.model_dump(mode="json")).replace("{", "{{").replace("}", "}}")
        holes = {f'"{_S_ID}{k}"': f'"{{d{k}}}"' for k in range(6)}
        holes.update({f'"{_S_NAME}"': '"{name}"', f"/{_S_NAME}.img": "/{name}.img", f":{_S_MEM},": ":{mem},",
                      f":{_S_VCPUS},": ":{vcpus},", f'"{_S_MAC}"': '"{mac}"'})
        for sentinel, hole in holes.items():
            if text.count(sentinel) != 1:
                raise ValueError(f"template {flavor.name}/{guest_type.value}: {sentinel} found "
                                 f"{text.count(sentinel)} times")
            text = text.replace(sentinel, hole)
        self.text = text

    def render(self, vm_id: str, name: str, memory_mib: int, vcpus: int) -> str:
        ids = {f"d{k}": derived_id(vm_id, k) for k in range(1, 6)}
        return self.text.format(d0=vm_id, name=name, mem=memory_mib, vcpus=vcpus,
                                mac=mac_for(ids["d2"], self.flavor.mac_prefix), **ids)


TEMPLATES: tuple[SpecTemplate, ...] = tuple(
    SpecTemplate(i, get_flavor(fl), gt, extra)
    for i, (fl, gt, extra) in enumerate((fl, gt, extra) for fl in ("kvm", "xen") for _, gt, extra in SHAPES[fl]))
TEMPLATE_WEIGHTS: dict[str, tuple[list[int], list[int]]] = {
    fl: ([t.index for t in TEMPLATES if t.flavor.name == fl], [w for w, _, _ in SHAPES[fl]]) for fl in SHAPES}
