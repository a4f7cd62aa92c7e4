"""Host capabilities, hypervisor detection, and the facts the flavor's host checks judge.

A Xen dom0 has no ``/dev/kvm`` and needs none: it is recognised by libvirt's ``getType()`` being ``Xen`` (with
``/proc/xen/capabilities`` holding ``control_d`` and ``/sys/hypervisor/type`` saying ``xen`` as evidence). A KVM
host needs ``/dev/kvm``. On libvirt's test driver, ``--emulate xen|kvm`` makes the agent present itself as that
hypervisor (and use its flavor) so that plans and placement can be seen without hardware.

The hardware check is not written here: the agent reads the facts ``corral.domain.flavors.hostcheck`` declares (under
``HostProbe.root``, which tests point at a fake tree) and evaluates the flavor's ``host_checks`` -- the same
checks the deploy runs on facts it reads over SSH.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import libvirt
from lxml import etree

from corral.domain.flavors import SOFTWARE_ACCEL, get_flavor, hostcheck
from corral.domain.flavors.base import Flavor
from corral.domain.flavors.hostcheck import HostCheckReport, HostFacts, KvmDevice, LibvirtAnswer, Setting
from corral.domain.matrix import flavor_matrix


@dataclass
class Detection:
    hypervisor: str  # xen | kvm | qemu | test
    flavor: Flavor
    accel: str | None
    emulated: bool
    evidence: list[dict[str, str]] = field(default_factory=list)
    kvm_detail: str = ""  # why /dev/kvm is not used, where it exists


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

    def glob(self, pattern: str) -> list[str]:
        """Host paths (as seen on the host, without the root) matching ``pattern``."""
        return sorted("/" + str(p.relative_to(self.root)) for p in self.root.glob(pattern.lstrip("/")))

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

    def processes(self, names: Iterable[str]) -> set[str]:
        """Which of ``names`` run (``/proc/PID/comm``), in one pass over ``/proc``."""
        wanted, found = set(names), set()
        try:
            for pid in (self.root / "proc").iterdir():
                if pid.name.isdigit():
                    try:
                        comm = (pid / "comm").read_text().strip()
                    except OSError:
                        continue
                    if comm in wanted:
                        found.add(comm)
        except OSError:
            pass
        return found

    def process_running(self, name: str) -> bool:
        return bool(self.processes([name]))


def detect(conn: libvirt.virConnect, probe: HostProbe, emulate: str | None = None,
           accel: str = "auto") -> Detection:
    """What hypervisor this is, from libvirt's driver. ``accel='tcg'`` is the operator saying KVM must not be
    used here (e.g. a nested host where /dev/kvm opens but guests do not run)."""
    driver = conn.getType()
    evidence = [{"source": "libvirt getType()", "value": driver}]
    if emulate:
        if driver != "TEST":
            raise ValueError(f"--emulate is only for libvirt's test driver, not {driver}")
        evidence.append({"source": "--emulate", "value": emulate})
        flavor = get_flavor(emulate)
        return Detection(emulate, flavor, flavor.accel, True, evidence)
    if driver == "Xen":
        for key in ("xen_caps", "hv_type"):
            evidence.append({"source": hostcheck.FILES[key], "value": _or_absent(probe.read(hostcheck.FILES[key]))})
        flavor = get_flavor("xen")
        return Detection(flavor.domain_type, flavor, flavor.accel, False, evidence)
    if driver == "QEMU":
        present = probe.kvm_usable()
        # /dev/kvm can exist and open while KVM still cannot run guests (nested setups): libvirt's own
        # capabilities say whether it offers kvm domains.
        offered = b"domain type='kvm'" in conn.getCapabilities().encode()
        kvm = present and offered and accel != SOFTWARE_ACCEL
        if accel != "auto":
            evidence.append({"source": "agent setting accel", "value": accel})
        evidence.append({"source": "/dev/kvm", "value": "usable" if present else "absent or not accessible"})
        evidence.append({"source": "libvirt capabilities", "value": "kvm domains offered" if offered
                         else "no kvm domains offered (TCG only)"})
        flavor = get_flavor("kvm", accel="kvm" if kvm else "tcg")
        why = "" if kvm else ("the agent's accel setting is tcg" if present and offered
                              else "libvirt offers no kvm domains" if present else "not accessible")
        return Detection(flavor.domain_type, flavor, flavor.accel, False, evidence, why)
    if driver == "TEST":
        flavor = get_flavor("kvm", accel="tcg")
        return Detection("test", flavor, flavor.accel, True, evidence)
    raise ValueError(f"libvirt driver {driver!r} is not supported by Corral (xen, qemu, test)")


def _or_absent(value: str | None) -> str:
    return value if value is not None else "(absent)"


def gather_facts(det: Detection, conn: libvirt.virConnect, probe: HostProbe, bridges: list[str]) -> HostFacts:
    """The facts ``corral.domain.flavors.hostcheck`` declares, read on this host (under the probe's root), and libvirt's
    answer on this connection. ``xl info`` is asked only where Xen's sysfs does not say what it runs."""
    files = {key: (" ".join(text.split()) if (text := probe.read(path)) is not None else None)
             for key, path in hostcheck.FILES.items()}
    if det.flavor.needs_dev_kvm and not det.emulated:
        kvm, kvm_detail = KvmDevice.USABLE, ""
    elif probe.exists("/dev/kvm"):
        kvm, kvm_detail = KvmDevice.PRESENT, det.kvm_detail or "not used"
    else:
        kvm, kvm_detail = KvmDevice.ABSENT, ""
    xl_info: dict[str, str] = {}
    if (not files.get("hv_caps") and files.get("xen_caps") is not None and probe.root == Path("/")
            and shutil.which("xl")):
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            for line in run(["xl", "info"], timeout=30).stdout.splitlines():
                key, _, value = line.partition(":")
                if key.strip() in hostcheck.XL_INFO_KEYS:
                    xl_info[key.strip()] = " ".join(value.split())
    libxl = [v for path in hostcheck.LIBXL_GLOBS for p in probe.glob(path) if (v := hostcheck.libxl_version(p))]
    try:
        answer = LibvirtAnswer(conn.getURI(), True, f"{conn.getType()} {_version(conn.getVersion())}")
    except libvirt.libvirtError as exc:
        answer = LibvirtAnswer("?", False, error=str(exc))
    return HostFacts(files=files, cpu_flags=frozenset(probe.cpu_flags() & set(hostcheck.VIRT_FLAGS)), kvm=kvm,
                     kvm_detail=kvm_detail,
                     daemons=frozenset(probe.processes(hostcheck.DAEMONS)), libxl_versions=tuple(libxl),
                     xl_info=xl_info, bridges=tuple(bridges), libvirt=answer)


def host_check(det: Detection, conn: libvirt.virConnect, probe: HostProbe, bridges: list[str],
               allow_tcg: bool = False) -> HostCheckReport:
    """The flavor's host checks (the same ones the deploy runs over SSH) on this host's facts."""
    facts = gather_facts(det, conn, probe, bridges)
    return hostcheck.evaluate(det.flavor, facts, Setting(allow_tcg, det.hypervisor if det.emulated else None))


def hardware_check(det: Detection, conn: libvirt.virConnect, probe: HostProbe, bridges: list[str],
                   allow_tcg: bool = False) -> dict[str, Any]:
    return host_check(det, conn, probe, bridges, allow_tcg).as_dict()


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
    check = host_check(det, conn, probe, bridges, allow_tcg)
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
        "hardware_check": check.as_dict(),
        # the flavor's guest types this host runs (a PV-only dom0: ["pv"]); the scheduler filters on it
        "guest_types": [g.value for g in check.guest_types],
        "tools": {name: shutil.which(name) is not None for name in ("ip", "xenstore-read", "qemu-img")},
    }


def run(cmd: list[str], timeout: float = 10.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
