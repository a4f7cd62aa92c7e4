"""NIC link up/down where libvirt's driver ignores ``<link state>`` (libxl [L11]): ``ip link`` on the
backend interface ``vifD.N`` in dom0. On an emulated host there is no such interface, and saying so is
better than pretending.
"""

from __future__ import annotations

import re
import shutil
import subprocess

from corral.agent.errors import Unsupported

_IFNAME = re.compile(r"^[A-Za-z0-9._-]{1,15}$")


class LinkControl:
    def __init__(self, emulated: bool) -> None:
        self.emulated = emulated

    def set(self, ifname: str, state: str) -> None:
        if state not in ("up", "down") or not _IFNAME.match(ifname):
            raise ValueError(f"bad link request {ifname!r} {state!r}")
        if self.emulated:
            raise Unsupported(f"this host is emulated by libvirt's test driver: there is no {ifname} to set "
                              f"{state}; the change applies to the definition only when the VM is down")
        ip = shutil.which("ip")
        if ip is None:
            raise Unsupported("the 'ip' command (iproute2) is missing on this host")
        proc = subprocess.run([ip, "link", "set", "dev", ifname, state], capture_output=True, text=True,
                              timeout=10, check=False)
        if proc.returncode != 0:
            raise Unsupported(f"ip link set {ifname} {state} failed: {proc.stderr.strip()}")

    def state(self, ifname: str) -> str | None:
        try:
            with open(f"/sys/class/net/{ifname}/flags") as fh:
                return "up" if int(fh.read().strip(), 16) & 1 else "down"
        except (OSError, ValueError):
            return None
