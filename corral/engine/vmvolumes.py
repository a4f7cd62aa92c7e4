"""A VM's disks that name volumes (issue 12): what the engine does with ``volume`` and ``size_bytes`` disks.

The stored spec keeps references; a host only ever gets paths. At create (and PUT) ``attach`` turns each
``size_bytes`` disk into a new volume of the VM — recorded ``pending``, on no host, owned by the VM — and writes
the disk as a reference to it (``{"volume": "web1-disk0", "storage": "local"}``); a ``volume`` disk is checked
(it exists in the VM's cluster, no other VM uses it, its probed format is the one declared) and written by its
name and domain. At start ``resolve`` reads the referenced volumes, ``needs`` tells placement which storage
domains must be active on a host (and, for a local domain's volume that exists, its host), ``make_pending``
creates the pending volumes on the chosen host through its agent, and ``for_host`` is the spec with their paths.
Deleting the VM deletes its own volumes (``delete_own``), unless they are kept.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, replace

from sqlalchemy import select
from sqlalchemy.orm import Session

from corral.domain.spec import DiskFormat, DiskSource, VmSpec
from corral.engine import storage, vmclones, volrefs
from corral.engine.agent_client import AgentClient, AgentError, AgentTarget
from corral.engine.db.models import (
    DomainHostState,
    Host,
    HostState,
    Severity,
    StorageDomain,
    StorageDomainHost,
    Vm,
    Volume,
    VolumeState,
)
from corral.engine.db.session import Database
from corral.engine.errors import ApiError, Conflict, Invalid, NotFound
from corral.engine.events import record
from corral.engine.ids import new_id
from corral.engine.scheduler import StorageNeed

log = logging.getLogger(__name__)

def attach(s: Session, vm_id: str, vm_name: str, cluster_id: str, spec: VmSpec) -> tuple[VmSpec, list[Volume]]:
    """The spec to store, with every ``size_bytes`` or ``image`` disk a reference to a new volume of the VM
    (returned, to be added once the VM's row is: they refer to it; ``vmclones`` for images, ISOs and template
    clones) and every ``volume`` disk checked and named by volume and domain name. Refusals name the disk's
    field (``disks.0.storage``, ``disks.1.volume``, ``disks.1.format``, ``disks.2.image``)."""
    if not any(d.volume is not None or d.size_bytes is not None or d.image is not None for d in spec.disks):
        return spec, []
    disks = list(spec.disks)
    new: list[Volume] = []
    seen: set[str] = set()
    for i, disk in enumerate(disks):
        declared = "format" in disk.model_fields_set
        if disk.image is not None:
            disks[i], made = vmclones.image_disk(s, vm_id, vm_name, cluster_id, i, disk, new)
            new += [made] if made is not None else []
        elif disk.size_bytes is not None:
            d = volrefs.domain(s, cluster_id, disk.storage, f"disks.{i}.storage")
            fmt = disk.format.value if declared else ("raw" if d.type == "logical" else "qcow2")
            if d.type == "logical" and fmt != "raw":
                raise Invalid(f"volumes of storage domain {d.name} (LVM) are raw", field=f"disks.{i}.format")
            name = volrefs.free_name(s, d.id, f"{vm_name}-disk{i}", {v.name for v in new if v.domain_id == d.id})
            new.append(Volume(id=new_id(), name=name, domain_id=d.id, host_id=None, format=fmt,
                              capacity_bytes=disk.size_bytes, vm_id=vm_id, state=VolumeState.PENDING.value))
            disks[i] = disk.model_copy(update={"size_bytes": None, "volume": name, "storage": d.name,
                                               "format": DiskFormat(fmt)})
        elif disk.volume is not None:
            field = f"disks.{i}.volume"
            v, d = volrefs.find(s, cluster_id, disk.volume, disk.storage, field)
            if v.id in seen:
                raise Invalid(f"volume {v.name} is named by two disks", field=field)
            seen.add(v.id)
            if v.state == VolumeState.DELETING.value:
                raise Conflict(f"volume {v.name} is being deleted", field=field)
            use = vmclones.volume_use(s, i, disk, v)
            if use == "clone":
                disks[i], made = vmclones.clone(s, vm_id, vm_name, cluster_id, i, disk, v, d, new)
                new.append(made)
                continue
            users = volrefs.other_users(s, vm_id, cluster_id, v, d.name) if use == "own" else []
            if users:
                raise Conflict(f"volume {v.name} is used by VM {', '.join(users)}", field=field, vms=users)
            if declared and disk.format.value != v.format:
                raise Invalid(f"volume {v.name} is {v.format} (probed from its bytes), not {disk.format.value}",
                              field=f"disks.{i}.format")
            disks[i] = disk.model_copy(update={"volume": v.name, "storage": d.name, "format": DiskFormat(v.format)})
    return spec.model_copy(update={"disks": disks}), new


# --- start ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class DiskVolume:
    """A disk's volume as a start needs it."""

    index: int
    volume_id: str
    name: str
    domain_id: str
    domain: str
    domain_type: str
    host_id: str | None
    host: str | None
    state: str
    path: str | None
    format: str
    capacity_bytes: int
    source: Source | None = None  # a pending clone's: the volume it is made from

    @property
    def pending(self) -> bool:
        return self.state == VolumeState.PENDING.value


