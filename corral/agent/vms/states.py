"""The state names the agent answers for libvirt's (state, reason): shared with the simulator, which must
answer exactly alike."""

from __future__ import annotations

import libvirt

STATE_NAMES = {
    libvirt.VIR_DOMAIN_NOSTATE: "unknown", libvirt.VIR_DOMAIN_RUNNING: "up", libvirt.VIR_DOMAIN_BLOCKED: "up",
    libvirt.VIR_DOMAIN_PAUSED: "paused", libvirt.VIR_DOMAIN_SHUTDOWN: "shutting_down",
    libvirt.VIR_DOMAIN_SHUTOFF: "down", libvirt.VIR_DOMAIN_CRASHED: "crashed",
    libvirt.VIR_DOMAIN_PMSUSPENDED: "paused",
}
LIBVIRT_STATES = {
    libvirt.VIR_DOMAIN_NOSTATE: "nostate", libvirt.VIR_DOMAIN_RUNNING: "running",
    libvirt.VIR_DOMAIN_BLOCKED: "blocked", libvirt.VIR_DOMAIN_PAUSED: "paused",
    libvirt.VIR_DOMAIN_SHUTDOWN: "shutdown", libvirt.VIR_DOMAIN_SHUTOFF: "shutoff",
    libvirt.VIR_DOMAIN_CRASHED: "crashed", libvirt.VIR_DOMAIN_PMSUSPENDED: "pmsuspended",
}
INACTIVE = (libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_NOSTATE)  # states without a domain id or CPU time

_SHUTOFF, _SHUTOFF_CRASHED = libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_SHUTOFF_CRASHED


def state_name(state: int, reason: int) -> str:
    if state == _SHUTOFF and reason == _SHUTOFF_CRASHED:
        return "crashed"
    return STATE_NAMES.get(state, "unknown")


def is_active(dom: libvirt.virDomain) -> bool:
    """Whether the domain runs; one that went away meanwhile (libvirt answers an error) does not."""
    try:
        return bool(dom.isActive())
    except libvirt.libvirtError:
        return False
