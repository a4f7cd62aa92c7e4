"""``/api/v1/storage-domains`` and ``/api/v1/volumes``: where disks live, and the disks (issue 12, first slice).

A storage domain belongs to a cluster and is a libvirt storage pool on every host of it (``corral.engine.storage``
realises it); ``dir`` and ``logical`` are local (one directory or volume group per host; a volume is on one host,
``host_id``), ``nfs`` is shared (one export mounted by every host; a volume is on all of them). Creating and
deleting a volume are tasks; each refusal names its field.
"""

from __future__ import annotations

import posixpath
import re
from typing import Any, Literal, cast

from fastapi import APIRouter, Response
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from corral.engine import storage
from corral.engine.agent_client import AgentError, AgentTarget
from corral.engine.api.clusters import default_cluster
from corral.engine.api.deps import After, Ctx, Limit, find_cluster, find_unique, page
from corral.engine.api.schemas import ACCEPTED, ERRORS, Out, Page, TaskOut
from corral.engine.db.models import (
    RUNNING_STATES,
    Cluster,
    DomainHostState,
    Host,
    HostState,
    Severity,
    StorageDomain,
    StorageDomainHost,
    Task,
    TaskState,
    Vm,
    Volume,
    VolumeState,
)
from corral.engine.errors import ApiError, Conflict, Invalid, NotFound
from corral.engine.events import record
from corral.engine.ids import new_id
from corral.engine.tasks import TaskContext

domains_router = APIRouter(prefix="/storage-domains", tags=["storage"], responses=ERRORS)
volumes_router = APIRouter(prefix="/volumes", tags=["storage"], responses=ERRORS)
router = APIRouter()

# the agent's pool and volume names (docs/agent-api.md): a storage domain is the pool of its name on each host
NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
_NFS_HOST = re.compile(r"^[A-Za-z0-9.:\[\]_-]{1,255}$")
_VG = re.compile(r"^[A-Za-z0-9+_.][A-Za-z0-9+_.-]{0,127}$")
_MOUNT_OPTION = re.compile(r"^[A-Za-z0-9_]{1,64}(=[A-Za-z0-9._:@/+-]{1,255})?$")  # the agent's rule
MAX_VOLUME_BYTES = 1 << 50  # 1 PiB


# --- bodies and answers ------------------------------------------------------------------------------------

class StorageSourceIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    host: str | None = Field(None, description="nfs: the NFS server")
    dir: str | None = Field(None, description="nfs: the exported directory")
    vg: str | None = Field(None, description="logical: the LVM volume group")
    port: int | None = Field(None, ge=1, le=65535, description="nfs: the server's NFS port (default 2049)")
    nfs_version: Literal[3, 4] | None = Field(None, description="nfs: mount with this NFS version (nfsvers=N); "
                                              "4 for a server that speaks NFSv4 only")
    mount_options: list[str] | None = Field(None, max_length=16, description="nfs: further mount options, each "
                                            "'name' or 'name=value' (e.g. 'soft', 'timeo=50')")


class StorageDomainIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=NAME, description="also the libvirt pool's name on each host")
    type: Literal["dir", "nfs", "logical"]
    path: str | None = Field(None, max_length=1024, description="dir: the directory on each host; nfs: where "
                             "each host mounts the export")
    source: StorageSourceIn | None = Field(None, description="nfs: {host, dir}; logical: {vg}")
    cluster: str | None = Field(None, description="cluster id or name; default: the 'default' cluster")


class DomainHostOut(BaseModel):
    host_id: str
    host: str
    host_state: str
    state: str
    reason: str
    capacity_bytes: int | None
    free_bytes: int | None
    updated_at: Any = None


class StorageDomainOut(Out):
    id: str
    name: str
    cluster_id: str
    cluster: str | None = None
    type: str
    shared: bool = False
    path: str | None
    source: dict[str, Any] | None
    created_at: Any
    hosts_total: int = 0
    hosts_active: int = 0
    hosts_error: int = 0
    volumes: int = 0


