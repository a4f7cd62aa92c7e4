"""Disks made from images and templates, and CD-ROM media (issue 12): what ``vmvolumes.attach`` does with an
``image`` disk and with a ``volume`` disk that names an image or a template's base volume.

- ``image=NAME`` on a disk: a new volume of the VM, recorded ``pending`` like a ``size_bytes`` one, made at the
  first start from the image: a **thin** qcow2 clone (``backing_id``: the image's volume; a qcow2 overlay reads a
  raw or qcow2 base) when it goes into the image's own storage domain and that domain is not LVM, else a
  **full** copy (``clone_of_id``, cleared once made), also when ``clone: full`` is asked. ``size_bytes`` grows it,
  never below the image's virtual size.
- ``image=NAME`` on a CD-ROM, or ``volume=NAME`` naming an ISO: the ISO itself, shared by every VM that inserts
  it. An ISO is never a writable disk and a disk image never CD-ROM media: both are refused by field.
- ``volume=NAME`` naming a template's base volume: sealed, so only with ``clone`` (thin or full), which is what
  ``templates.expand`` writes for a VM created from a template.
- A volume that clones read (an image, a base) is never attached writable.
"""

from __future__ import annotations

from typing import Literal

from sqlalchemy import select
from sqlalchemy.orm import Session

from corral.domain.spec import CloneMode, DiskDevice, DiskFormat, DiskSpec
from corral.engine import volrefs
from corral.engine.db.models import Image, ImageKind, StorageDomain, Template, Volume, VolumeState
from corral.engine.errors import Conflict, Invalid
from corral.engine.ids import new_id

Use = Literal["clone", "shared", "own"]


def volume_use(s: Session, i: int, disk: DiskSpec, v: Volume) -> Use:
    """How a ``volume`` disk may use the volume: ``clone`` it (a template's base), ``shared`` (an ISO, read by
    any number of VMs) or ``own`` (attached, to this VM only)."""
    field = f"disks.{i}.volume"
    if v.template_id is not None:
        template = s.scalar(select(Template.name).where(Template.id == v.template_id)) or v.template_id
        if disk.clone is None:
            raise Conflict(f"volume {v.name} is a sealed base volume of template {template}: a VM clones it "
                           f"(clone thin or full; corral vm create --template {template})", field=field)
        return "clone"
    if disk.clone is not None:
        raise Invalid("clone goes with an image (image=) or a template's base volume; volume "
                      f"{v.name} is neither", field=f"disks.{i}.clone")
    img = s.get(Image, v.id)
    if img is not None and img.kind == ImageKind.ISO.value:
        if disk.device is not DiskDevice.CDROM and not disk.readonly:
            raise Invalid(f"volume {v.name} is an ISO image: it is CD-ROM media (device cdrom; corral vm create "
                          f"--cdrom iso={v.name}), never a writable disk", field=field)
        return "shared"
    if img is not None and disk.device is DiskDevice.CDROM:
        raise Invalid(f"image {v.name} is a disk image ({v.format}), not an ISO: it cannot be CD-ROM media",
                      field=field)
    if not disk.readonly:
        clones = volrefs.readers(s, v)
        if clones:
            raise Conflict(f"volume {v.name} is read by its clones ({', '.join(clones)}): it can only be "
                           "attached read-only", field=field, volumes=clones)
    return "own"


def image_disk(s: Session, vm_id: str, vm_name: str, cluster_id: str, i: int, disk: DiskSpec,
               new: list[Volume]) -> tuple[DiskSpec, Volume | None]:
    """An ``image`` disk as the spec stores it: a reference to the ISO (a CD-ROM, or a read-only disk), or to a
    new volume of the VM made from the disk image (returned, pending)."""
    field = f"disks.{i}.image"
    assert disk.image is not None
    img, v, d = volrefs.find_image(s, cluster_id, disk.image, field)
    if v.state != VolumeState.READY.value:
        raise Conflict(f"image {v.name} is {v.state}", field=field)
    iso = img.kind == ImageKind.ISO.value
    if disk.device is DiskDevice.CDROM or (iso and disk.readonly):
        if not iso:
            raise Invalid(f"image {v.name} is a disk image ({v.format}), not an ISO: CD-ROM media is an ISO",
                          field=field)
        if disk.storage is not None and disk.storage not in (d.name, d.id):
            raise Invalid(f"ISO {v.name} is in storage domain {d.name}", field=f"disks.{i}.storage")
        return disk.model_copy(update={"image": None, "volume": v.name, "storage": d.name,
                                       "format": DiskFormat.RAW}), None
    if iso:
        raise Invalid(f"image {v.name} is an ISO: it goes into a CD-ROM (device cdrom; corral vm create --cdrom "
                      f"iso={v.name}), never a writable disk", field=field)
    users = volrefs.other_users(s, vm_id, cluster_id, v, d.name)
    if users:
        raise Conflict(f"image {v.name} is attached writable to VM {', '.join(users)}: a clone would read a "
                       "disk that changes", field=field, vms=users)
    return clone(s, vm_id, vm_name, cluster_id, i, disk, v, d, new, what="image")


def clone(s: Session, vm_id: str, vm_name: str, cluster_id: str, i: int, disk: DiskSpec, src: Volume,
          src_domain: StorageDomain, new: list[Volume], what: str = "volume") -> tuple[DiskSpec, Volume]:
    """A new pending volume of the VM made from ``src`` at its first start, and the disk naming it: thin (qcow2,
    backing ``src``) in ``src``'s own domain unless it is LVM, a raw format is asked or ``clone`` is ``full``;
    else a full copy (in ``storage``, or ``src``'s domain)."""
    d = (volrefs.domain(s, cluster_id, disk.storage, f"disks.{i}.storage") if disk.storage is not None
         else src_domain)
    declared = "format" in disk.model_fields_set
    if disk.size_bytes is not None and disk.size_bytes < src.capacity_bytes:
        raise Invalid(f"size_bytes {disk.size_bytes} is smaller than {what} {src.name}'s virtual size "
                      f"{src.capacity_bytes}: a disk made from it can only be as large or larger",
                      field=f"disks.{i}.size_bytes", minimum=src.capacity_bytes)
    thin = (disk.clone is not CloneMode.FULL and d.id == src_domain.id and d.type != "logical"
            and not (declared and disk.format is DiskFormat.RAW))
    if thin:
        fmt = "qcow2"
    elif d.type == "logical":
        if declared and disk.format is not DiskFormat.RAW:
            raise Invalid(f"volumes of storage domain {d.name} (LVM) are raw", field=f"disks.{i}.format")
        fmt = "raw"
    else:
        fmt = disk.format.value if declared else src.format
    name = volrefs.free_name(s, d.id, f"{vm_name}-disk{i}", {v.name for v in new if v.domain_id == d.id})
    v = Volume(id=new_id(), name=name, domain_id=d.id, host_id=None, format=fmt,
               capacity_bytes=disk.size_bytes or src.capacity_bytes, vm_id=vm_id, state=VolumeState.PENDING.value,
               backing_id=src.id if thin else None, clone_of_id=None if thin else src.id)
    return disk.model_copy(update={"image": None, "clone": None, "size_bytes": None, "volume": name,
                                   "storage": d.name, "format": DiskFormat(fmt)}), v
