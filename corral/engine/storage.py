"""Storage domains on their hosts: each domain is a libvirt storage pool of the same name on every host of its
cluster, which the engine asks the host's agent to define and start (``PUT /v1/storage/pools/{name}``).

The engine realises a domain on a host when the domain is created (every up host of its cluster), when a host
is activated (every domain of its cluster: ``hostops.activate``), and after a host's full monitoring poll
(``Monitor.refresh_storage``: one ``GET /v1/storage/pools`` per host per full cycle; a pool that is missing or
not running there is put again, so a host that comes back, or an NFS server that answers again, heals by
itself). What each host answered is one ``storage_domain_hosts`` row: ``active`` with the pool's capacity and
free space, or ``error`` with the reason (the agent's refusal, libvirt's mount error, no answer). A row is
written only when it changed (free space: by more than 0.1% of the capacity), so monitoring's cost follows the
changes, not the number of hosts.

A host that is not up shows its rows as ``inactive`` (``host_view``): derived when read, not written.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from corral.engine.agent_client import AgentClient, AgentError, AgentTarget, AgentUnreachable
from corral.engine.db.models import (
    DomainHostState,
    Host,
    HostState,
    Severity,
    StorageDomain,
    StorageDomainHost,
    utcnow,
)
from corral.engine.db.session import Database
from corral.engine.events import record

log = logging.getLogger(__name__)

# the libvirt pool type of each domain type
POOL_TYPES = {"dir": "dir", "nfs": "netfs", "logical": "logical"}
LOCAL_TYPES = ("dir", "logical")
# hosts realised at once when a domain is created
CONCURRENCY = 32
# what the agent's pool states mean for the domain on that host
_POOL_ERRORS = ("degraded", "inaccessible")


def is_local(domain_type: str) -> bool:
    """A local domain is one directory or volume group per host, and each of its volumes is on one host."""
    return domain_type in LOCAL_TYPES


def pool_body(d: StorageDomain | DomainDef) -> dict[str, Any]:
    """The agent's ``PUT /v1/storage/pools/{name}`` body for a domain."""
    body: dict[str, Any] = {"type": POOL_TYPES[d.type]}
    if d.path:
        body["path"] = d.path
    if d.type == "nfs":
        src = d.source or {}
        body["source"] = {"host": src.get("host"), "dir": src.get("dir"), "format": "nfs"}
        extras = {"port": src.get("port"), "protocol_version": src.get("nfs_version"),
                  "mount_options": src.get("mount_options")}
        body["source"].update({k: v for k, v in extras.items() if v})
    elif d.type == "logical":
        body["source"] = {"vg": (d.source or {}).get("vg")}
    return body


@dataclass(frozen=True)
class DomainDef:
    """What realising needs of a domain, read once (no ORM object crosses threads)."""

    id: str
    name: str
    type: str
    path: str | None
    source: dict[str, Any] | None

    @classmethod
    def of(cls, d: StorageDomain) -> DomainDef:
        return cls(d.id, d.name, d.type, d.path, d.source)


@dataclass(frozen=True)
class Seen:
    """A domain on one host, as the agent answered: the row to write."""

    state: str
    capacity_bytes: int | None = None
    free_bytes: int | None = None
    reason: str = ""


def matches(pool: dict[str, Any], d: DomainDef) -> bool:
    """Is the host's pool of that name this domain (type, path, source)? One defined otherwise is put again,
    which the agent refuses (409, naming what differs): the host shows that reason."""
    want = pool_body(d)
    if pool.get("type") != want["type"] or ("path" in want and pool.get("path") != want["path"]):
        return False
    have = pool.get("source") or {}
    # mount options are not compared: libvirt's test driver does not keep them (the agent does not either)
    return all(have.get(k) == v for k, v in (want.get("source") or {}).items() if k != "mount_options")