class StorageDomainDetail(StorageDomainOut):
    hosts: list[DomainHostOut] = []


class VolumeIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=NAME)
    domain: str = Field(description="storage domain id or name")
    format: Literal["raw", "qcow2"] | None = Field(None, description="default: qcow2, raw on a logical domain")
    size_bytes: int = Field(ge=1, le=MAX_VOLUME_BYTES)
    host: str | None = Field(None, description="local domains: the host to put it on (default: the active host "
                             "with the most free space)")


class VolumeResizeIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    size_bytes: int = Field(ge=1, le=MAX_VOLUME_BYTES, description="the new size; volumes only grow")


class VolumeOut(Out):
    id: str
    name: str
    domain_id: str
    domain: str | None = None
    host_id: str | None
    host: str | None = None
    format: str
    capacity_bytes: int
    path: str | None
    backing_id: str | None
    vm_id: str | None
    vm: str | None = None
    state: str
    created_at: Any


# --- checks ------------------------------------------------------------------------------------------------

def _abs_path(value: str | None, field: str) -> str:
    if not value:
        raise Invalid(f"{field} is required", field=field)
    if not value.startswith("/") or value == "/" or posixpath.normpath(value) != value or \
            any(c in value for c in "\0\n\r"):
        raise Invalid(f"{field} must be an absolute, normalised path other than / (not {value!r})", field=field)
    return value


def _checked(body: StorageDomainIn) -> tuple[str | None, dict[str, Any] | None]:
    """The domain's path and source, by type; a refusal names the field."""
    src = body.source
    given = {k: v for k, v in (src.model_dump() if src else {}).items() if v is not None}
    if body.type == "dir":
        if given:
            raise Invalid("a dir domain has no source (only a path)", field="source")
        return _abs_path(body.path, "path"), None
    if body.type == "nfs":
        path = _abs_path(body.path, "path")
        host, export = given.get("host"), given.get("dir")
        if "vg" in given:
            raise Invalid("an nfs domain's source is {host, dir}", field="source.vg")
        if not host or not _NFS_HOST.match(host):
            raise Invalid("an nfs domain needs the NFS server's name or address", field="source.host")
        out: dict[str, Any] = {"host": host, "dir": _abs_path(export, "source.dir")}
        for i, option in enumerate(given.get("mount_options") or []):
            if not _MOUNT_OPTION.match(option):
                raise Invalid(f"a mount option is 'name' or 'name=value' without commas or spaces (not {option!r})",
                              field=f"source.mount_options.{i}")
        out.update({k: given[k] for k in ("port", "nfs_version", "mount_options") if given.get(k)})
        return path, out
    if body.path:
        raise Invalid("a logical domain's path is /dev/<vg>, set by libvirt", field="path")
    vg = given.get("vg")
    if set(given) - {"vg"}:
        raise Invalid("a logical domain's source is {vg}", field="source." + sorted(set(given) - {"vg"})[0])
    if not vg or not _VG.match(vg):
        raise Invalid("a logical domain needs the name of an LVM volume group", field="source.vg")
    return None, {"vg": vg}


def find_domain(s: Session, ref: str, field: str = "domain") -> StorageDomain:
    return cast(StorageDomain, find_unique(s, StorageDomain, ref, "storage domain", "clusters", field))


def find_volume(s: Session, ref: str, field: str = "volume") -> Volume:
    return cast(Volume, find_unique(s, Volume, ref, "volume", "storage domains", field))


def _names(s: Session, model: type[Cluster | Host | Vm | StorageDomain],
           ids: set[str] | set[str | None]) -> dict[str, str]:
    """id -> name for a page's references, in one query."""
    wanted = sorted(i for i in ids if i)
    if not wanted:
        return {}
    return {r[0]: r[1] for r in s.execute(select(model.id, model.name).where(model.id.in_(wanted)))}


