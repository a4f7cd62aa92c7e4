"""Templates (issue 12): a stopped VM's disks sealed as read-only base volumes, and VMs cloned from them.

Making a template (``seal``) moves each of the VM's disk volumes to the template (``volumes.template_id``; no
VM owns it any more): from then on it is never written — no VM attaches it writable (``vmclones.volume_use``)
— and never deleted while a clone reads it. The template keeps the VM's spec without its identity (uuid, name,
MACs, device ids), its disks naming the base volumes. The VM itself goes on as the template's first clone: its
disks become new pending thin clones of the bases (full copies where the domain cannot hold a qcow2 overlay),
made at its next start, so it never writes a base either.

A VM created with ``"template": T`` (``expand``) starts from the template's spec, the create body's fields
overriding it, each base disk marked ``clone: thin|full``; ``vmvolumes.attach`` then records the clones as it
does for ``image`` disks.
"""

from __future__ import annotations

import copy
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from corral.domain.spec import DiskSpec, VmSpec
from corral.engine import vmclones, volrefs
from corral.engine.db.models import Cluster, Host, StorageDomain, Template, Vm, VmState, Volume, VolumeState
from corral.engine.errors import Conflict, Invalid, NotFound
from corral.engine.events import record

CREATING, READY, DELETING = "creating", "ready", "deleting"
_SINGLE_DEVICES = ("graphics", "guest_agent", "balloon")
_DEVICE_LISTS = ("disks", "nics", "consoles")


def find(s: Session, ref: str, cluster_id: str | None = None, field: str = "template") -> Template:
    """A template by id, or by name (within ``cluster_id`` when given; a name in several clusters needs it)."""
    query = select(Template).where(or_(Template.id == ref, Template.name == ref))
    if cluster_id is not None:
        query = query.where(Template.cluster_id == cluster_id)
    found = list(s.scalars(query.limit(2)))
    if not found:
        raise NotFound(f"no template {ref!r}", field=field)
    if len(found) > 1:
        raise Conflict(f"templates of several clusters are named {ref!r}; use its id", field=field)
    return found[0]


def anonymous(spec: dict[str, Any]) -> dict[str, Any]:
    """The spec without what makes it one VM: uuid, name, MACs and device ids (each new VM gets its own)."""
    out = copy.deepcopy(spec)
    out.pop("id", None)
    out.pop("name", None)
    for group in _DEVICE_LISTS:
        for dev in out.get(group) or []:
            dev.pop("id", None)
            if group == "nics":
                dev.pop("mac", None)
    for single in _SINGLE_DEVICES:
        if isinstance(out.get(single), dict):
            out[single].pop("id", None)
    return out


# --- a VM from a template -----------------------------------------------------------------------------------

def expand(s: Session, body: dict[str, Any], cluster: str | None) -> dict[str, Any]:
    """A create body with ``template`` (and ``clone``: thin, the default, or full) as the spec to create: the
    template's, with the body's fields over it and each base disk to be cloned. Without ``template``, the body."""
    if "template" not in body:
        if "clone" in body:
            raise Invalid("clone goes with template", field="clone")
        return body
    body = dict(body)
    ref, mode = body.pop("template"), body.pop("clone", None) or "thin"
    if not isinstance(ref, str):
        raise Invalid("template is a template's name or id", field="template")
    if mode not in ("thin", "full"):
        raise Invalid("clone is thin or full", field="clone")
    cluster_id = None
    if cluster is not None:
        cluster_id = s.scalar(select(Cluster.id).where(or_(Cluster.id == cluster, Cluster.name == cluster)))
    t = find(s, ref, cluster_id)
    if t.state != READY:
        raise Conflict(f"template {t.name} is {t.state}", field="template")
    bases = set(s.scalars(select(Volume.name).where(Volume.template_id == t.id)))
    data = copy.deepcopy(t.spec)
    for disk in data.get("disks") or []:
        if disk.get("volume") in bases:
            disk.pop("format", None)  # a thin clone is qcow2 whatever its base
            disk["clone"] = mode
    data.update(body)
    return data


# --- making one ---------------------------------------------------------------------------------------------

def reserve(s: Session, template_id: str, name: str, vm_ref: str, description: str) -> tuple[str, str, str | None]:
    """Check the VM can become a template and hold the name (a ``creating`` row): (VM id, VM name, the host
    its domain may still be defined on)."""
    vm = s.scalar(select(Vm).where(or_(Vm.id == vm_ref, Vm.name == vm_ref), Vm.external.is_(False)).limit(1))
    if vm is None:
        raise NotFound(f"no VM {vm_ref!r}", field="vm")
    _check(s, vm)
    if s.scalar(select(Template.id).where(Template.cluster_id == vm.cluster_id, Template.name == name)):
        raise Conflict(f"template {name!r} exists", field="name")
    s.add(Template(id=template_id, name=name, cluster_id=vm.cluster_id, description=description,
                   spec={}, source_vm=vm.name, state=CREATING))
    s.flush()
    return vm.id, vm.name, vm.last_host_id


