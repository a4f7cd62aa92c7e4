"""This host's storage: libvirt storage pools (``dir``, ``netfs``, ``logical``) and their volumes, as the engine
asks for them through ``/v1/storage`` (docs/agent-api.md, "Storage"; issue 12).

Everything goes through libvirt's storage APIs -- define/build/create/autostart of pools, ``createXML`` and
``createXMLFrom`` of volumes, ``virStream`` upload and download, ``resize``, ``delete`` -- and where this host's
libvirt driver lacks one of them (the test driver has no upload, download or resize) the answer is a 409
``unsupported`` naming the operation, never a pretended success.

A volume's format is probed from its first bytes (qcow2 starts with ``QFI\\xfb``), never taken from its name
nor from what an uploader claims: a raw guest disk whose bytes say qcow2 with a backing file would otherwise give
a guest any host file (the raw trap). Only where the file cannot be read (libvirt's test driver has no files)
is libvirt's own idea of the format reported, and ``format_probed`` says so.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import libvirt
from lxml import etree

from corral.agent.errors import AgentError, Conflict, Invalid, LibvirtFailed, NotFound, Unsupported, from_libvirt
from corral.agent.storage_bodies import (
    MAX_BYTES,
    LogicalPool,
    NetfsPool,
    PoolBody,
    ResizeBody,
    VolumeBody,
    VolumeRef,
    check_name,
)
from corral.agent.volstreams import Download, FileSink, Sink, StreamSink, Upload, delete_quietly, writable_file
from corral.domain.flavors import Flavor
from corral.domain.flavors.base import Outcome
from corral.domain.flavors.features import Feature
from corral.domain.spec import GuestType

log = logging.getLogger(__name__)


POOL_STATES = {libvirt.VIR_STORAGE_POOL_INACTIVE: "inactive", libvirt.VIR_STORAGE_POOL_BUILDING: "building",
               libvirt.VIR_STORAGE_POOL_RUNNING: "running", libvirt.VIR_STORAGE_POOL_DEGRADED: "degraded",
               libvirt.VIR_STORAGE_POOL_INACCESSIBLE: "inaccessible"}


# ---------------------------------------------------------------------------------------------------- probing


@dataclass(frozen=True)
class Probe:
    """What a volume's first bytes say: its format, and for qcow2 its virtual size and backing file."""

    format: str
    virtual_size: int | None = None
    backing: str | None = None


# formats recognised by their magic bytes (offset, magic), as qemu's block drivers probe them; anything else is raw
_MAGICS: tuple[tuple[str, int, bytes], ...] = (
    ("qcow2", 0, b"QFI\xfb"), ("qed", 0, b"QED\x00"), ("vmdk", 0, b"KDMV"), ("vhdx", 0, b"vhdxfile"),
    ("vpc", 0, b"conectix"), ("vdi", 64, b"\x7f\x10\xda\xbe"))


def probe(path: str) -> Probe | None:
    """The format of a volume file or block device from its bytes; None where it cannot be read."""
    try:
        with open(path, "rb") as f:
            head = f.read(512)
            name = next((n for n, offset, magic in _MAGICS if head[offset:offset + len(magic)] == magic), "raw")
            if name != "qcow2" or len(head) < 32:
                return Probe(name)
            backing_offset, backing_size = struct.unpack(">QI", head[8:20])
            (size,) = struct.unpack(">Q", head[24:32])
            backing = None
            if backing_offset and 0 < backing_size <= 1023:
                f.seek(backing_offset)
                backing = f.read(backing_size).decode("utf-8", "replace")
                if not backing.startswith("/") and ":" not in backing:  # relative to the image's directory
                    backing = os.path.normpath(os.path.join(os.path.dirname(path), backing))
            return Probe("qcow2", size, backing)
    except OSError:
        return None


# ---------------------------------------------------------------------------------------------------- XML


FS_NS = "http://libvirt.org/schemas/storagepool/fs/1.0"  # libvirt's <fs:mount_opts> (since 5.1)