# --- storage domains ---------------------------------------------------------------------------------------

def _outs(s: Session, domains: list[StorageDomain]) -> list[StorageDomainOut]:
    """A page of domains with their host and volume counts: three grouped queries, whatever the page size."""
    if not domains:
        return []
    ids = [d.id for d in domains]
    clusters = {d.cluster_id for d in domains}
    totals: dict[str, int] = {r[0]: r[1] for r in s.execute(
        select(Host.cluster_id, func.count(Host.id)).where(Host.cluster_id.in_(clusters)).group_by(Host.cluster_id))}
    states: dict[tuple[str, str], int] = {}
    rows = s.execute(select(StorageDomainHost.domain_id, StorageDomainHost.state, func.count())
                     .join(Host, Host.id == StorageDomainHost.host_id)
                     .where(StorageDomainHost.domain_id.in_(ids), Host.state == HostState.UP.value)
                     .group_by(StorageDomainHost.domain_id, StorageDomainHost.state)).all()
    for domain_id, state, n in rows:
        states[(domain_id, state)] = n
    volumes: dict[str, int] = {r[0]: r[1] for r in s.execute(
        select(Volume.domain_id, func.count(Volume.id)).where(Volume.domain_id.in_(ids)).group_by(Volume.domain_id))}
    names = _names(s, Cluster, clusters)
    return [StorageDomainOut.model_validate(d).model_copy(update={
        "cluster": names.get(d.cluster_id), "shared": not storage.is_local(d.type),
        "hosts_total": totals.get(d.cluster_id, 0), "volumes": volumes.get(d.id, 0),
        "hosts_active": states.get((d.id, DomainHostState.ACTIVE.value), 0),
        "hosts_error": states.get((d.id, DomainHostState.ERROR.value), 0)}) for d in domains]


def _detail(s: Session, d: StorageDomain) -> StorageDomainDetail:
    out = _outs(s, [d])[0]
    rows = s.execute(select(Host.id, Host.name, Host.state, StorageDomainHost)
                     .outerjoin(StorageDomainHost, (StorageDomainHost.host_id == Host.id)
                                & (StorageDomainHost.domain_id == d.id))
                     .where(Host.cluster_id == d.cluster_id).order_by(Host.name)).all()
    hosts = []
    for host_id, host_name, host_state, row in rows:
        state, reason = storage.host_view(row.state if row else None, row.reason if row else None, host_state)
        hosts.append(DomainHostOut(host_id=host_id, host=host_name, host_state=host_state, state=state,
                                   reason=reason, capacity_bytes=row.capacity_bytes if row else None,
                                   free_bytes=row.free_bytes if row else None,
                                   updated_at=row.updated_at if row else None))
    return StorageDomainDetail(**out.model_dump(), hosts=hosts)


@domains_router.get("", response_model=Page[StorageDomainOut])
def list_domains(ctx: Ctx, limit: Limit = 100, after: After = None, cluster: str | None = None,
                 name: str | None = None, type: str | None = None) -> Page[StorageDomainOut]:
    def q(s: Session) -> Page[StorageDomainOut]:
        query = select(StorageDomain)
        if cluster is not None:
            query = query.where(StorageDomain.cluster_id == find_cluster(s, cluster).id)
        if name is not None:
            query = query.where(StorageDomain.name == name)
        if type is not None:
            query = query.where(StorageDomain.type == type)
        rows, nxt = page(s, query, StorageDomain.id, limit, after)
        return Page[StorageDomainOut](items=_outs(s, rows), next=nxt)
    return ctx.db.read(q)


