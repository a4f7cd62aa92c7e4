"""A VM's consoles on this host: the tail of its console log -- the file its serial console writes (virtlogd's
log, a file chardev), else the one the flavor's console daemon keeps (xenconsoled: ``Flavor.console_daemon_log``
under its directory) -- and where its VNC server answers, for the relay (``corral.agent.relay``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import libvirt

from corral.agent.errors import Conflict
from corral.domain import config as cfg
from corral.domain.flavors.base import Flavor


def console_log(dom: libvirt.virDomain, name: str, flavor: Flavor, console_dir: Path, tail: int) -> dict[str, Any]:
    """The last ``tail`` bytes of the log; no path when the VM has none, an empty log when it is unreadable."""
    path: Path | None = None
    for dev in cfg.Domain.from_xml(dom.XMLDesc(0)).devices:
        if isinstance(dev, cfg.CharDevice) and (dev.log_file or (dev.type == "file" and dev.source_path)):
            path = Path(dev.log_file or dev.source_path or "")
            break
    if path is None and flavor.console_daemon_log is not None:
        path = console_dir / flavor.console_daemon_log.format(name=name)
    if path is None:
        return {"path": None, "log": ""}
    try:
        with path.open("rb") as fh:
            fh.seek(0, 2)
            size = fh.tell()
            fh.seek(max(0, size - tail))
            return {"path": str(path), "log": fh.read().decode(errors="replace")}
    except OSError:
        return {"path": str(path), "log": ""}


WILDCARDS = ("0.0.0.0", "::", "")


def vnc_address(dom: libvirt.virDomain) -> tuple[str, int]:
    """Where the running domain's VNC server answers on this host: (address, port) from its live XML [L6].

    Corral renders every console on the host's loopback and the agent relays it; a wildcard listen (an old
    domain, or a cluster that allows public consoles) is reached on the loopback too, a specific address on
    that address. Raises ``Conflict`` when the domain does not run or has no VNC server with a port."""
    if not dom.isActive():
        raise Conflict("the VM is not running; its console exists while it runs", field="state")
    graphics = [d for d in cfg.Domain.from_xml(dom.XMLDesc(0)).devices if isinstance(d, cfg.Graphics)]
    vnc = next((g for g in graphics if g.type == "vnc"), None)
    if vnc is None:
        kinds = ", ".join(g.type for g in graphics) or "none"
        raise Conflict(f"the VM has no VNC server (graphics: {kinds})", field="graphics")
    if not vnc.port or vnc.port <= 0:
        raise Conflict("the host reports no VNC port for this VM (the driver runs no VNC server)",
                       field="graphics.port")
    listen = vnc.listen or ""
    return ("127.0.0.1" if listen in WILDCARDS else listen.strip("[]")), vnc.port
