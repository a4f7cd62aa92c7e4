"""Read-only aggregates the REST API has no endpoint for: counts by state for the dashboard and lists, and
per-host figures for a page of hosts. Each is one GROUP BY or one ``IN`` query over indexed columns, so the
cost does not grow with the number of VMs listed elsewhere (the lists themselves page through the API).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from corral.domain.flavors import all_flavors
from corral.engine.db.models import RUNNING_STATES, Event, Host, HostState, Vm

HOST_TROUBLE = {HostState.UNREACHABLE.value: 0, HostState.NON_OPERATIONAL.value: 1,
                HostState.INSTALLING.value: 2, HostState.MAINTENANCE.value: 3}
RUNNING = [s.value for s in RUNNING_STATES]


def last_event_id(s: Session) -> int:
    return int(s.scalar(select(func.max(Event.id))) or 0)


def dashboard(s: Session) -> dict[str, Any]:
    hosts_by_state = {r[0]: int(r[1]) for r in s.execute(select(Host.state, func.count()).group_by(Host.state))}
    by_hv: dict[str, int] = {}
    for hv, emulated, n in s.execute(select(Host.hypervisor, Host.emulated, func.count())
                                     .group_by(Host.hypervisor, Host.emulated)):
        key = hypervisor_label(hv, emulated)
        by_hv[key] = by_hv.get(key, 0) + int(n)
    vms_by_state = {r[0]: int(r[1]) for r in s.execute(select(Vm.state, func.count()).group_by(Vm.state))}
    order = case(HOST_TROUBLE, value=Host.state, else_=9)
    failing = [{"id": h.id, "name": h.name, "state": h.state, "state_reason": h.state_reason,
                "hypervisor": hypervisor_label(h.hypervisor, h.emulated)}
               for h in s.scalars(select(Host).where(Host.state != HostState.UP.value)
                                  .order_by(order, Host.name).limit(20))]
    failing_total = sum(n for st, n in hosts_by_state.items() if st != HostState.UP.value)
    return {"hosts_by_state": hosts_by_state, "hosts_by_hypervisor": by_hv, "vms_by_state": vms_by_state,
            "hosts_total": sum(hosts_by_state.values()), "vms_total": sum(vms_by_state.values()),
            "failing": failing, "failing_total": failing_total, "last_event": last_event_id(s)}


def host_extras(s: Session, ids: list[str]) -> dict[str, dict[str, Any]]:
    """Versions, running VM count and committed memory for a page of hosts."""
    if not ids:
        return {}
    out: dict[str, dict[str, Any]] = {i: {"running_vms": 0, "committed_memory_mib": 0} for i in ids}
    for hid, info in s.execute(select(Host.id, Host.info).where(Host.id.in_(ids))):
        info = info or {}
        cpu = info.get("cpu") or {}
        out[hid].update(libvirt_version=info.get("libvirt_version"), hypervisor_version=info.get("hypervisor_version"),
                        cpu_vendor=cpu.get("vendor"), cpu_arch=cpu.get("arch"))
    for hid, n, mem in s.execute(select(Vm.host_id, func.count(), func.coalesce(func.sum(Vm.memory_mib), 0))
                                 .where(Vm.host_id.in_(ids), Vm.state.in_(RUNNING)).group_by(Vm.host_id)):
        out[str(hid)].update(running_vms=int(n), committed_memory_mib=int(mem))
    return out


def count_vms(s: Session, *, state: str | None, host_id: str | None, cluster_id: str | None, name: str | None,
              external: bool | None) -> int:
    q = select(func.count()).select_from(Vm)
    if state:
        q = q.where(Vm.state == state)
    if host_id:
        q = q.where(Vm.host_id == host_id)
    if cluster_id:
        q = q.where(Vm.cluster_id == cluster_id)
    if name:
        q = q.where(Vm.name == name)
    if external is not None:
        q = q.where(Vm.external.is_(external))
    return int(s.scalar(q) or 0)


def host_choices(s: Session, limit: int = 500) -> list[dict[str, Any]]:
    """Hosts for pickers (name, state, hypervisor), up hosts first."""
    up_first = case({HostState.UP.value: 0}, value=Host.state, else_=1)
    return [{"id": h.id, "name": h.name, "state": h.state, "flavor": h.flavor,
             "hypervisor": hypervisor_label(h.hypervisor, h.emulated), "cluster_id": h.cluster_id}
            for h in s.execute(select(Host.id, Host.name, Host.state, Host.flavor, Host.hypervisor, Host.emulated,
                                      Host.cluster_id).order_by(up_first, Host.name).limit(limit))]


# A host's ``hypervisor`` is the libvirt domain type its flavor renders (xen, kvm, qemu), so the flavor names it;
# libvirt's test driver is no flavor's (a test-driver host emulates one, and says so with ``emulated``).
NO_FLAVOR = {"test": "test driver"}


def hypervisor_labels() -> dict[str, str]:
    """Display names by ``Host.hypervisor``: each flavor's ``title`` under its domain type."""
    return {**NO_FLAVOR, **{f.domain_type: f.title for f in all_flavors()}}


def hypervisor_label(hv: str | None, emulated: bool = False) -> str:
    label = hypervisor_labels().get(hv or "", hv or "unknown")
    return f"{label} (emulated)" if emulated else label