@domains_router.post("", status_code=201, response_model=StorageDomainDetail)
async def create_domain(ctx: Ctx, body: StorageDomainIn) -> StorageDomainDetail:
    """Record the domain, then put its pool on every up host of the cluster; the answer shows what each host
    said (``error`` with the reason where the pool cannot be defined or started). Hosts that are not up get
    it when they are activated."""
    path, source = _checked(body)

    def create(s: Session) -> tuple[storage.DomainDef, str]:
        c = find_cluster(s, body.cluster) if body.cluster else default_cluster(s)
        if s.scalar(select(StorageDomain.id).where(StorageDomain.cluster_id == c.id,
                                                   StorageDomain.name == body.name)):
            raise Conflict(f"cluster {c.name} has a storage domain {body.name!r}", field="name")
        if path is not None:
            same = s.scalar(select(StorageDomain.name).where(StorageDomain.cluster_id == c.id,
                                                             StorageDomain.path == path))
            if same:
                raise Conflict(f"storage domain {same} of cluster {c.name} has the path {path}", field="path")
        d = StorageDomain(id=new_id(), name=body.name, cluster_id=c.id, type=body.type, path=path, source=source)
        s.add(d)
        s.flush()
        record(s, "storage_domain_created", f"storage domain {d.name} ({d.type}) created in cluster {c.name}",
               object_type="storage", object_id=d.id)
        return storage.DomainDef.of(d), c.id

    try:
        domain, cluster_id = await ctx.db.run(create)
    except IntegrityError:  # the same name at the same moment: the checks name it now
        domain, cluster_id = await ctx.db.run(create)
    hosts = await ctx.db.run_read(lambda s: storage.up_hosts(s, cluster_id))
    await storage.realise_domain(ctx.db, ctx.agents, domain, hosts)
    return await ctx.db.run_read(lambda s: _detail(s, find_domain(s, domain.id)))


@domains_router.get("/{domain}", response_model=StorageDomainDetail)
def show_domain(ctx: Ctx, domain: str) -> StorageDomainDetail:
    """The domain and its state on each host of its cluster: capacity, free space, or why it is not there."""
    return ctx.db.read(lambda s: _detail(s, find_domain(s, domain)))


@domains_router.delete("/{domain}", status_code=204, response_class=Response)
async def delete_domain(ctx: Ctx, domain: str) -> Response:
    """Forget a domain and undefine its pool on the up hosts of its cluster (files stay on disk). Refused while
    it holds volumes."""
    def q(s: Session) -> tuple[str, str, list[tuple[str, str, AgentTarget]]]:
        d = find_domain(s, domain)
        n = s.scalar(select(func.count(Volume.id)).where(Volume.domain_id == d.id)) or 0
        if n:
            raise Conflict(f"storage domain {d.name} holds {n} volume(s); delete them first", field="domain",
                           volumes=n)
        hosts = [(h.id, h.name, AgentTarget(h.agent_url, h.agent_token)) for h in s.scalars(
            select(Host).where(Host.cluster_id == d.cluster_id, Host.state == HostState.UP.value))]
        record(s, "storage_domain_removed", f"storage domain {d.name} removed", object_type="storage",
               object_id=d.id)
        s.delete(d)
        return d.id, d.name, hosts
    try:
        domain_id, name, hosts = await ctx.db.run(q)
    except IntegrityError:  # a volume was created in it meanwhile
        raise Conflict(f"storage domain {domain} holds volumes; delete them first", field="domain") from None
    failures = await storage.remove_domain(ctx.agents, name, hosts)
    if failures:
        def warn(s: Session) -> None:
            record(s, "storage_domain_leftover", f"storage domain {name}: the pool could not be undefined on "
                   + "; ".join(failures), severity=Severity.WARNING, object_type="storage", object_id=domain_id)
        await ctx.db.run(warn)
    return Response(status_code=204)


# --- volumes -----------------------------------------------------------------------------------------------

def _volume_outs(s: Session, rows: list[Volume]) -> list[VolumeOut]:
    domains = _names(s, StorageDomain, {v.domain_id for v in rows})
    hosts = _names(s, Host, {v.host_id for v in rows})
    vms = _names(s, Vm, {v.vm_id for v in rows})
    return [VolumeOut.model_validate(v).model_copy(update={
        "domain": domains.get(v.domain_id), "host": hosts.get(v.host_id or ""), "vm": vms.get(v.vm_id or "")})
        for v in rows]


