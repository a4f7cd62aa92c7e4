"""Host capabilities, hypervisor detection and a hardware check that fits the hypervisor.

A Xen dom0 has no ``/dev/kvm`` and needs none: it is recognised by ``/proc/xen/capabilities`` holding
``control_d``, ``/sys/hypervisor/type`` saying ``xen`` and libvirt's ``getType()`` being ``Xen``. A KVM host
needs ``/dev/kvm``. On libvirt's test driver, ``--emulate xen|kvm`` makes the agent present itself as that
hypervisor (and use its flavor) so that plans and placement can be seen without hardware.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import libvirt
from lxml import etree

from corral.domain.flavors import get_flavor
from corral.domain.flavors.base import Flavor
from corral.domain.matrix import flavor_matrix


@dataclass
class Detection:
    hypervisor: str  # xen | kvm | qemu | test
    flavor: Flavor
    accel: str | None
    emulated: bool
    evidence: list[dict[str, str]] = field(default_factory=list)


@dataclass
class HostProbe:
    """Where the host's files live; tests and the emulation point it elsewhere."""

    root: Path = Path("/")

    def read(self, rel: str) -> str | None:
        try:
            return (self.root / rel.lstrip("/")).read_text().strip()
        except OSError:
            return None

    def exists(self, rel: str) -> bool:
        return (self.root / rel.lstrip("/")).exists()

    def kvm_usable(self) -> bool:
        return os.access(self.root / "dev/kvm", os.R_OK | os.W_OK)

    def cpu_flags(self) -> set[str]:
        text = self.read("/proc/cpuinfo") or ""
        for line in text.splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
        return set()

    def bridges(self) -> list[str]:
        net = self.root / "sys/class/net"
        try:
            return sorted(p.name for p in net.iterdir() if (p / "bridge").is_dir())
        except OSError:
            return []

    def process_running(self, name: str) -> bool:
        proc = self.root / "proc"
        try:
            for pid in proc.iterdir():
                if pid.name.isdigit():
                    try:
                        if (pid / "comm").read_text().strip() == name:
                            return True
                    except OSError:
                        continue
        except OSError:
            pass
        return False


def detect(conn: libvirt.virConnect, probe: HostProbe, emulate: str | None = None,
           accel: str = "auto") -> Detection:
    """What hypervisor this is. ``accel='tcg'`` is the operator saying KVM must not be used here (e.g. a
    nested host where /dev/kvm opens but guests do not run)."""
    driver = conn.getType()
    evidence = [{"source": "libvirt getType()", "value": driver}]
    if emulate:
        if driver != "TEST":
            raise ValueError(f"--emulate is only for libvirt's test driver, not {driver}")
        evidence.append({"source": "--emulate", "value": emulate})
        return Detection(emulate, get_flavor("xen" if emulate == "xen" else "kvm"),
                         "kvm" if emulate == "kvm" else None, True, evidence)
    if driver == "Xen":
        caps = probe.read("/proc/xen/capabilities")
        hv_type = probe.read("/sys/hypervisor/type")
        evidence += [{"source": "/proc/xen/capabilities", "value": caps if caps is not None else "(absent)"},
                     {"source": "/sys/hypervisor/type", "value": hv_type if hv_type is not None else "(absent)"}]
        return Detection("xen", get_flavor("xen"), None, False, evidence)
    if driver == "QEMU":
        present = probe.kvm_usable()
        # /dev/kvm can exist and open while KVM still cannot run guests (nested setups): libvirt's own
        # capabilities say whether it offers kvm domains.
        offered = b"domain type='kvm'" in conn.getCapabilities().encode()
        kvm = present and offered and accel != "tcg"
        if accel != "auto":
            evidence.append({"source": "agent setting accel", "value": accel})
        evidence.append({"source": "/dev/kvm", "value": "usable" if present else "absent or not accessible"})
        evidence.append({"source": "libvirt capabilities", "value": "kvm domains offered" if offered
                         else "no kvm domains offered (TCG only)"})
        return Detection("kvm" if kvm else "qemu", get_flavor("kvm", accel="kvm" if kvm else "tcg"),
                         "kvm" if kvm else "tcg", False, evidence)
    if driver == "TEST":
        return Detection("test", get_flavor("kvm", accel="tcg"), "tcg", True, evidence)
    raise ValueError(f"libvirt driver {driver!r} is not supported by Corral (xen, qemu, test)")


def _check(name: str, ok: bool, detail: str) -> dict[str, Any]:
    return {"name": name, "ok": ok, "detail": detail}


