"""``VmManager``: the one object the rest of the agent (API, service, watchdog) uses for VMs, a thin facade
over the collaborators that do the work, each with one job:

- ``Registry`` (registry.py): the VMs the agent knows, read back from libvirt, their locks, caches, and the
  stats cycle's answers;
- ``Rendering`` (rendering.py): the flavor applied on this host, host refusals, plans, ``RenderedVm``;
- ``LiveDevices`` (live.py) and ``NicLinks`` (links.py): devices as they run, links the agent sets itself;
- ``Lifecycle`` (lifecycle.py): define, start, stop, reboot, pause, resume, undefine, and after every start;
- ``DeviceChanges`` (devices.py): devices, media, links, memory and vCPUs;
- ``console_log`` (console.py).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import libvirt

from corral.agent.events import EventBus
from corral.agent.hooks import Hooks
from corral.agent.host import Detection
from corral.agent.hostfacts import HostView
from corral.agent.netlink import LinkControl as HostLinks
from corral.agent.stats import StatsReader
from corral.agent.vms.answers import Answers
from corral.agent.vms.console import console_log
from corral.agent.vms.devices import DeviceChanges
from corral.agent.vms.lifecycle import Lifecycle
from corral.agent.vms.links import NicLinks
from corral.agent.vms.live import LiveDevices
from corral.agent.vms.registry import Registry, Vm
from corral.agent.vms.rendering import RenderedVm, Rendering
from corral.domain.flavors.base import Decision
from corral.domain.read import LiveDevice
from corral.domain.resolve import RenderOptions
from corral.domain.spec import GuestType, VmSpec


class VmManager:
    def __init__(self, get_conn: Callable[[], libvirt.virConnect], det: Detection, bus: EventBus, hooks: Hooks,
                 links: HostLinks, state_dir: Path, console_dir: Path = Path("/var/log/xen/console"),
                 host_view: Callable[[], HostView] | None = None) -> None:
        self._get_conn = get_conn
        self.det = det
        self.flavor = det.flavor
        self.bus = bus
        self.hooks = hooks
        self.links = links
        self.state_dir = state_dir
        self.console_dir = console_dir  # where the flavor's console daemon logs (Flavor.console_daemon_log)
        self.stats = StatsReader()
        self.registry = Registry(get_conn, bus, self.stats)
        self.rendering = Rendering(get_conn, det, state_dir, host_view)
        self.live = LiveDevices(self.rendering)
        self.nic_links = NicLinks(self.flavor, links, self.live)
        self.answers = Answers(self.registry, self.live, self.nic_links)
        self.lifecycle = Lifecycle(self.registry, self.rendering, self.nic_links, self.answers, hooks, det,
                                   state_dir)
        self.devices = DeviceChanges(self.registry, self.rendering, self.live, self.nic_links, self.answers,
                                     hooks, bus)
        # VMs the agent itself is stopping, rebooting or restarting (the device-model watchdog reads it)
        self.stopping: set[str] = self.lifecycle.stopping

    @property
    def conn(self) -> libvirt.virConnect:
        return self._get_conn()

    @property
    def vms(self) -> dict[str, Vm]:
        """Every VM known, by UUID: a read of one entry needs no lock (the registry's writers hold it)."""
        return self.registry.vms

    @property
    def log_root(self) -> Path:
        """Under which Flavor.driver_logs are read (the Agent sets its HostProbe.root)."""
        return self.lifecycle.log_root

    @log_root.setter
    def log_root(self, root: Path) -> None:
        self.lifecycle.log_root = root

    # ---- registry and reading ---------------------------------------------------------------------------

    def vm_lock(self, uuid: str) -> threading.Lock:
        return self.registry.vm_lock(uuid)

    def recover(self) -> dict[str, int]:
        """Read every domain from libvirt: Corral's come back with their specs; running VMs are untouched
        (but for NIC links the agent sets itself, set again)."""
        return self.registry.recover(self.nic_links.reapply)

    def known(self, uuid: str) -> Vm | None:
        return self.registry.known(uuid)

    def lookup(self, uuid: str) -> tuple[Vm, libvirt.virDomain]:
        return self.registry.lookup(uuid)

    def managed(self, uuid: str) -> tuple[Vm, libvirt.virDomain, VmSpec]:
        return self.registry.managed(uuid)

    def info(self, vm: Vm, dom: libvirt.virDomain, stats: dict[str, Any] | None = None,
             devices: bool = True) -> dict[str, Any]:
        return self.answers.info(vm, dom, stats, devices)

    def live_devices(self, vm: Vm, dom: libvirt.virDomain) -> list[LiveDevice]:
        return self.live.read(vm, dom)

    def console_log(self, uuid: str, tail: int) -> dict[str, Any]:
        vm, dom = self.registry.lookup(uuid)
        return console_log(dom, vm.name, self.flavor, self.console_dir, tail)

    # ---- rendering for this host ------------------------------------------------------------------------

    def options(self) -> RenderOptions:
        return self.rendering.options()

    def host_refusals(self, spec: VmSpec, prefix: str = "") -> list[Decision]:
        return self.rendering.host_refusals(spec, prefix)

    def plan(self, spec: VmSpec) -> dict[str, Any]:
        return self.rendering.plan(spec)

    def _render(self, spec: VmSpec, guest_type: GuestType | None = None) -> tuple[str, RenderedVm]:
        return self.rendering.render(spec, guest_type)

    def _fill_macs(self, spec: VmSpec) -> VmSpec:
        return self.rendering.fill_macs(spec)

    # ---- lifecycle --------------------------------------------------------------------------------------

    def create(self, spec: VmSpec, start: bool = False) -> dict[str, Any]:
        """Define (and start) a new VM. ``_fill_macs`` and ``_render`` are called through this object: the
        benchmark's pre-rendered run swaps them for look-ups."""
        self.lifecycle.refuse_taken(spec.id)
        spec = self._fill_macs(spec)
        xml, rendered = self._render(spec)
        return self.lifecycle.define(spec, xml, rendered, start)

    def undefine(self, uuid: str) -> None:
        self.lifecycle.undefine(uuid)

    def start(self, uuid: str) -> dict[str, Any]:
        return self.lifecycle.start(uuid)

    def shutdown(self, uuid: str, timeout: float = 60.0, force: bool = False) -> dict[str, Any]:
        return self.lifecycle.shutdown(uuid, timeout, force)

    def destroy(self, uuid: str) -> dict[str, Any]:
        return self.lifecycle.destroy(uuid)

    def reboot(self, uuid: str) -> dict[str, Any]:
        return self.lifecycle.simple(uuid, "reboot")

    def pause(self, uuid: str) -> dict[str, Any]:
        return self.lifecycle.simple(uuid, "pause")

    def resume(self, uuid: str) -> dict[str, Any]:
        return self.lifecycle.simple(uuid, "resume")

    def needs_after_start(self, vm: Vm) -> bool:
        return self.lifecycle.needs_after_start(vm)

    def after_restart(self, vm: Vm, dom: libvirt.virDomain) -> None:
        self.lifecycle.after_restart(vm, dom)

    def restarted(self, uuid: str) -> None:
        self.lifecycle.restarted(uuid)

    # ---- devices, memory, vCPUs -------------------------------------------------------------------------

    def update_device(self, uuid: str, device_id: str, change: dict[str, Any]) -> dict[str, Any]:
        return self.devices.update_device(uuid, device_id, change)

    def hotplug(self, uuid: str, kind: str, data: dict[str, Any]) -> dict[str, Any]:
        return self.devices.hotplug(uuid, kind, data)

    def unplug(self, uuid: str, device_id: str) -> dict[str, Any]:
        return self.devices.unplug(uuid, device_id)

    def set_memory(self, uuid: str, memory_mib: int) -> dict[str, Any]:
        return self.devices.set_memory(uuid, memory_mib)

    def set_vcpus(self, uuid: str, vcpus: int) -> dict[str, Any]:
        return self.devices.set_vcpus(uuid, vcpus)

    # last: in the class body below this line, ``list`` names this method
    def list(self) -> list[dict[str, Any]]:
        """Every domain with its state and stats: the engine's poll (one bulk libvirt call)."""
        return self.registry.list()