@volumes_router.get("", response_model=Page[VolumeOut])
def list_volumes(ctx: Ctx, limit: Limit = 100, after: After = None, domain: str | None = None,
                 host: str | None = None, vm: str | None = None, name: str | None = None,
                 state: str | None = None, format: str | None = None) -> Page[VolumeOut]:
    def q(s: Session) -> Page[VolumeOut]:
        query = select(Volume)
        if domain is not None:
            query = query.where(Volume.domain_id == find_domain(s, domain).id)
        if host is not None:
            h = s.scalar(select(Host.id).where(or_(Host.id == host, Host.name == host)))
            if h is None:
                raise NotFound(f"no host {host!r}", field="host")
            query = query.where(Volume.host_id == h)
        if vm is not None:
            query = query.where(Volume.vm_id == vm)
        if name is not None:
            query = query.where(Volume.name == name)
        if state is not None:
            query = query.where(Volume.state == state)
        if format is not None:
            query = query.where(Volume.format == format)
        rows, nxt = page(s, query, Volume.id, limit, after)
        return Page[VolumeOut](items=_volume_outs(s, rows), next=nxt)
    return ctx.db.read(q)


@volumes_router.get("/{volume}", response_model=VolumeOut)
def show_volume(ctx: Ctx, volume: str) -> VolumeOut:
    return ctx.db.read(lambda s: _volume_outs(s, [find_volume(s, volume)])[0])


def _active_hosts(s: Session, d: StorageDomain) -> list[tuple[str, str, AgentTarget, int | None]]:
    """(id, name, target, free bytes) of the up hosts where the domain is active, the most free space first."""
    rows = s.execute(select(Host.id, Host.name, Host.agent_url, Host.agent_token, StorageDomainHost.free_bytes)
                     .join(StorageDomainHost, StorageDomainHost.host_id == Host.id)
                     .where(StorageDomainHost.domain_id == d.id, Host.state == HostState.UP.value,
                            StorageDomainHost.state == DomainHostState.ACTIVE.value)).all()
    out = [(h, n, AgentTarget(u, t), free) for h, n, u, t, free in rows]
    return sorted(out, key=lambda r: (-(r[3] or 0), r[1]))


def _not_active_reason(s: Session, d: StorageDomain) -> str:
    detail = _detail(s, d)
    if not detail.hosts:
        return f"cluster {detail.cluster} has no hosts"
    return "; ".join(f"{h.host}: {h.state}" + (f" ({h.reason})" if h.reason else "") for h in detail.hosts)


