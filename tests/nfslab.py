"""Access to the NFS lab (labs/nfs) from pytest: nfs-ganesha in user space on the build host, NFSv4 only.

``nfs_lab()`` runs ``labs/nfs/start`` at most once per process (it installs nfs-ganesha when missing, starts it
or finds it running) and describes it; later calls give the same answer. The server is left running;
``labs/nfs/stop`` ends it. The Xen lab's dom0 reaches it as ``guest_host`` (10.0.2.2, QEMU's user network),
the build host as ``host``. ``CORRAL_NFS=0`` makes it return None without trying (with
``CORRAL_REQUIRE_LABS=1`` the tests then fail: ``tests.require.unavailable``).
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

__all__ = ["NfsLab", "lab_unavailable_reason", "nfs_lab"]

START = Path(__file__).resolve().parent.parent / "labs" / "nfs" / "start"
START_TIMEOUT_S = 300  # includes apt-get install on first use


@dataclass(frozen=True)
class NfsLab:
    host: str  # where the build host reaches the server (127.0.0.1)
    port: int
    export: str  # the NFSv4 path clients mount (ganesha's pseudo path), e.g. /export
    dir: Path  # the exported directory on the build host: what clients write lands here
    guest_host: str  # the server's address from the Xen lab's dom0 (QEMU's user network)


_checked = False
_lab: NfsLab | None = None
_reason: str | None = None


def lab_unavailable_reason() -> str | None:
    return _reason


def nfs_lab() -> NfsLab | None:
    global _checked, _lab, _reason
    if not _checked:
        _checked = True
        _lab, _reason = _start()
    return _lab


def _start() -> tuple[NfsLab | None, str | None]:
    if os.environ.get("CORRAL_NFS", "") == "0":
        return None, "disabled by CORRAL_NFS=0"
    if os.geteuid() != 0:
        return None, "labs/nfs/start needs root"
    try:
        proc = subprocess.run(["bash", str(START)], capture_output=True, text=True, timeout=START_TIMEOUT_S,
                              check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"labs/nfs/start failed: {exc}"
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        return None, f"labs/nfs/start exited {proc.returncode}: " + " | ".join(tail)
    facts = dict(line.split("=", 1) for line in proc.stdout.splitlines() if line.startswith("CORRAL_NFS_"))
    try:
        return NfsLab(facts["CORRAL_NFS_HOST"], int(facts["CORRAL_NFS_PORT"]), facts["CORRAL_NFS_EXPORT"],
                      Path(facts["CORRAL_NFS_DIR"]), facts["CORRAL_NFS_GUEST_HOST"]), None
    except (KeyError, ValueError) as exc:
        return None, f"labs/nfs/start printed no usable CORRAL_NFS_* lines ({exc!r}): {proc.stdout[-500:]}"
