"""Corral: manage Xen and KVM hosts through libvirt from one engine."""

__version__ = "0.1.0"