@volumes_router.post("", status_code=202, response_model=TaskOut, responses=ACCEPTED)
async def create_volume(ctx: Ctx, body: VolumeIn, response: Response) -> Any:
    """Create a volume in a domain (a task). On a local domain it goes on the host named, or the active host
    with the most free space, which the volume records."""
    def reserve(s: Session) -> tuple[str, str, str, AgentTarget, str]:
        d = find_domain(s, body.domain)
        fmt = body.format or ("raw" if d.type == "logical" else "qcow2")
        if d.type == "logical" and fmt != "raw":
            raise Invalid("volumes of a logical (LVM) domain are raw", field="format")
        if s.scalar(select(Volume.id).where(Volume.domain_id == d.id, Volume.name == body.name)):
            raise Conflict(f"storage domain {d.name} has a volume {body.name!r}", field="name")
        hosts = _active_hosts(s, d)
        if body.host is not None:
            h = s.scalar(select(Host).where(or_(Host.id == body.host, Host.name == body.host)))
            if h is None:
                raise NotFound(f"no host {body.host!r}", field="host")
            if h.cluster_id != d.cluster_id:
                raise Invalid(f"host {h.name} is not in the cluster of storage domain {d.name}", field="host")
            hosts = [r for r in hosts if r[0] == h.id]
            if not hosts:
                raise Conflict(f"storage domain {d.name} is not active on host {h.name}: "
                               f"{_not_active_reason(s, d)}", field="host")
        if not hosts:
            raise Conflict(f"storage domain {d.name} is active on no host: {_not_active_reason(s, d)}",
                           field="domain")
        host_id, host_name, target, free = hosts[0]
        if d.type == "logical" and free is not None and body.size_bytes > free:
            raise Conflict(f"host {host_name} has {free} bytes free in storage domain {d.name}, "
                           f"not {body.size_bytes}", field="size_bytes")
        v = Volume(id=new_id(), name=body.name, domain_id=d.id, format=fmt, capacity_bytes=body.size_bytes,
                   host_id=host_id if storage.is_local(d.type) else None, state=VolumeState.CREATING.value)
        s.add(v)
        s.flush()
        return v.id, d.name, fmt, target, host_name

    try:
        volume_id, pool, fmt, target, host_name = await ctx.db.run(reserve)
    except IntegrityError:  # the same name at the same moment
        raise Conflict(f"the volume {body.name!r} is being created already", field="name") from None

    async def work(task: TaskContext) -> dict[str, Any]:
        await task.progress(f"creating volume {body.name} in {pool} on host {host_name}")
        try:
            made = await ctx.agents.create_volume(target, pool, {
                "name": body.name, "format": fmt, "capacity_bytes": body.size_bytes, "backing": None,
                "clone_of": None})
        except AgentError as exc:
            await ctx.db.run(lambda s: _drop(s, volume_id))
            raise ApiError(f"host {host_name}: {exc.message}", field=exc.field, code=exc.code,
                           status=exc.status or 502) from None

        def done(s: Session) -> dict[str, Any]:
            v = s.get(Volume, volume_id)
            if v is None:
                raise NotFound("the volume was removed meanwhile", field="volume")
            v.state, v.path = VolumeState.READY.value, made.get("path")
            if isinstance(made.get("format"), str):
                v.format = made["format"]
            if isinstance(made.get("capacity_bytes"), int):
                v.capacity_bytes = made["capacity_bytes"]
            record(s, "volume_created", f"volume {v.name} created in storage domain {pool} on host {host_name}",
                   object_type="volume", object_id=v.id)
            s.flush()
            return _volume_outs(s, [v])[0].model_dump(mode="json")
        return await ctx.db.run(done)

    task = await ctx.tasks.submit("volume_create", work, object_type="volume", object_id=volume_id,
                                  message=f"creating volume {body.name} in {pool}")
    response.headers["Location"] = f"/api/v1/tasks/{task['id']}"
    return task


def _drop(s: Session, volume_id: str) -> None:
    v = s.get(Volume, volume_id)
    if v is not None:
        s.delete(v)


def _users(s: Session, v: Volume) -> list[str]:
    """The VMs that use the volume: the one it belongs to, and managed VMs whose disks name its path."""
    names = []
    if v.vm_id:
        names.append(s.scalar(select(Vm.name).where(Vm.id == v.vm_id)) or v.vm_id)
    if v.path:
        cluster_id = s.scalar(select(StorageDomain.cluster_id).where(StorageDomain.id == v.domain_id))
        for vm_name, spec in s.execute(select(Vm.name, Vm.spec).where(
                Vm.cluster_id == cluster_id, Vm.external.is_(False), Vm.spec.is_not(None))):
            disks = (spec or {}).get("disks") or []
            if any(isinstance(x, dict) and (x.get("source") == v.path or x.get("volume") in (v.name, v.id))
                   for x in disks) and vm_name not in names:
                names.append(vm_name)
    return names


