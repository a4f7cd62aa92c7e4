"""Simulated hosts and VMs: what the agent's ``VmManager`` and ``Agent`` answer, without libvirt.

Each host mirrors the real agent on a non-emulated Xen dom0 or KVM host (``corral.agent.host``,
``corral.agent.vms``): the same capability document, hardware check, VM documents, state names, errors and
lifecycle events (what the agent publishes from libvirt's callbacks). What is not reproduced is listed in
the package docstring (``corral.simulate``).

Memory: a VM is one ``__slots__`` object (~0.5 KB with its id, name and registry entries: 9-10 MiB per 1,000
hosts x 20 VMs). A generated VM has no spec object: its spec JSON is rendered from a template
(``corral.simulate.templates``) when first asked for and then kept as text (~1 KB; ``cache_specs=False``
renders it every time instead, for twice the CPU of a ``GET /v1/vms``). Stats are a function of time (CPU
time grows while the VM runs, the balloon and RSS move in windows), so nothing runs per VM in the background;
JSON is built only when asked, by string assembly for the hot ``GET /v1/vms`` (~6 us per VM).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import time
import uuid as uuidlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from corral.agent.bodies import device_change, hotplugged, unplugged, with_memory, with_vcpus
from corral.agent.errors import Conflict, LibvirtFailed, NotFound, Refused, TimedOut
from corral.agent.events import EventBus
from corral.agent.hostfacts import HostView, check_spec, merge
from corral.agent.vms import LIBVIRT_STATES, state_name
from corral.domain import config as cfg
from corral.domain.flavors import hostcheck
from corral.domain.flavors.base import Decision, Flavor, Outcome
from corral.domain.flavors.features import Feature, LinkControl
from corral.domain.read import match_devices
from corral.domain.render import render_resolution
from corral.domain.resolve import RefusedError, Resolution, mac_for, resolve
from corral.domain.spec import (
    GuestType,
    LifecycleAction,
    VmSpec,
)

if TYPE_CHECKING:  # the fleet makes its hosts; a host only refers back to it
    from corral.simulate.fleet import Simulator
from corral.simulate.simvm import (
    _STATS_FORMATS,
    BLOCKED,
    NOSTATE,
    PAUSED,
    PAUSED_IOERROR,
    PAUSED_USER,
    RUNNING,
    RUNNING_BOOTED,
    RUNNING_UNPAUSED,
    SHUTDOWN,
    SHUTDOWN_USER,
    SHUTOFF,
    SHUTOFF_CRASHED,
    SHUTOFF_DESTROYED,
    SHUTOFF_SHUTDOWN,
    STOPPED_CRASHED,
    STOPPED_DESTROYED,
    STOPPED_SHUTDOWN,
    SUSPENDED_IOERROR,
    SUSPENDED_PAUSED,
    VIR_ERR_INTERNAL_ERROR,
    Raw,
    SimVm,
    _stats_format,
)
from corral.simulate.templates import (
    CONSOLE_DAEMON_DIR,
    TOOLS,
    HostProfile,
    compact,
    render_options,
)


class SimHost:
    """One simulated agent: its host document, its domains, its event log."""

    __slots__ = ("_locks", "boot", "bus", "cpus", "hostname", "memory_mib", "n", "names", "next_domid", "options",
                 "profile", "sim", "uuid", "vms")

    def __init__(self, sim: Simulator, n: int, profile: HostProfile, cpus: int, memory_mib: int) -> None:
        self.sim = sim
        self.n = n
        self.profile = profile
        self.hostname = f"sim-{profile.flavor.name}-{n:04d}"
        # the host's identity (libvirt's host UUID on a real host): stable for a seed, distinct per host
        digest = hashlib.sha256(f"corral-simulate:{sim.settings.seed}:host-uuid:{n}".encode()).hexdigest()
        self.uuid = str(uuidlib.UUID(digest[:32], version=4))
        self.cpus = cpus
        self.memory_mib = memory_mib
        self.options = render_options(cpus)
        self.bus = EventBus()
        self.vms: dict[str, SimVm] = {}
        self.names: dict[str, str] = {}
        self.next_domid = 1
        self.boot = time.time() - 86400 * 30
        self._locks: dict[str, list[Any]] = {}

    # ---- registry ---------------------------------------------------------------------------------------

    @property
    def flavor(self) -> Flavor:
        """Where every difference between this host's behaviour and another flavor's comes from."""
        return self.profile.kind.flavor

    @property
    def flavor_name(self) -> str:
        return self.flavor.name

    @property
    def busy(self) -> bool:
        """An operation holds (or waits for) a VM's lock on this host."""
        return bool(self._locks)

    def add(self, vm: SimVm) -> None:
        self.vms[vm.uuid] = vm
        self.names[vm.name] = vm.uuid

    def lookup(self, vm_id: str) -> SimVm:
        vm = self.vms.get(vm_id)
        if vm is None:
            try:
                vm = self.vms.get(str(uuidlib.UUID(vm_id)))
            except ValueError:
                vm = None
        if vm is None:
            raise NotFound(f"no VM {vm_id} on this host")
        return vm

    @asynccontextmanager
    async def locked(self, vm_id: str) -> AsyncIterator[None]:
        """The agent's per-VM lock: an operation waits while another (e.g. a shutdown) runs on the VM."""
        entry = self._locks.setdefault(vm_id, [asyncio.Lock(), 0])
        entry[1] += 1
        try:
            async with entry[0]:
                yield
        finally:
            entry[1] -= 1
            if not entry[1]:
                self._locks.pop(vm_id, None)

    def start_domain(self, vm: SimVm, now: float | None = None) -> None:
        vm.state, vm.reason = RUNNING, RUNNING_BOOTED
        vm.domain_id = self.next_domid
        self.next_domid += 1
        vm.cpu_ns = 0
        vm.run_since = now if now is not None else time.monotonic()
        vm.fault = None

    def stop_domain(self, vm: SimVm, reason: int) -> None:
        vm.state, vm.reason = SHUTOFF, reason
        vm.domain_id = None
        vm.cpu_ns = 0
        vm.run_since = 0.0
        for attr in ("resume_timer", "shutdown_timer"):
            timer = getattr(vm, attr)
            if timer is not None:
                timer.cancel()
                setattr(vm, attr, None)

    # ---- events (what the agent publishes from libvirt's lifecycle callbacks) ----------------------------

    def label(self, vm: SimVm) -> str:
        name = state_name(vm.state, vm.reason)
        if vm.fault and name == "down":
            return vm.fault
        return name

    def lifecycle(self, vm: SimVm, event: str, detail: int, label: str | None = None,
                  external: bool | None = False) -> None:
        self.bus.publish("lifecycle", vm.uuid, vm.name, label or self.label(vm), event=event, detail=detail,
                         external=external)

    # ---- documents --------------------------------------------------------------------------------------

    def balloon_kib(self, vm: SimVm, now: float) -> int:
        """The balloon's current size: the target, now and then (per 30 s window) a little below it."""
        target = vm.mem * 1024
        if vm.state == SHUTOFF or vm.state == NOSTATE:
            return target
        wobble = hash((vm.uuid, int(now // 30))) & 0xFFFF
        return target - (wobble % 8 + 1) * 32768 if wobble % 10 == 0 and target > 524288 else target

    def stats_text(self, vm: SimVm, now: float) -> tuple[str, int]:
        """``getAllDomainStats`` (state, cpu, balloon, vcpu) with the agent's key names (dots as underscores),
        as the inside of a JSON object, and the balloon's current KiB. Xen (libxl) reports no cpu.user/system,
        balloon.rss or vcpu.N.wait. The hot path of ``GET /v1/vms``: kept to plain arithmetic and one format."""
        detailed, vcpus = self.profile.kind.detailed_stats, vm.vcpus
        active = vm.state != SHUTOFF and vm.state != NOSTATE
        fmt = _STATS_FORMATS.get((detailed, active, vcpus)) or _stats_format(detailed, active, vcpus)
        target = vm.mem * 1024
        if not active:
            return fmt.format(target, vm.max_mem * 1024, vcpus, vm.max_vcpus), target
        cpu = vm.cpu_ns + int((now - vm.run_since) * vcpus * vm.util * 10_000_000) if vm.run_since else vm.cpu_ns
        per_vcpu = cpu // vcpus
        current = self.balloon_kib(vm, now)
        if detailed:
            rss = target * (40 + (hash((vm.uuid, int(now // 10))) & 0xFFFF) % 50) // 100
            values = [cpu, cpu * 7 // 10 // 10_000_000 * 10_000_000, cpu // 5 // 10_000_000 * 10_000_000, current,
                      vm.max_mem * 1024, rss, vcpus, vm.max_vcpus]
            for i in range(vcpus):
                values += (1, per_vcpu + i * 1_000_003, per_vcpu // 50)
        else:
            values = [cpu, current, vm.max_mem * 1024, vcpus, vm.max_vcpus]
            for i in range(vcpus):
                values += (1, per_vcpu + i * 1_000_003)
        return fmt.format(*values), current

    def stats(self, vm: SimVm, now: float) -> dict[str, int]:
        result: dict[str, int] = json.loads("{" + self.stats_text(vm, now)[0] + "}")
        return result

    def info_json(self, vm: SimVm, now: float | None = None) -> str:
        """``VmManager.info(..., devices=False)`` as compact JSON text."""
        stats, balloon = self.stats_text(vm, now if now is not None else time.monotonic())
        state = state_name(vm.state, vm.reason)
        fault = "null"
        if vm.fault is not None:
            fault = compact(vm.fault)
            state = vm.fault if state == "down" else state
        return (f'{{"id":"{vm.uuid}","name":"{vm.name}","state":"{state}",'
                f'"libvirt_state":"{LIBVIRT_STATES.get(vm.state, "unknown")}","reason":{vm.reason},'
                f'"external":false,"domain_id":{"null" if vm.domain_id is None else vm.domain_id},'
                f'"memory_mib":{balloon // 1024 or vm.mem},"vcpus":{vm.vcpus},"stats":{{{stats}}},'
                f'"spec":{vm.spec_text},"guest_type":"{vm.gt}","fault":{fault}}}')

    def list_json(self) -> bytes:
        now = time.monotonic()
        return ('{"items":[' + ",".join(self.info_json(vm, now) for vm in self.vms.values()) + "]}").encode()

    def detail_json(self, vm: SimVm, **extra: Any) -> str:
        """``VmManager.info(vm, dom)``: with the devices read back from the live definition."""
        return self.action_json(vm, devices=Raw(self.devices_json(vm)), **extra)

    def action_json(self, vm: SimVm, **extra: Any) -> str:
        """A lifecycle action's answer: ``VmManager.info(vm, dom, devices=False)`` and what the action adds."""
        text = self.info_json(vm)[:-1]
        for key, value in extra.items():
            text += f',"{key}":{value.text if isinstance(value, Raw) else compact(value)}'
        return text + "}"

    def devices_json(self, vm: SimVm) -> str:
        """``devices`` as JSON, kept until the spec, guest type or domain changes (resolving the spec is the
        costly part of ``GET /v1/vms/{id}``, and nothing else changes the devices)."""
        key = (vm.spec_text, vm.gt, vm.domain_id, vm.active)
        cached = vm.devices_cache
        if cached is None or cached[0] != key:
            cached = vm.devices_cache = (key, compact(self.devices(vm)))
        return cached[1]

    def devices(self, vm: SimVm) -> list[dict[str, Any]]:
        """What ``read_domain`` finds in the domain XML libvirt would show: the rendered devices plus what
        libvirt adds (the serial console's ``<console>`` twin, controllers, inputs, live names and ports), as
        the agent answers them (NIC links the flavor leaves to the agent say the state it set)."""
        spec = vm.spec()
        gt = GuestType(vm.gt)
        res = resolve(spec, self.flavor, gt, self.options)
        expected = res.domain.devices if res.domain is not None else []
        live = [dataclasses.replace(d) for d in expected]
        kind, active = self.profile.kind, vm.active
        named = active and kind.live_aliases  # the driver names what it adds to a running domain
        domid = vm.domain_id or 0
        extra: list[cfg.Device] = []
        nic_index = 0
        for dev in live:
            if isinstance(dev, cfg.Interface):
                if active:
                    dev.target_dev = kind.vif_name.format(domid=domid, index=nic_index, seq=domid * 4 + nic_index)
                nic_index += 1
            elif isinstance(dev, cfg.Graphics) and active:
                dev.port = 5900 + domid
            elif isinstance(dev, cfg.CharDevice) and dev.type == "pty":
                if active:
                    dev.tty = dev.source_path = f"/dev/pts/{domid % 250 + 1}"
                if dev.element == "serial" and not extra:
                    extra.append(cfg.CharDevice(element="console", type="pty", target_type="serial",
                                                target_port=0, alias=dev.alias, tty=dev.tty,
                                                source_path=dev.source_path))
        if gt is GuestType.HVM:
            if any(isinstance(d, cfg.Disk) and d.target_bus == "ide" for d in live):
                extra.append(cfg.Controller(type="ide", index=0, alias="ide" if named else None))
            if spec.graphics is not None:
                extra += [cfg.OtherDevice(element="input", type="mouse", alias="input0" if named else None),
                          cfg.OtherDevice(element="input", type="keyboard", alias="input1" if named else None)]
        extra += [dataclasses.replace(c, alias=c.alias if named else None) for c in kind.controllers]
        agent_links = self.flavor.rule(Feature.NIC_LINK_DOWN, gt).value is LinkControl.AGENT
        links = {n.id: n.link.value for n in spec.nics} if agent_links else {}
        out = []
        for found in match_devices(live + extra, expected):
            data = found.as_dict()
            if data["kind"] == "nic" and found.device_id in links:
                # the agent sets these itself (``VmManager._device_dict``): the state it set, and the one asked
                data["link"] = data["link_requested"] = links[found.device_id]
            out.append(data)
        return out

    def host(self) -> dict[str, Any]:
        """``capabilities()`` of a real host of this flavor (not emulated)."""
        p = self.profile
        bridges = list(p.bridges)
        check = self.host_check()
        return {
            "hostname": self.hostname,
            "host_uuid": self.uuid,
            "hypervisor": self.flavor.domain_type,
            "emulated": False,
            "flavor": self.flavor.name,
            "accel": self.flavor.accel,
            "detection": self.detection(),
            "libvirt_version": p.kind.libvirt_version,
            "hypervisor_version": p.kind.hypervisor_version,
            "uri": self.flavor.default_uri,
            "cpu": {"arch": "x86_64", "model": p.cpu_model, "vendor": p.cpu_vendor, "flags": list(p.cpu_flags),
                    "count": self.cpus},
            "memory_mib": self.memory_mib,
            "free_memory_mib": self.free_memory_mib(),
            "numa_cells": [{"id": c, "memory_mib": self.memory_mib // 2,
                            "cpus": list(range(c * self.cpus // 2, (c + 1) * self.cpus // 2))} for c in (0, 1)],
            "bridges": bridges,
            "capabilities": p.capabilities,
            "hardware_check": check.as_dict(),
            "guest_types": [g.value for g in check.guest_types],
            "tools": {name: name in self.flavor.host_tools for name in TOOLS},
        }

    def detection(self) -> list[dict[str, str]]:
        kind = self.profile.kind
        return [{"source": "libvirt getType()", "value": kind.driver},
                *({"source": source, "value": value} for source, value in kind.evidence)]

    def host_check(self) -> hostcheck.HostCheckReport:
        """The flavor's host checks on the simulated host's facts: the evaluation the agent and the deploy run."""
        return hostcheck.evaluate(self.flavor, self.profile.facts)

    def hardware_check(self) -> dict[str, Any]:
        return self.host_check().as_dict()

    def free_memory_mib(self) -> int:
        used = sum(vm.mem for vm in self.vms.values() if vm.active)
        return max(0, self.memory_mib - self.profile.kind.reserved_mib - used)

    def host_stats(self) -> dict[str, Any]:
        running = [vm for vm in self.vms.values() if vm.state in (RUNNING, BLOCKED, PAUSED, SHUTDOWN)]
        now = time.monotonic()
        cpu: dict[str, Any] = {"count": self.cpus}
        if self.flavor.node_cpu_stats:  # else (libxl) the agent reports the count alone
            total = int((time.time() - self.boot) * 1e9) * self.cpus
            busy = sum(vm.cpu_time(now) for vm in running)
            kernel, iowait = total // 40, total // 200
            user = min(busy + total // 50, total - kernel - iowait)
            cpu.update(kernel_ns=kernel, user_ns=user, idle_ns=total - kernel - iowait - user, iowait_ns=iowait)
        memory = sum(self.balloon_kib(vm, now) // 1024 or vm.mem for vm in running)
        vcpus = sum(vm.vcpus for vm in running)
        return {"cpu": cpu, "memory": {"total_mib": self.memory_mib, "free_mib": self.free_memory_mib()},
                "vms": {"total": len(self.vms), "running": len(running), "memory_mib": memory, "vcpus": vcpus}}

    # ---- define / undefine ------------------------------------------------------------------------------

    def host_refusals(self, spec: VmSpec, prefix: str = "") -> list[Decision]:
        """What this host lacks for ``spec`` (``corral.agent.hostfacts``): its bridges and libvirt networks;
        the guests' files are taken to be there (a simulated host has none to look at)."""
        view = HostView(frozenset(self.profile.bridges), frozenset(self.profile.kind.networks), files_checked=False)
        return [d for d in check_spec(spec, view) if d.path.startswith(prefix)]

    def refuse_missing(self, spec: VmSpec, doing: str, prefix: str = "") -> None:
        missing = self.host_refusals(spec, prefix)
        if missing:
            raise Refused(f"cannot {doing}: " + "; ".join(f"{d.path}: {d.detail}" for d in missing),
                          field=missing[0].path, decisions=[d.as_dict() for d in missing])

    def plan(self, spec: VmSpec) -> dict[str, Any]:
        res = resolve(spec, self.flavor, None, self.options)
        decisions = merge(res.decisions, self.host_refusals(spec))
        ok = not any(d.outcome is Outcome.REFUSED for d in decisions)
        return {"flavor": self.flavor.name, "guest_type": res.guest_type.value, "ok": ok,
                "decisions": [d.as_dict() for d in decisions]}

    def _render(self, spec: VmSpec, guest_type: GuestType | None = None) -> Resolution:
        try:
            return render_resolution(spec, self.flavor, guest_type, self.options)[1]
        except RefusedError as exc:
            raise Refused(str(exc), field=exc.field, decisions=[d.as_dict() for d in exc.decisions]) from None

    async def create(self, spec: VmSpec, start: bool = False) -> str:
        for key, value, known in (("id", spec.id, spec.id in self.vms), ("name", spec.name, spec.name in self.names)):
            if known:
                raise Conflict(f"a domain with {key} {value!r} already exists on this host", field=key)
        if not all(n.mac for n in spec.nics):
            nics = [n if n.mac else n.model_copy(update={"mac": mac_for(n.id, self.flavor.mac_prefix)})
                    for n in spec.nics]
            spec = spec.model_copy(update={"nics": nics})
        res = self._render(spec)
        self.refuse_missing(spec, f"create {spec.name} on this host")
        vm = SimVm(spec.id, spec.name, -1, compact(spec.model_dump(mode="json")), res.guest_type.value,
                   spec.memory_mib, spec.effective_max_memory_mib, spec.vcpus, spec.effective_max_vcpus,
                   self.sim.rng.randint(2, 60))
        self.add(vm)
        self.lifecycle(vm, "defined", 0)
        if start:
            return await self.start(vm.uuid)
        return self.action_json(vm)

    async def undefine(self, vm_id: str) -> None:
        vm = self.lookup(vm_id)
        async with self.locked(vm.uuid):
            vm = self.lookup(vm_id)
            if vm.active:
                raise Conflict(f"VM {vm.name} is running; stop it before deleting it")
            self.vms.pop(vm.uuid, None)
            self.names.pop(vm.name, None)
            self.lifecycle(vm, "undefined", 0, label="deleted", external=None)

    # ---- lifecycle --------------------------------------------------------------------------------------

    async def start(self, vm_id: str) -> str:
        vm = self.lookup(vm_id)
        async with self.locked(vm.uuid):
            vm = self.lookup(vm_id)
            if vm.active:
                raise Conflict(f"VM {vm.name} is already running")
            if vm.tmpl < 0:
                self.refuse_missing(vm.spec(), f"start {vm.name}")
            refusal = self.profile.kind.no_memory_error
            at_start = self.flavor.memory_at_start_mib(GuestType(vm.gt), vm.mem, vm.max_mem)
            if refusal is not None and at_start > self.free_memory_mib():
                # a driver that does not overcommit refuses to build a domain it has no memory for
                raise LibvirtFailed(f"start {vm.name}: {refusal.format(name=vm.name)}",
                                    libvirt_code=VIR_ERR_INTERNAL_ERROR)
            self.start_domain(vm)
            self.lifecycle(vm, "started", 0)
            return self.action_json(vm)

    async def shutdown(self, vm_id: str, timeout: float = 60.0, force: bool = False) -> str:
        """Ask the guest to stop; it does after a moment (not while paused). ``force``: destroy at the timeout;
        without it, a guest still running then is a 409 ``timeout`` naming its state (``VmManager.shutdown``)."""
        vm = self.lookup(vm_id)
        async with self.locked(vm.uuid):
            vm = self.lookup(vm_id)
            if not vm.active:
                raise Conflict(f"VM {vm.name} is not running")
            if vm.state != PAUSED and vm.shutdown_timer is None:
                delay = self.sim.rng.uniform(*self.sim.settings.shutdown_seconds)
                vm.shutdown_timer = asyncio.get_running_loop().call_later(delay, self.guest_shut_down, vm)
            deadline = time.monotonic() + timeout
            while vm.active and (left := deadline - time.monotonic()) > 0:
                await asyncio.sleep(min(0.1, left))
            how = "shutdown"
            if vm.active:
                if not force:
                    state = state_name(vm.state, vm.reason)
                    raise TimedOut(f"VM {vm.name} did not stop within {timeout:g} s of the shutdown request: it is "
                                   f"still {state} (the guest ignored the request or is still shutting down); "
                                   f"shut down again with force, or stop it", field="timeout", state=state)
                # where the flavor has no graceful destroy, the agent destroys at once
                how = "destroy-graceful" if self.flavor.graceful_destroy else "destroy"
                self.stop_domain(vm, SHUTOFF_DESTROYED)
                self.lifecycle(vm, "stopped", STOPPED_DESTROYED)
            return self.action_json(vm, stopped_by=how)

    def guest_shut_down(self, vm: SimVm) -> None:
        vm.shutdown_timer = None
        if self.vms.get(vm.uuid) is not vm or not vm.active:
            return
        if vm.state == PAUSED:
            return
        vm.state, vm.reason = SHUTDOWN, SHUTDOWN_USER
        self.lifecycle(vm, "shutdown", 0)
        self.stop_domain(vm, SHUTOFF_SHUTDOWN)
        self.lifecycle(vm, "stopped", STOPPED_SHUTDOWN)

    async def destroy(self, vm_id: str) -> str:
        vm = self.lookup(vm_id)
        async with self.locked(vm.uuid):
            vm = self.lookup(vm_id)
            if not vm.active:
                raise Conflict(f"VM {vm.name} is not running")
            self.stop_domain(vm, SHUTOFF_DESTROYED)
            self.lifecycle(vm, "stopped", STOPPED_DESTROYED)
            return self.action_json(vm)

    async def simple(self, vm_id: str, action: str) -> str:
        """reboot, pause, resume: the state libvirt needs, else 409 naming the state it is in."""
        vm = self.lookup(vm_id)
        async with self.locked(vm.uuid):
            vm = self.lookup(vm_id)
            need = (PAUSED,) if action == "resume" else (RUNNING, BLOCKED)
            if vm.state not in need:
                raise Conflict(f"cannot {action} VM {vm.name}: it is {LIBVIRT_STATES.get(vm.state, 'unknown')}")
            if action == "pause":
                self.pause_domain(vm, PAUSED_USER)
            elif action == "resume":
                self.resume_domain(vm)
            # reboot: the guest restarts inside the same domain; libvirt sends no lifecycle event
            return self.action_json(vm)

    def pause_domain(self, vm: SimVm, reason: int) -> None:
        vm.accrue(time.monotonic())
        vm.state, vm.reason = PAUSED, reason
        self.lifecycle(vm, "suspended", SUSPENDED_IOERROR if reason == PAUSED_IOERROR else SUSPENDED_PAUSED)

    def resume_domain(self, vm: SimVm) -> None:
        if vm.resume_timer is not None:
            vm.resume_timer.cancel()
            vm.resume_timer = None
        vm.state, vm.reason = RUNNING, RUNNING_UNPAUSED
        vm.run_since = time.monotonic()
        self.lifecycle(vm, "resumed", 0)

    def crash(self, vm: SimVm) -> None:
        """The guest crashes; its ``on_crash`` decides whether libvirt starts it again."""
        self.stop_domain(vm, SHUTOFF_CRASHED)
        self.lifecycle(vm, "stopped", STOPPED_CRASHED, label="crashed")
        on_crash = vm.spec().on_crash if vm.tmpl < 0 else LifecycleAction.DESTROY
        if on_crash in (LifecycleAction.RESTART, LifecycleAction.RENAME_RESTART, LifecycleAction.COREDUMP_RESTART):
            self.start_domain(vm)
            self.lifecycle(vm, "started", 0)

    # ---- devices, memory, vCPUs (the agent's checks and messages; the "live" side always succeeds) ------

    def managed(self, vm_id: str) -> tuple[SimVm, VmSpec]:
        vm = self.lookup(vm_id)
        return vm, vm.spec()

    def _check_flavor(self, vm: SimVm, spec: VmSpec, path_prefix: str) -> Resolution:
        flavor = self.flavor
        res = resolve(spec, flavor, GuestType(vm.gt), self.options)
        self.refuse_missing(spec, f"change {vm.name}", path_prefix)
        bad = [d for d in res.refused if d.path.startswith(path_prefix) or path_prefix == ""]
        if res.refused:
            bad = bad or res.refused
            raise Refused(f"{flavor.title} refuses: " + "; ".join(f"{d.path}: {d.detail}" for d in bad),
                          field=bad[0].path, decisions=[d.as_dict() for d in bad])
        return res

    def _persist(self, vm: SimVm, spec: VmSpec) -> None:
        res = self._render(spec, GuestType(vm.gt))
        vm.spec_json = compact(spec.model_dump(mode="json"))
        vm.tmpl = -1
        vm.gt = res.guest_type.value
        vm.mem, vm.max_mem = spec.memory_mib, spec.effective_max_memory_mib
        vm.vcpus, vm.max_vcpus = spec.vcpus, spec.effective_max_vcpus

    async def update_device(self, vm_id: str, device_id: str, change: dict[str, Any]) -> str:
        vm = self.lookup(vm_id)
        async with self.locked(vm.uuid):
            vm, spec = self.managed(vm_id)
            planned = device_change(vm.name, spec, device_id, change, self.flavor, GuestType(vm.gt))
            self._check_flavor(vm, planned.spec, planned.section)
            self._persist(vm, planned.spec)
            detail = {planned.key: planned.value} if planned.key != "password" else {}
            self.bus.publish("device", vm.uuid, vm.name, device_id=planned.device.id, change=planned.key, **detail)
            return self.detail_json(vm)

    async def hotplug(self, vm_id: str, kind: str, data: dict[str, Any]) -> str:
        vm = self.lookup(vm_id)
        async with self.locked(vm.uuid):
            vm, spec = self.managed(vm_id)
            device, new_spec = hotplugged(vm.name, spec, kind, data, self.flavor.mac_prefix)
            self._check_flavor(vm, new_spec, "disks" if kind == "disk" else "nics")
            self._persist(vm, new_spec)
            self.bus.publish("device", vm.uuid, vm.name, device_id=device.id, change="attached", kind=kind)
            return self.detail_json(vm)

    async def unplug(self, vm_id: str, device_id: str) -> str:
        vm = self.lookup(vm_id)
        async with self.locked(vm.uuid):
            vm, spec = self.managed(vm_id)
            _device, new_spec = unplugged(vm.name, spec, device_id)
            self._persist(vm, new_spec)
            self.bus.publish("device", vm.uuid, vm.name, device_id=device_id, change="detached")
            return self.detail_json(vm)

    async def set_memory(self, vm_id: str, memory_mib: int) -> str:
        vm = self.lookup(vm_id)
        async with self.locked(vm.uuid):
            vm, spec = self.managed(vm_id)
            new_spec = with_memory(spec, memory_mib)
            self._check_flavor(vm, new_spec, "")
            self._persist(vm, new_spec)
            self.bus.publish("device", vm.uuid, vm.name, change="memory", memory_mib=memory_mib)
            return self.detail_json(vm)

    async def set_vcpus(self, vm_id: str, vcpus: int) -> str:
        vm = self.lookup(vm_id)
        async with self.locked(vm.uuid):
            vm, spec = self.managed(vm_id)
            new_spec = with_vcpus(spec, vcpus)
            self._check_flavor(vm, new_spec, "")
            if vm.active:
                vm.accrue(time.monotonic())
                if vm.state != PAUSED:
                    vm.run_since = time.monotonic()
            self._persist(vm, new_spec)
            self.bus.publish("device", vm.uuid, vm.name, change="vcpus", vcpus=vcpus)
            return self.detail_json(vm)

    def console_log(self, vm_id: str, tail: int) -> dict[str, Any]:
        """As ``VmManager.console_log``: the first character device libvirt logs or writes to a file, else
        where the flavor's console daemon logs it; the log itself is a few invented lines."""
        vm = self.lookup(vm_id)
        path: str | None = None
        res = resolve(vm.spec(), self.flavor, GuestType(vm.gt), self.options)
        for dev in res.domain.devices if res.domain is not None else []:
            if isinstance(dev, cfg.CharDevice) and (dev.log_file or (dev.type == "file" and dev.source_path)):
                path = dev.log_file or dev.source_path
                break
        if path is None and self.flavor.console_daemon_log is not None:
            path = f"{CONSOLE_DAEMON_DIR}/{self.flavor.console_daemon_log.format(name=vm.name)}"
        if path is None:
            return {"path": None, "log": ""}
        if not vm.active:
            return {"path": path, "log": ""}
        text = (f"[    0.000000] Linux version 6.1.0-sim (corral simulate) #1 SMP\n"
                f"[    1.204511] Run /sbin/init as init process\n\n{vm.name} login: ").encode()
        return {"path": path, "log": text[-tail:].decode(errors="replace")}