def hardware_check(det: Detection, conn: libvirt.virConnect, probe: HostProbe, bridges: list[str],
                   allow_tcg: bool = False) -> dict[str, Any]:
    items: list[dict[str, Any]] = []
    if det.emulated:
        items.append(_check("emulated", True, f"libvirt's test driver presenting a {det.hypervisor} host"))
    elif det.hypervisor == "xen":
        caps = probe.read("/proc/xen/capabilities") or ""
        items.append(_check("xen dom0", "control_d" in caps,
                            "/proc/xen/capabilities holds control_d" if "control_d" in caps
                            else "/proc/xen/capabilities lacks control_d: not the control domain"))
        hv = probe.read("/sys/hypervisor/type")
        items.append(_check("hypervisor", hv == "xen", f"/sys/hypervisor/type = {hv!r}"))
        version = _version(conn.getVersion())
        items.append(_check("libxl driver", True, f"libvirt answers on {conn.getURI()} (Xen {version})"))
        for daemon in ("xenstored", "xenconsoled"):
            running = probe.process_running(daemon) or (daemon == "xenstored" and probe.process_running("oxenstored"))
            items.append(_check(daemon, running, "running" if running else "not running"))
        items.append(_check("no /dev/kvm needed", True, "a Xen dom0 runs guests through Xen, not KVM"))
    else:
        kvm = det.accel == "kvm"
        flags = probe.cpu_flags()
        virt = sorted(flags & {"vmx", "svm"})
        if kvm:
            items.append(_check("/dev/kvm", True, "present and usable"))
        elif allow_tcg:
            items.append(_check("/dev/kvm", True, "not used; TCG allowed by the agent's configuration (slow)"))
        else:
            items.append(_check("/dev/kvm", False, "no /dev/kvm on a KVM host"))
        items.append(_check("cpu virtualization", bool(virt) or allow_tcg,
                            f"cpu flags: {', '.join(virt) or 'no vmx/svm'}"))
        items.append(_check("qemu driver", True, f"libvirt answers on {conn.getURI()}"))
    items.append(_check("bridge", bool(bridges), f"bridges: {', '.join(bridges)}" if bridges
                        else "no bridge for the management network"))
    return {"ok": all(i["ok"] for i in items), "items": items}


def _version(number: int) -> str:
    return f"{number // 1_000_000}.{number // 1000 % 1000}.{number % 1000}"


def _caps_cpu(caps: etree._Element) -> dict[str, Any]:
    cpu = caps.find("host/cpu")
    if cpu is None:
        return {}
    model = cpu.find("model")
    vendor = cpu.find("vendor")
    return {"arch": (cpu.findtext("arch") or "").strip(), "model": (model.text or "").strip() if model is not None
            else None, "vendor": (vendor.text or "").strip() if vendor is not None else None,
            "flags": sorted(f.get("name", f.tag if isinstance(f.tag, str) else "") for f in cpu.findall("feature"))}


def _numa(caps: etree._Element) -> list[dict[str, Any]]:
    cells = []
    for cell in caps.findall("host/topology/cells/cell"):
        mem = cell.find("memory")
        cells.append({"id": int(cell.get("id", "0")),
                      "memory_mib": int(mem.text or 0) // 1024 if mem is not None else None,
                      "cpus": [int(c.get("id", "0")) for c in cell.findall("cpus/cpu")]})
    return cells


def libvirt_bridges(conn: libvirt.virConnect) -> list[str]:
    out = []
    try:
        for net in conn.listAllNetworks():
            try:
                out.append(net.bridgeName())
            except libvirt.libvirtError:
                continue
    except libvirt.libvirtError:
        pass
    return out


def capabilities(conn: libvirt.virConnect, det: Detection, probe: HostProbe, extra_bridges: list[str],
                 allow_tcg: bool = False, host_uuid: str | None = None) -> dict[str, Any]:
    caps = etree.fromstring(conn.getCapabilities().encode())
    info = conn.getInfo()
    cpu = _caps_cpu(caps)
    if not det.emulated:
        flags = probe.cpu_flags()
        if flags:
            cpu["flags"] = sorted(set(cpu.get("flags", [])) | flags)
    cpu["count"] = info[2]
    bridges = sorted(set(probe.bridges() if not det.emulated else []) | set(libvirt_bridges(conn))
                     | set(extra_bridges))
    try:
        free = conn.getFreeMemory() // (1024 * 1024)
    except libvirt.libvirtError:
        free = None
    return {
        "hostname": socket.gethostname() if not det.emulated else conn.getHostname(),
        "host_uuid": host_uuid or (caps.findtext("host/uuid") or "").strip() or None,  # corral.agent.identity
        "hypervisor": det.hypervisor,
        "emulated": det.emulated,
        "flavor": det.flavor.name,
        "accel": det.accel,
        "detection": det.evidence,
        "libvirt_version": _version(conn.getLibVersion()),
        "hypervisor_version": _version(conn.getVersion()),
        "uri": conn.getURI(),
        "cpu": cpu,
        "memory_mib": info[1],
        "free_memory_mib": free,
        "numa_cells": _numa(caps),
        "bridges": bridges,
        "capabilities": flavor_matrix(det.flavor),
        "hardware_check": hardware_check(det, conn, probe, bridges, allow_tcg),
        "tools": {name: shutil.which(name) is not None for name in ("ip", "xenstore-read", "qemu-img")},
    }


def run(cmd: list[str], timeout: float = 10.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
