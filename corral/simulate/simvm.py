"""What the simulator's hosts are made of: libvirt's state numbers, the simulator's settings, one simulated
domain (``SimVm``) and its stats lines. Split from ``corral.simulate.sim`` (hosts and the fleet)."""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass
from typing import Any

from corral.domain.spec import VmSpec
from corral.simulate.templates import TEMPLATES

# libvirt's domain states and the reasons the simulation uses (values of libvirt's constants)
NOSTATE, RUNNING, BLOCKED, PAUSED, SHUTDOWN, SHUTOFF, CRASHED = range(7)
RUNNING_BOOTED, RUNNING_UNPAUSED = 1, 5
PAUSED_USER, PAUSED_IOERROR = 1, 5
SHUTOFF_UNKNOWN, SHUTOFF_SHUTDOWN, SHUTOFF_DESTROYED, SHUTOFF_CRASHED = 0, 1, 2, 3
SHUTDOWN_USER = 1
# lifecycle event details (libvirt's VIR_DOMAIN_EVENT_*_*)
STOPPED_SHUTDOWN, STOPPED_DESTROYED, STOPPED_CRASHED = 0, 1, 2
SUSPENDED_PAUSED, SUSPENDED_IOERROR = 0, 2
VIR_ERR_INTERNAL_ERROR = 1

# ``SimulatorSettings.xen_ratio`` is the share of hosts of the first flavor; the rest have the second
RATIO_FLAVOR, OTHER_FLAVOR = "xen", "kvm"

# whether generated VMs keep their spec JSON once rendered (~1 KB each: 50 MB for 50,000 VMs, for half the CPU
# time of a ``GET /v1/vms``); one switch for the process, set by the Simulator from its settings
CACHE_SPECS = [True]


@dataclass
class SimulatorSettings:
    hosts: int = 10
    vms_per_host: int = 20
    seed: int = 0
    xen_ratio: float = 0.5
    token: str = ""
    event_rate: float = 1.0  # random pauses and crashes per second, over the whole simulator
    running_ratio: float = 0.85  # generated VMs that run at start
    crash_share: float = 0.1  # of random disturbances, the share that crashes a VM (the rest pause it)
    resume_after: tuple[float, float] = (2.0, 30.0)  # a randomly paused VM resumes after this many seconds
    shutdown_seconds: tuple[float, float] = (0.05, 0.5)  # how long a guest takes to shut down
    cache_specs: bool = True  # keep each generated VM's spec JSON once rendered (faster lists, ~1 KB per VM)


def derive_token(seed: int) -> str:
    return hashlib.sha256(f"corral-simulate-token:{seed}".encode()).hexdigest()[:32]


class SimVm:
    """One domain. ``tmpl`` >= 0: a generated VM whose spec is that template (``spec_json`` caches it once
    rendered, unless ``SimulatorSettings.cache_specs`` is off); -1: its spec changed, ``spec_json`` holds it."""

    __slots__ = ("cpu_ns", "devices_cache", "domain_id", "fault", "gt", "max_mem", "max_vcpus", "mem", "name",
                 "reason", "resume_timer", "run_since", "shutdown_timer", "spec_json", "state", "tmpl", "util",
                 "uuid", "vcpus")

    def __init__(self, uuid: str, name: str, tmpl: int, spec_json: str | None, gt: str, mem: int, max_mem: int,
                 vcpus: int, max_vcpus: int, util: int) -> None:
        self.uuid = uuid
        self.name = name
        self.tmpl = tmpl
        self.spec_json = spec_json
        self.gt = gt  # the guest type the flavor resolved (the agent's ``Vm.guest_type``)
        self.mem = mem
        self.max_mem = max_mem
        self.vcpus = vcpus
        self.max_vcpus = max_vcpus
        self.util = util  # percent of its vCPUs the guest keeps busy
        self.state = SHUTOFF
        self.reason = SHUTOFF_UNKNOWN
        self.domain_id: int | None = None
        self.cpu_ns = 0
        self.run_since = 0.0  # monotonic time since which CPU time accrues; 0: none
        self.fault: str | None = None
        self.resume_timer: asyncio.TimerHandle | None = None
        self.shutdown_timer: asyncio.TimerHandle | None = None
        # the devices' JSON as last read back, and what it depends on (spec, guest type, domain id, running)
        self.devices_cache: tuple[tuple[Any, ...], str] | None = None

    @property
    def active(self) -> bool:
        return self.state not in (SHUTOFF, NOSTATE)

    @property
    def spec_text(self) -> str:
        """The spec as JSON; a generated VM's is rendered from its template the first time it is asked for."""
        if self.spec_json is not None:
            return self.spec_json
        text = TEMPLATES[self.tmpl].render(self.uuid, self.name, self.mem, self.vcpus)
        if CACHE_SPECS[0]:
            self.spec_json = text
        return text

    def spec(self) -> VmSpec:
        return VmSpec.model_validate_json(self.spec_text)

    def cpu_time(self, now: float) -> int:
        if not self.run_since:
            return self.cpu_ns
        return self.cpu_ns + int((now - self.run_since) * self.vcpus * self.util * 10_000_000)

    def accrue(self, now: float) -> None:
        self.cpu_ns = self.cpu_time(now)
        self.run_since = 0.0


_STATS_FORMATS: dict[tuple[bool, bool, int], str] = {}


def _stats_format(detailed: bool, active: bool, vcpus: int) -> str:
    """The stats object's inside with numbered holes, per (driver's detail, active, vCPUs): built once, then
    formatted."""
    key = (detailed, active, vcpus)
    fmt = _STATS_FORMATS.get(key)
    if fmt is None:
        names = ["balloon_current", "balloon_maximum", "vcpu_current", "vcpu_maximum"]
        if active:
            names = ["cpu_time", *(["cpu_user", "cpu_system"] if detailed else []), "balloon_current",
                     "balloon_maximum", *(["balloon_rss"] if detailed else []), "vcpu_current", "vcpu_maximum"]
            for i in range(vcpus):
                names += [f"vcpu_{i}_state", f"vcpu_{i}_time", *([f"vcpu_{i}_wait"] if detailed else [])]
        fmt = _STATS_FORMATS[key] = ",".join(f'"{n}":{{{j}}}' for j, n in enumerate(names))
    return fmt


class Raw:
    """JSON text to put in an answer as it is."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text
