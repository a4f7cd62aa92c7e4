"""The host checks: one list per flavor, run by the agent (``GET /v1/host``) and by the deploy's remote probe.

Both sides used to carry their own checks of the same items, and they disagreed (the deploy tried
``/dev/kvm`` with an ioctl, the agent only looked at it; neither asked Xen whether it can run HVM guests, so an
HVM VM could be placed on a PV-only dom0). Now there is one implementation, in three parts:

- ``HostFacts``: the raw facts, as read on the host. Which facts exist is declared once here (``FILES``,
  ``DAEMONS``, ``LIBXL_GLOBS``, ``XL_INFO_KEYS``); the agent reads them locally (``corral.agent.host``), the deploy
  reads them over SSH with ``probe_script()``, a shell script derived from the same declaration, and
  ``facts_from_probe`` turns its output back into ``HostFacts``.
- ``HostCheck``: a named pure function ``(facts, setting) -> (ok, detail)``. Each flavor lists its checks
  (``Flavor.host_checks``, a ``HostChecks``) together with how the facts say which of its guest types the host
  can run.
- ``evaluate``: runs a flavor's checks on facts. Whether QEMU under TCG is acceptable is the caller's setting
  (``Setting.allow_tcg``), not a fact.

No I/O here: reading is the callers' job, so the same facts give the same answer on both sides.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from corral.domain.spec import GuestType

if TYPE_CHECKING:
    from corral.domain.flavors.base import Flavor

# ------------------------------------------------------------------------------------------ the facts that exist

# file facts: key -> path on the host (read whole, whitespace collapsed)
FILES: Mapping[str, str] = {
    "xen_caps": "/proc/xen/capabilities",  # "control_d" in the control domain (dom0)
    "hv_type": "/sys/hypervisor/type",  # "xen" under Xen
    # what the hypervisor runs: "xen-3.0-x86_64 xen-3.0-x86_32p" (PV) and "hvm-3.0-x86_64 ..." (HVM, PVH)
    "hv_caps": "/sys/hypervisor/properties/capabilities",
}
# daemons whose running process (``/proc/PID/comm``) is a fact
DAEMONS: tuple[str, ...] = ("xenstored", "oxenstored", "xenconsoled")
# the CPU flags that say the CPU can virtualize
VIRT_FLAGS: tuple[str, ...] = ("vmx", "svm")
# where the Xen toolstack library can be (its version is the suffix after ``libxenlight.so.``)
LIBXL_GLOBS: tuple[str, ...] = ("/usr/lib/libxenlight.so.*", "/usr/lib64/libxenlight.so.*",
                                "/usr/lib/*/libxenlight.so.*", "/usr/local/lib/libxenlight.so.*")
LIBXL_SO = "libxenlight.so."
# lines of ``xl info`` kept as facts (virt_caps: "pv hvm hvm_directio pv_directio hap shadow ...")
XL_INFO_KEYS: tuple[str, ...] = ("xen_version", "virt_caps")


class KvmDevice(StrEnum):
    ABSENT = "absent"  # no /dev/kvm
    PRESENT = "present"  # /dev/kvm exists but cannot run guests here (permissions, nested, disabled by accel)
    USABLE = "usable"  # /dev/kvm opens and creates VMs


@dataclass(frozen=True)
class LibvirtAnswer:
    """Whether libvirt answered on ``uri``; ``hypervisor`` is what it runs (``Xen 4.17.0``, ``QEMU 7.2.0``)."""

    uri: str
    ok: bool
    hypervisor: str = ""
    error: str = ""


@dataclass(frozen=True)
class HostFacts:
    """What was read on a host, nothing concluded yet. A fact not read is empty (``None`` for a file)."""

    files: Mapping[str, str | None] = field(default_factory=dict)  # FILES key -> content, None when absent
    cpu_flags: frozenset[str] = frozenset()  # the VIRT_FLAGS among the CPU's flags
    kvm: KvmDevice = KvmDevice.ABSENT
    kvm_detail: str = ""  # why /dev/kvm is not usable, or the KVM API version when it is
    daemons: frozenset[str] = frozenset()  # the DAEMONS found running
    libxl_versions: tuple[str, ...] = ()
    xl_info: Mapping[str, str] = field(default_factory=dict)  # XL_INFO_KEYS found in ``xl info``
    bridges: tuple[str, ...] = ()
    libvirt: LibvirtAnswer | None = None

    def file(self, key: str) -> str:
        return self.files.get(key) or ""

    def with_libvirt(self, answer: LibvirtAnswer) -> HostFacts:
        return replace(self, libvirt=answer)


# ------------------------------------------------------------------------------------------ recognising a host

def hypervisor_kind(facts: HostFacts, allow_tcg: bool) -> str | None:
    """From facts alone (before libvirt is asked): ``xen`` for a Xen control domain, ``kvm`` where /dev/kvm
    creates VMs, ``qemu`` (TCG) where it does not and TCG is allowed, ``kvm`` where KVM could be (/dev/kvm or
    vmx/svm: the checks then say what is missing), else None. The names are ``get_flavor`` names."""
    if "control_d" in facts.file("xen_caps").split():
        return "xen"
    if facts.kvm is KvmDevice.USABLE:
        return "kvm"
    if allow_tcg:
        return "qemu"
    if facts.kvm is KvmDevice.PRESENT or facts.cpu_flags & set(VIRT_FLAGS):
        return "kvm"
    return None


def evidence(facts: HostFacts) -> list[dict[str, str]]:
    """The facts a detection rests on, as ``{source, value}`` lines for events and ``/v1/host``."""
    out = [{"source": path, "value": facts.files.get(key) or "(absent)"}
           for key, path in FILES.items() if key != "hv_caps" or facts.files.get(key) is not None]
    out.append({"source": "/dev/kvm", "value": facts.kvm.value + (f" ({facts.kvm_detail})" if facts.kvm_detail
                                                                   else "")})
    out.append({"source": "cpu flags", "value": ", ".join(sorted(facts.cpu_flags & set(VIRT_FLAGS)))
                or "no vmx/svm"})
    return out


# ------------------------------------------------------------------------------------------ checks

@dataclass(frozen=True)
class Setting:
    """How the facts are judged: ``allow_tcg`` accepts QEMU without KVM (the operator's choice, not a fact);
    ``emulated`` names the hypervisor libvirt's test driver presents (then only some checks run)."""

    allow_tcg: bool = False
    emulated: str | None = None


CheckFn = Callable[[HostFacts, Setting], tuple[bool, str]]


@dataclass(frozen=True)
class HostCheck:
    """One named item of a hardware check. ``emulated``: whether it also means something on libvirt's test
    driver presenting the hypervisor (a bridge does; a daemon of the real hypervisor does not)."""

    name: str
    fn: CheckFn
    emulated: bool = False


@dataclass(frozen=True)
class HostChecks:
    """A flavor's checks, and which of its guest types the facts allow (None: the facts do not say)."""

    checks: tuple[HostCheck, ...] = ()
    guest_types: Callable[[HostFacts], tuple[GuestType, ...] | None] = lambda _facts: None


def check(name: str, *, emulated: bool = False) -> Callable[[CheckFn], HostCheck]:
    def wrap(fn: CheckFn) -> HostCheck:
        return HostCheck(name, fn, emulated)
    return wrap


def _libvirt(facts: HostFacts) -> tuple[bool, str]:
    a = facts.libvirt
    if a is None:
        return False, "libvirt was not asked"
    if not a.ok:
        return False, f"libvirt does not answer on {a.uri}: {a.error}"
    return True, f"libvirt answers on {a.uri}" + (f" ({a.hypervisor})" if a.hypervisor else "")


@check("bridge", emulated=True)
def bridge(facts: HostFacts, _s: Setting) -> tuple[bool, str]:
    if facts.bridges:
        return True, f"bridges: {', '.join(facts.bridges)}"
    return False, "no bridge for the management network"


# Xen

@check("xen dom0")
def xen_dom0(facts: HostFacts, _s: Setting) -> tuple[bool, str]:
    caps = facts.file("xen_caps")
    if "control_d" in caps.split():
        return True, "/proc/xen/capabilities holds control_d"
    return False, (f"/proc/xen/capabilities is {caps!r}, without control_d: not the control domain" if caps
                   else "no /proc/xen/capabilities: not running under Xen (or xenfs is not mounted)")


@check("hypervisor")
def xen_hypervisor(facts: HostFacts, _s: Setting) -> tuple[bool, str]:
    hv = facts.file("hv_type")
    return hv == "xen", f"/sys/hypervisor/type = {hv or '(absent)'}"


def xen_guest_types(facts: HostFacts) -> tuple[GuestType, ...] | None:
    """What Xen says it runs: ``/sys/hypervisor/properties/capabilities`` (``xen-3.0-*`` PV, ``hvm-3.0-*`` HVM)
    or ``xl info``'s ``virt_caps`` (``pv``, ``hvm``). PVH guests run in an HVM container, so they need HVM
    (VT-x/AMD-V) too: a dom0 on a CPU without it (or nested without it) runs PV guests only."""
    caps = facts.file("hv_caps").split()
    virt = facts.xl_info.get("virt_caps", "").split()
    if not caps and not virt:
        return None
    pv = any(c.startswith("xen-") for c in caps) or "pv" in virt
    hvm = any(c.startswith("hvm-") for c in caps) or "hvm" in virt
    return tuple(g for g, ok in ((GuestType.PV, pv), (GuestType.PVH, hvm), (GuestType.HVM, hvm)) if ok)


def _xen_caps_source(facts: HostFacts) -> str:
    if facts.file("hv_caps"):
        return f"/sys/hypervisor/properties/capabilities: {facts.file('hv_caps')}"
    return f"xl info virt_caps: {facts.xl_info.get('virt_caps', '')}"


@check("guest types", emulated=True)
def xen_guest_types_check(facts: HostFacts, s: Setting) -> tuple[bool, str]:
    types = xen_guest_types(facts)
    if types is None and s.emulated:
        return True, "every guest type: the emulated host has no /sys/hypervisor/properties/capabilities to say less"
    if types is None:
        return False, ("cannot tell which guests Xen runs: no /sys/hypervisor/properties/capabilities and no "
                       "virt_caps from xl info")
    names = ", ".join(t.value for t in types) or "none"
    if GuestType.HVM not in types:
        return bool(types), (f"{names} only: no HVM (the CPU has no VT-x/AMD-V under Xen), so HVM and PVH guests "
                             f"are not placed here [{_xen_caps_source(facts)}]")
    return True, f"{names} [{_xen_caps_source(facts)}]"


@check("xen version")
def xen_version(facts: HostFacts, _s: Setting) -> tuple[bool, str]:
    version = facts.xl_info.get("xen_version") or _hypervisor_version(facts, "Xen")
    return bool(version), f"Xen {version}" if version else "neither xl info nor libvirt names the Xen version"


@check("libxl")
def xen_libxl(facts: HostFacts, _s: Setting) -> tuple[bool, str]:
    if facts.libxl_versions:
        return True, f"libxenlight {max(facts.libxl_versions, key=_version_tuple)}"
    return False, "no libxenlight library found"


@check("xenstored")
def xenstored(facts: HostFacts, _s: Setting) -> tuple[bool, str]:
    store = sorted(facts.daemons & {"xenstored", "oxenstored"})
    return bool(store), f"{store[0]} running" if store else "not running"


@check("xenconsoled")
def xenconsoled(facts: HostFacts, _s: Setting) -> tuple[bool, str]:
    running = "xenconsoled" in facts.daemons
    return running, "running" if running else "not running"


@check("libvirt libxl driver")
def libvirt_libxl(facts: HostFacts, _s: Setting) -> tuple[bool, str]:
    return _libvirt(facts)


@check("/dev/kvm")
def xen_no_kvm(_facts: HostFacts, _s: Setting) -> tuple[bool, str]:
    return True, "not needed: a Xen dom0 runs guests through Xen"


XEN_CHECKS = HostChecks(
    checks=(xen_dom0, xen_hypervisor, xen_guest_types_check, xen_version, xen_libxl, xenstored, xenconsoled,
            libvirt_libxl, xen_no_kvm, bridge),
    guest_types=xen_guest_types)


# QEMU/KVM

@check("/dev/kvm")
def kvm_device(facts: HostFacts, s: Setting) -> tuple[bool, str]:
    if facts.kvm is KvmDevice.USABLE:
        return True, "usable" + (f" ({facts.kvm_detail})" if facts.kvm_detail else "")
    why = "absent" if facts.kvm is KvmDevice.ABSENT else f"present but not usable: {facts.kvm_detail or '?'}"
    if s.allow_tcg:
        return True, f"{why}; QEMU under TCG allowed (slow)"
    return False, f"{why}: no KVM"


@check("cpu virtualization")
def cpu_virtualization(facts: HostFacts, s: Setting) -> tuple[bool, str]:
    virt = sorted(facts.cpu_flags & set(VIRT_FLAGS))
    if virt:
        return True, f"cpu flags: {', '.join(virt)}"
    if facts.kvm is KvmDevice.USABLE:
        return True, "no vmx/svm in the cpu flags (nested or masked), but /dev/kvm creates VMs"
    return s.allow_tcg, "no vmx/svm in the cpu flags" + ("; TCG allowed" if s.allow_tcg else "")


@check("libvirt qemu driver")
def libvirt_qemu(facts: HostFacts, _s: Setting) -> tuple[bool, str]:
    return _libvirt(facts)


NO_HOST_CHECKS = HostChecks()  # a flavor without host checks (tests build such flavors)

KVM_CHECKS = HostChecks(checks=(kvm_device, cpu_virtualization, libvirt_qemu, bridge),
                        guest_types=lambda _facts: (GuestType.HVM,))


# ------------------------------------------------------------------------------------------ evaluation

@dataclass(frozen=True)
class HostCheckReport:
    ok: bool
    items: list[dict[str, Any]]
    guest_types: tuple[GuestType, ...]

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "items": self.items}


