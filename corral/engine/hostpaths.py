"""Host paths in VM specs: a disk's ``source``, ``kernel``, ``initrd``, an absolute ``bootloader``, a CD-ROM's
``media``. Such a path is opened on the host by the hypervisor (as root with libxl), so it is for admins only
(403 naming the field: others name a volume or an image, which the engine resolves itself), and only under the
directories admins configured for the engine (422 naming the field otherwise), so that even an admin's token
cannot attach ``/etc/shadow`` or boot ``/bin/sh``.

The directories are the engine setting ``CORRAL_HOST_PATHS`` (colon-separated absolute directories, read at
each check); unset, ``DEFAULT_DIRS``. A path with a ``..`` component is refused whatever the directories. A
bootloader given as a program name (``pygrub``) is not a path: libxl looks it up in its own directory.

A spec replacing a stored one (``PUT /vms/{vm}``) is checked only for paths the stored spec did not have, so an
operator may still change the memory of a VM an admin gave a host path.
"""

from __future__ import annotations

import os
import posixpath
from typing import Any

from corral.engine.auth import ENGINE, Role, current
from corral.engine.errors import ApiError, Invalid

ENV = "CORRAL_HOST_PATHS"
DEFAULT_DIRS = ("/var/lib/corral/images", "/var/lib/libvirt/images", "/var/lib/libvirt/boot",
                "/var/lib/xen/images")


def allowed_dirs() -> tuple[str, ...]:
    value = os.environ.get(ENV)
    if value is None:
        return DEFAULT_DIRS
    return tuple(posixpath.normpath(d) for d in value.split(":") if d.startswith("/"))


def spec_paths(spec: Any) -> list[tuple[str, str]]:
    """``(field, path)`` for each host path of a spec given as JSON (untrusted: anything not a path is skipped;
    the spec's own validation reports it)."""
    if not isinstance(spec, dict):
        return []
    found = [(f, spec[f]) for f in ("kernel", "initrd", "bootloader") if isinstance(spec.get(f), str)]
    disks = spec.get("disks")
    for i, disk in enumerate(disks if isinstance(disks, list) else []):
        if isinstance(disk, dict) and isinstance(disk.get("source"), str):
            found.append((f"disks.{i}.source", disk["source"]))
    return [(f, p) for f, p in found if p.startswith("/")]


def under_allowed(path: str) -> bool:
    if ".." in path.split("/"):
        return False
    norm = posixpath.normpath(path)
    return any(d == "/" or norm == d or norm.startswith(d + "/") for d in allowed_dirs())


def check_path(field: str, path: str) -> None:
    """Refuse a host path for a non-admin (403) or outside the allowed directories (422), by field."""
    principal = current() or ENGINE
    if not principal.role.allows(Role.ADMIN):
        raise ApiError(f"{field}: host paths are for admins only ({principal.actor or 'this token'} is "
                       f"{principal.role}); name a volume or an image instead", field=field, code="forbidden",
                       status=403)
    if not under_allowed(path):
        raise Invalid(f"{field}: {path!r} is not under a directory allowed for host paths "
                      f"({', '.join(allowed_dirs()) or 'none'}; the engine setting {ENV})", field=field)


def check_spec(spec: Any, before: Any = None) -> None:
    """Check every host path of ``spec`` that ``before`` (the stored spec it replaces) did not have."""
    had = {p for _f, p in spec_paths(before)}
    for field, path in spec_paths(spec):
        if path not in had:
            check_path(field, path)


def check_device(body: Any) -> None:
    """A hot-plugged ``{"disk": DiskSpec}`` or a CD-ROM's ``{"media": path}``."""
    if not isinstance(body, dict):
        return
    disk = body.get("disk")
    if isinstance(disk, dict) and isinstance(disk.get("source"), str) and disk["source"].startswith("/"):
        check_path("disk.source", disk["source"])
    media = body.get("media")
    if isinstance(media, str) and media.startswith("/"):
        check_path("media", media)
