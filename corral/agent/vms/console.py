"""The tail of a VM's console log: the file its serial console writes (virtlogd's log, a file chardev), else
the one the flavor's console daemon keeps (xenconsoled: ``Flavor.console_daemon_log`` under its directory)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import libvirt

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
