"""Access to the QEMU pair lab (labs/qemu-pair, issue 13) from pytest: two libvirtd + QEMU (TCG) hosts in their
own namespaces on this machine, reached over their unix sockets.

``qemu_pair()`` runs ``labs/qemu-pair/start`` at most once per process (idempotent: a running pair is left as
it is) and returns its facts, or None with ``pair_unavailable_reason()``. ``CORRAL_QEMUPAIR=0`` skips it.
Tests carry the ``qemulab`` marker and call ``tests.require.unavailable`` when it is None.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
START = REPO / "labs" / "qemu-pair" / "start"


@dataclass(frozen=True)
class QemuPair:
    a_uri: str  # as the build host reaches each libvirtd
    b_uri: str
    a_peer_uri: str  # as the other host's libvirtd reaches it (peer-to-peer migration)
    b_peer_uri: str
    a_addr: str
    b_addr: str
    shared: Path
    kernel: Path
    initrd: Path


_done = False
_pair: QemuPair | None = None
_reason: str | None = None


def pair_unavailable_reason() -> str | None:
    return _reason


def qemu_pair() -> QemuPair | None:
    global _done, _pair, _reason
    if _done:
        return _pair
    _done = True
    if os.environ.get("CORRAL_QEMUPAIR") == "0":
        _reason = "CORRAL_QEMUPAIR=0"
        return None
    if os.geteuid() != 0:
        _reason = "the QEMU pair lab needs root"
        return None
    try:
        proc = subprocess.run([str(START)], capture_output=True, text=True, timeout=900, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        _reason = f"labs/qemu-pair/start: {exc}"
        return None
    if proc.returncode != 0:
        _reason = f"labs/qemu-pair/start exited {proc.returncode}: {(proc.stderr or proc.stdout)[-800:]}"
        return None
    env = dict(line.split("=", 1) for line in proc.stdout.splitlines() if line.startswith("CORRAL_QEMUPAIR_"))
    p = "CORRAL_QEMUPAIR_"
    _pair = QemuPair(env[p + "A_URI"], env[p + "B_URI"], env[p + "A_PEER_URI"], env[p + "B_PEER_URI"],
                     env[p + "A_ADDR"], env[p + "B_ADDR"], Path(env[p + "SHARED"]), Path(env[p + "KERNEL"]),
                     Path(env[p + "INITRD"]))
    return _pair
