"""Define, start, stop, reboot, pause, resume and undefine VMs, and what the flavor leaves to the agent after
every start of a domain (the agent's own, a guest reboot, an on_crash or watchdog restart).

Every action holds the VM's lock; those that end or replace the domain (and its device model) mark the VM in
``stopping`` for their length, which the device-model watchdog reads so that it does not take the agent's own
stop for a loss.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import libvirt

from corral.agent import snapshot_meta, startlog
from corral.agent.errors import Conflict, NotFound, TimedOut, from_libvirt
from corral.agent.hooks import Hooks
from corral.agent.host import Detection
from corral.agent.vms.answers import Answers, warned
from corral.agent.vms.links import NicLinks
from corral.agent.vms.registry import Registry, Vm
from corral.agent.vms.rendering import RenderedVm, Rendering
from corral.agent.vms.states import LIBVIRT_STATES, is_active, state_name
from corral.domain.flavors.features import Feature, MemoryAtStart
from corral.domain.spec import DiskDevice, GuestType, VmSpec

log = logging.getLogger(__name__)

_RUNNING = (libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_BLOCKED)
_NEEDS = {"reboot": _RUNNING, "pause": _RUNNING, "resume": (libvirt.VIR_DOMAIN_PAUSED,)}


def _exists(lookup: Callable[[str], libvirt.virDomain], key: str) -> bool:
    try:
        lookup(key)
    except libvirt.libvirtError:
        return False
    return True


class Lifecycle:
    def __init__(self, registry: Registry, rendering: Rendering, links: NicLinks, answers: Answers, hooks: Hooks,
                 det: Detection, state_dir: Path) -> None:
        self.registry = registry
        self.rendering = rendering
        self.links = links
        self.answers = answers
        self.hooks = hooks
        self.det = det
        self.flavor = det.flavor
        self.state_dir = state_dir
        self.log_root = Path("/")  # under which Flavor.driver_logs are read (the Agent sets its HostProbe.root)
        # VMs the agent itself is stopping, rebooting or restarting: their device model may go away on purpose,
        # and the device-model watchdog must not take that for a loss (it reads this, under the VM's lock)
        self.stopping: set[str] = set()

    # ---- define / undefine ------------------------------------------------------------------------------

    def refuse_taken(self, uuid: str) -> None:
        """A new VM's id must be new to the host: libvirt is asked too (a ``defineXML`` of a taken id and the
        same name would silently replace that domain)."""
        if self.registry.holds(uuid) or _exists(self.registry.conn.lookupByUUIDString, uuid):
            raise Conflict(f"a domain with id {uuid!r} already exists on this host", field="id")

    def define(self, spec: VmSpec, xml: str, rendered: RenderedVm, start: bool) -> dict[str, Any]:
        """Define (and start) a new VM, rendered as ``xml``; a name already taken makes libvirt refuse the
        definition, and that refusal is answered as a conflict on ``name``."""
        conn = self.registry.conn
        self.rendering.refuse_missing(spec, f"create {spec.name} on this host")
        xml = self.hooks.run("before_vm_define", xml, spec.id, spec.name).xml
        vm = Vm(spec.id, spec.name, spec, rendered.guest_type, links={n.id: n.link.value for n in spec.nics},
                defining=True)
        rendered.seed(vm)
        # known before libvirt's 'defined' event: its handler need not read the domain back
        if not self.registry.add(vm):
            raise Conflict(f"a domain with id {spec.id!r} already exists on this host", field="id")
        with self.registry.vm_lock(vm.uuid):  # no other action on it until it is defined (and started)
            try:
                dom = conn.defineXML(xml)
            except libvirt.libvirtError as exc:
                self.registry.forget(vm.uuid)
                if _exists(conn.lookupByName, spec.name):
                    raise Conflict(f"a domain with name {spec.name!r} already exists on this host",
                                   field="name") from None
                raise from_libvirt(exc, "define") from None
            vm.defining = False
            snapshot_meta.restore(dom, self.state_dir)  # those kept when it was last undefined (KVM)
            if start:  # the domain just defined: no lookup, and inactive by definition
                return self._start(vm, dom)
            return self.answers.info(vm, dom, devices=False)

    def undefine(self, uuid: str) -> None:
        with self.registry.vm_lock(uuid):
            vm, dom = self.registry.lookup(uuid)
            if dom.isActive():
                raise Conflict(f"VM {vm.name} is running; stop it before deleting it")
            self.hooks.run("before_vm_undefine", lambda: dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE), vm.uuid, vm.name)
            # libvirt refuses to undefine a domain with snapshots: they are kept for its next definition
            kept = libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA if snapshot_meta.keep(dom, self.state_dir) else 0
            try:
                dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_NVRAM | libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE | kept)
            except libvirt.libvirtError:
                try:
                    dom.undefineFlags(kept)
                except libvirt.libvirtError as exc:
                    raise from_libvirt(exc, "undefine") from None
            self.registry.forget(uuid)
            self.rendering.forget(uuid)

    # ---- start ------------------------------------------------------------------------------------------

    def start(self, uuid: str) -> dict[str, Any]:
        with self.registry.vm_lock(uuid):
            vm, dom = self.registry.lookup(uuid)
            if dom.isActive():
                raise Conflict(f"VM {vm.name} is already running")
            if vm.spec is not None:
                self.rendering.refuse_missing(vm.spec, f"start {vm.name}")
                self.rendering.prepare(vm.spec)  # its cloud-init seed, if it has data
            return self._start(vm, dom)

    def _start(self, vm: Vm, dom: libvirt.virDomain) -> dict[str, Any]:
        """Start a domain known to be inactive (the caller holds the VM's lock)."""
        # SECURE: a hook's rewrite is defined as is; without the VNC password in it, the password would be lost
        flags = libvirt.VIR_DOMAIN_XML_INACTIVE | libvirt.VIR_DOMAIN_XML_SECURE
        hooked = self.hooks.run("before_vm_start", lambda: dom.XMLDesc(flags), vm.uuid, vm.name)
        # the host's logs that say why a start failed (libxl answers only "failed to create new domain")
        logs = startlog.mark(() if self.det.emulated else self.flavor.driver_logs, vm.name, self.log_root)
        try:
            if hooked.changed:
                dom = self.registry.conn.defineXML(hooked.xml)
            if vm.spec is not None and not self.det.emulated:
                (self.state_dir / "consoles").mkdir(parents=True, exist_ok=True)
            if vm.spec is not None and vm.spec.guest_agent is not None:
                (self.state_dir / "channels").mkdir(parents=True, exist_ok=True)
            dom.create()
        except libvirt.libvirtError as exc:
            raise startlog.explain(from_libvirt(exc, f"start {vm.name}"), logs) from None
        vm.fault = None
        vm.domid = None
        warnings = self.after_start(vm, dom)
        after = self.hooks.run("after_vm_start", lambda: dom.XMLDesc(0), vm.uuid, vm.name)
        return warned(self.answers.info(vm, dom, devices=False), [*hooked.warnings, *warnings, *after.warnings])

    def _balloon_after_start(self, vm: Vm) -> bool:
        """Whether the flavor starts this VM at its maximum memory, for the agent to lower the balloon."""
        spec = vm.spec
        return spec is not None and spec.memory_mib < spec.effective_max_memory_mib and self.flavor.rule(
            Feature.MEMORY_BALLOON_HEADROOM, vm.guest_type or GuestType.HVM).value == MemoryAtStart.AT_MAX_THEN_BALLOON

    def after_start(self, vm: Vm, dom: libvirt.virDomain) -> Sequence[str]:
        """What the flavor leaves to the agent once a domain runs: links libvirt ignores, and the balloon target
        of a guest the flavor starts at its maximum. Runs after every start: the agent's own, a guest reboot,
        an on_crash restart, a watchdog restart (each is a new domain on Xen)."""
        warnings: list[str] = []
        spec = vm.spec
        if spec is None:
            return warnings
        try:  # which CD-ROMs this domain started without media (X4: a live insert into one is refused)
            self.registry.started_empty[vm.uuid] = (
                dom.ID(), frozenset(d.id for d in spec.disks if d.device is DiskDevice.CDROM and d.source is None))
        except libvirt.libvirtError:
            self.registry.started_empty.pop(vm.uuid, None)
        if self._balloon_after_start(vm):
            target = spec.memory_mib
            try:
                dom.setMemoryFlags(target * 1024, libvirt.VIR_DOMAIN_AFFECT_LIVE)
            except libvirt.libvirtError as exc:
                msg = f"started at {spec.effective_max_memory_mib} MiB; setting the balloon to {target} MiB " \
                      f"failed: {exc.get_error_message()}"
                log.warning("VM %s: %s", vm.name, msg)
                warnings.append(msg)
        warnings += self.links.reapply(vm, dom)
        return warnings

    def needs_after_start(self, vm: Vm) -> bool:
        """Whether ``after_start`` has anything to do for this VM (cheap: asked on every start event)."""
        if vm.spec is None:
            return False
        if any(state == "down" for state in vm.links.values()) and self.links.by_agent(vm):
            return True
        return self._balloon_after_start(vm)

    def after_restart(self, vm: Vm, dom: libvirt.virDomain) -> None:
        """A restart by another part of the agent (the watchdog), which holds the VM's lock."""
        vm.domid = None
        self.after_start(vm, dom)

    def restarted(self, uuid: str) -> None:
        """A domain started without the agent asking (guest reboot, on_crash restart): redo ``after_start``."""
        with self.registry.vm_lock(uuid):
            try:
                vm, dom = self.registry.lookup(uuid)
            except (NotFound, Conflict):
                return
            if is_active(dom):
                self.after_start(vm, dom)

    # ---- stop -------------------------------------------------------------------------------------------

    @contextmanager
    def _stopping(self, uuid: str) -> Iterator[None]:
        """Marks an action of the agent that ends or replaces the domain (and its device model)."""
        self.stopping.add(uuid)
        try:
            yield
        finally:
            self.stopping.discard(uuid)

    def shutdown(self, uuid: str, timeout: float = 60.0, force: bool = False) -> dict[str, Any]:
        """Ask the guest to stop; with ``force``, destroy it once ``timeout`` has passed. A guest still running
        at the timeout without ``force`` is a failure (``TimedOut``), never an answer that looks like success."""
        with self.registry.vm_lock(uuid), self._stopping(uuid):
            vm, dom = self.registry.lookup(uuid)
            if not dom.isActive():
                raise Conflict(f"VM {vm.name} is not running")
            self.hooks.run("before_vm_shutdown", lambda: dom.XMLDesc(0), vm.uuid, vm.name)
            try:
                dom.shutdown()
            except libvirt.libvirtError as exc:
                if not force:
                    raise from_libvirt(exc, f"shut down {vm.name}") from None
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and is_active(dom):
                time.sleep(0.1)
            how = "shutdown"
            warnings: Sequence[str] = ()
            if is_active(dom):
                if not force:
                    state = state_name(*dom.state())
                    raise TimedOut(f"VM {vm.name} did not stop within {timeout:g} s of the shutdown request: it is "
                                   f"still {state} (the guest ignored the request or is still shutting down); "
                                   f"shut down again with force, or stop it", field="timeout", state=state)
                how, warnings = self._destroy_after_timeout(vm, dom)
            after = self.hooks.run("after_vm_shutdown", lambda: dom.XMLDesc(0), vm.uuid, vm.name)
            info = warned(self.answers.info(vm, dom, devices=False), [*warnings, *after.warnings])
            info["stopped_by"] = how
            return info

    def _destroy_after_timeout(self, vm: Vm, dom: libvirt.virDomain) -> tuple[str, Sequence[str]]:
        self.hooks.run("before_vm_destroy", lambda: dom.XMLDesc(0), vm.uuid, vm.name)
        how = "destroy"
        if self.flavor.graceful_destroy:  # libxl: "unsupported flags (0x1) in libxlDomainDestroyFlags" [L16]
            try:
                dom.destroyFlags(libvirt.VIR_DOMAIN_DESTROY_GRACEFUL)
                how = "destroy-graceful"
            except libvirt.libvirtError as exc:
                log.info("VM %s: graceful destroy refused (%s); destroying", vm.name, exc.get_error_message())
        if is_active(dom):
            try:
                dom.destroy()
                how = "destroy"
            except libvirt.libvirtError as exc:
                raise from_libvirt(exc, f"destroy {vm.name}") from None
        return how, self.hooks.run("after_vm_destroy", lambda: dom.XMLDesc(0), vm.uuid, vm.name).warnings

    def destroy(self, uuid: str) -> dict[str, Any]:
        with self.registry.vm_lock(uuid), self._stopping(uuid):
            vm, dom = self.registry.lookup(uuid)
            # libvirt refuses to destroy an inactive domain (OPERATION_INVALID, every driver): asking it first
            # is needed only when a before_vm_destroy hook would otherwise run for nothing
            if self.hooks.installed("before_vm_destroy") and not dom.isActive():
                raise Conflict(f"VM {vm.name} is not running")
            self.hooks.run("before_vm_destroy", lambda: dom.XMLDesc(0), vm.uuid, vm.name)
            try:
                dom.destroy()
            except libvirt.libvirtError as exc:
                if exc.get_error_code() == libvirt.VIR_ERR_OPERATION_INVALID and not is_active(dom):
                    raise Conflict(f"VM {vm.name} is not running") from None
                raise from_libvirt(exc, f"destroy {vm.name}") from None
            after = self.hooks.run("after_vm_destroy", lambda: dom.XMLDesc(0), vm.uuid, vm.name)
            return warned(self.answers.info(vm, dom, devices=False), after.warnings)

    # ---- reboot, pause, resume --------------------------------------------------------------------------

    def simple(self, uuid: str, action: str) -> dict[str, Any]:
        """``reboot``, ``pause`` or ``resume``: one libvirt call, refused in a state it does not apply to."""
        with self.registry.vm_lock(uuid):
            vm, dom = self.registry.lookup(uuid)
            state, _ = dom.state()
            if state not in _NEEDS[action]:
                current = LIBVIRT_STATES.get(state, "unknown")
                raise Conflict(f"cannot {action} VM {vm.name}: it is {current}")
            try:
                {"reboot": lambda: dom.reboot(0), "pause": dom.suspend, "resume": dom.resume}[action]()
            except libvirt.libvirtError as exc:
                raise from_libvirt(exc, f"{action} {vm.name}") from None
            return self.answers.info(vm, dom, devices=False)
