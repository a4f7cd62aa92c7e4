"""Host kinds and VM spec templates: what the simulated hosts share, so each host and VM stays small.

A host kind is one flavor plus what a real host of it shows that the flavor does not say, because it is the
simulated libvirt driver's or the machine's behaviour rather than the agent's policy: the driver's name and
versions, the facts a healthy host of that flavor reads (``corral.domain.flavors.hostcheck.HostFacts``, judged by the
flavor's own host checks), how the driver names live devices and which it adds, which stats it reports, whether
it builds a domain it has no free memory for. Behaviour the agent decides comes from the flavor, never from the
kind's name.

A generated VM keeps no spec: its spec JSON is a template of its (flavor, guest type) with the VM's id, name,
size and device ids filled in. The device ids derive from the VM id (``derived_id``), the NIC MAC from the NIC
id (as the agent fills it, ``mac_for``). The JSON is exactly ``VmSpec.model_dump(mode="json")`` of that spec
(a test checks it), compact, in the model's field order.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any

from corral.domain import config as cfg
from corral.domain.flavors import all_flavors, get_flavor
from corral.domain.flavors.base import Flavor, Outcome
from corral.domain.flavors.features import Feature
from corral.domain.flavors.hostcheck import FILES, VIRT_FLAGS, HostFacts, KvmDevice, LibvirtAnswer
from corral.domain.matrix import flavor_matrix
from corral.domain.resolve import RenderOptions, mac_for, resolve
from corral.domain.spec import GuestType, parse_spec

STATE_DIR = "/var/lib/corral"
CONSOLE_DAEMON_DIR = "/var/log/xen/console"  # the agent's default console dir (Settings.xen_console_dir)
SHARED_BRIDGE = "br0"
# the tools /v1/host reports on, whichever flavor uses them
TOOLS: tuple[str, ...] = tuple(dict.fromkeys(t for f in all_flavors() for t in f.host_tools))


def compact(data: Any) -> str:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False)


def render_options(cpus: int) -> RenderOptions:
    """The options a real (not emulated) agent renders with (see ``VmManager.options``): the same on every
    flavor; the flavor's console-log policy decides what the console dir is used for."""
    return RenderOptions(host_cpus=cpus, console_log_dir=f"{STATE_DIR}/consoles", channel_dir=f"{STATE_DIR}/channels")


@dataclass(frozen=True)
class HostKind:
    """A real host of one flavor as the simulation presents it: data only (see the module docstring)."""

    flavor: Flavor
    driver: str  # libvirt getType()
    libvirt_version: str
    hypervisor_version: str
    evidence: tuple[tuple[str, str], ...]  # what the agent's detection cites besides getType()
    facts: HostFacts  # a healthy host's facts, without the per-host ones (CPU flags, bridges, libvirt)
    sees_virt_flags: bool  # the host OS sees vmx/svm (a Xen dom0 does not: the hypervisor keeps them)
    bridge: str  # the host's own bridge, besides the shared one
    networks: tuple[str, ...]  # libvirt networks defined (QEMU's packaging defines "default", on virbr0)
    reserved_mib: int  # memory the host itself keeps (dom0, the host OS)
    # what the driver answers a start it has no free memory for ({name}: the domain); None: it overcommits
    no_memory_error: str | None
    detailed_stats: bool  # getAllDomainStats has cpu.user/system, balloon.rss, vcpu.N.wait (libxl's has not)
    vif_name: str  # a running NIC's host-side name ({domid}, {index}, {seq}: domid * 4 + index)
    live_aliases: bool  # the driver names the devices it adds (QEMU: ide, input0, usb, pci.0; libxl: none)
    controllers: tuple[cfg.Controller, ...]  # what the driver adds to every domain (aliases as when running)


# what a dom0 on a CPU with VT-x/AMD-V reads in /sys/hypervisor/properties/capabilities: PV and HVM guests
_XEN_CAPS = "xen-3.0-x86_64 xen-3.0-x86_32p hvm-3.0-x86_32 hvm-3.0-x86_32p hvm-3.0-x86_64"

KINDS: dict[str, HostKind] = {kind.flavor.name: kind for kind in (
    HostKind(get_flavor("kvm"), "QEMU", "10.0.0", "8.2.2",
             (("/dev/kvm", "usable"), ("libvirt capabilities", "kvm domains offered")),
             HostFacts(files=dict.fromkeys(FILES)),
             sees_virt_flags=True, bridge="virbr0", networks=("default",), reserved_mib=2048, no_memory_error=None,
             detailed_stats=True, vif_name="vnet{seq}", live_aliases=True,
             controllers=(cfg.Controller(type="usb", model="piix3-uhci", alias="usb"),
                          cfg.Controller(type="pci", model="pci-root", alias="pci.0"))),
    HostKind(get_flavor("xen"), "Xen", "9.0.0", "4.17.3",
             ((FILES["xen_caps"], "control_d"), (FILES["hv_type"], "xen")),
             HostFacts(files={"xen_caps": "control_d", "hv_type": "xen", "hv_caps": _XEN_CAPS},
                       daemons=frozenset({"xenstored", "xenconsoled"}), libxl_versions=("4.17.0",)),
             sees_virt_flags=False, bridge="xenbr0", networks=(), reserved_mib=4096,
             no_memory_error="internal error: libxenlight failed to create new domain '{name}'",
             detailed_stats=False, vif_name="vif{domid}.{index}", live_aliases=False,
             controllers=(cfg.Controller(type="xenbus", index=0),)),
)}