def _mount_options(body: NetfsPool) -> list[str]:
    """What goes to mount(8) beyond libvirt's own options: the port first (libvirt does not pass <host port>)."""
    port = [f"port={body.source.port}"] if body.source.port is not None else []
    return port + [o for o in body.source.mount_options if o not in port]


def pool_xml(name: str, body: PoolBody) -> str:
    options = _mount_options(body) if isinstance(body, NetfsPool) else []
    pool = etree.Element("pool", type=body.type, nsmap={"fs": FS_NS} if options else None)
    etree.SubElement(pool, "name").text = name
    if isinstance(body, NetfsPool):
        source = etree.SubElement(pool, "source")
        host = etree.SubElement(source, "host", name=body.source.host)
        if body.source.port is not None:
            host.set("port", str(body.source.port))
        etree.SubElement(source, "dir", path=body.source.dir)
        etree.SubElement(source, "format", type=body.source.format)
        if body.source.protocol_version is not None:
            etree.SubElement(source, "protocol", ver=str(body.source.protocol_version))
    elif isinstance(body, LogicalPool):
        source = etree.SubElement(pool, "source")
        etree.SubElement(source, "name").text = body.source.vg
        etree.SubElement(source, "format", type="lvm2")
    target = etree.SubElement(pool, "target")
    etree.SubElement(target, "path").text = (f"/dev/{body.source.vg}" if isinstance(body, LogicalPool)
                                             else body.path)
    if options:
        opts = etree.SubElement(pool, f"{{{FS_NS}}}mount_opts")
        for option in options:
            etree.SubElement(opts, f"{{{FS_NS}}}option", name=option)
    return etree.tostring(pool, encoding="unicode")


def _netfs_extras(root: etree._Element) -> dict[str, Any]:
    """A netfs pool's port, NFS version and further mount options, only those it has (read back from libvirt)."""
    out: dict[str, Any] = {}
    host, proto = root.find("source/host"), root.find("source/protocol")
    if host is not None and (host.get("port") or "").isdigit():
        out["port"] = int(host.get("port") or 0)
    if proto is not None and (proto.get("ver") or "").isdigit():
        out["protocol_version"] = int(proto.get("ver") or 0)
    port_opt = f"port={out['port']}" if "port" in out else None
    options = [o.get("name") for o in root.iterfind(f"{{{FS_NS}}}mount_opts/{{{FS_NS}}}option")]
    if any(o != port_opt for o in options):
        out["mount_options"] = [o for o in options if o != port_opt]
    return out


def volume_xml(name: str, fmt: str, capacity: int, sparse: bool, backing: tuple[str, str] | None = None) -> str:
    vol = etree.Element("volume")
    etree.SubElement(vol, "name").text = name
    etree.SubElement(vol, "capacity", unit="bytes").text = str(capacity)
    if sparse:
        etree.SubElement(vol, "allocation", unit="bytes").text = "0"
    target = etree.SubElement(vol, "target")
    etree.SubElement(target, "format", type=fmt)
    if backing is not None:
        store = etree.SubElement(vol, "backingStore")
        etree.SubElement(store, "path").text = backing[0]
        etree.SubElement(store, "format", type=backing[1])
    return etree.tostring(vol, encoding="unicode")


def _definition(root: etree._Element) -> dict[str, Any]:
    """The parts of a pool definition a PUT states, to compare an existing pool with what is asked."""
    kind = root.get("type")
    out: dict[str, Any] = {"type": kind}
    if kind == "logical":
        out["source.vg"] = root.findtext("source/name")
        return out
    out["path"] = root.findtext("target/path")
    if kind == "netfs":
        host = root.find("source/host")
        src_dir = root.find("source/dir")
        fmt = root.find("source/format")
        out["source.host"] = host.get("name") if host is not None else None
        out["source.dir"] = src_dir.get("path") if src_dir is not None else None
        out["source.format"] = fmt.get("type") if fmt is not None else "auto"
        # mount options are not compared: libvirt's test driver drops <fs:mount_opts> (the port is <host port>)
        out.update({f"source.{k}": v for k, v in _netfs_extras(root).items() if k != "mount_options"})
    return out