@volumes_router.delete("/{volume}", status_code=202, response_model=TaskOut, responses=ACCEPTED)
async def delete_volume(ctx: Ctx, volume: str, response: Response) -> Any:
    """Delete a volume (a task). Refused while a VM uses it or a thin clone reads from it."""
    def mark(s: Session) -> tuple[str, str, str, str | None, list[tuple[str, str, AgentTarget]]]:
        v = find_volume(s, volume)
        if v.state != VolumeState.READY.value:
            # a volume left creating/deleting by an engine that stopped mid-task (its task was failed at the next
            # start) can be deleted; one whose task still runs cannot
            running = s.scalar(select(Task.id).where(
                Task.object_id == v.id, Task.state.in_([TaskState.PENDING.value, TaskState.RUNNING.value])).limit(1))
            if running is not None:
                raise Conflict(f"volume {v.name} is {v.state} (task {running})", field="volume")
        if v.template_id is not None:
            raise Conflict(f"volume {v.name} is a base volume of a template: delete the template", field="volume")
        users = _users(s, v)
        if users:
            raise Conflict(f"volume {v.name} is used by VM {', '.join(users)}", field="volume", vms=users)
        clone = s.scalar(select(Volume.name).where(Volume.backing_id == v.id).limit(1))
        if clone:
            raise Conflict(f"volume {clone} is a thin clone of volume {v.name}", field="volume")
        d = s.get(StorageDomain, v.domain_id)
        assert d is not None
        if v.host_id is not None:
            h = s.get(Host, v.host_id)
            assert h is not None
            if h.state != HostState.UP.value:
                raise Conflict(f"volume {v.name} is on host {h.name}, which is {h.state}", field="volume")
            hosts = [(h.id, h.name, AgentTarget(h.agent_url, h.agent_token))]
        elif storage.is_local(d.type):
            hosts = []  # its host was removed: nothing to reach, the record goes
        else:
            hosts = [(h, n, t) for h, n, t, _ in _active_hosts(s, d)][:1]
            if not hosts:
                raise Conflict(f"storage domain {d.name} is active on no host: {_not_active_reason(s, d)}",
                               field="volume")
        v.state = VolumeState.DELETING.value
        return v.id, v.name, d.name, v.host_id, hosts

    volume_id, name, pool, _, hosts = await ctx.db.run(mark)

    async def work(task: TaskContext) -> dict[str, Any]:
        for _host_id, host_name, target in hosts:
            await task.progress(f"deleting volume {name} from {pool} on host {host_name}")
            try:
                await ctx.agents.delete_volume(target, pool, name)
            except AgentError as exc:
                if not storage.gone(exc):
                    await ctx.db.run(lambda s: _ready_again(s, volume_id))
                    raise ApiError(f"host {host_name}: {exc.message}", field=exc.field or "volume",
                                   code=exc.code, status=exc.status or 502) from None

        def forget(s: Session) -> None:
            v = s.get(Volume, volume_id)
            if v is not None:
                record(s, "volume_deleted", f"volume {name} deleted from storage domain {pool}",
                       object_type="volume", object_id=volume_id)
                s.delete(v)
        await ctx.db.run(forget)
        return {"id": volume_id, "name": name, "deleted": True}

    task = await ctx.tasks.submit("volume_delete", work, object_type="volume", object_id=volume_id,
                                  message=f"deleting volume {name}")
    response.headers["Location"] = f"/api/v1/tasks/{task['id']}"
    return task


def _running_user(s: Session, v: Volume) -> tuple[str, str, AgentTarget] | None:
    """(VM name, host name, agent) of a VM using the volume that runs now: only its host can grow it online."""
    users = _users(s, v)
    if not users:
        return None
    row = s.execute(select(Vm.name, Host.name, Host.agent_url, Host.agent_token).join(Host, Host.id == Vm.host_id)
                    .where(Vm.name.in_(users), Vm.state.in_([st.value for st in RUNNING_STATES]),
                           Vm.cluster_id == s.scalar(select(StorageDomain.cluster_id)
                                                     .where(StorageDomain.id == v.domain_id)))
                    .limit(1)).first()
    return None if row is None else (row[0], row[1], AgentTarget(row[2], row[3]))