@dataclass(frozen=True)
class Source:
    """The volume a pending clone is made from: ``thin`` (its backing file) or a full copy's original."""

    name: str
    domain_id: str
    domain: str
    domain_type: str
    host_id: str | None
    host: str | None
    thin: bool


def resolve(s: Session, cluster_id: str, spec: VmSpec) -> list[DiskVolume]:
    """The volumes the spec's disks name, read once per start; a volume that went is refused by field."""
    out = []
    for i, disk in enumerate(spec.disks):
        if disk.volume is None:
            continue
        v, d = volrefs.find(s, cluster_id, disk.volume, disk.storage, f"disks.{i}.volume")
        if v.state not in (VolumeState.READY.value, VolumeState.PENDING.value):
            raise Conflict(f"volume {v.name} is {v.state}", field=f"disks.{i}.volume")
        host = s.scalar(select(Host.name).where(Host.id == v.host_id)) if v.host_id else None
        source = None
        from_id = v.backing_id or v.clone_of_id
        if v.state == VolumeState.PENDING.value and from_id is not None:
            row = s.execute(select(Volume, StorageDomain).join(StorageDomain, StorageDomain.id == Volume.domain_id)
                            .where(Volume.id == from_id)).first()
            if row is None or row[0].state != VolumeState.READY.value:
                raise Conflict(f"volume {v.name} is to be made from a volume that is "
                               f"{row[0].state if row else 'gone'}", field=f"disks.{i}.volume")
            src, sd = row[0], row[1]
            src_host = s.scalar(select(Host.name).where(Host.id == src.host_id)) if src.host_id else None
            source = Source(src.name, sd.id, sd.name, sd.type, src.host_id, src_host, v.backing_id is not None)
        out.append(DiskVolume(i, v.id, v.name, d.id, d.name, d.type, v.host_id, host, v.state, v.path, v.format,
                              v.capacity_bytes, source))
    return out


def needs(disks: list[DiskVolume]) -> tuple[StorageNeed, ...]:
    """What placement asks of a host for these volumes: each domain active there; a local domain's existing
    volume on its own host; room for the new volumes where they are allocated whole (LVM)."""
    out: dict[tuple[str, str | None], StorageNeed] = {}
    for dv in disks:
        src = dv.source if dv.pending else None
        if src is not None:  # a clone is made where its original is: that domain active, a local one's host
            on = (src.host_id or "") if storage.is_local(src.domain_type) else None
            key = (src.domain_id, on)
            out.setdefault(key, StorageNeed(src.domain_id, src.domain, on, src.host if on else None,
                                            src.name if on is not None else None,
                                            preallocated=src.domain_type == "logical"))
        local = storage.is_local(dv.domain_type)
        on = (dv.host_id or "") if local and not dv.pending else None
        key = (dv.domain_id, on)
        need = out.get(key) or StorageNeed(dv.domain_id, dv.domain, on, dv.host if on else None,
                                           dv.name if on is not None else None,
                                           preallocated=dv.domain_type == "logical")
        if dv.pending:
            need = replace(need, new_bytes=need.new_bytes + dv.capacity_bytes)
        out[key] = need
    return tuple(out.values())


