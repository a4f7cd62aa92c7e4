"""Flavors: one per libvirt driver. ``get_flavor`` is the only way in."""

from __future__ import annotations

from corral.domain.flavors.base import Decision, Flavor, Outcome, Rule
from corral.domain.flavors.kvm import KVM, KVM_TCG
from corral.domain.flavors.xen import XEN

FLAVOR_NAMES = ("kvm", "xen")


class UnknownFlavor(ValueError):
    pass


def get_flavor(name: str, *, accel: str = "kvm") -> Flavor:
    """The flavor for a driver name; ``accel='tcg'`` picks QEMU without KVM."""
    if name == "xen":
        return XEN
    if name in ("kvm", "qemu"):
        return KVM_TCG if accel == "tcg" or name == "qemu" else KVM
    raise UnknownFlavor(f"unknown flavor {name!r}: expected one of {', '.join(FLAVOR_NAMES)}")


def all_flavors() -> list[Flavor]:
    return [KVM, KVM_TCG, XEN]


# the accelerations a QEMU host can be told to use, and the one without /dev/kvm: names come from the flavors
ACCELS: tuple[str, ...] = tuple(dict.fromkeys(f.accel for f in (KVM, KVM_TCG, XEN) if f.accel))
SOFTWARE_ACCEL: str = KVM_TCG.accel or ""


def flavor_for_domain_type(domain_type: str | None) -> Flavor:
    """The flavor that renders a libvirt ``<domain type>`` (kvm, qemu, xen); anything else reads as KVM's."""
    return next((f for f in all_flavors() if f.domain_type == domain_type), KVM)


__all__ = ["ACCELS", "FLAVOR_NAMES", "SOFTWARE_ACCEL", "Decision", "Flavor", "Outcome", "Rule", "UnknownFlavor",
           "all_flavors", "flavor_for_domain_type", "get_flavor"]
