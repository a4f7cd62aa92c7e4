"""Reconciling what agents report with the ``vms`` table, in batches.

The monitor hands in the reports of many hosts at once; ``apply_reports`` reads the rows concerned with a
few chunked queries, works out the differences in memory, and writes only the rows that changed with
executemany (ORM bulk UPDATE by primary key), plus one INSERT for newly found VMs and one for the events.
So the database cost is proportional to what changed, not to the number of VMs.

Rules (state names are the agent's: up, paused, shutting_down, down, crashed, unknown):
- A VM a host reports running (up, paused, shutting_down) is on that host, unless the database has it on
  another host that has not lost it (that host's own full report settles a move; the first host keeps a
  VM two hosts both report, as libvirt's test driver does with its default domain).
- A VM a host reports down or crashed is no longer on it, unless the database has it running elsewhere (a
  stale definition left on a former host is ignored).
- A VM the database has running on a host that the host's *full* report lacks went away: down, or, for an
  external VM, forgotten.
- A VM the engine has not seen is recorded; external VMs (``external: true``) as such. A Corral VM the
  database lost (restored backup) is recovered with its spec.
- VMs held by a running task (``busy``) are left alone: the task owns their state until it ends. So are VMs
  whose task ended after the report was taken (``HostReport.superseded``): a poll that read the host during a
  start (the domain not yet, or no longer, defined) or a pause, written after the task's answer, would undo
  it ('down, no longer on its host' after a start; 'paused' after the resume that followed).
- A VM ``starting`` belongs to the start task that claimed it, even before the task holds it busy (the claim
  is written first); an engine restart turns a leftover ``starting`` into down or unknown (``fail_orphans``).
- The domain whose UUID is all zeros is the host's own control domain (Xen's Domain-0, the same UUID on every
  Xen host): not a VM at all. A full report stores it on its host (``hosts.control_domain``); it never becomes a
  VM row, which would make the Domain-0s of all Xen hosts one VM, and a VM that could be stopped.
- A state read from an agent event keeps the event's time (``at``) as the time the VM changed state.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import msgspec
from sqlalchemy import delete, insert, or_, select, update
from sqlalchemy.orm import Session

from corral.engine.db.models import Host, Severity, Vm, VmState, utcnow
from corral.engine.events import event_row, record_many
from corral.engine.macs import hold_found

ON_HOST = {VmState.UP.value, VmState.PAUSED.value, VmState.SHUTTING_DOWN.value}
CONTROL_DOMAIN_UUID = "00000000-0000-0000-0000-000000000000"
KNOWN = {s.value for s in VmState}
CHUNK = 500


@dataclass
class HostReport:
    """VMs one host reported. ``full``: the whole list (a poll); otherwise single events.

    ``observed``: when the engine asked the agent (a poll) or heard the event (``time.monotonic()``);
    ``superseded``: VMs whose task ended after that (``Monitor`` fills it as it writes): what the report says
    of them was seen before the task's answer was written, and is older than it."""

    host_id: str
    vms: list[dict[str, Any]]
    full: bool
    observed: float | None = None
    superseded: frozenset[str] = frozenset()


@dataclass
class Outcome:
    updates: list[dict[str, Any]] = field(default_factory=list)
    inserts: list[dict[str, Any]] = field(default_factory=list)
    deletes: list[str] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    # host id -> its control domain as its full report showed it (None: it has none)
    control_domains: dict[str, dict[str, Any] | None] = field(default_factory=dict)


@dataclass
class Row:
    id: str
    name: str
    state: str
    host_id: str | None
    last_host_id: str | None
    external: bool
    changed_at: datetime | None = None  # when its state last changed (an event older than that is stale)


def _chunks(items: Sequence[str]) -> Iterable[Sequence[str]]:
    for i in range(0, len(items), CHUNK):
        yield items[i:i + CHUNK]


def load_rows(s: Session, host_ids: Sequence[str], vm_ids: Sequence[str]) -> dict[str, Row]:
    cols = (Vm.id, Vm.name, Vm.state, Vm.host_id, Vm.last_host_id, Vm.external, Vm.state_changed_at)
    rows: dict[str, Row] = {}
    conn = s.connection()  # plain rows: thousands per flush, the ORM's row handling would cost more than the query
    for part in _chunks(list(host_ids)):
        for r in conn.execute(select(*cols).where(Vm.host_id.in_(part))):
            rows[r[0]] = Row(*r)
    missing = [v for v in vm_ids if v not in rows]
    for part in _chunks(missing):
        for r in conn.execute(select(*cols).where(Vm.id.in_(part))):
            rows[r[0]] = Row(*r)
    return rows