def evaluate(flavor: Flavor, facts: HostFacts, setting: Setting | None = None) -> HostCheckReport:
    """Run ``flavor``'s checks on ``facts``. An emulated host (libvirt's test driver presenting the hypervisor)
    runs only the checks that mean something there; guest types its facts do not tell are all of the flavor's
    (on a real host they are none, and the guest-types check says why)."""
    s = setting or Setting()
    checks = flavor.host_checks
    items: list[dict[str, Any]] = []
    if s.emulated:
        items.append({"name": "emulated", "ok": True,
                      "detail": f"libvirt's test driver presenting a {s.emulated} host"})
    for c in checks.checks:
        if s.emulated and not c.emulated:
            continue
        ok, detail = c.fn(facts, s)
        items.append({"name": c.name, "ok": ok, "detail": detail})
    told = checks.guest_types(facts)
    types = told if told is not None else (flavor.guest_types if s.emulated else ())
    return HostCheckReport(all(i["ok"] for i in items), items,
                           tuple(g for g in flavor.guest_types if g in types))


# ------------------------------------------------------------------------------------------ the remote probe

def probe_script(root: str = "") -> str:
    """A POSIX shell script printing ``key=value`` lines of every declared fact (``facts_from_probe`` reads
    them). ``/dev/kvm`` is tried with the KVM_GET_API_VERSION and KVM_CREATE_VM ioctls where python3 exists.
    ``root`` reads a tree elsewhere (tests compare it with the agent's reading of the same tree); ``xl info`` is
    asked only for the real root."""
    lines = ["set +e", f"R={shlex.quote(root.rstrip('/'))}"]
    for key, path in FILES.items():
        lines.append(f"[ -r \"$R{path}\" ] && echo \"file.{key}=$(tr '\\n' ' ' < \"$R{path}\")\"")
    flags = "|".join(VIRT_FLAGS)
    lines += [
        "for f in $(grep -m1 '^flags' \"$R/proc/cpuinfo\" 2>/dev/null | cut -d: -f2); do",
        f"  case $f in {flags}) echo \"cpu_flag=$f\";; esac",
        "done",
        "if [ -e \"$R/dev/kvm\" ]; then",
        "  if command -v python3 >/dev/null 2>&1; then",
        "    out=$(python3 -c 'import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR); "
        "print(fcntl.ioctl(fd, 0xAE00), fcntl.ioctl(fd, 0xAE01, 0))' \"$R/dev/kvm\" 2>&1)",
        "    if [ $? -eq 0 ]; then echo \"kvm=usable\"; echo \"kvm_detail=KVM API ${out%% *}, creates VMs\"",
        "    else echo \"kvm=present\"; echo \"kvm_detail=$(echo \"$out\" | tail -n 1)\"; fi",
        "  else echo \"kvm=present\"; echo \"kvm_detail=not tried (no python3 yet)\"; fi",
        "fi",
        f"for n in {' '.join(DAEMONS)}; do",
        "  for p in \"$R\"/proc/[0-9]*; do",
        "    if [ \"$(cat \"$p/comm\" 2>/dev/null)\" = \"$n\" ]; then echo \"daemon=$n\"; break; fi",
        "  done",
        "done",
        f"for f in {' '.join('$R' + g for g in LIBXL_GLOBS)}; do",
        f"  [ -e \"$f\" ] && echo \"libxl=${{f##*{LIBXL_SO}}}\"",
        "done",
        "if [ -z \"$R\" ] && [ -r /proc/xen/capabilities ] && command -v xl >/dev/null 2>&1; then",
        "  xl info 2>/dev/null | while IFS=: read -r k v; do",
        f"    case $(echo $k) in {'|'.join(XL_INFO_KEYS)}) echo \"xl.$(echo $k)=$(echo $v)\";; esac",
        "  done",
        "fi",
        "for d in \"$R\"/sys/class/net/*; do [ -d \"$d/bridge\" ] && echo \"bridge=${d##*/}\"; done",
        "exit 0",  # a fact not found is no failure of the probe
    ]
    return "\n".join(lines) + "\n"