def for_host(spec: VmSpec, disks: list[DiskVolume], *, pending_too: bool = True) -> VmSpec:
    """The spec with each volume disk's path, format and source type: what an agent defines. ``pending_too``
    False (a plan before the volumes exist): a pending volume's disk stays a reference, which a flavor plans
    like any disk and a host does not look for on its disk."""
    by_index = {dv.index: dv for dv in disks}
    out = list(spec.disks)
    for i, disk in enumerate(out):
        dv = by_index.get(i)
        if dv is None or dv.path is None or (dv.pending and not pending_too):
            continue
        out[i] = disk.model_copy(update={
            "source": dv.path, "volume": None, "storage": None, "size_bytes": None, "format": DiskFormat(dv.format),
            "source_type": DiskSource.BLOCK if dv.domain_type == "logical" else DiskSource.FILE})
    return spec.model_copy(update={"disks": out})


async def make_pending(db: Database, agents: AgentClient, target: AgentTarget, host_id: str, host_name: str,
                       disks: list[DiskVolume]) -> list[DiskVolume]:
    """Create the pending volumes on the chosen host (its agent's ``POST volumes``) and record them ready with
    their paths (and, on a local domain, the host). A volume the host has already (made by a start that stopped
    before recording it) is taken as it is there."""
    out = []
    for dv in disks:
        if not dv.pending:
            out.append(dv)
            continue
        src = dv.source
        ref = {"pool": src.domain, "volume": src.name} if src is not None else None
        body = {"name": dv.name, "format": dv.format, "capacity_bytes": dv.capacity_bytes,
                "backing": ref if src is not None and src.thin else None,
                "clone_of": ref if src is not None and not src.thin else None}
        try:
            made = await agents.create_volume(target, dv.domain, body)
        except AgentError as exc:
            if exc.status != 409 or exc.field != "name":
                raise ApiError(f"cannot create volume {dv.name} in storage domain {dv.domain} on host "
                               f"{host_name}: {exc.message}", field=f"disks.{dv.index}.volume", code=exc.code,
                               status=exc.status if exc.status and exc.status < 500 else 502) from None
            there = [v for v in await agents.pool_volumes(target, dv.domain) if v.get("name") == dv.name]
            if not there:
                raise ApiError(f"host {host_name}: {exc.message}", field=f"disks.{dv.index}.volume",
                               code=exc.code, status=409) from None
            made = there[0]
        local = storage.is_local(dv.domain_type)
        path = str(made.get("path") or "")
        fmt = made["format"] if made.get("format") in ("raw", "qcow2") else dv.format
        capacity = made["capacity_bytes"] if isinstance(made.get("capacity_bytes"), int) else dv.capacity_bytes

        def ready(s: Session, dv: DiskVolume = dv, path: str = path, fmt: str = fmt, capacity: int = capacity,
                  local: bool = local) -> None:
            v = s.get(Volume, dv.volume_id)
            if v is None:
                raise NotFound(f"volume {dv.name} was removed meanwhile", field=f"disks.{dv.index}.volume")
            v.state, v.path, v.format, v.capacity_bytes = VolumeState.READY.value, path, fmt, capacity
            v.clone_of_id = None  # a full copy is made: it no longer needs its original
            v.host_id = host_id if local else None
            record(s, "volume_created", f"volume {dv.name} created in storage domain {dv.domain} on host "
                   f"{host_name} for VM {s.scalar(select(Vm.name).where(Vm.id == v.vm_id)) or '?'}",
                   object_type="volume", object_id=v.id)
        await db.run(ready)
        out.append(replace(dv, state=VolumeState.READY.value, path=path, format=fmt, capacity_bytes=capacity,
                           host_id=host_id if local else None, host=host_name if local else None))
    return out