@volumes_router.post("/{volume}/resize", status_code=202, response_model=TaskOut, responses=ACCEPTED)
async def resize_volume(ctx: Ctx, volume: str, body: VolumeResizeIn, response: Response) -> Any:
    """Grow a volume (a task). A VM that runs on it grows it online on its host where the hypervisor can (QEMU's
    block_resize through libvirt; libxl has no virDomainBlockResize: refused by the host, nothing changes); a
    volume not made yet only changes its size; a template's base volume is sealed."""
    def check(s: Session) -> tuple[str, str, str, list[tuple[str, AgentTarget]], str | None]:
        v = find_volume(s, volume)
        if v.template_id is not None:
            raise Conflict(f"volume {v.name} is a sealed base volume of a template", field="volume")
        if body.size_bytes < v.capacity_bytes:
            raise Invalid(f"size_bytes {body.size_bytes} is smaller than volume {v.name}'s {v.capacity_bytes}: "
                          "volumes only grow", field="size_bytes")
        if v.state == VolumeState.PENDING.value:  # made at the VM's first start: only the record changes
            return v.id, v.name, "", [], None
        if v.state != VolumeState.READY.value:
            raise Conflict(f"volume {v.name} is {v.state}", field="volume")
        d = s.get(StorageDomain, v.domain_id)
        assert d is not None
        user = _running_user(s, v)
        online: str | None = None
        if user is not None:
            online = user[0]
            hosts = [(user[1], user[2])]
        elif v.host_id is not None:
            h = s.get(Host, v.host_id)
            assert h is not None
            if h.state != HostState.UP.value:
                raise Conflict(f"volume {v.name} is on host {h.name}, which is {h.state}", field="volume")
            hosts = [(h.name, AgentTarget(h.agent_url, h.agent_token))]
        else:
            hosts = [(n, t) for _h, n, t, _ in _active_hosts(s, d)][:1]
            if not hosts:
                raise Conflict(f"storage domain {d.name} is active on no host: {_not_active_reason(s, d)}",
                               field="volume")
        return v.id, v.name, d.name, hosts, online

    volume_id, name, pool, hosts, online = await ctx.db.run(check)

    async def work(task: TaskContext) -> dict[str, Any]:
        grown: dict[str, Any] = {"capacity_bytes": body.size_bytes, "online": False}
        for host_name, target in hosts:
            how = f"online in VM {online} " if online else ""
            await task.progress(f"growing volume {name} to {body.size_bytes} bytes {how}on host {host_name}")
            try:
                grown = await ctx.agents.resize_volume(target, pool, name, body.size_bytes)
            except AgentError as exc:
                raise ApiError(f"host {host_name}: {exc.message}", field=exc.field or "size_bytes", code=exc.code,
                               status=exc.status or 502) from None

        def done(s: Session) -> dict[str, Any]:
            v = s.get(Volume, volume_id)
            if v is None:
                raise NotFound("the volume was removed meanwhile", field="volume")
            v.capacity_bytes = int(grown.get("capacity_bytes") or body.size_bytes)
            record(s, "volume_resized", f"volume {name} grown to {v.capacity_bytes} bytes"
                   + (f" online in VM {grown.get('domain') or online}" if grown.get("online") else ""),
                   object_type="volume", object_id=v.id)
            s.flush()
            return {**_volume_outs(s, [v])[0].model_dump(mode="json"), "online": bool(grown.get("online"))}
        return await ctx.db.run(done)

    task = await ctx.tasks.submit("volume_resize", work, object_type="volume", object_id=volume_id,
                                  message=f"growing volume {name}")
    response.headers["Location"] = f"/api/v1/tasks/{task['id']}"
    return task


def _ready_again(s: Session, volume_id: str) -> None:
    v = s.get(Volume, volume_id)
    if v is not None:
        v.state = VolumeState.READY.value


router.include_router(domains_router)
router.include_router(volumes_router)
