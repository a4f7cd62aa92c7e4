"""A volume's content in and out: uploads into a volume and downloads from one (issue 12).

Where the volume is a regular file this agent can open (``dir`` and ``netfs`` pools: the agent runs on the host,
as root, beside libvirtd) an upload writes the file itself. libvirt's ``virStorageVolUpload`` would carry the same
bytes to libvirtd over its RPC in 256 KiB messages and have its iohelper write them: measured on the QEMU lab
(``benchmarks/upload.py``) that stream alone ran at 190-500 MiB/s where ``cp`` wrote 560-2,500 MiB/s, the largest
part of the gap to the issue's goal (upload >= 0.8x cp). Everywhere else (LVM volumes, pools whose files the
agent cannot open, the test driver whose volumes are not files) the upload goes through libvirt's stream, and a
driver without it answers 409 ``unsupported`` naming the call.

Either way the upload ends in one of two states only: every byte written, synced to the disk (``fdatasync``:
the answer carries a checksum the caller keeps, so the bytes must survive a crash of the host) and the format
probed; or the volume deleted (the client went away, the body was short or long, the bytes are not the format
asked for). A partial image must never be taken for one.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
from typing import TYPE_CHECKING, Any, Protocol

import libvirt

from corral.agent.errors import AgentError, Invalid, LibvirtFailed, from_libvirt

if TYPE_CHECKING:
    from corral.agent.storage import StorageManager

log = logging.getLogger(__name__)

SEND_SLICE = 256 * 1024  # one virStreamSend: libvirt's RPC carries at most 256 KiB of stream data per message
RECV_SIZE = 256 * 1024
FILE_POOLS = frozenset({"dir", "netfs", "fs"})  # pool types whose volumes are plain files on this host


def delete_quietly(vol: libvirt.virStorageVol) -> None:
    try:
        vol.delete(0)
    except libvirt.libvirtError as exc:
        log.warning("could not delete the partial volume %s: %s", vol.path(), exc)


class Sink(Protocol):
    """Where an upload's bytes go; ``how`` is said in the answer (``file`` or ``libvirt stream``)."""

    how: str

    def write(self, data: bytes) -> None: ...
    def finish(self) -> None: ...
    def abort(self) -> None: ...


class StreamSink:
    """libvirt's upload stream (``virStorageVolUpload``), fed in slices of at most one RPC message."""

    how = "libvirt stream"

    def __init__(self, conn: libvirt.virConnect, vol: libvirt.virStorageVol, length: int) -> None:
        self.stream = conn.newStream(0)
        vol.upload(self.stream, 0, length, 0)

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            done = self.stream.send(bytes(view[:SEND_SLICE]))
            if done <= 0:
                raise libvirt.libvirtError(f"virStreamSend returned {done}")
            view = view[done:]

    def finish(self) -> None:
        self.stream.finish()

    def abort(self) -> None:
        try:
            self.stream.abort()
        except libvirt.libvirtError:
            pass


class FileSink:
    """The volume's own file, written from its start as libvirt's upload does (no truncation, no O_DIRECT: the
    page cache is what makes ``cp`` fast too), synced before the answer."""

    how = "file"

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view):]

    def finish(self) -> None:
        try:
            os.fdatasync(self.fd)
        finally:
            os.close(self.fd)
            self.fd = -1

    def abort(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def writable_file(pool_type: str | None, path: str) -> bool:
    """Whether an upload may write ``path`` itself: a regular file of a file-backed pool that this process can
    write (never a block device: an LVM volume goes through libvirt, which knows how to open it)."""
    if pool_type not in FILE_POOLS:
        return False
    try:
        return stat.S_ISREG(os.stat(path).st_mode) and os.access(path, os.W_OK)
    except OSError:
        return False


class Upload:
    """One upload in progress: bytes go to the sink, the sha256 is computed on the way.

    Any end but ``finish`` with every byte sent deletes the volume (see the module's docstring)."""

    def __init__(self, manager: StorageManager, pool: str, vol: libvirt.virStorageVol, sink: Sink,
                 length: int, expect: str | None) -> None:
        self.manager, self.pool, self.vol, self.sink = manager, pool, vol, sink
        self.length, self.expect = length, expect
        self.sent = 0
        self.sha256 = hashlib.sha256()
        self.closed = False

    def send(self, data: bytes) -> None:
        if self.sent + len(data) > self.length:
            self.abort()
            raise Invalid(f"the body is longer than its Content-Length {self.length}", field="Content-Length")
        self.sha256.update(data)
        try:
            self.sink.write(data)
        except (libvirt.libvirtError, OSError) as exc:
            self.abort()
            raise self._failed(exc, f"upload into volume {self.pool}/{self.vol.name()}") from None
        self.sent += len(data)

    @staticmethod
    def _failed(exc: libvirt.libvirtError | OSError, doing: str) -> AgentError:
        if isinstance(exc, libvirt.libvirtError):
            return from_libvirt(exc, doing)
        return LibvirtFailed(f"{doing}: {exc.strerror or exc}")

    def finish(self) -> dict[str, Any]:
        name = self.vol.name()
        if self.sent != self.length:
            self.abort()
            raise Invalid(f"the body had {self.sent} bytes, its Content-Length said {self.length}",
                          field="Content-Length")
        try:
            self.sink.finish()
        except (libvirt.libvirtError, OSError) as exc:
            self.abort()
            raise self._failed(exc, f"upload into volume {self.pool}/{name}") from None
        self.closed = True
        try:
            self.manager.refresh(self.pool)  # libvirt re-reads the file's format and sizes
            info = self.manager.volume_info(self.vol, self.pool)
        finally:
            self.manager.upload_done(self.pool, name)
        if self.expect is not None and info["format"] != self.expect:
            delete_quietly(self.vol)
            raise Invalid(f"the uploaded bytes are {info['format']}, not {self.expect}; volume {name} was removed",
                          field="format", probed=info["format"])
        return {**info, "sha256": self.sha256.hexdigest(), "written_by": self.sink.how}

    def abort(self) -> None:
        """The upload failed or was interrupted: stop the sink, delete the partial volume."""
        if self.closed:
            return
        self.closed = True
        self.sink.abort()
        delete_quietly(self.vol)
        self.manager.upload_done(self.pool, self.vol.name())


class Download:
    """A volume's bytes, read from libvirt's stream in slices."""

    def __init__(self, stream: libvirt.virStream) -> None:
        self.stream = stream
        self.closed = False

    def read(self) -> bytes:
        """The next slice; b"" at the end (the stream is then finished)."""
        data: bytes | int = self.stream.recv(RECV_SIZE)
        if isinstance(data, int):  # -2: would block, never on a blocking stream
            raise LibvirtFailed(f"virStreamRecv returned {data}")
        if not data:
            self.closed = True
            self.stream.finish()
        return data

    def abort(self) -> None:
        if not self.closed:
            self.closed = True
            try:
                self.stream.abort()
            except libvirt.libvirtError:
                pass
