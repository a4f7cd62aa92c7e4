"""NIC links the flavor leaves to the agent (libxl ignores ``<link state>``: the agent sets the backend
interface ``vifD.N`` in dom0 up or down), set at a change and again after every start of the domain, and
answered as the host side really is."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import libvirt
from lxml import etree

from corral.agent.errors import NotFound, Unsupported, from_libvirt
from corral.agent.netlink import LinkControl as HostLinks
from corral.agent.vms.live import LiveDevices
from corral.agent.vms.registry import Vm
from corral.agent.vms.rendering import RenderedVm
from corral.agent.vms.states import is_active
from corral.domain import config as cfg
from corral.domain.flavors.base import Flavor
from corral.domain.flavors.features import Feature, LinkControl
from corral.domain.read import LiveDevice
from corral.domain.spec import GuestType, NicSpec

log = logging.getLogger(__name__)


class NicLinks:
    def __init__(self, flavor: Flavor, host: HostLinks, live: LiveDevices) -> None:
        self.flavor = flavor
        self.host = host
        self.live = live

    def by_agent(self, vm: Vm) -> bool:
        """Whether this VM's NIC links are made real by the agent (libvirt ignores <link state>)."""
        gt = vm.guest_type or GuestType.HVM
        return self.flavor.rule(Feature.NIC_LINK_DOWN, gt).value == LinkControl.AGENT

    def answer(self, vm: Vm, dom: libvirt.virDomain, dev: LiveDevice, data: dict[str, Any]) -> None:
        """A NIC's answer, with the host side's real state where it can be read (a running domain's vif),
        else the requested one."""
        if dev.device_id in vm.links and self.by_agent(vm):
            real = self.host.state(self.vif(dom, dev)) if is_active(dom) else None
            data["link"] = real or vm.links[dev.device_id]
            data["link_requested"] = vm.links[dev.device_id]

    def change(self, vm: Vm, dom: libvirt.virDomain, rendered: RenderedVm, nic: NicSpec, link: str) -> None:
        """Set a running domain's NIC link: on the host side, or through libvirt where it honours it."""
        if not dom.isActive():
            return
        if self.flavor.rule(Feature.NIC_LINK_DOWN, rendered.guest_type).value == LinkControl.AGENT:
            dev = self.live.find(vm, dom, nic.id)
            if dev is None:
                raise NotFound(f"NIC {nic.id} is not in the running domain")
            self.host.set(self.vif(dom, dev), link)
            return
        iface = rendered.rendered(nic.id)
        assert isinstance(iface, cfg.Interface)
        iface.link_state = link
        try:
            dom.updateDeviceFlags(etree.tostring(iface.to_element(), encoding="unicode"),
                                  libvirt.VIR_DOMAIN_AFFECT_LIVE)
        except libvirt.libvirtError as exc:
            raise from_libvirt(exc, "change the NIC link") from None

    def reapply(self, vm: Vm, dom: libvirt.virDomain) -> Sequence[str]:
        """Links the flavor leaves to the agent (Xen: vifD.N in dom0) are set again after every start."""
        if vm.spec is None or not self.by_agent(vm):
            return []
        down = [nid for nid, state in vm.links.items() if state == "down"]
        if not down:
            return []
        warnings = []
        devices = {d.device_id: d for d in self.live.read(vm, dom)}
        for nid in down:
            dev = devices.get(nid)
            if dev is not None and isinstance(dev.config, cfg.Interface):
                try:
                    self.host.set(self.vif(dom, dev), "down")
                except Unsupported as exc:
                    log.warning("VM %s NIC %s: %s", vm.name, nid, exc)
                    warnings.append(f"NIC {nid} link down: {exc.message}")
        return warnings

    @staticmethod
    def vif(dom: libvirt.virDomain, dev: LiveDevice) -> str:
        assert isinstance(dev.config, cfg.Interface)
        if dev.config.target_dev:
            return dev.config.target_dev
        nics = [d for d in cfg.Domain.from_xml(dom.XMLDesc(0)).devices if isinstance(d, cfg.Interface)]
        index = next(i for i, n in enumerate(nics) if n.mac == dev.config.mac)
        return f"vif{dom.ID()}.{index}"