def from_pool(pool: dict[str, Any]) -> Seen:
    """The agent's Pool as a row: running is active; degraded or inaccessible an error with libvirt's reason;
    inactive or building (not started yet) inactive."""
    state = str(pool.get("state") or "")
    capacity, free = _int(pool.get("capacity_bytes")), _int(pool.get("available_bytes"))
    if state == "running":
        return Seen(DomainHostState.ACTIVE.value, capacity, free)
    reason = str(pool.get("error") or f"the pool is {state or 'in an unknown state'}")
    if state in _POOL_ERRORS:
        return Seen(DomainHostState.ERROR.value, capacity, free, reason)
    return Seen(DomainHostState.INACTIVE.value, capacity, free, reason)


def from_error(exc: AgentError) -> Seen:
    if isinstance(exc, AgentUnreachable):
        return Seen(DomainHostState.ERROR.value, reason=f"cannot reach the agent: {exc.message}")
    if no_storage_api(exc):
        return Seen(DomainHostState.ERROR.value, reason=f"the agent has no storage API ({exc.message})")
    return Seen(DomainHostState.ERROR.value, reason=f"{exc.code}: {exc.message}")


def no_storage_api(exc: AgentError) -> bool:
    """An agent older than the storage API answers "no such path" (404/405) for all of it."""
    return exc.status in (404, 405) and exc.message.startswith("no such path")


def gone(exc: AgentError) -> bool:
    """The pool or volume is not there (any other 404)."""
    return exc.status == 404 and not no_storage_api(exc)


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


async def put_domain(agents: AgentClient, target: AgentTarget, d: DomainDef) -> Seen:
    """Define and start the domain's pool on one host; what it is there now."""
    try:
        return from_pool(await agents.put_pool(target, d.name, pool_body(d)))
    except AgentError as exc:
        return from_error(exc)


def _changed(row: StorageDomainHost | None, seen: Seen) -> bool:
    if row is None:
        return True
    if (row.state, row.reason, row.capacity_bytes) != (seen.state, seen.reason, seen.capacity_bytes):
        return True
    if (row.free_bytes is None) != (seen.free_bytes is None):
        return True
    if row.free_bytes is None or seen.free_bytes is None:
        return False
    return abs(row.free_bytes - seen.free_bytes) * 1000 > max(seen.capacity_bytes or 0, 1)


def write_seen(s: Session, host_id: str, seen: dict[str, Seen]) -> int:
    """Write the rows of one host that changed (domain id -> what was seen); how many were written. Rows of
    domains deleted meanwhile are skipped."""
    if not seen:
        return 0
    rows = {r.domain_id: r for r in s.scalars(select(StorageDomainHost).where(
        StorageDomainHost.host_id == host_id, StorageDomainHost.domain_id.in_(list(seen))))}
    existing = {r[0]: r[1] for r in s.execute(select(StorageDomain.id, StorageDomain.name).where(
        StorageDomain.id.in_(list(seen))))}
    host = s.get(Host, host_id)
    if host is None:
        return 0
    n = 0
    now = utcnow()
    for domain_id, v in seen.items():
        row = rows.get(domain_id)
        if domain_id not in existing or not _changed(row, v):
            continue
        if row is None:
            row = StorageDomainHost(domain_id=domain_id, host_id=host_id)
            s.add(row)
        else:
            _transition_event(s, host, existing[domain_id], domain_id, row.state, v)
        row.state, row.capacity_bytes, row.free_bytes, row.reason = v.state, v.capacity_bytes, v.free_bytes, v.reason
        row.updated_at = now
        n += 1
    return n