def parse_lines(text: str) -> dict[str, list[str]]:
    """``key=value`` lines -> every value of each key, in order."""
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def facts_from_probe(lines: Mapping[str, list[str]]) -> HostFacts:
    """The facts in the parsed output of ``probe_script()``."""
    def one(key: str) -> str:
        return (lines.get(key) or [""])[0]
    kvm = one("kvm")
    return HostFacts(
        files={key: " ".join(lines[f"file.{key}"][0].split()) if f"file.{key}" in lines else None
               for key in FILES},
        cpu_flags=frozenset(lines.get("cpu_flag", [])),
        kvm=KvmDevice(kvm) if kvm in KvmDevice.__members__.values() else KvmDevice.ABSENT,
        kvm_detail=one("kvm_detail"),
        daemons=frozenset(d for d in lines.get("daemon", []) if d in DAEMONS),
        libxl_versions=tuple(v for v in lines.get("libxl", []) if v),
        xl_info={k: one(f"xl.{k}") for k in XL_INFO_KEYS if one(f"xl.{k}")},
        bridges=tuple(lines.get("bridge", [])),
    )


def libxl_version(path: str) -> str | None:
    """The version in a libxenlight library's file name, e.g. ``4.17.0`` of ``libxenlight.so.4.17.0``."""
    _, sep, version = path.rpartition(LIBXL_SO)
    return version or None if sep else None


def _hypervisor_version(facts: HostFacts, name: str) -> str:
    hv = facts.libvirt.hypervisor if facts.libvirt is not None and facts.libvirt.ok else ""
    word, _, version = hv.partition(" ")
    return version if word.lower() == name.lower() else ""


def _version_tuple(text: str) -> tuple[int, ...]:
    out = []
    for part in text.split("."):
        if not part.isdigit():
            break
        out.append(int(part))
    return tuple(out)