def reason_of(info: dict[str, Any]) -> str:
    reason = info.get("reason")
    return reason if isinstance(reason, str) else ""


def agent_state(info: dict[str, Any]) -> str:
    state = str(info.get("state") or "unknown")
    return state if state in KNOWN else VmState.UNKNOWN.value


def _severity(state: str) -> Severity:
    if state == VmState.CRASHED.value:
        return Severity.ERROR
    if state == VmState.UNKNOWN.value:
        return Severity.WARNING
    return Severity.INFO


def compute(reports: list[HostReport], rows: dict[str, Row], host_clusters: dict[str, str],
            managed_names: set[str], busy: set[str]) -> Outcome:
    """The pure part: differences between reports and rows. ``rows`` is updated as changes are decided."""
    out = Outcome()
    now = utcnow()
    # host id -> ids of the rows on it, kept as rows move: a full report looks at its host's rows only
    on_host: dict[str | None, set[str]] = {}
    for r in rows.values():
        on_host.setdefault(r.host_id, set()).add(r.id)

    def change(row: Row, state: str, host_id: str | None, last_host_id: str | None, reason: str,
               at: Any = None) -> None:
        if (row.state, row.host_id, row.last_host_id) == (state, host_id, last_host_id):
            return
        when = at if at is not None else now
        if row.host_id != host_id:
            on_host.get(row.host_id, set()).discard(row.id)
            on_host.setdefault(host_id, set()).add(row.id)
        values: dict[str, Any] = {"id": row.id, "host_id": host_id, "last_host_id": last_host_id,
                                  "updated_at": now}
        if row.state != state:
            values.update(state=state, state_reason=reason, state_changed_at=when)
            event = event_row("vm_state", f"VM {row.name} is {state}" + (f" ({reason})" if reason else ""),
                              severity=_severity(state), object_type="vm", object_id=row.id,
                              detail={"from": row.state, "to": state, "host_id": host_id or last_host_id})
            event["time"] = when
            out.events.append(event)
        else:
            values["state"] = state
        out.updates.append(values)
        row.state, row.host_id, row.last_host_id = state, host_id, last_host_id
        if "state_changed_at" in values:
            row.changed_at = when

    for rep in reports:
        seen: set[str] = set()
        if rep.full:
            out.control_domains[rep.host_id] = None
        for info in rep.vms:
            vm_id = str(info.get("id") or info.get("vm_id") or "")
            if not vm_id:
                continue
            if vm_id == CONTROL_DOMAIN_UUID:
                if rep.full:
                    out.control_domains[rep.host_id] = control_domain(info)
                continue  # not a VM: a row the engine made of it before is dropped below, as gone
            seen.add(vm_id)
            if vm_id in busy or vm_id in rep.superseded:
                continue
            state = agent_state(info)
            reason = reason_of(info)
            at = info.get("at")
            row = rows.get(vm_id)
            if row is not None and at is not None and row.changed_at is not None and at < row.changed_at:
                # an event that happened before the row's last change (a task's answer, a newer event) arrived
                # late: applying it would undo a newer state (a 'paused' after the resume that ended it)
                continue
            if row is not None and row.state == VmState.STARTING.value:
                continue  # claimed by a start task that is not busy yet: it owns the state
            if row is None:
                if rep.full:
                    _insert(out, rows, info, rep.host_id, host_clusters, managed_names, state, now)
                    if vm_id in rows:
                        on_host.setdefault(rows[vm_id].host_id, set()).add(vm_id)
                continue
            if state in ON_HOST or state == VmState.UNKNOWN.value:
                if row.host_id not in (None, rep.host_id) and row.state != VmState.UNKNOWN.value:
                    continue  # its host still has it; that host's full report settles a move
                change(row, state, rep.host_id, rep.host_id, reason, at)
            elif row.host_id == rep.host_id:
                change(row, state, None, rep.host_id, reason, at)
            elif row.host_id is None:
                change(row, state, None, row.last_host_id or rep.host_id, reason, at)
        if not rep.full:
            continue
        for row_id in sorted(on_host.get(rep.host_id, set()) - seen - busy - rep.superseded):
            row = rows[row_id]
            if row.state == VmState.STARTING.value:
                continue
            if row.external:
                out.deletes.append(row.id)
                on_host[rep.host_id].discard(row.id)
                del rows[row.id]
            else:
                change(row, VmState.DOWN.value, None, None, "no longer on its host")
    return out


def control_domain(info: dict[str, Any]) -> dict[str, Any]:
    """What the host record shows of its control domain."""
    return {"id": CONTROL_DOMAIN_UUID, "name": str(info.get("name") or info.get("vm_name") or ""),
            "state": agent_state(info), "memory_mib": info.get("memory_mib"), "vcpus": info.get("vcpus")}


