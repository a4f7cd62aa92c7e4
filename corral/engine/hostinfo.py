"""Turning an agent's ``GET /v1/host`` answer into host columns and a host state.

Used when a host is added or re-activated and when monitoring sees an unreachable host come back: the
hardware check decides ``up`` or ``non_operational`` (with the failed checks as the reason). The check is
the agent's, and it is hypervisor-aware (a Xen dom0 has no /dev/kvm and passes).
"""

from __future__ import annotations

from typing import Any

from corral.domain.flavors import FLAVOR_NAMES
from corral.engine.db.models import HostState


def host_fields(info: dict[str, Any]) -> dict[str, Any]:
    """Columns of ``hosts`` filled from the agent's host document (missing keys leave defaults)."""
    cpu = info.get("cpu") or {}
    return {
        "hypervisor": info.get("hypervisor"),
        "flavor": info.get("flavor"),
        "accel": info.get("accel"),
        "emulated": bool(info.get("emulated", False)),
        "cpu_count": int(cpu.get("count") or 0),
        "cpu_model": cpu.get("model"),
        "cpu_flags": sorted({str(f) for f in cpu.get("flags") or []}),
        "memory_mib": int(info.get("memory_mib") or 0),
        "free_memory_mib": info.get("free_memory_mib"),
        "bridges": sorted({str(b) for b in info.get("bridges") or []}),
        "info": info,
    }


def evaluate(info: dict[str, Any]) -> tuple[HostState, str]:
    """``up``, or ``non_operational`` with the reason: the failed hardware checks, or a missing flavor."""
    check = info.get("hardware_check") or {}
    if not check.get("ok", False):
        failed = [f"{i.get('name')}: {i.get('detail')}" for i in check.get("items") or [] if not i.get("ok")]
        reason = "; ".join(failed) or "hardware check failed"
        return HostState.NON_OPERATIONAL, reason
    if info.get("flavor") not in FLAVOR_NAMES:
        return HostState.NON_OPERATIONAL, f"agent reports no known flavor ({info.get('flavor')!r})"
    return HostState.UP, ""


def host_identity(info: dict[str, Any]) -> str | None:
    """The host's identity in the agent's host document (``host_uuid``, corral.agent.identity), lower case;
    None from an agent that does not answer one (older agents, simulated hosts)."""
    value = info.get("host_uuid")
    return (value.strip().lower() or None) if isinstance(value, str) else None
