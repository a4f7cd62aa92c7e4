"""libvirt's snapshot metadata kept across a redefinition of the domain (KVM; issue 12).

The engine redefines a VM from its spec at every start (undefine, then define: the spec may have changed). libvirt
refuses to undefine a domain that has snapshots ("cannot delete inactive domain with N snapshots"), and undefining
it with ``VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA`` would forget them while their data stays in the qcow2 images.
So before an undefine the agent writes each snapshot's XML (parents first) to
``<state_dir>/snapshots/<uuid>/libvirt/``, and after a define of the same UUID it gives them back to libvirt with
``VIR_DOMAIN_SNAPSHOT_CREATE_REDEFINE`` -- what ``virsh snapshot-create --redefine`` is for. A driver without
snapshots (libxl) has nothing to keep.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import libvirt

from corral.private import private_dir

log = logging.getLogger(__name__)


def _dir(state_dir: Path, uuid: str) -> Path:
    return state_dir / "snapshots" / uuid / "libvirt"


def keep(dom: libvirt.virDomain, state_dir: Path) -> bool:
    """Write the domain's snapshots down; True when it has any (undefine it with SNAPSHOTS_METADATA then)."""
    try:
        snaps = dom.listAllSnapshots(libvirt.VIR_DOMAIN_SNAPSHOT_LIST_TOPOLOGICAL)
    except libvirt.libvirtError:
        return False  # no snapshot API on this driver
    if not snaps:
        return False
    where = _dir(state_dir, dom.UUIDString())
    shutil.rmtree(where, ignore_errors=True)
    private_dir(where)  # the XML is the SECURE one: it may hold a VNC password
    order = []
    for n, snap in enumerate(snaps):
        name = f"{n:04d}.xml"
        fd = os.open(where / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(snap.getXMLDesc(libvirt.VIR_DOMAIN_SNAPSHOT_XML_SECURE))
        order.append({"file": name, "current": bool(snap.isCurrent(0))})
    (where / "order.json").write_text(json.dumps(order))
    return True


def restore(dom: libvirt.virDomain, state_dir: Path) -> list[str]:
    """Give a just-defined domain the snapshots kept for its UUID; the names given back (a snapshot libvirt
    refuses is logged and skipped: the VM itself must still be defined)."""
    where = _dir(state_dir, dom.UUIDString())
    try:
        order = json.loads((where / "order.json").read_text())
    except (OSError, ValueError):
        return []
    names = []
    for item in order:
        flags = libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_REDEFINE
        if item.get("current"):
            flags |= libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_CURRENT
        try:
            names.append(dom.snapshotCreateXML((where / item["file"]).read_text(), flags).getName())
        except (OSError, libvirt.libvirtError) as exc:
            log.warning("VM %s: snapshot %s not given back to libvirt: %s", dom.name(), item.get("file"), exc)
    shutil.rmtree(where, ignore_errors=True)
    return names