def _transition_event(s: Session, host: Host, domain: str, domain_id: str, was: str, seen: Seen) -> None:
    """A domain that stops being active on a host is recorded once, with the reason (VMs that need it are not
    placed there meanwhile: ``corral.engine.scheduler``); one that becomes active again after an error too."""
    active = DomainHostState.ACTIVE.value
    detail = {"domain_id": domain_id, "domain": domain, "host": host.name, "state": seen.state, "reason": seen.reason}
    if was == active and seen.state != active:
        record(s, "storage_unreachable", f"storage domain {domain} is {seen.state} on host {host.name}: "
               f"{seen.reason or 'no reason given'}; VMs that need it are not placed there",
               severity=Severity.WARNING, object_type="host", object_id=host.id, detail=detail)
    elif was == DomainHostState.ERROR.value and seen.state == active:
        record(s, "storage_reachable", f"storage domain {domain} is active again on host {host.name}",
               object_type="host", object_id=host.id, detail=detail)


async def save(db: Database, host_id: str, seen: dict[str, Seen]) -> None:
    try:
        await db.run(lambda s: write_seen(s, host_id, seen))
    except IntegrityError:  # another writer inserted the same row (or the host went) meanwhile: write over it
        await db.run(lambda s: write_seen(s, host_id, seen))


# --- a domain on the hosts of its cluster --------------------------------------------------------------------

def up_hosts(s: Session, cluster_id: str) -> list[tuple[str, AgentTarget]]:
    rows = s.execute(select(Host.id, Host.agent_url, Host.agent_token).where(
        Host.cluster_id == cluster_id, Host.state == HostState.UP.value)).all()
    return [(r[0], AgentTarget(r[1], r[2])) for r in rows if not r[1].startswith("ssh://")]


async def realise_domain(db: Database, agents: AgentClient, d: DomainDef,
                         hosts: list[tuple[str, AgentTarget]]) -> dict[str, Seen]:
    """Put a new domain's pool on each (up) host of its cluster, at most ``CONCURRENCY`` at once, and write
    what each answered. Host id -> what it is there."""
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one(host_id: str, target: AgentTarget) -> tuple[str, Seen]:
        async with gate:
            seen = await put_domain(agents, target, d)
        await save(db, host_id, {d.id: seen})
        return host_id, seen

    return dict(await asyncio.gather(*(one(h, t) for h, t in hosts)))


async def remove_domain(agents: AgentClient, name: str, hosts: list[tuple[str, str, AgentTarget]]) -> list[str]:
    """Undefine a deleted domain's pool on its hosts (volumes on disk are kept); the failures, one line per host."""
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one(host_name: str, target: AgentTarget) -> str | None:
        async with gate:
            try:
                await agents.delete_pool(target, name)
            except AgentError as exc:
                if gone(exc):
                    return None
                return f"{host_name}: {exc.code}: {exc.message}"
        return None

    out = await asyncio.gather(*(one(n, t) for _, n, t in hosts))
    return [o for o in out if o]


# --- the domains of one host -------------------------------------------------------------------------------

def _host_domains(s: Session, host_id: str) -> list[DomainDef]:
    """The domains of the host's cluster."""
    cluster_id = s.scalar(select(Host.cluster_id).where(Host.id == host_id))
    if cluster_id is None:
        return []
    return [DomainDef.of(d) for d in s.scalars(select(StorageDomain).where(
        StorageDomain.cluster_id == cluster_id).order_by(StorageDomain.id))]


async def sync_host(db: Database, agents: AgentClient, host_id: str, target: AgentTarget, *,
                    put_all: bool) -> dict[str, Seen]:
    """Realise the domains of an up host's cluster on it and record what it said (domain id -> seen).

    ``put_all`` (a host being activated): every pool is put. Otherwise (after a full poll): one ``GET`` of the
    host's pools; only pools missing, not running or defined otherwise are put again. A host whose cluster has
    no domain is not asked anything."""
    domains = await db.run_read(lambda s: _host_domains(s, host_id))
    if not domains:
        return {}
    seen: dict[str, Seen] = {}
    todo = domains
    if not put_all:
        try:
            pools = {str(p.get("name")): p for p in await agents.storage_pools(target)}
        except AgentError as exc:
            error = from_error(exc)
            seen = {d.id: error for d in domains}
            todo = []
        else:
            todo = []
            for d in domains:
                pool = pools.get(d.name)
                if pool is not None and matches(pool, d) and from_pool(pool).state == DomainHostState.ACTIVE.value:
                    seen[d.id] = from_pool(pool)
                else:
                    todo.append(d)
    for d in todo:  # one host: its pools one after the other
        seen[d.id] = await put_domain(agents, target, d)
    await save(db, host_id, seen)
    return seen


