"""What a VmSpec needs from this very host, checked before anything changes: bridges and libvirt networks its
NICs name, the files and block devices its disks, kernel and initrd name, its host-side bootloader.

The flavor's table says whether a setting *can* work on a hypervisor; only the host can say whether it *will*
(issue 20 item 4: a plan said "native xenbr1" for a host without that bridge, and a bootloader or a disk path
that did not exist surfaced as "libxenlight failed to create new domain"). The answers replace the plan's
decision for the same field, so a plan never says native for something the start would refuse.

A disk's format is probed from its first bytes, never trusted from its declaration or its name (gap L1, the raw
trap): a qcow2 image declared raw, or a raw one declared qcow2, is refused by field.

On libvirt's test driver (an emulated host) there are no guest files to look at: only bridges and networks are
checked there.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field

from corral.domain.flavors.base import Decision, Outcome
from corral.domain.flavors.features import Check
from corral.domain.spec import DiskFormat, DiskSource, NicSource, VmSpec


@dataclass(frozen=True)
class HostView:
    """The host facts a spec is checked against."""

    bridges: frozenset[str]
    networks: frozenset[str]
    files_checked: bool = True  # False on an emulated host: its guest paths are not on this machine
    stat_path: Callable[[str], os.stat_result] = field(default=os.stat)
    executable: Callable[[str], bool] = field(default=lambda p: os.access(p, os.X_OK))
    read_head: Callable[[str], bytes] = field(default=lambda p: _head(p))


QCOW2_MAGIC = b"QFI\xfb"


def _head(path: str) -> bytes:
    with open(path, "rb") as fh:
        return fh.read(len(QCOW2_MAGIC))


def _format_problem(view: HostView, path: str, declared: DiskFormat) -> str | None:
    """The format is probed, never trusted [L1]: a qcow2 image declared raw would hand the guest its qcow2
    header as data (and a guest could write a header naming any host file as its backing file)."""
    try:
        head = view.read_head(path)
    except OSError:
        return None  # unreadable here: _file_problem has said what it could
    is_qcow2 = head == QCOW2_MAGIC
    if is_qcow2 and declared is DiskFormat.RAW:
        return f"{path} is a qcow2 image (its header says so) but is declared raw; declare format qcow2 [L1]"
    if not is_qcow2 and declared is DiskFormat.QCOW2:
        return f"{path} is not a qcow2 image (no qcow2 header) but is declared qcow2; declare format raw"
    return None


def _file_problem(view: HostView, path: str, block: bool) -> str | None:
    try:
        st = view.stat_path(path)
    except FileNotFoundError:
        return f"{path} does not exist on this host"
    except OSError as exc:
        return f"{path} cannot be read on this host ({exc.strerror})"
    if block and not stat.S_ISBLK(st.st_mode):
        return f"{path} is not a block device on this host"
    if not block and stat.S_ISDIR(st.st_mode):
        return f"{path} is a directory, not an image file"
    return None


def check_spec(spec: VmSpec, view: HostView) -> list[Decision]:
    """Refusals for what this host lacks, one per field (paths as in the plan: ``nics.0.source``...)."""
    out: list[Decision] = []
    for i, nic in enumerate(spec.nics):
        if nic.source_type is NicSource.BRIDGE and nic.source not in view.bridges:
            have = ", ".join(sorted(view.bridges)) or "none"
            out.append(Decision(f"nics.{i}.source", Check.HOST_BRIDGE, Outcome.REFUSED,
                                f"bridge {nic.source} is not on this host (bridges here: {have})"))
        elif nic.source_type is NicSource.NETWORK and nic.source not in view.networks:
            have = ", ".join(sorted(view.networks)) or "none"
            out.append(Decision(f"nics.{i}.source", Check.HOST_NETWORK, Outcome.REFUSED,
                                f"libvirt network {nic.source} is not defined on this host (networks: {have})"))
    if not view.files_checked:
        return out
    for i, disk in enumerate(spec.disks):
        if disk.source is None:
            continue
        block = disk.source_type is DiskSource.BLOCK
        problem = _file_problem(view, disk.source, block)
        if problem:
            out.append(Decision(f"disks.{i}.source", Check.HOST_BLOCK if block else Check.HOST_FILE,
                                Outcome.REFUSED, problem))
        elif wrong := _format_problem(view, disk.source, disk.format):
            out.append(Decision(f"disks.{i}.format", Check.HOST_FORMAT, Outcome.REFUSED, wrong))
    for name in ("kernel", "initrd"):
        path = getattr(spec, name)
        if path and (problem := _file_problem(view, path, False)):
            out.append(Decision(name, Check.HOST_FILE, Outcome.REFUSED, problem))
    if spec.bootloader:
        problem = _file_problem(view, spec.bootloader, False)
        if problem is None and not view.executable(spec.bootloader):
            problem = f"{spec.bootloader} is not executable on this host"
        if problem:
            out.append(Decision("bootloader", Check.HOST_BOOTLOADER, Outcome.REFUSED, problem))
    return out


def merge(decisions: list[Decision], host: list[Decision]) -> list[Decision]:
    """The plan with the host's refusals in place of the flavor's decisions for the same fields."""
    if not host:
        return decisions
    paths = {d.path for d in host}
    return [d for d in decisions if d.path not in paths] + host