def _check(s: Session, vm: Vm) -> VmSpec:
    if vm.state != VmState.DOWN.value:
        raise Conflict(f"VM {vm.name} is {vm.state}: a template is made from a stopped VM", field="vm",
                       state=vm.state)
    spec = VmSpec.model_validate(vm.spec)
    for i, disk in enumerate(spec.disks):
        if disk.source is not None:
            raise Conflict(f"disk {i} of VM {vm.name} is a host path ({disk.source}): a template's disks are "
                           "volumes", field="vm")
        if disk.volume is None:
            continue
        v, _ = volrefs.find(s, vm.cluster_id, disk.volume, disk.storage, "vm")
        if vmclones.volume_use(s, i, disk, v) == "shared":
            continue  # an ISO: stays what it is
        if v.state != VolumeState.READY.value:
            raise Conflict(f"the volume {v.name} of disk {i} of VM {vm.name} is {v.state}"
                           + (": start the VM once to make it" if v.state == VolumeState.PENDING.value else ""),
                           field="vm")
    return spec


def seal(s: Session, template_id: str, vm_id: str) -> dict[str, Any]:
    """Make the template: the VM's disk volumes become its sealed bases, the VM's disks thin clones of them
    (pending, made at its next start); the template stores the VM's spec without its identity."""
    t = s.get(Template, template_id)
    vm = s.scalar(select(Vm).where(Vm.id == vm_id).with_for_update())
    if t is None or vm is None:
        raise NotFound("the VM or the template was removed meanwhile", field="vm")
    spec = _check(s, vm)  # again: the VM may have changed since the request
    disks = list(spec.disks)
    template_disks = []
    new: list[Volume] = []
    for i, disk in enumerate(disks):
        dumped = disk.model_dump(mode="json")
        if disk.volume is not None:
            v, d = volrefs.find(s, vm.cluster_id, disk.volume, disk.storage, "vm")
            if vmclones.volume_use(s, i, disk, v) == "own":
                v.template_id, v.vm_id = t.id, None
                dumped.update(volume=v.name, storage=d.name)
                plain = DiskSpec.model_validate(disk.model_dump(exclude={"format", "storage"}))
                disks[i], made = vmclones.clone(s, vm.id, vm.name, vm.cluster_id, i, plain, v, d, new,
                                                what="template volume")
                new.append(made)
        template_disks.append(dumped)
    data = anonymous(spec.model_dump(mode="json"))
    data["disks"] = [anonymous({"disks": [d]})["disks"][0] for d in template_disks]
    t.spec, t.state = data, READY
    vm.spec = spec.model_copy(update={"disks": disks}).model_dump(mode="json")
    s.flush()
    s.add_all(new)
    record(s, "template_created", f"template {t.name} made from VM {vm.name} ({len(new)} base volume(s) sealed; "
           f"the VM's disks are now clones of them)", object_type="template", object_id=t.id)
    s.flush()
    return out(s, t)


def drop(s: Session, template_id: str) -> None:
    t = s.get(Template, template_id)
    if t is not None:
        s.delete(t)


# --- answers and delete -------------------------------------------------------------------------------------

def out(s: Session, t: Template) -> dict[str, Any]:
    """The template as the API shows it, with its base volumes and the clones that read them."""
    volumes = []
    clones: list[str] = []
    vms: list[str] = []
    rows = s.execute(select(Volume, StorageDomain.name).join(StorageDomain, StorageDomain.id == Volume.domain_id)
                     .where(Volume.template_id == t.id).order_by(Volume.name)).all()
    hosts: dict[str, str] = {h: n for h, n in s.execute(select(Host.id, Host.name).where(
        Host.id.in_({v.host_id for v, _ in rows if v.host_id})))}
    for v, domain in rows:
        volumes.append({"id": v.id, "name": v.name, "domain": domain, "host": hosts.get(v.host_id or ""),
                        "format": v.format, "capacity_bytes": v.capacity_bytes, "path": v.path})
    if rows:
        for name, vm_name in s.execute(select(Volume.name, Vm.name).outerjoin(Vm, Vm.id == Volume.vm_id).where(
                or_(Volume.backing_id.in_([v.id for v, _ in rows]),
                    Volume.clone_of_id.in_([v.id for v, _ in rows]))).order_by(Volume.name)):
            clones.append(name)
            if vm_name and vm_name not in vms:
                vms.append(vm_name)
    cluster = s.scalar(select(Cluster.name).where(Cluster.id == t.cluster_id))
    return {"id": t.id, "name": t.name, "cluster_id": t.cluster_id, "cluster": cluster,
            "description": t.description, "source_vm": t.source_vm, "state": t.state,
            "memory_mib": t.spec.get("memory_mib"), "vcpus": t.spec.get("vcpus"),
            "created_at": t.created_at.isoformat().replace("+00:00", "Z"),
            "spec": t.spec, "volumes": volumes, "clones": clones, "vms": sorted(vms)}


def reserve_delete(s: Session, ref: str) -> tuple[str, str]:
    """Refuse while clones read a base volume (409 ``template``, with ``vms`` and ``volumes``); else mark the
    template ``deleting``: (id, name)."""
    t = find(s, ref)
    if t.state == DELETING:
        raise Conflict(f"template {t.name} is being deleted", field="template")
    shown = out(s, t)
    if shown["clones"]:
        raise Conflict(f"template {t.name} is cloned by VM {', '.join(shown['vms']) or '?'} (volumes "
                       f"{', '.join(shown['clones'])}): delete those first", field="template",
                       vms=shown["vms"], volumes=shown["clones"])
    t.state = DELETING
    return t.id, t.name


def forget(s: Session, template_id: str, name: str) -> None:
    """The template's row goes; base volumes that could not be deleted stay, released."""
    for v in s.scalars(select(Volume).where(Volume.template_id == template_id)):
        v.template_id = None
    s.flush()
    drop(s, template_id)
    record(s, "template_deleted", f"template {name} deleted", object_type="template", object_id=template_id)
