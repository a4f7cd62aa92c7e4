"""How a VM's disk finds what it names (issue 12): a storage domain, a volume, an image of the VM's cluster, and
who else uses a volume. Shared by ``vmvolumes`` (volume and size disks), ``vmclones`` (image disks, CD-ROM media,
template clones) and ``templates``; every miss is refused by the disk's field."""

from __future__ import annotations

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from corral.engine.db.models import Image, StorageDomain, Vm, Volume
from corral.engine.errors import Conflict, Invalid, NotFound

NAME_MAX = 64  # volumes.name


def domain(s: Session, cluster_id: str, ref: str | None, field: str) -> StorageDomain:
    """The storage domain ``ref`` of the cluster, or its only one."""
    if ref is not None:
        d = s.scalar(select(StorageDomain).where(StorageDomain.cluster_id == cluster_id,
                                                 or_(StorageDomain.id == ref, StorageDomain.name == ref)))
        if d is None:
            raise NotFound(f"the VM's cluster has no storage domain {ref!r}", field=field)
        return d
    found = list(s.scalars(select(StorageDomain).where(StorageDomain.cluster_id == cluster_id)
                           .order_by(StorageDomain.name).limit(10)))
    if not found:
        raise Conflict("the VM's cluster has no storage domain to make the volume in; add one "
                       "(corral storage add) or give the disk a source", field=field)
    if len(found) > 1:
        raise Invalid(f"the VM's cluster has several storage domains ({', '.join(d.name for d in found)}): "
                      "name one", field=field)
    return found[0]


def free_name(s: Session, domain_id: str, base: str, taken: set[str]) -> str:
    """``base``, or ``base-N``: a volume name the domain does not have yet (a volume kept from a deleted VM of
    the same name keeps its own)."""
    for n in range(1000):
        suffix = f"-{n}" if n else ""
        name = base[:NAME_MAX - len(suffix)] + suffix
        if name not in taken and s.scalar(select(Volume.id).where(Volume.domain_id == domain_id,
                                                                  Volume.name == name)) is None:
            return name
    raise Conflict(f"storage domain has no free volume name like {base}", field="name")


def find(s: Session, cluster_id: str, ref: str, domain_ref: str | None, field: str) -> tuple[Volume, StorageDomain]:
    """A volume of the cluster by id or name (``domain_ref`` when the name is in several domains)."""
    query = (select(Volume, StorageDomain).join(StorageDomain, StorageDomain.id == Volume.domain_id)
             .where(StorageDomain.cluster_id == cluster_id, or_(Volume.id == ref, Volume.name == ref)))
    if domain_ref is not None:
        query = query.where(or_(StorageDomain.id == domain_ref, StorageDomain.name == domain_ref))
    rows = s.execute(query.limit(2)).all()
    if not rows:
        where = f" in storage domain {domain_ref}" if domain_ref else ""
        raise NotFound(f"the VM's cluster has no volume {ref!r}{where}", field=field)
    if len(rows) > 1:
        raise Conflict(f"volumes of several storage domains are named {ref!r}; give the disk's storage",
                       field=field)
    return rows[0][0], rows[0][1]


def find_image(s: Session, cluster_id: str, ref: str, field: str) -> tuple[Image, Volume, StorageDomain]:
    """An uploaded image of the cluster by (volume) id or name."""
    query = (select(Image, Volume, StorageDomain).join(Volume, Volume.id == Image.volume_id)
             .join(StorageDomain, StorageDomain.id == Volume.domain_id).where(StorageDomain.cluster_id == cluster_id))
    rows = s.execute(query.where(Volume.id == ref)).all() or s.execute(query.where(Volume.name == ref).limit(2)).all()
    if not rows:
        raise NotFound(f"the VM's cluster has no image {ref!r} (corral image list)", field=field)
    if len(rows) > 1:
        raise Conflict(f"images of several storage domains are named {ref!r}; use its id", field=field)
    return rows[0][0], rows[0][1], rows[0][2]


def other_users(s: Session, vm_id: str, cluster_id: str, v: Volume, domain: str) -> list[str]:
    """Other VMs that use the volume: its owner, or a VM whose disk names it or its path."""
    names = []
    if v.vm_id and v.vm_id != vm_id:
        names.append(s.scalar(select(Vm.name).where(Vm.id == v.vm_id)) or v.vm_id)
    for vm_name, spec in s.execute(select(Vm.name, Vm.spec).where(
            Vm.cluster_id == cluster_id, Vm.id != vm_id, Vm.external.is_(False), Vm.spec.is_not(None))):
        for d in (spec or {}).get("disks") or []:
            if not isinstance(d, dict) or vm_name in names:
                continue
            if (d.get("volume") in (v.name, v.id) and d.get("storage") in (None, domain, v.domain_id)) or \
                    (v.path and d.get("source") == v.path):
                names.append(vm_name)
    return names


def readers(s: Session, v: Volume) -> list[str]:
    """The volumes made (or to be made) from this one: thin clones reading it, pending full copies of it."""
    return list(s.scalars(select(Volume.name).where(or_(Volume.backing_id == v.id, Volume.clone_of_id == v.id))
                          .order_by(Volume.name).limit(20)))
