"""A VM's snapshots on this host (``/v1/vms/{uuid}/snapshots``, issue 12): list, create, revert, delete.

The flavor says who takes them (``Feature.SNAPSHOT``, a ``SnapshotMechanism``):

- ``LIBVIRT`` (QEMU/KVM, and libvirt's test driver): ``virDomainSnapshotCreateXML``. libvirt's QEMU driver makes
  internal qcow2 snapshots: of the disks *and the memory* while the VM runs (a revert resumes it running), of
  the disks alone while it is stopped (``qemu-img snapshot`` under the hood).
- ``OFFLINE_QCOW2`` (Xen): libvirt's libxl driver has no snapshot API at all -- measured on the Xen lab (libvirt
  9.0, Xen 4.17), ``snapshotCreateXML``, ``listAllSnapshots``, ``snapshotLookupByName`` answer
  VIR_ERR_NO_SUPPORT "this function is not supported by the connection driver: ..." for a running domain and a
  stopped one alike. The agent therefore takes *internal qcow2 snapshots* of the stopped VM's writable disks
  with ``qemu-img snapshot -c/-a/-d`` itself -- what libvirt's QEMU driver does for an inactive domain -- and
  refuses a running VM by name (``snapshot.live``, with the measured reason).

Why internal snapshots and not qcow2 overlays: with an overlay the VM's disk becomes a new top file, so the
path in the VM's spec (and the engine's volume record) would have to follow every snapshot, revert and delete,
and the engine redefines a VM from its spec at every start -- one missed update and the VM boots the wrong
layer. Internal snapshots keep every path as it is, live in the image itself (they move with the volume, they
survive a redefinition of the domain), and a revert is one ``qemu-img snapshot -a`` per disk. The description
(qcow2 has none) is kept in ``<state_dir>/snapshots/<uuid>.json``; a snapshot exists when every writable disk
has it.

Rules for both: the name matches ``NAME``; every writable disk must be qcow2 (its bytes probed, not only
declared: a raw disk is refused by field, ``disks.N.format``); CD-ROMs and read-only disks are skipped; the
VM's lock is held for the whole operation, so the agent does not start (or stop) it meanwhile. qemu-img runs
with an argument list, never a shell.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import libvirt
from lxml import etree
from pydantic import BaseModel, ConfigDict, Field

from corral.agent.errors import AgentError, Conflict, Invalid, NotFound, Refused, Unsupported, from_libvirt
from corral.agent.storage import probe
from corral.agent.vms import VmManager
from corral.agent.vms.registry import Vm
from corral.domain.flavors.base import Outcome
from corral.domain.flavors.features import Feature, SnapshotMechanism
from corral.domain.spec import GuestType

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
QEMU_IMG_TIMEOUT = 600.0
ALIAS_PREFIX = "ua-"


class HostToolFailed(AgentError):
    """A host tool (qemu-img) failed; its own message is in the answer."""

    status, code = 502, "host_tool"


class SnapshotBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(description="^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    description: str = Field("", max_length=1024)


def check_name(name: str) -> str:
    if not NAME.fullmatch(name):
        raise Invalid(f"snapshot name {name!r} must match {NAME.pattern}", field="name")
    return name


def parse_body(data: Any) -> SnapshotBody:
    if not isinstance(data, dict):
        raise Invalid("the body must be an object {name, description}", field="body")
    unknown = sorted(set(data) - {"name", "description"})
    if unknown:
        raise Invalid(f"unknown field {unknown[0]!r}", field=unknown[0])
    name, description = data.get("name"), data.get("description", "")
    if not isinstance(name, str):
        raise Invalid("name is required (a string)", field="name")
    if not isinstance(description, str) or len(description) > 1024:
        raise Invalid("description must be a string of at most 1024 characters", field="description")
    return SnapshotBody(name=check_name(name), description=description)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _iso(seconds: int | float | None) -> str | None:
    if seconds is None:
        return None
    return datetime.fromtimestamp(float(seconds), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# ------------------------------------------------------------------------------------------- the VM's disks


@dataclass(frozen=True)
class SnapDisk:
    """A writable disk of the VM: where it is, and the spec field that names it in a refusal."""

    field: str
    target: str
    path: str | None
    declared: str | None  # the <driver type> libvirt was given


def writable_disks(vm: Vm, xml: str) -> list[SnapDisk]:
    """The domain's disks that a snapshot covers: every ``device='disk'`` without ``<readonly/>``."""
    index = {f"{ALIAS_PREFIX}{d.id}": i for i, d in enumerate(vm.spec.disks)} if vm.spec is not None else {}
    out = []
    for n, disk in enumerate(etree.fromstring(xml.encode()).iterfind("devices/disk")):
        if disk.get("device", "disk") != "disk" or disk.find("readonly") is not None:
            continue
        source = disk.find("source")
        path = None if source is None else (source.get("file") or source.get("dev") or source.get("name"))
        target = disk.find("target")
        dev = target.get("dev", f"disk{n}") if target is not None else f"disk{n}"
        alias = disk.find("alias")
        i = index.get(alias.get("name", "") if alias is not None else "")
        driver = disk.find("driver")
        out.append(SnapDisk(f"disks.{i if i is not None else dev}", dev, path,
                            driver.get("type") if driver is not None else None))
    return out


