"""The answer about one VM: its state and stats (``registry.answer``) and, unless left out, its live devices."""

from __future__ import annotations

from typing import Any

import libvirt

from corral.agent.vms.links import NicLinks
from corral.agent.vms.live import LiveDevices
from corral.agent.vms.registry import Registry, Vm, answer
from corral.domain.read import LiveDevice


def warned(info: dict[str, Any], warnings: list[str]) -> dict[str, Any]:
    """An answer with the warnings of hooks that ran (an ``after_*`` hook's failure cannot undo the action)."""
    if warnings:
        info["warnings"] = warnings
    return info


class Answers:
    def __init__(self, registry: Registry, live: LiveDevices, links: NicLinks) -> None:
        self.registry = registry
        self.live = live
        self.links = links

    def info(self, vm: Vm, dom: libvirt.virDomain, stats: dict[str, Any] | None = None,
             devices: bool = True) -> dict[str, Any]:
        registry = self.registry
        out = answer(vm, dom, stats if stats is not None else registry.stats.one(registry.conn, dom))
        if devices:
            out["devices"] = [self._device(vm, d, dom) for d in self.live.read(vm, dom)]
        return out

    def _device(self, vm: Vm, dev: LiveDevice, dom: libvirt.virDomain) -> dict[str, Any]:
        data = dev.as_dict()
        if data["kind"] == "nic":
            self.links.answer(vm, dom, dev, data)
        return data
