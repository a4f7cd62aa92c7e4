"""Reading a host over SSH: one shell script for the system (user, OS, Python, package manager, systemd) and the
hypervisor facts ``corral.domain.flavors.hostcheck`` declares; what the facts say the host is; libvirt's answer; and
the check items, which are the flavor's host checks -- the very ones the agent runs for ``GET /v1/host``."""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from typing import Any

from corral.domain.flavors import get_flavor, hostcheck
from corral.domain.flavors.base import Flavor
from corral.domain.flavors.hostcheck import HostFacts, LibvirtAnswer, Setting
from corral.engine.deploy.ssh import Remote

MIN_PYTHON = (3, 11)

SYSTEM = r"""
echo "uid=$(id -u)"
echo "hostname=$(hostname 2>/dev/null || cat /proc/sys/kernel/hostname)"
echo "arch=$(uname -m)"
if [ -r /etc/os-release ]; then . /etc/os-release; echo "os=$ID $VERSION_ID"; fi
[ -d /run/systemd/system ] && echo "systemd=1"
for pm in apt-get dnf yum zypper apk; do command -v $pm >/dev/null 2>&1 && { echo "pkg=$pm"; break; }; done
if command -v python3 >/dev/null 2>&1; then
  echo "python=$(python3 -c 'import sys, sysconfig; v = sys.version_info
print("%d.%d %s" % (v[0], v[1], sysconfig.get_platform()))' 2>/dev/null)"
  python3 -c 'import venv, ensurepip' 2>/dev/null && echo "venv=1"
  python3 -c 'import libvirt' 2>/dev/null && echo "py_libvirt=1"
fi
command -v virsh >/dev/null 2>&1 && echo "virsh=1"
command -v setsid >/dev/null 2>&1 && echo "setsid=1"
echo "home=$HOME"
"""


def script() -> str:
    """The whole probe: the system, then the hypervisor facts (``hostcheck.probe_script``)."""
    return "set +e\n" + SYSTEM + hostcheck.probe_script()


@dataclass(frozen=True)
class Probe:
    """The probe's ``key=value`` lines, and the hypervisor facts among them."""

    lines: dict[str, list[str]] = field(default_factory=dict)
    facts: HostFacts = field(default_factory=HostFacts)

    def first(self, key: str) -> str:
        return self.lines.get(key, [""])[0]

    def __contains__(self, key: str) -> bool:
        return key in self.lines

    def __bool__(self) -> bool:
        return bool(self.lines)


def parse_probe(text: str) -> Probe:
    lines = hostcheck.parse_lines(text)
    return Probe(lines, hostcheck.facts_from_probe(lines))


@dataclass
class Detected:
    """What the facts say the host is: a flavor, or none (neither a Xen dom0 nor KVM, and TCG not allowed)."""

    flavor: Flavor | None
    evidence: list[dict[str, str]]

    @property
    def kind(self) -> str:
        """The hypervisor: the flavor's domain type (xen, kvm, qemu), or ``none``."""
        return self.flavor.domain_type if self.flavor is not None else "none"

    @property
    def label(self) -> str:
        return self.flavor.title if self.flavor is not None else "no hypervisor (neither a Xen dom0 nor KVM)"


def detect(probe: Probe, allow_tcg: bool) -> Detected:
    name = hostcheck.hypervisor_kind(probe.facts, allow_tcg)
    return Detected(get_flavor(name) if name else None, hostcheck.evidence(probe.facts))


def _version_tuple(text: str) -> tuple[int, ...]:
    out = []
    for part in text.split("."):
        if not part.isdigit():
            break
        out.append(int(part))
    return tuple(out)


async def ask_libvirt(remote: Remote, probe: Probe, uri: str) -> LibvirtAnswer:
    """Whether libvirt answers on ``uri`` on the host (virsh, else libvirt's Python binding)."""
    if "virsh" in probe:
        rc, out, err = await remote.run(f"virsh -c {shlex.quote(uri)} version", timeout=60, step="check")
    elif "py_libvirt" in probe:
        code = ("import libvirt, sys; c = libvirt.open(sys.argv[1]); v = c.getVersion(); "
                "print('Running hypervisor: %s %d.%d.%d' % (c.getType(), v // 1000000, v // 1000 % 1000, "
                "v % 1000))")
        rc, out, err = await remote.run(f"python3 -c {shlex.quote(code)} {shlex.quote(uri)}", timeout=60,
                                        step="check")
    else:
        return LibvirtAnswer(uri, False, error="neither virsh nor libvirt's Python binding on the host")
    if rc != 0:
        return LibvirtAnswer(uri, False, error=" ".join((err or out).split())[:300])
    running = next((line.split(":", 1)[1].strip() for line in out.splitlines()
                    if line.startswith("Running hypervisor")), "")
    return LibvirtAnswer(uri, True, running)


def check_items(probe: Probe, det: Detected, answer: LibvirtAnswer, allow_tcg: bool) -> list[dict[str, Any]]:
    """What the deploy checks: Python for the agent, then the flavor's host checks on the probed facts. A host
    that is neither gets the KVM checks too, which say what is missing."""
    items: list[dict[str, Any]] = []
    py = probe.first("python")
    ver = _version_tuple(py.split()[0]) if py else ()
    items.append({"name": "python3", "ok": bool(ver) and ver >= MIN_PYTHON and "venv" in probe,
                  "detail": f"Python {py.split()[0]}" + ("" if "venv" in probe else " without the venv module")
                  if py else "no python3 on the host"})
    flavor = det.flavor
    if flavor is None:
        items.append({"name": "hypervisor", "ok": False,
                      "detail": "neither a Xen dom0 (no control_d in /proc/xen/capabilities) nor KVM"})
        flavor = get_flavor("kvm")
    report = hostcheck.evaluate(flavor, probe.facts.with_libvirt(answer), Setting(allow_tcg=allow_tcg))
    return items + report.items