@dataclass(frozen=True)
class HostProfile:
    """What hosts of one kind and CPU share: the kind, its matrix, the CPU, the facts its checks judge."""

    kind: HostKind
    cpu_model: str
    cpu_vendor: str
    cpu_flags: tuple[str, ...]
    bridges: tuple[str, ...]
    capabilities: dict[str, dict[str, dict[str, str | None]]]
    facts: HostFacts  # what the agent would read on such a host (corral.agent.host.gather_facts)

    @property
    def flavor(self) -> Flavor:
        return self.kind.flavor


_COMMON_FLAGS = ("3dnowprefetch", "abm", "adx", "aes", "apic", "avx", "avx2", "bmi1", "bmi2", "clflush",
                 "cmov", "cx16", "cx8", "de", "f16c", "fma", "fpu", "fsgsbase", "fxsr", "lahf_lm", "lm", "mca",
                 "mce", "mmx", "movbe", "msr", "mtrr", "nx", "pae", "pat", "pclmulqdq", "pdpe1gb", "pge",
                 "popcnt", "pse", "pse36", "rdrand", "rdseed", "rdtscp", "sep", "sha_ni", "smap", "smep", "sse",
                 "sse2", "sse4_1", "sse4_2", "ssse3", "syscall", "tsc", "vme", "xsave", "xsaveopt")
_CPUS = {
    "intel": ("Cascadelake-Server-noTSX", "Intel", ("vmx", "avx512f", "avx512bw", "pku")),
    "amd": ("EPYC-Rome", "AMD", ("svm", "clzero", "xsaveerptr", "wbnoinvd")),
}


def _profile(kind: HostKind, cpu: str) -> HostProfile:
    model, vendor, extra = _CPUS[cpu]
    flags = set(_COMMON_FLAGS) | set(extra)
    if not kind.sees_virt_flags:
        flags -= set(VIRT_FLAGS)
    if kind.facts.file("hv_type"):  # the host OS itself runs under a hypervisor (a dom0)
        flags.add("hypervisor")
    bridges = (SHARED_BRIDGE, kind.bridge)
    answer = LibvirtAnswer(kind.flavor.default_uri, True, f"{kind.driver} {kind.hypervisor_version}")
    # /dev/kvm creates VMs where the flavor's guests need it (as the agent reads a KVM host it detected)
    kvm = KvmDevice.USABLE if kind.flavor.needs_dev_kvm else kind.facts.kvm
    facts = replace(kind.facts, cpu_flags=frozenset(flags & set(VIRT_FLAGS)), kvm=kvm, bridges=bridges,
                    libvirt=answer)
    return HostProfile(kind, model, vendor, tuple(sorted(flags)), bridges, flavor_matrix(kind.flavor), facts)


PROFILES: dict[tuple[str, str], HostProfile] = {(f, c): _profile(kind, c) for f, kind in KINDS.items() for c in _CPUS}


def derived_id(vm_id: str, k: int) -> str:
    """A stable device id from the VM id: its last 48 bits mixed with ``k`` (distinct per k, valid UUID)."""
    tail = (int(vm_id[24:], 16) ^ (k * 0x9E3779B97F4B)) & 0xFFFFFFFFFFFF
    return f"{vm_id[:24]}{tail:012x}"


# (weight, extra spec fields) per guest type; a generated VM picks one of its flavor's guest types by weight
SHAPES: dict[GuestType, tuple[int, dict[str, Any]]] = {
    GuestType.HVM: (6, {}),
    GuestType.PVH: (2, {"kernel": f"{STATE_DIR}/kernels/vmlinuz", "consoles": [{"kind": "pv"}]}),
    GuestType.PV: (2, {"bootloader": "pygrub", "consoles": [{"kind": "pv"}]}),
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
        # the image format the flavor runs as asked (qcow2 where it is native, else raw)
        native_qcow2 = flavor.rule(Feature.DISK_FORMAT_QCOW2, guest_type).outcome is Outcome.NATIVE
        data: dict[str, Any] = {
            "id": f"{_S_ID}0", "name": _S_NAME, "memory_mib": _S_MEM, "vcpus": _S_VCPUS,
            "guest_type": guest_type.value,
            "disks": [{"id": f"{_S_ID}1", "source": f"{STATE_DIR}/images/{_S_NAME}.img",
                       "format": "qcow2" if native_qcow2 else "raw"}],
            "nics": [{"id": f"{_S_ID}2", "source": SHARED_BRIDGE, "mac": _S_MAC}],
            "graphics": {"id": f"{_S_ID}3"},
            "consoles": [{"id": f"{_S_ID}4", "kind": "serial"}],
            "balloon": {"id": f"{_S_ID}5"},
            **{k: v for k, v in extra.items() if k != "consoles"},
        }
        for console in extra.get("consoles", []):
            data["consoles"] = [{"id": f"{_S_ID}4", **console}]
        spec = parse_spec(data)
        res = resolve(spec, flavor, None, render_options(_S_VCPUS))
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
    SpecTemplate(i, kind.flavor, gt, SHAPES[gt][1])
    for i, (kind, gt) in enumerate((kind, gt) for kind in KINDS.values() for gt in kind.flavor.guest_types))
TEMPLATE_WEIGHTS: dict[str, tuple[list[int], list[int]]] = {
    name: ([t.index for t in TEMPLATES if t.flavor is kind.flavor],
           [SHAPES[gt][0] for gt in kind.flavor.guest_types]) for name, kind in KINDS.items()}
