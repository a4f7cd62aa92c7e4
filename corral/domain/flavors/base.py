"""What a flavor is: a table of decisions per spec feature and guest type, a few limits, and host-side facts.

A flavor answers, for each feature a VmSpec can ask for, one of *native* (rendered as asked), *translated*
(rendered as an equivalent, named in ``value``) or *refused* (with a reason). The kvm and xen flavors are
instances of the same class and differ only by their data; the code that walks a spec and applies a table
lives in ``corral.domain.resolve``. The keys are ``features.Feature`` members, declared once.

The host-side fields (default URI, watchdog, log places, graceful destroy...) are what the agent, the deploy and
the simulator would otherwise find out by comparing a hypervisor's name: they ask the flavor instead, so the
flavors stay the only code that knows a hypervisor.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from corral.domain.flavors.features import Feature, MemoryAtStart
from corral.domain.flavors.hostcheck import NO_HOST_CHECKS, HostChecks
from corral.domain.spec import GuestType


class Outcome(StrEnum):
    NATIVE = "native"
    TRANSLATED = "translated"
    REFUSED = "refused"


@dataclass(frozen=True)
class Rule:
    """One cell of a flavor's table. ``value`` is what the feature becomes: libvirt vocabulary (a bus, a model,
    a mode) or, for the features of ``features.POLICY_TYPES``, a member of that feature's policy enum."""

    outcome: Outcome
    value: str | None = None
    reason: str = ""


def native(value: str | None = None, reason: str = "") -> Rule:
    return Rule(Outcome.NATIVE, value, reason)


def translated(value: str | None, reason: str) -> Rule:
    return Rule(Outcome.TRANSLATED, value, reason)


def refused(reason: str) -> Rule:
    return Rule(Outcome.REFUSED, None, reason)


# A cell applies to every guest type, or differs per guest type.
Cell = Rule | Mapping[GuestType, Rule]
Table = Mapping[Feature, Cell]


@dataclass(frozen=True)
class Decision:
    """What a flavor does with one field of one spec: shown by plans, enforced by render."""

    path: str
    feature: str
    outcome: Outcome
    detail: str

    def as_dict(self) -> dict[str, str]:
        return {"path": self.path, "feature": self.feature, "outcome": self.outcome.value, "detail": self.detail}


# Target device prefix of each libvirt disk bus; a libvirt fact, the same for every flavor.
BUS_PREFIX: Mapping[str, str] = {"virtio": "vd", "xen": "xvd", "ide": "hd", "sata": "sd", "scsi": "sd",
                                 "fdc": "fd"}


@dataclass(frozen=True, eq=False)  # compared and hashed by identity: flavors are module-level singletons
class Flavor:
    """One libvirt driver's way of running a VmSpec, and what the agent must do differently on its hosts."""

    name: str
    domain_type: str
    title: str
    guest_types: tuple[GuestType, ...]
    table: Table
    os_type: Mapping[GuestType, tuple[str, str | None]]
    mac_prefix: str
    min_memory_mib: Mapping[GuestType, int]
    max_vcpus: Mapping[GuestType, int]
    video: Mapping[str, tuple[str, int]]  # graphics type -> (video model, video RAM MiB), HVM only
    default_uri: str  # the libvirt URI of a host of this flavor
    accel: str | None = None  # kvm | tcg for QEMU; None where the hypervisor itself runs the guests
    # guests run on /dev/kvm (detection found it usable and libvirt offers kvm domains)
    needs_dev_kvm: bool = False
    hvm_features: tuple[str, ...] = ("acpi", "apic", "pae")
    bus_slots: Mapping[str, int] = field(default_factory=lambda: {"ide": 4})
    # console targets a guest can have only one of (Xen: the single PV console hvc0)
    single_console_targets: frozenset[str] = frozenset()
    # the hypervisor's device model (qemu) can die while libvirt still says running [L7]: the agent watches it
    device_model_watchdog: bool = False
    # libvirt's graceful destroy (VIR_DOMAIN_DESTROY_GRACEFUL) exists; else the agent destroys at once [L16]
    graceful_destroy: bool = True
    # libvirt answers node CPU times (virNodeGetCPUStats); libxl has none, the agent reports the count alone
    node_cpu_stats: bool = True
    # where the console daemon logs a guest's PV console, relative to the agent's console dir ({name} = domain
    # name), for consoles the flavor does not log through libvirt (ConsoleLog.DAEMON); None: no such daemon
    console_daemon_log: str | None = None
    # host logs that hold the cause of a failed start ({name} = domain name): added to the start's error
    driver_logs: tuple[str, ...] = ()
    # host tools the agent uses on this flavor's hosts (reported in /v1/host)
    host_tools: tuple[str, ...] = ("ip", "qemu-img")
    # the hardware check of a host of this flavor (run by the agent and by the deploy; corral.domain.flavors.hostcheck)
    host_checks: HostChecks = NO_HOST_CHECKS

    def rule(self, feature: Feature, guest_type: GuestType) -> Rule:
        cell = self.table.get(feature)
        if cell is None:
            return refused(f"{self.title} has no rule for {feature}")
        if isinstance(cell, Rule):
            return cell
        return cell.get(guest_type) or refused(f"not available for {guest_type.value} guests on {self.title}")

    def features(self) -> list[Feature]:
        return list(self.table)

    def memory_at_start_mib(self, guest_type: GuestType, memory_mib: int, max_memory_mib: int) -> int:
        """What a VM takes from the host when it starts: its memory, or its maximum where the flavor starts it
        at max and lowers the balloon afterwards (the scheduler must count the peak, not the target)."""
        if max_memory_mib > memory_mib and \
                self.rule(Feature.MEMORY_BALLOON_HEADROOM, guest_type).value is MemoryAtStart.AT_MAX_THEN_BALLOON:
            return max_memory_mib
        return memory_mib
