"""What the agent needs from the host's package manager (python3 and its venv module, libvirt's Python binding,
virsh), named per package manager. The same for every hypervisor: the hypervisor itself is the host's, never
installed by the deploy."""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from corral.engine.deploy.probe import Probe

PACKAGES: dict[str, dict[str, str]] = {
    "apt-get": {"python3": "python3", "venv": "python3-venv", "libvirt": "python3-libvirt",
                "virsh": "libvirt-clients"},
    "dnf": {"python3": "python3", "libvirt": "python3-libvirt", "virsh": "libvirt-client"},
    "yum": {"python3": "python3", "libvirt": "python3-libvirt", "virsh": "libvirt-client"},
    "zypper": {"python3": "python3", "libvirt": "python3-libvirt-python", "virsh": "libvirt-client"},
    "apk": {"python3": "python3", "libvirt": "py3-libvirt", "virsh": "libvirt-client"},
}
INSTALL_CMD = {
    "apt-get": "export DEBIAN_FRONTEND=noninteractive; apt-get install -y -q {p} || "
               "{{ apt-get update -q && apt-get install -y -q {p}; }}",
    "dnf": "dnf install -y {p}", "yum": "yum install -y {p}", "zypper": "zypper --non-interactive install {p}",
    "apk": "apk add {p}",
}


@dataclass(frozen=True)
class PackagePlan:
    manager: str  # apt-get, dnf, ... or "" where none was found
    wanted: tuple[str, ...]  # what is missing: python3, venv, libvirt, virsh
    names: tuple[str, ...]  # the package names of the manager for what is missing (where it has one)

    @property
    def command(self) -> str:
        return INSTALL_CMD[self.manager].format(p=" ".join(shlex.quote(n) for n in self.names))

    @property
    def optional_only(self) -> bool:
        """Only libvirt's binding or virsh missing: the shipped wheel and a Python check stand in for them."""
        return set(self.wanted) <= {"libvirt", "virsh"}


def plan(probe: Probe) -> PackagePlan:
    want: list[str] = []
    if not probe.first("python"):
        want += ["python3", "venv"]
    elif "venv" not in probe.lines:
        want.append("venv")
    if "py_libvirt" not in probe.lines:
        want.append("libvirt")
    if "virsh" not in probe.lines:
        want.append("virsh")
    pm = probe.first("pkg")
    names = [PACKAGES.get(pm, {}).get(w) for w in want]
    return PackagePlan(pm, tuple(want), tuple(n for n in names if n))
