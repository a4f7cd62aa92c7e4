"""The devices of a domain as libvirt has them, each matched to the spec device it was rendered from."""

from __future__ import annotations

import libvirt

from corral.agent.vms.registry import Vm
from corral.agent.vms.rendering import Rendering
from corral.domain import config as cfg
from corral.domain.read import LiveDevice, match_devices, read_domain


class LiveDevices:
    def __init__(self, rendering: Rendering) -> None:
        self.rendering = rendering
        self.flavor = rendering.flavor

    def read(self, vm: Vm, dom: libvirt.virDomain) -> list[LiveDevice]:
        xml = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_SECURE)  # else a graphics password always reads as unset
        if vm.spec is None:
            return read_domain(xml, None, self.flavor.name, vm.guest_type)[1]
        return match_devices(cfg.Domain.from_xml(xml).devices, self.rendering.expected_devices(vm))

    def find(self, vm: Vm, dom: libvirt.virDomain, device_id: str) -> LiveDevice | None:
        return next((d for d in self.read(vm, dom) if d.device_id == device_id), None)