def _all_qcow2(disks: list[SnapDisk], probed: bool) -> None:
    """Refuse, by field, a disk a qcow2 snapshot cannot cover. ``probed``: the files are this host's to read
    (the format is the bytes', where they can be read; libvirt's test driver has no files)."""
    for d in disks:
        if d.path is None:
            raise Refused(f"disk {d.target} has no source: nothing to snapshot", field=d.field)
        fmt = d.declared
        if probed:
            found = probe(d.path)
            fmt = found.format if found is not None else fmt
        if fmt != "qcow2":
            raise Refused(f"disk {d.target} ({d.path}) is {fmt or 'raw'}: snapshots need every writable disk in "
                          "qcow2 (convert it, or make it read-only)", field=f"{d.field}.format")


# ------------------------------------------------------------------------------------------- the manager


class Snapshots:
    """The snapshot operations of one agent. ``vms``: its VM manager (made when libvirt is first reached)."""

    def __init__(self, vms: Callable[[], VmManager], state_dir: Path, qemu_img: str = "qemu-img") -> None:
        self._vms = vms
        self.state_dir = state_dir
        self.qemu_img = qemu_img

    # ---- shared ---------------------------------------------------------------------------------------

    def _vm(self, uuid: str) -> tuple[VmManager, Vm, libvirt.virDomain, SnapshotMechanism]:
        manager = self._vms()
        vm, dom = manager.lookup(uuid)
        rule = manager.flavor.rule(Feature.SNAPSHOT, vm.guest_type or GuestType.HVM)
        if rule.outcome is Outcome.REFUSED or not isinstance(rule.value, SnapshotMechanism):
            raise Unsupported(f"snapshots: {rule.reason}", field="snapshot")
        return manager, vm, dom, rule.value

    def _live_refusal(self, manager: VmManager, vm: Vm) -> Unsupported | None:
        rule = manager.flavor.rule(Feature.SNAPSHOT_LIVE, vm.guest_type or GuestType.HVM)
        if rule.outcome is Outcome.REFUSED:
            return Unsupported(f"VM {vm.name} is running; {rule.reason}", field="state",
                               feature=Feature.SNAPSHOT_LIVE.value)
        return None

    def list_all(self, uuid: str) -> dict[str, Any]:
        _, vm, dom, mechanism = self._vm(uuid)
        items = self._libvirt_list(dom) if mechanism is SnapshotMechanism.LIBVIRT else self._offline_list(vm, dom)
        items.sort(key=lambda s: (s["created_at"] or "", s["name"]))
        return {"mechanism": mechanism.value, "items": items}

    def create(self, uuid: str, body: SnapshotBody) -> dict[str, Any]:
        manager, vm, dom, mechanism = self._vm(uuid)
        with manager.vm_lock(uuid):
            if mechanism is SnapshotMechanism.LIBVIRT:
                return self._libvirt_create(manager, vm, dom, body)
            return self._offline_create(manager, vm, dom, body)

    def revert(self, uuid: str, name: str) -> dict[str, Any]:
        check_name(name)
        manager, vm, dom, mechanism = self._vm(uuid)
        with manager.vm_lock(uuid):
            if mechanism is SnapshotMechanism.LIBVIRT:
                snapshot = self._libvirt_revert(dom, name)
            else:
                snapshot = self._offline_revert(manager, vm, dom, name)
        return {"snapshot": snapshot, "vm": manager.info(vm, dom, devices=False)}

    def delete(self, uuid: str, name: str) -> None:
        check_name(name)
        manager, vm, dom, mechanism = self._vm(uuid)
        with manager.vm_lock(uuid):
            if mechanism is SnapshotMechanism.LIBVIRT:
                self._libvirt_snapshot(dom, name).delete(0)
            else:
                self._offline_delete(manager, vm, dom, name)

    # ---- libvirt (KVM, test driver) -------------------------------------------------------------------

    @staticmethod
    def _libvirt_snapshot(dom: libvirt.virDomain, name: str) -> libvirt.virDomainSnapshot:
        try:
            return dom.snapshotLookupByName(name, 0)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN_SNAPSHOT:
                raise NotFound(f"VM {dom.name()} has no snapshot {name!r}", field="name") from None
            raise from_libvirt(exc, "snapshot lookup") from None

    @staticmethod
    def _libvirt_answer(snap: libvirt.virDomainSnapshot) -> dict[str, Any]:
        root = etree.fromstring(snap.getXMLDesc(0).encode())
        created = root.findtext("creationTime")
        state = root.findtext("state") or ""
        memory = root.find("memory")
        with_memory = state in ("running", "paused") and (memory is None or memory.get("snapshot") != "no")
        return {"name": root.findtext("name") or snap.getName(), "description": root.findtext("description") or "",
                "created_at": _iso(int(created)) if created and created.isdigit() else None,
                "vm_state": state, "memory": with_memory, "current": bool(snap.isCurrent(0))}

    def _libvirt_list(self, dom: libvirt.virDomain) -> list[dict[str, Any]]:
        try:
            return [self._libvirt_answer(s) for s in dom.listAllSnapshots(0)]
        except libvirt.libvirtError as exc:
            raise from_libvirt(exc, "list snapshots") from None

    def _libvirt_create(self, manager: VmManager, vm: Vm, dom: libvirt.virDomain,
                        body: SnapshotBody) -> dict[str, Any]:
        if body.name in {s.getName() for s in dom.listAllSnapshots(0)}:
            raise Conflict(f"VM {vm.name} has a snapshot {body.name!r}", field="name")
        if dom.isActive() and (refusal := self._live_refusal(manager, vm)) is not None:
            raise refusal
        disks = writable_disks(vm, dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
        _all_qcow2(disks, probed=not manager.det.emulated)
        root = etree.Element("domainsnapshot")
        etree.SubElement(root, "name").text = body.name
        etree.SubElement(root, "description").text = body.description
        try:
            snap = dom.snapshotCreateXML(etree.tostring(root, encoding="unicode"),
                                         libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_ATOMIC)
        except libvirt.libvirtError as exc:
            raise from_libvirt(exc, f"snapshot {vm.name}") from None
        return self._libvirt_answer(snap)

    def _libvirt_revert(self, dom: libvirt.virDomain, name: str) -> dict[str, Any]:
        snap = self._libvirt_snapshot(dom, name)
        try:
            dom.revertToSnapshot(snap, 0)
        except libvirt.libvirtError as exc:
            raise from_libvirt(exc, f"revert {dom.name()} to {name}") from None
        return self._libvirt_answer(snap)

    # ---- offline qcow2 (Xen) --------------------------------------------------------------------------

    def _offline_disks(self, manager: VmManager, vm: Vm, dom: libvirt.virDomain) -> list[SnapDisk]:
        disks = writable_disks(vm, dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
        _all_qcow2(disks, probed=True)
        if not disks:
            raise Refused(f"VM {vm.name} has no writable disk to snapshot", field="disks")
        return disks

    def _offline_stopped(self, manager: VmManager, vm: Vm, dom: libvirt.virDomain) -> list[SnapDisk]:
        if dom.isActive():
            refusal = self._live_refusal(manager, vm)
            raise refusal or Conflict(f"VM {vm.name} is running; stop it first", field="state")
        return self._offline_disks(manager, vm, dom)

    def _run(self, *args: str, field: str) -> str:
        try:
            done = subprocess.run([self.qemu_img, *args], capture_output=True, text=True, timeout=QEMU_IMG_TIMEOUT,
                                  check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise HostToolFailed(f"qemu-img {args[0]}: {exc}", field=field) from None
        if done.returncode != 0:
            raise HostToolFailed(f"qemu-img {' '.join(args[:2])} failed: {done.stderr.strip() or done.returncode}",
                                 field=field)
        return done.stdout

    def _in_disk(self, disk: SnapDisk) -> dict[str, dict[str, Any]]:
        """The internal snapshots of one disk, by name (``qemu-img info``; shared, so a running VM's disk reads)."""
        assert disk.path is not None
        info = json.loads(self._run("info", "--force-share", "--output=json", disk.path, field=disk.field))
        return {s["name"]: s for s in info.get("snapshots") or [] if isinstance(s, dict) and "name" in s}

    def _notes_path(self, uuid: str) -> Path:
        return self.state_dir / "snapshots" / f"{uuid}.json"

    def _notes(self, uuid: str) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads(self._notes_path(uuid).read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _write_notes(self, uuid: str, notes: dict[str, dict[str, Any]]) -> None:
        path = self._notes_path(uuid)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(notes, indent=1, sort_keys=True))
        os.replace(tmp, path)

    def _offline_list(self, vm: Vm, dom: libvirt.virDomain) -> list[dict[str, Any]]:
        disks = writable_disks(vm, dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
        per_disk = [self._in_disk(d) for d in disks if d.path is not None and _is_qcow2(d.path)]
        if not per_disk:
            return []
        names = set(per_disk[0]).intersection(*per_disk[1:])
        notes = self._notes(vm.uuid)
        return [{"name": n, "description": str(notes.get(n, {}).get("description", "")),
                 "created_at": _iso(per_disk[0][n].get("date-sec")), "vm_state": "shutoff", "memory": False,
                 "current": False} for n in names]

    def _offline_create(self, manager: VmManager, vm: Vm, dom: libvirt.virDomain,
                        body: SnapshotBody) -> dict[str, Any]:
        disks = self._offline_stopped(manager, vm, dom)
        for d in disks:
            if body.name in self._in_disk(d):
                raise Conflict(f"disk {d.target} of VM {vm.name} has a snapshot {body.name!r}", field="name")
        done: list[SnapDisk] = []
        try:
            for d in disks:
                assert d.path is not None
                self._run("snapshot", "-c", body.name, d.path, field=d.field)
                done.append(d)
        except AgentError:
            for d in done:  # all disks or none
                assert d.path is not None
                subprocess.run([self.qemu_img, "snapshot", "-d", body.name, d.path], capture_output=True,
                               timeout=QEMU_IMG_TIMEOUT, check=False)
            raise
        notes = self._notes(vm.uuid)
        notes[body.name] = {"description": body.description, "created_at": _now()}
        self._write_notes(vm.uuid, notes)
        return {"name": body.name, "description": body.description, "created_at": notes[body.name]["created_at"],
                "vm_state": "shutoff", "memory": False, "current": False}

    def _offline_find(self, vm: Vm, disks: list[SnapDisk], name: str) -> dict[str, Any]:
        found = [self._in_disk(d) for d in disks]
        missing = [d.target for d, names in zip(disks, found, strict=True) if name not in names]
        if len(missing) == len(disks):
            raise NotFound(f"VM {vm.name} has no snapshot {name!r}", field="name")
        if missing:
            raise Conflict(f"snapshot {name!r} of VM {vm.name} is not on disk {', '.join(missing)} (a disk added "
                           "after it was taken?): it cannot be reverted as a whole", field="name")
        return found[0][name]

    def _offline_revert(self, manager: VmManager, vm: Vm, dom: libvirt.virDomain, name: str) -> dict[str, Any]:
        disks = self._offline_stopped(manager, vm, dom)
        raw = self._offline_find(vm, disks, name)
        for d in disks:
            assert d.path is not None
            self._run("snapshot", "-a", name, d.path, field=d.field)
        note = self._notes(vm.uuid).get(name, {})
        return {"name": name, "description": str(note.get("description", "")),
                "created_at": _iso(raw.get("date-sec")), "vm_state": "shutoff", "memory": False, "current": False}

    def _offline_delete(self, manager: VmManager, vm: Vm, dom: libvirt.virDomain, name: str) -> None:
        if dom.isActive():
            refusal = self._live_refusal(manager, vm)
            raise refusal or Conflict(f"VM {vm.name} is running; stop it first", field="state")
        disks = self._offline_disks(manager, vm, dom)
        found = [self._in_disk(d) for d in disks]
        holding = [d for d, names in zip(disks, found, strict=True) if name in names]
        if not holding:
            raise NotFound(f"VM {vm.name} has no snapshot {name!r}", field="name")
        for d in holding:
            assert d.path is not None
            self._run("snapshot", "-d", name, d.path, field=d.field)
        notes = self._notes(vm.uuid)
        if notes.pop(name, None) is not None:
            self._write_notes(vm.uuid, notes)


def _is_qcow2(path: str) -> bool:
    found = probe(path)
    return found is not None and found.format == "qcow2"
