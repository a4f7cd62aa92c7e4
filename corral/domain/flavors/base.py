"""What a flavor is: a table of decisions per spec feature and guest type, plus a few limits.

A flavor answers, for each feature a VmSpec can ask for, one of *native* (rendered as asked), *translated*
(rendered as an equivalent, named in ``value``) or *refused* (with a reason). The kvm and xen flavors are
instances of the same class and differ only by their tables; the code that walks a spec and applies a
table lives in ``corral.domain.resolve``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from corral.domain.spec import GuestType


class Outcome(StrEnum):
    NATIVE = "native"
    TRANSLATED = "translated"
    REFUSED = "refused"


@dataclass(frozen=True)
class Rule:
    """One cell of a flavor's table. ``value`` is what the feature becomes (a bus, a model, a mode)."""

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


@dataclass(frozen=True)
class Flavor:
    """One libvirt driver's way of running a VmSpec."""

    name: str
    domain_type: str
    title: str
    guest_types: tuple[GuestType, ...]
    table: Mapping[str, Cell]
    os_type: Mapping[GuestType, tuple[str, str | None]]
    mac_prefix: str
    min_memory_mib: Mapping[GuestType, int]
    max_vcpus: Mapping[GuestType, int]
    video: Mapping[str, tuple[str, int]]  # graphics type -> (video model, video RAM MiB), HVM only
    hvm_features: tuple[str, ...] = ("acpi", "apic", "pae")
    bus_slots: Mapping[str, int] = field(default_factory=lambda: {"ide": 4})
    # (path, feature, guest type, what was asked) -> (rule, decision): the table never changes, so a
    # decision once taken is reused (an agent renders the same few shapes of VM over and over)
    decided: dict[tuple[str, str, GuestType, str | None], tuple[Rule, Decision]] = field(
        default_factory=dict, init=False, compare=False, repr=False)

    def rule(self, feature: str, guest_type: GuestType) -> Rule:
        cell = self.table.get(feature)
        if cell is None:
            return refused(f"{self.title} has no rule for {feature}")
        if isinstance(cell, Rule):
            return cell
        return cell.get(guest_type) or refused(f"not available for {guest_type.value} guests on {self.title}")

    def features(self) -> list[str]:
        return list(self.table)
