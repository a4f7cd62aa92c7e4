"""The cloud-init seeds of this host's VMs: NoCloud ISO 9660 volumes labelled ``cidata``, built with pycdlib.

A seed lives at ``<state dir>/cloud-init/<vm id>/cidata.iso`` (a fixed path: the domain XML names it) with the
digest of its files beside it; it is written again only when that digest changes, through a new file renamed
over the old one (a running guest keeps reading the seed it started with). It holds SSH keys and the guest's
network: the file is 0600; its directories are 0711 (a QEMU that runs as its own user, labelled by libvirt,
must traverse them, and may not list them).

The bytes depend on the files alone: ISO 9660 and Rock Ridge record times, which pycdlib takes from the clock,
are a fixed date, and local time is UTC while a seed is built; the same data gives the same image.
Names: ISO 9660 level 3 with Rock Ridge and Joliet, so Linux reads ``user-data``, ``meta-data`` and
``network-config`` in lower case (what cloud-init opens), as ``genisoimage -J -r`` writes them.
"""

from __future__ import annotations

import io
import os
import shutil
import threading
import time as _time
from pathlib import Path
from types import ModuleType
from typing import Any

from corral.agent.errors import AgentError
from corral.domain.cloudinit import SEED_LABEL, SeedFiles, seed_files
from corral.domain.spec import VmSpec

SEED_NAME = "cidata.iso"
SEED_EPOCH = 1_577_836_800.0  # 2020-01-01T00:00:00Z, every time recorded in a seed
_ISO_NAMES = {"meta-data": "/METADATA.;1", "user-data": "/USERDATA.;1", "network-config": "/NETWORKC.;1"}
_build_lock = threading.Lock()


class SeedFailed(AgentError):
    status, code = 500, "seed_failed"


class _FixedClock:
    """``time`` as pycdlib sees it while a seed is built: a fixed moment, in UTC."""

    @staticmethod
    def time() -> float:
        return SEED_EPOCH

    @staticmethod
    def localtime(seconds: float | None = None) -> _time.struct_time:
        return _time.gmtime(SEED_EPOCH if seconds is None else seconds)

    def __getattr__(self, name: str) -> Any:
        return getattr(_time, name)


def _pycdlib() -> tuple[ModuleType, tuple[ModuleType, ...]]:
    """pycdlib, and its modules that read the clock (``time.time``, ``time.localtime``). Imported when a seed
    is built: an agent whose host lacks it still runs every VM without cloud-init data."""
    try:
        import pycdlib
        import pycdlib.dates
        import pycdlib.headervd
        import pycdlib.pycdlib
    except ImportError as exc:
        raise SeedFailed(f"cannot build a cloud-init seed on this host: {exc} (the agent needs pycdlib)",
                         field="cloud_init") from None
    return pycdlib, (pycdlib.pycdlib, pycdlib.headervd, pycdlib.dates)


def build_iso(files: SeedFiles) -> bytes:
    """The seed image of ``files``: equal files, equal bytes."""
    lib, readers = _pycdlib()
    with _build_lock:  # the clock is swapped in pycdlib's modules only, one build at a time
        saved = [m.time for m in readers]
        for m in readers:
            m.time = _FixedClock()  # type: ignore[attr-defined]
        try:
            iso = lib.PyCdlib()
            iso.new(interchange_level=3, vol_ident=SEED_LABEL, sys_ident="LINUX", joliet=3, rock_ridge="1.09")
            for name, data in files.files.items():
                iso.add_fp(io.BytesIO(data), len(data), _ISO_NAMES[name], rr_name=name, joliet_path=f"/{name}")
            out = io.BytesIO()
            iso.write_fp(out)
            iso.close()
        finally:
            for m, clock in zip(readers, saved, strict=True):
                m.time = clock  # type: ignore[attr-defined]
    return out.getvalue()


class SeedStore:
    """The seeds under ``<state_dir>/cloud-init``, one directory per VM."""

    def __init__(self, state_dir: Path) -> None:
        self.root = state_dir / "cloud-init"

    def path(self, vm_id: str) -> Path:
        return self.root / vm_id / SEED_NAME

    def ensure(self, spec: VmSpec, mac_prefix: str) -> Path | None:
        """The seed of ``spec`` on disk, written when missing or when its data changed; None (and no seed
        left behind) for a spec without cloud-init data."""
        files = seed_files(spec, mac_prefix)
        if files is None:
            self.drop(spec.id)
            return None
        path = self.path(spec.id)
        digest_file = path.with_suffix(".sha256")
        digest = files.digest
        try:
            if path.is_file() and digest_file.is_file() and digest_file.read_text().strip() == digest:
                return path
            for d in (self.root, path.parent):
                d.mkdir(mode=0o711, exist_ok=True)
                os.chmod(d, 0o711)
            data = build_iso(files)
            tmp = path.with_name(f".{SEED_NAME}.{os.getpid()}.{threading.get_ident()}")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, path)
            digest_file.write_text(digest + "\n")
        except OSError as exc:
            raise SeedFailed(f"cannot write the cloud-init seed of {spec.name} in {path.parent}: {exc}",
                             field="cloud_init") from None
        return path

    def drop(self, vm_id: str) -> None:
        """Remove a VM's seed (the VM is gone, or has no cloud-init data any more)."""
        shutil.rmtree(self.root / vm_id, ignore_errors=True)