async def activate_host(db: Database, agents: AgentClient, host_id: str, target: AgentTarget) -> None:
    """A host became up (``hostops.activate``): its cluster's domains are put on it. Never fails the
    activation: what went wrong is in the host's rows (``error`` with the reason)."""
    try:
        await sync_host(db, agents, host_id, target, put_all=True)
    except Exception:
        log.exception("realising the storage domains of host %s", host_id)


async def refresh_host(db: Database, agents: AgentClient, host_id: str, target: AgentTarget) -> None:
    """After a full monitoring poll of an up host: capacity, free space and state of its domains."""
    try:
        await sync_host(db, agents, host_id, target, put_all=False)
    except Exception:
        log.exception("reading the storage pools of host %s", host_id)


# --- reading -----------------------------------------------------------------------------------------------

def host_view(row_state: str | None, row_reason: str | None, host_state: str) -> tuple[str, str]:
    """A domain's state on a host as shown: the row's while the host is up; ``inactive`` otherwise."""
    if host_state != HostState.UP.value:
        return DomainHostState.INACTIVE.value, f"host is {host_state}"
    if row_state is None:
        return DomainHostState.INACTIVE.value, "not realised on this host yet"
    return row_state, row_reason or ""


def host_storage(s: Session, host: Host) -> list[dict[str, Any]]:
    """The storage domains of a host's cluster as this host has them (``GET /hosts/{id}``'s ``storage``): a
    domain that is not ``active`` here, with its reason, is one the host cannot serve VMs that need it from."""
    rows = {r.domain_id: r for r in s.scalars(select(StorageDomainHost).where(StorageDomainHost.host_id == host.id))}
    out = []
    for d in s.scalars(select(StorageDomain).where(StorageDomain.cluster_id == host.cluster_id)
                       .order_by(StorageDomain.name)):
        row = rows.get(d.id)
        state, reason = host_view(row.state if row else None, row.reason if row else None, host.state)
        out.append({"domain_id": d.id, "domain": d.name, "type": d.type, "shared": not is_local(d.type),
                    "state": state, "reason": reason, "capacity_bytes": row.capacity_bytes if row else None,
                    "free_bytes": row.free_bytes if row else None, "updated_at": row.updated_at if row else None})
    return out


# --- images ------------------------------------------------------------------------------------------------

# An ISO 9660 image has its first volume descriptor at sector 16 (byte 32768): a type byte, then "CD001".
ISO_MAGIC = b"CD001"
ISO_MAGIC_OFFSET = 32769
ISO_HEAD = ISO_MAGIC_OFFSET + len(ISO_MAGIC)


def is_iso(head: bytes) -> bool:
    """Are these first bytes of a file an ISO 9660 image? Probed from the bytes, never from the name."""
    return head[ISO_MAGIC_OFFSET:ISO_HEAD] == ISO_MAGIC


class HeadSniffer:
    """Keeps the first ``ISO_HEAD`` bytes of a stream passing through (the rest is not held), and counts it."""

    def __init__(self) -> None:
        self._head = bytearray()
        self.count = 0

    def feed(self, chunk: bytes) -> None:
        if len(self._head) < ISO_HEAD:
            self._head += chunk[:ISO_HEAD - len(self._head)]
        self.count += len(chunk)

    @property
    def head(self) -> bytes:
        return bytes(self._head)
