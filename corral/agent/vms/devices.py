"""Changes to a VM's devices, memory and vCPUs: checked against the host and the flavor before anything
changes, applied to the running domain where it runs, then kept in its persistent definition.

The definition is the rendering the flavor check made of the new spec (not a second resolution of it); what a
flavor cannot do live is refused with a message saying what works instead.
"""

from __future__ import annotations

from typing import Any

import libvirt
from lxml import etree

from corral.agent.bodies import device_change, hotplugged, unplugged, with_memory, with_vcpus
from corral.agent.errors import Unsupported, from_libvirt
from corral.agent.events import EventBus
from corral.agent.hooks import Hooks
from corral.agent.vms.answers import Answers, warned
from corral.agent.vms.links import NicLinks
from corral.agent.vms.live import LiveDevices
from corral.agent.vms.registry import Registry, Vm
from corral.agent.vms.rendering import RenderedVm, Rendering
from corral.domain import config as cfg
from corral.domain.flavors.base import Outcome
from corral.domain.flavors.features import Feature
from corral.domain.spec import DiskSpec, GuestType, NicSpec, VmSpec


class DeviceChanges:
    def __init__(self, registry: Registry, rendering: Rendering, live: LiveDevices, links: NicLinks,
                 answers: Answers, hooks: Hooks, bus: EventBus) -> None:
        self.registry = registry
        self.rendering = rendering
        self.flavor = rendering.flavor
        self.live = live
        self.links = links
        self.answers = answers
        self.hooks = hooks
        self.bus = bus

    def _persist(self, vm: Vm, spec: VmSpec, rendered: RenderedVm | None = None) -> None:
        """Define the persistent definition (and its metadata) of the new spec: from ``rendered``, what a
        flavor check just made of it, or rendered here."""
        if rendered is None:
            xml, rendered = self.rendering.render(spec, vm.guest_type)
        else:
            xml = rendered.domain.to_xml(False)
        try:
            self.registry.conn.defineXML(xml)
        except libvirt.libvirtError as exc:
            raise from_libvirt(exc, "save the new definition") from None
        vm.spec = spec
        vm.guest_type = rendered.guest_type
        rendered.seed(vm)

    def update_device(self, uuid: str, device_id: str, change: dict[str, Any]) -> dict[str, Any]:
        with self.registry.vm_lock(uuid):
            vm, dom, spec = self.registry.managed(uuid)
            planned = device_change(vm.name, spec, device_id, change, self.flavor, vm.guest_type or GuestType.HVM)
            rendered = self.rendering.check(vm, planned.spec, planned.section)
            if planned.key == "media":
                assert isinstance(planned.device, DiskSpec)
                self._change_media(vm, dom, rendered, planned.device, planned.value)
            elif planned.key == "link":
                assert isinstance(planned.device, NicSpec)
                self.links.change(vm, dom, rendered, planned.device, planned.value)
            elif dom.isActive():  # password
                gfx = rendered.rendered(planned.device.id)
                try:
                    dom.updateDeviceFlags(etree.tostring(gfx.to_element(), encoding="unicode"),
                                          libvirt.VIR_DOMAIN_AFFECT_LIVE)
                except libvirt.libvirtError as exc:
                    raise from_libvirt(exc, "change the console password") from None
            self._persist(vm, planned.spec, rendered)
            if planned.key == "link":
                vm.links[planned.device.id] = planned.value
            detail = {planned.key: planned.value} if planned.key != "password" else {}
            self.bus.publish("device", vm.uuid, vm.name, device_id=planned.device.id, change=planned.key, **detail)
            return self.answers.info(vm, dom)

    def _change_media(self, vm: Vm, dom: libvirt.virDomain, rendered: RenderedVm, disk: DiskSpec,
                      media: str | None) -> None:
        if not dom.isActive():
            return
        if media is not None:
            self._refuse_live_insert(vm, dom, rendered, disk)
        rule = self.flavor.rule(Feature.CDROM_CHANGE_LIVE, rendered.guest_type)
        if rule.outcome is Outcome.REFUSED:  # Xen PV [X6]: before anything changes, the definition included
            what = "eject the media of" if media is None else "change the media of"
            raise Unsupported(f"cannot {what} CD-ROM {disk.id} of running VM {vm.name}: {rule.reason}",
                              field="media")
        elem = rendered.rendered(disk.id)
        try:
            dom.updateDeviceFlags(etree.tostring(elem.to_element(), encoding="unicode"), libvirt.VIR_DOMAIN_AFFECT_LIVE)
        except libvirt.libvirtError as exc:
            raise from_libvirt(exc, "change the CD-ROM media") from None

    def _refuse_live_insert(self, vm: Vm, dom: libvirt.virDomain, rendered: RenderedVm, disk: DiskSpec) -> None:
        """Where the flavor cannot put media into a running drive that started empty (Xen HVM [X4]: qemu
        segfaults; Xen PV [X6]: no PV drive exists while it is empty), refuse before anything changes. Whether it
        started empty is known for the domain the agent saw start; for one it did not (the agent restarted
        meanwhile) a drive empty now counts as started empty."""
        rule = self.flavor.rule(Feature.CDROM_INSERT_LIVE, rendered.guest_type)
        if rule.outcome is not Outcome.REFUSED:
            return
        known = self.registry.started_empty.get(vm.uuid)
        if known is not None and known[0] == dom.ID():
            empty_at_start = disk.id in known[1]
        else:
            live = self.live.find(vm, dom, disk.id)
            empty_at_start = live is None or not isinstance(live.config, cfg.Disk) or not live.config.source
        if empty_at_start:
            raise Unsupported(f"cannot insert media into CD-ROM {disk.id} of running VM {vm.name}: it was empty "
                              f"when the VM started. {rule.reason}", field="media")

    def hotplug(self, uuid: str, kind: str, data: dict[str, Any]) -> dict[str, Any]:
        with self.registry.vm_lock(uuid):
            vm, dom, spec = self.registry.managed(uuid)
            device, new_spec = hotplugged(vm.name, spec, kind, data, self.flavor.mac_prefix)
            rendered = self.rendering.check(vm, new_spec, "disks" if kind == "disk" else "nics")
            element = rendered.device(device.id)
            warnings: list[str] = []
            # not rendered: a drive the flavor adds only later (Xen PV: an empty CD-ROM until media goes in)
            if dom.isActive() and element is not None:
                xml = etree.tostring(element.to_element(), encoding="unicode")
                xml = self.hooks.run("before_device_hotplug", xml, vm.uuid, vm.name).xml
                try:
                    dom.attachDeviceFlags(xml, libvirt.VIR_DOMAIN_AFFECT_LIVE)
                except libvirt.libvirtError as exc:
                    raise from_libvirt(exc, f"hot-plug the {kind}") from None
                warnings = self.hooks.run("after_device_hotplug", xml, vm.uuid, vm.name).warnings
            self._persist(vm, new_spec, rendered)
            if isinstance(device, NicSpec):
                vm.links[device.id] = device.link.value
            self.bus.publish("device", vm.uuid, vm.name, device_id=device.id, change="attached", kind=kind)
            return warned(self.answers.info(vm, dom), warnings)

    def unplug(self, uuid: str, device_id: str) -> dict[str, Any]:
        with self.registry.vm_lock(uuid):
            vm, dom, spec = self.registry.managed(uuid)
            _device, new_spec = unplugged(vm.name, spec, device_id)
            warnings: list[str] = []
            if dom.isActive():
                live = self.live.find(vm, dom, device_id)
                if live is not None:
                    xml = etree.tostring(live.config.to_element(), encoding="unicode")
                    self.hooks.run("before_device_unplug", xml, vm.uuid, vm.name)
                    try:
                        dom.detachDeviceFlags(xml, libvirt.VIR_DOMAIN_AFFECT_LIVE)
                    except libvirt.libvirtError as exc:
                        raise from_libvirt(exc, "unplug the device") from None
                    warnings = self.hooks.run("after_device_unplug", xml, vm.uuid, vm.name).warnings
            self._persist(vm, new_spec)
            vm.links.pop(device_id, None)
            self.bus.publish("device", vm.uuid, vm.name, device_id=device_id, change="detached")
            return warned(self.answers.info(vm, dom), warnings)

    def set_memory(self, uuid: str, memory_mib: int) -> dict[str, Any]:
        with self.registry.vm_lock(uuid):
            vm, dom, spec = self.registry.managed(uuid)
            new_spec = with_memory(spec, memory_mib)
            rendered = self.rendering.check(vm, new_spec, "")
            if dom.isActive():
                try:
                    dom.setMemoryFlags(memory_mib * 1024, libvirt.VIR_DOMAIN_AFFECT_LIVE)
                except libvirt.libvirtError as exc:
                    raise from_libvirt(exc, "set the balloon target") from None
            self._persist(vm, new_spec, rendered)
            self.bus.publish("device", vm.uuid, vm.name, change="memory", memory_mib=memory_mib)
            return self.answers.info(vm, dom)

    def set_vcpus(self, uuid: str, vcpus: int) -> dict[str, Any]:
        with self.registry.vm_lock(uuid):
            vm, dom, spec = self.registry.managed(uuid)
            new_spec = with_vcpus(spec, vcpus)
            rendered = self.rendering.check(vm, new_spec, "")
            if dom.isActive():
                try:
                    dom.setVcpusFlags(vcpus, libvirt.VIR_DOMAIN_AFFECT_LIVE)
                except libvirt.libvirtError as exc:
                    raise from_libvirt(exc, "set vCPUs") from None
            self._persist(vm, new_spec, rendered)
            self.bus.publish("device", vm.uuid, vm.name, change="vcpus", vcpus=vcpus)
            return self.answers.info(vm, dom)