def _source(root: etree._Element) -> dict[str, Any] | None:
    kind = root.get("type")
    if kind == "netfs":
        host, src_dir, fmt = root.find("source/host"), root.find("source/dir"), root.find("source/format")
        return {"host": host.get("name") if host is not None else None,
                "dir": src_dir.get("path") if src_dir is not None else None,
                "format": fmt.get("type") if fmt is not None else "auto", **_netfs_extras(root)}
    if kind == "logical":
        return {"vg": root.findtext("source/name")}
    return None


def _users(root: etree._Element, path: str, pool: str, volume: str) -> bool:
    """Does this domain XML use the volume: as a disk or in a disk's backing chain, or as kernel or initrd?"""
    for src in root.iterfind("devices/disk//source"):
        if path in (src.get("file"), src.get("dev")) or (src.get("pool"), src.get("volume")) == (pool, volume):
            return True
    return any((root.findtext(f"os/{tag}") or "") == path for tag in ("kernel", "initrd"))


# ---------------------------------------------------------------------------------------------------- manager


def pool_type_of(pool: libvirt.virStoragePool) -> str | None:
    return etree.fromstring(pool.XMLDesc(0).encode()).get("type")


def _libvirt(exc: libvirt.libvirtError, doing: str, field: str | None = None) -> AgentError:
    code = exc.get_error_code()
    message = exc.get_error_message() or str(exc)
    if code in (libvirt.VIR_ERR_NO_STORAGE_POOL, libvirt.VIR_ERR_NO_STORAGE_VOL):
        return NotFound(f"{doing}: {message}", field=field)
    if code == libvirt.VIR_ERR_STORAGE_VOL_EXIST:
        return Conflict(f"{doing}: {message}", field=field)
    return from_libvirt(exc, doing)


def _inactive_xml(pool: libvirt.virStoragePool) -> str:
    """The pool's persistent definition (libvirt's test driver knows no such flag: it has only the one)."""
    try:
        return str(pool.XMLDesc(libvirt.VIR_STORAGE_XML_INACTIVE))
    except libvirt.libvirtError as exc:
        if exc.get_error_code() != libvirt.VIR_ERR_INVALID_ARG:
            raise
        return str(pool.XMLDesc(0))