def _insert(out: Outcome, rows: dict[str, Row], info: dict[str, Any], host_id: str,
            host_clusters: dict[str, str], managed_names: set[str], state: str, now: Any) -> None:
    cluster = host_clusters.get(host_id)
    if cluster is None:
        return
    name = str(info.get("name") or info.get("vm_name") or info.get("id"))
    spec = info.get("spec")
    if isinstance(spec, bytes | bytearray):  # monitoring leaves specs undecoded until needed
        try:
            spec = msgspec.json.decode(spec)
        except msgspec.DecodeError:
            spec = None
    spec = spec if isinstance(spec, dict) else None
    external = bool(info.get("external", spec is None)) or spec is None or name in managed_names
    on_host = state in ON_HOST or state == VmState.UNKNOWN.value
    row = {"id": str(info["id"]), "name": name, "cluster_id": cluster, "external": external,
           "spec": spec, "memory_mib": int(info.get("memory_mib") or 0), "vcpus": int(info.get("vcpus") or 1),
           "state": state, "state_reason": reason_of(info),
           "host_id": host_id if on_host else None, "last_host_id": host_id, "placement": None,
           "created_at": now, "updated_at": now, "state_changed_at": now}
    out.inserts.append(row)
    if not external:
        managed_names.add(name)
    rows[row["id"]] = Row(row["id"], name, state, row["host_id"], host_id, external)
    kind = "external VM" if external else "VM recovered from its host"
    out.events.append(event_row("vm_found", f"{kind} {name} found on host", object_type="vm",
                                object_id=row["id"], detail={"host_id": host_id, "external": external}))


def apply_reports(s: Session, reports: list[HostReport], busy: set[str]) -> Outcome:
    """Read what the reports touch, compute, write the differences. Returns what was written."""
    if not reports:
        return Outcome()
    host_ids = sorted({r.host_id for r in reports})
    clusters: dict[str, str] = {}
    controls: dict[str, Any] = {}
    for part in _chunks(host_ids):
        for r in s.execute(select(Host.id, Host.cluster_id, Host.control_domain).where(Host.id.in_(part))):
            clusters[r[0]], controls[r[0]] = r[1], r[2]
    reports = [r for r in reports if r.host_id in clusters]  # a host removed meanwhile reports nothing
    # Hosts in the order they were added (ids are time-ordered), each host's reports in the order they came:
    # when two hosts report one VM in the same batch, the older host keeps it whichever poll answered first.
    reports.sort(key=lambda r: r.host_id)
    full_hosts = sorted({r.host_id for r in reports if r.full})
    vm_ids = sorted({str(v.get("id")) for r in reports for v in r.vms if v.get("id")})
    rows = load_rows(s, full_hosts, vm_ids)
    new_names = sorted({str(v.get("name")) for r in reports for v in r.vms if v.get("id") not in rows})
    managed: set[str] = set()
    for part in _chunks(new_names):
        managed.update(s.scalars(select(Vm.name).where(Vm.name.in_(part), Vm.external.is_(False))).all())
    out = compute(reports, rows, clusters, managed, busy)
    out.control_domains = {h: c for h, c in out.control_domains.items() if c != controls.get(h)}
    write(s, out)
    return out


def write(s: Session, out: Outcome) -> None:
    if out.inserts:
        s.execute(insert(Vm), out.inserts)
        hold_found(s, out.inserts)  # a recovered VM's MACs are taken (corral.engine.macs)
    if out.updates:
        s.execute(update(Vm), out.updates)
    for part in _chunks(out.deletes):
        s.execute(delete(Vm).where(Vm.id.in_(part)))
    if out.control_domains:
        s.execute(update(Host), [{"id": h, "control_domain": c} for h, c in out.control_domains.items()])
    record_many(s, out.events)


def mark_unreachable(s: Session, host_ids: Sequence[str], reason: str, busy: set[str]) -> int:
    """Hosts become ``unreachable`` (maintenance stays maintenance); their VMs ``unknown``, not down."""
    if not host_ids:
        return 0
    now = utcnow()
    s.execute(update(Host).where(Host.id.in_(host_ids), Host.state.notin_(["maintenance", "unreachable"]))
              .values(state="unreachable", state_reason=reason, updated_at=now))
    q = update(Vm).where(Vm.host_id.in_(host_ids), Vm.state != VmState.UNKNOWN.value)
    if busy:
        q = q.where(or_(Vm.id.notin_(sorted(busy))))
    result = s.execute(q.values(state=VmState.UNKNOWN.value, state_reason="host unreachable",
                                state_changed_at=now, updated_at=now).execution_options(synchronize_session=False))
    return int(getattr(result, "rowcount", 0) or 0)