# --- delete -----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class OwnVolume:
    id: str
    name: str
    domain: str
    state: str
    # where to delete it: its host (local), or an up host where its shared domain is active; None: nowhere
    where: tuple[str, AgentTarget] | None
    why_not: str = ""


def own(s: Session, vm_id: str | None = None, *, template_id: str | None = None) -> list[OwnVolume]:
    """The VM's own volumes (or a template's base volumes) and where each can be deleted, read before its row
    goes."""
    owner = Volume.vm_id == vm_id if template_id is None else Volume.template_id == template_id
    out = []
    for v, d in s.execute(select(Volume, StorageDomain).join(StorageDomain, StorageDomain.id == Volume.domain_id)
                          .where(owner).order_by(Volume.name)).all():
        where, why = None, ""
        if v.state != VolumeState.PENDING.value:
            q = select(Host.name, Host.agent_url, Host.agent_token, Host.state)
            if v.host_id is not None:
                h = s.execute(q.where(Host.id == v.host_id)).first()
            elif storage.is_local(d.type):
                h = None  # its host was removed: nothing to reach
            else:
                h = s.execute(q.join(StorageDomainHost, StorageDomainHost.host_id == Host.id).where(
                    StorageDomainHost.domain_id == d.id, Host.state == HostState.UP.value,
                    StorageDomainHost.state == DomainHostState.ACTIVE.value).limit(1)).first()
                why = "" if h else f"storage domain {d.name} is active on no up host"
            if h is not None and h[3] != HostState.UP.value:
                why = f"its host {h[0]} is {h[3]}"
            elif h is not None:
                where = (h[0], AgentTarget(h[1], h[2]))
        out.append(OwnVolume(v.id, v.name, d.name, v.state, where, why))
    return out


async def delete_own(db: Database, agents: AgentClient, vm_name: str, volumes: list[OwnVolume], *,
                     keep: bool = False, kind: str = "VM") -> None:
    """Delete a deleted VM's own volumes on their hosts and their rows. One that cannot be deleted now stays,
    released (no VM), with a warning event that says why: ``corral volume delete`` takes it later. ``keep``:
    the volumes stay, released; only pending ones (never made on a host) go."""
    if keep:
        volumes = [ov for ov in volumes if ov.state == VolumeState.PENDING.value]
    async def one(ov: OwnVolume) -> str | None:
        if ov.state != VolumeState.PENDING.value:
            if ov.where is None:
                return ov.why_not or None  # a local volume whose host was removed: only the record is left
            try:
                await agents.delete_volume(ov.where[1], ov.domain, ov.name)
            except AgentError as exc:
                if not storage.gone(exc):
                    return f"host {ov.where[0]}: {exc.message}"
        return None

    failures = await asyncio.gather(*(one(ov) for ov in volumes))

    def forget(s: Session) -> None:
        for ov, failed in zip(volumes, failures, strict=True):
            v = s.get(Volume, ov.id)
            if v is None:
                continue
            if failed:
                record(s, "volume_leftover", f"volume {ov.name} of deleted {kind} {vm_name} was kept: {failed}",
                       severity=Severity.WARNING, object_type="volume", object_id=ov.id)
                if v.state != VolumeState.READY.value:
                    v.state = VolumeState.READY.value
                continue
            record(s, "volume_deleted", f"volume {ov.name} of {kind} {vm_name} deleted from storage domain {ov.domain}",
                   object_type="volume", object_id=ov.id)
            s.delete(v)
    if volumes:
        await db.run(forget)