class StorageManager:
    """The storage routes' work, on the agent's libvirt connection.

    A pool that failed to start stays defined, and libvirt then calls it merely inactive: the reason is kept
    here (and in the state dir, over agent restarts) so that the pool reads ``inaccessible`` with its error
    until it runs."""

    def __init__(self, conn: Callable[[], libvirt.virConnect], state_dir: Path,
                 flavor: Callable[[], Flavor | None] = lambda: None) -> None:
        self._conn = conn
        self._flavor = flavor  # the host's flavor (known once the agent detected its host): online resize
        self._errors_file = state_dir / "storage-pool-errors.json"
        self._lock = threading.Lock()
        self._uploading: set[tuple[str, str]] = set()
        try:
            self._errors: dict[str, str] = json.loads(self._errors_file.read_text())
        except (OSError, ValueError):
            self._errors = {}

    # ---- pools

    def _set_error(self, name: str, error: str | None) -> None:
        with self._lock:
            if self._errors.get(name) == error:
                return
            if error is None:
                self._errors.pop(name, None)
            else:
                self._errors[name] = error
            try:
                self._errors_file.parent.mkdir(parents=True, exist_ok=True)
                tmp = self._errors_file.with_suffix(".tmp")
                tmp.write_text(json.dumps(self._errors))
                tmp.replace(self._errors_file)
            except OSError as exc:
                log.warning("cannot keep storage pool errors in %s: %s", self._errors_file, exc)

    def _pool(self, name: str) -> libvirt.virStoragePool:
        check_name(name, "pool")
        try:
            return self._conn().storagePoolLookupByName(name)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_POOL:
                raise NotFound(f"no storage pool {name} on this host", field="pool") from None
            raise _libvirt(exc, f"look up pool {name}") from None

    def _running(self, name: str) -> libvirt.virStoragePool:
        pool = self._pool(name)
        if not pool.isActive():
            error = self._errors.get(name)
            raise Conflict(f"storage pool {name} is not running" + (f": {error}" if error else ""), field="pool")
        return pool

    def pool_info(self, pool: libvirt.virStoragePool) -> dict[str, Any]:
        name = pool.name()
        root = etree.fromstring(pool.XMLDesc(0).encode())
        code, capacity, allocation, available = pool.info()
        state = POOL_STATES.get(code, "inactive")
        error = self._errors.get(name)
        if state == "running" and error is not None:
            self._set_error(name, None)
            error = None
        elif state == "inactive" and error is not None:
            state = "inaccessible"
        return {"name": name, "type": root.get("type"), "state": state, "path": root.findtext("target/path"),
                "source": _source(root), "capacity_bytes": capacity, "allocation_bytes": allocation,
                "available_bytes": available, "autostart": bool(pool.autostart()), "error": error}

    def list_pools(self) -> list[dict[str, Any]]:
        out = []
        for pool in self._conn().listAllStoragePools(0):
            try:
                out.append(self.pool_info(pool))
            except libvirt.libvirtError as exc:  # undefined meanwhile
                if exc.get_error_code() != libvirt.VIR_ERR_NO_STORAGE_POOL:
                    raise _libvirt(exc, "list storage pools") from None
        return sorted(out, key=lambda p: p["name"])

    def show_pool(self, name: str) -> dict[str, Any]:
        return self.pool_info(self._pool(name))

    def ensure_pool(self, name: str, body: PoolBody) -> dict[str, Any]:
        """Define (or keep an equal definition), build where needed, autostart, start: idempotent."""
        check_name(name, "name")
        conn = self._conn()
        xml = pool_xml(name, body)
        wanted = _definition(etree.fromstring(xml.encode()))
        try:
            pool = conn.storagePoolLookupByName(name)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_NO_STORAGE_POOL:
                raise _libvirt(exc, f"look up pool {name}") from None
            try:
                pool = conn.storagePoolDefineXML(xml, 0)
            except libvirt.libvirtError as exc:
                raise _libvirt(exc, f"define pool {name}") from None
        else:
            have = _definition(etree.fromstring(_inactive_xml(pool).encode()))
            for key in (*wanted, *have):
                if have.get(key) != wanted.get(key):
                    raise Conflict(f"storage pool {name} is already defined with {key} {have.get(key)!r}, "
                                   f"not {wanted.get(key)!r}", field=key, pool=self.pool_info(pool))
        try:
            if not pool.autostart():
                pool.setAutostart(1)
        except libvirt.libvirtError as exc:
            raise _libvirt(exc, f"set pool {name} to autostart") from None
        if not pool.isActive():
            try:
                if not isinstance(body, LogicalPool):  # dir: mkdir the path; netfs: the mount point. A VG must exist
                    pool.build(0)
                pool.create(0)
            except libvirt.libvirtError as exc:
                reason = (exc.get_error_message() or str(exc)).strip()
                self._set_error(name, reason)
                raise LibvirtFailed(f"storage pool {name} cannot start: {reason}", pool=self.pool_info(pool)) \
                    from None
        self._set_error(name, None)
        return self.pool_info(pool)

    def delete_pool(self, name: str) -> None:
        """Stop and undefine; the volumes' files stay where they are."""
        pool = self._pool(name)
        try:
            if pool.isActive():
                pool.destroy()
            pool.undefine()
        except libvirt.libvirtError as exc:
            raise _libvirt(exc, f"remove pool {name}") from None
        self._set_error(name, None)

    # ---- volumes

    def _volume(self, pool: libvirt.virStoragePool, name: str, field: str = "volume") -> libvirt.virStorageVol:
        check_name(name, field)
        try:
            return pool.storageVolLookupByName(name)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_VOL:
                raise NotFound(f"storage pool {pool.name()} has no volume {name}", field=field) from None
            raise _libvirt(exc, f"look up volume {name}") from None

    def _ref(self, ref: VolumeRef, field: str) -> libvirt.virStorageVol:
        try:
            pool = self._running(ref.pool)
        except AgentError as exc:
            exc.field = f"{field}.pool"
            raise
        return self._volume(pool, ref.volume, f"{field}.volume")

    def volume_info(self, vol: libvirt.virStorageVol, pool_name: str) -> dict[str, Any]:
        path = vol.path()
        _kind, capacity, allocation = vol.info()
        root = etree.fromstring(vol.XMLDesc(0).encode())
        found = probe(path)
        if found is not None:
            fmt, backing = found.format, found.backing
            capacity = found.virtual_size or capacity
        else:
            fmt_el = root.find("target/format")
            fmt = fmt_el.get("type", "raw") if fmt_el is not None else "raw"
            backing = root.findtext("backingStore/path")
        return {"name": vol.name(), "pool": pool_name, "path": path, "format": fmt, "format_probed": found is not None,
                "capacity_bytes": capacity, "allocation_bytes": allocation, "backing": backing}

    def list_volumes(self, pool_name: str) -> list[dict[str, Any]]:
        pool = self._running(pool_name)
        try:
            vols = pool.listAllVolumes(0)
        except libvirt.libvirtError as exc:
            raise _libvirt(exc, f"list the volumes of pool {pool_name}") from None
        return sorted((self.volume_info(v, pool_name) for v in vols), key=lambda v: v["name"])

    def show_volume(self, pool_name: str, name: str) -> dict[str, Any]:
        return self.volume_info(self._volume(self._running(pool_name), name), pool_name)

    def create_volume(self, pool_name: str, body: VolumeBody) -> dict[str, Any]:
        pool = self._running(pool_name)
        pool_type = etree.fromstring(pool.XMLDesc(0).encode()).get("type")
        if body.name in pool.listVolumes():
            raise Conflict(f"storage pool {pool_name} already has a volume {body.name}", field="name")
        if body.backing is not None and body.clone_of is not None:
            raise Invalid("give backing (a thin clone) or clone_of (a full copy), not both", field="clone_of")
        source = body.backing or body.clone_of
        source_info = None
        if source is not None:
            field = "backing" if body.backing is not None else "clone_of"
            source_vol = self._ref(source, field)
            source_info = self.volume_info(source_vol, source.pool)
        if body.backing is not None:
            fmt = body.format or "qcow2"
            if fmt != "qcow2":
                raise Invalid("a thin clone (backing) is a qcow2 volume", field="format")
        elif source_info is not None:
            fmt = body.format or (source_info["format"] if source_info["format"] in ("raw", "qcow2") else "raw")
        else:
            fmt = body.format or "raw"
        if pool_type == "logical" and fmt != "raw":
            raise Invalid(f"storage pool {pool_name} is an LVM volume group: its volumes are raw", field="format")
        capacity = body.capacity_bytes
        if source_info is not None:
            if capacity is None:
                capacity = source_info["capacity_bytes"]
            elif capacity < source_info["capacity_bytes"]:
                raise Invalid(f"capacity_bytes must be at least the source's {source_info['capacity_bytes']}",
                              field="capacity_bytes")
        if capacity is None:
            raise Invalid("capacity_bytes is required for a new empty volume", field="capacity_bytes")
        sparse = pool_type != "logical"
        try:
            if body.backing is not None:
                assert source_info is not None
                xml = volume_xml(body.name, fmt, capacity, sparse, (source_info["path"], source_info["format"]))
                vol = pool.createXML(xml, 0)
            elif body.clone_of is not None:
                vol = pool.createXMLFrom(volume_xml(body.name, fmt, capacity, sparse), source_vol, 0)
            else:
                vol = pool.createXML(volume_xml(body.name, fmt, capacity, sparse), 0)
        except libvirt.libvirtError as exc:
            doing = ("create a thin clone" if body.backing else "copy a volume (createXMLFrom)" if body.clone_of
                     else "create a volume")
            raise _libvirt(exc, f"{doing} {pool_name}/{body.name}", field="name") from None
        return self.volume_info(vol, pool_name)

    def domains_using(self, path: str, pool_name: str, name: str, active_only: bool = False) -> list[str]:
        """Names of this host's domains (defined or running) whose disks or kernel use the volume."""
        names = []
        for dom in self._conn().listAllDomains(0):
            try:
                active = bool(dom.isActive())
                if active_only and not active:
                    continue
                xmls = [dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)] + ([dom.XMLDesc(0)] if active else [])
                if any(_users(etree.fromstring(x.encode()), path, pool_name, name) for x in xmls):
                    names.append(dom.name())
            except libvirt.libvirtError as exc:
                if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                    raise _libvirt(exc, "read the domains") from None
        return sorted(names)

    def volumes_backed_by(self, path: str) -> list[str]:
        """``pool/volume`` of every volume (in running pools) whose backing file is this path."""
        out = []
        for pool in self._conn().listAllStoragePools(libvirt.VIR_CONNECT_LIST_STORAGE_POOLS_ACTIVE):
            try:
                for vol in pool.listAllVolumes(0):
                    if self.volume_info(vol, pool.name())["backing"] == path:
                        out.append(f"{pool.name()}/{vol.name()}")
            except libvirt.libvirtError:
                continue  # a pool stopped or a volume deleted meanwhile
        return sorted(out)

    def _refuse_in_use(self, vol: libvirt.virStorageVol, pool_name: str, doing: str,
                       active_only: bool = False) -> None:
        users = self.domains_using(vol.path(), pool_name, vol.name(), active_only)
        if users:
            raise Conflict(f"cannot {doing} volume {pool_name}/{vol.name()}: domain {', '.join(users)} uses it",
                           field="volume", domains=users)

    def resize(self, pool_name: str, name: str, body: ResizeBody) -> dict[str, Any]:
        """Grow only: shrinking a disk destroys whatever the guest kept at its end. A volume a running domain
        uses is grown by that domain (``virDomainBlockResize``: the hypervisor grows the image and tells the
        guest); a driver without it (libxl) answers 409 unsupported naming the call, and nothing changed."""
        vol = self._volume(self._running(pool_name), name)
        info = self.volume_info(vol, pool_name)
        if body.capacity_bytes < info["capacity_bytes"]:
            raise Invalid(f"capacity_bytes {body.capacity_bytes} is smaller than the volume's "
                          f"{info['capacity_bytes']}: volumes only grow", field="capacity_bytes")
        if body.capacity_bytes == info["capacity_bytes"]:
            return {**info, "online": False}
        running = self.domains_using(vol.path(), pool_name, name, active_only=True)
        if len(running) > 1:
            raise Conflict(f"cannot resize volume {pool_name}/{name} online: domains {', '.join(running)} use it",
                           field="volume", domains=running)
        flavor = self._flavor()
        if running and flavor is not None:
            rule = flavor.rule(Feature.DISK_RESIZE_LIVE, GuestType.HVM)  # one rule for every guest type
            if rule.outcome is Outcome.REFUSED:
                raise Unsupported(f"volume {pool_name}/{name} is used by running domain {running[0]}; {rule.reason}",
                                  field="capacity_bytes", feature=Feature.DISK_RESIZE_LIVE.value,
                                  domains=running)
        try:
            if running:
                self._conn().lookupByName(running[0]).blockResize(
                    vol.path(), body.capacity_bytes, libvirt.VIR_DOMAIN_BLOCK_RESIZE_BYTES)
            else:
                vol.resize(body.capacity_bytes, 0)
        except libvirt.libvirtError as exc:
            doing = (f"resize volume {pool_name}/{name} online in domain {running[0]} (virDomainBlockResize)"
                     if running else f"resize volume {pool_name}/{name}")
            err = _libvirt(exc, doing, field="capacity_bytes")
            err.field = err.field or "capacity_bytes"
            raise err from None
        self.refresh(pool_name)
        return {**self.volume_info(vol, pool_name), "online": bool(running), "domain": running[0] if running else None}

    def delete_volume(self, pool_name: str, name: str) -> None:
        vol = self._volume(self._running(pool_name), name)
        self._refuse_in_use(vol, pool_name, "delete")
        backed = self.volumes_backed_by(vol.path())
        if backed:
            raise Conflict(f"cannot delete volume {pool_name}/{name}: it is the backing file of {', '.join(backed)}",
                           field="volume", volumes=backed)
        try:
            vol.delete(0)
        except libvirt.libvirtError as exc:
            raise _libvirt(exc, f"delete volume {pool_name}/{name}") from None

    # ---- streams

    def begin_upload(self, pool_name: str, name: str, length: int, expect: str | None) -> Upload:
        """Open an upload of ``length`` bytes into a volume, created (raw, that size) when missing."""
        if expect is not None and expect not in ("raw", "qcow2"):
            raise Invalid("format must be raw or qcow2", field="format")
        if not 0 < length <= MAX_BYTES:
            raise Invalid(f"Content-Length must be between 1 and {MAX_BYTES}", field="Content-Length")
        pool = self._running(pool_name)
        check_name(name, "volume")
        key = (pool_name, name)
        with self._lock:
            if key in self._uploading:
                raise Conflict(f"an upload to {pool_name}/{name} is already running", field="volume")
            self._uploading.add(key)
        try:
            created = False
            pool_type = pool_type_of(pool)  # one read of the pool's XML: sparse or not, file or not
            try:
                vol = pool.storageVolLookupByName(name)
                self._refuse_in_use(vol, pool_name, "upload into")
            except libvirt.libvirtError as exc:
                if exc.get_error_code() != libvirt.VIR_ERR_NO_STORAGE_VOL:
                    raise _libvirt(exc, f"look up volume {name}") from None
                try:
                    vol = pool.createXML(volume_xml(name, "raw", length, pool_type != "logical"), 0)
                except libvirt.libvirtError as exc2:
                    raise _libvirt(exc2, f"create volume {pool_name}/{name} for the upload") from None
                created = True
            path = vol.path()
            try:
                sink: Sink = (FileSink(path) if writable_file(pool_type, path)
                              else StreamSink(self._conn(), vol, length))
            except (libvirt.libvirtError, OSError) as exc:
                if created:
                    delete_quietly(vol)
                if isinstance(exc, OSError):
                    raise LibvirtFailed(f"upload into volume {pool_name}/{name}: {exc.strerror or exc}") from None
                raise _libvirt(exc, f"upload into volume {pool_name}/{name} (virStorageVolUpload)") from None
        except BaseException:
            with self._lock:
                self._uploading.discard(key)
            raise
        return Upload(self, pool_name, vol, sink, length, expect)

    def refresh(self, pool_name: str) -> None:
        """libvirt re-reads the pool's files (a volume's format and sizes after its bytes changed)."""
        try:
            self._pool(pool_name).refresh(0)
        except (libvirt.libvirtError, AgentError):
            pass

    def upload_done(self, pool_name: str, name: str) -> None:
        with self._lock:
            self._uploading.discard((pool_name, name))

    def begin_download(self, pool_name: str, name: str) -> Download:
        vol = self._volume(self._running(pool_name), name)
        stream = self._conn().newStream(0)
        try:
            vol.download(stream, 0, 0, 0)
        except libvirt.libvirtError as exc:
            raise _libvirt(exc, f"download volume {pool_name}/{name} (virStorageVolDownload)") from None
        return Download(stream)
