"""VM lifecycle on this host: define, start, stop, devices, memory, vCPUs, and recovery after a restart.

libvirt is the source of truth: every Corral domain carries its VmSpec in ``<metadata>`` (written by
``render``), the persistent definition is re-rendered whenever the spec changes, and on start the agent
reads every domain back (running ones are never touched). What a flavor cannot do live is refused with a
message saying what works instead, before anything is changed.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid as uuidlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import libvirt
import msgspec
from lxml import etree

from corral.agent import startlog
from corral.agent.bodies import device_change, hotplugged, unplugged, with_memory, with_vcpus
from corral.agent.errors import Conflict, NotFound, Refused, TimedOut, Unsupported, from_libvirt
from corral.agent.events import EventBus
from corral.agent.hooks import Hooks
from corral.agent.host import Detection
from corral.agent.hostfacts import HostView, check_spec, merge
from corral.agent.netlink import LinkControl as HostLinks
from corral.agent.stats import StatsReader
from corral.domain import config as cfg
from corral.domain.flavors.base import Decision, Outcome
from corral.domain.flavors.features import CdromDevice, Feature, LinkControl, MemoryAtStart
from corral.domain.read import LiveDevice, match_devices, read_domain, read_metadata
from corral.domain.render import render_resolution
from corral.domain.resolve import RefusedError, RenderOptions, resolve
from corral.domain.spec import (
    DiskSpec,
    GuestType,
    NicSpec,
    VmSpec,
)

log = logging.getLogger(__name__)

STATE_NAMES = {
    libvirt.VIR_DOMAIN_NOSTATE: "unknown", libvirt.VIR_DOMAIN_RUNNING: "up", libvirt.VIR_DOMAIN_BLOCKED: "up",
    libvirt.VIR_DOMAIN_PAUSED: "paused", libvirt.VIR_DOMAIN_SHUTDOWN: "shutting_down",
    libvirt.VIR_DOMAIN_SHUTOFF: "down", libvirt.VIR_DOMAIN_CRASHED: "crashed",
    libvirt.VIR_DOMAIN_PMSUSPENDED: "paused",
}
LIBVIRT_STATES = {
    libvirt.VIR_DOMAIN_NOSTATE: "nostate", libvirt.VIR_DOMAIN_RUNNING: "running",
    libvirt.VIR_DOMAIN_BLOCKED: "blocked", libvirt.VIR_DOMAIN_PAUSED: "paused",
    libvirt.VIR_DOMAIN_SHUTDOWN: "shutdown", libvirt.VIR_DOMAIN_SHUTOFF: "shutoff",
    libvirt.VIR_DOMAIN_CRASHED: "crashed", libvirt.VIR_DOMAIN_PMSUSPENDED: "pmsuspended",
}

_SHUTOFF, _SHUTOFF_CRASHED = libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_SHUTOFF_CRASHED


def state_name(state: int, reason: int) -> str:
    if state == _SHUTOFF and reason == _SHUTOFF_CRASHED:
        return "crashed"
    return STATE_NAMES.get(state, "unknown")


@dataclass
class Vm:
    """What the agent knows of one domain beyond libvirt: its spec (None for external domains)."""

    uuid: str
    name: str
    spec: VmSpec | None
    guest_type: GuestType | None = None
    fault: str | None = None  # a state libvirt does not report (e.g. 'crashed' after device_model_lost)
    links: dict[str, str] = field(default_factory=dict)  # NIC id -> link state set by the agent
    defining: bool = False  # registered by create() and not yet defined in libvirt: no stats cycle may drop it
    # the running domain's id and the CPU time it had when read: asked of libvirt again after any lifecycle
    # event, a start by the agent, or CPU time going backwards (a restart whose event was missed)
    domid: tuple[int, int] | None = None
    # Made from ``spec`` once per spec object (a spec is replaced, never changed), each tagged with the spec
    # and guest type it was made for: (spec, guest type, the spec as JSON, the guest type's name) for answers,
    # (spec, guest type, rendered devices) for matching live devices.
    answer_cache: tuple[Any, ...] | None = field(default=None, repr=False, compare=False)
    devices_cache: tuple[Any, ...] | None = field(default=None, repr=False, compare=False)
    key: bytes = field(init=False, repr=False, compare=False)  # the uuid as libvirt's 16 raw bytes

    def __post_init__(self) -> None:
        self.key = uuidlib.UUID(self.uuid).bytes  # virDomain.UUID() is a third of UUIDString()'s cost

    @property
    def external(self) -> bool:
        return self.spec is None


# the keys of one stats record (libvirt's, e.g. "balloon.current") -> (key, answer key) pairs ("balloon_current";
# "state.*" is answered apart): records of one host share a handful of key sets, so pairs are made once per set
_STAT_PAIRS: dict[tuple[str, ...], tuple[tuple[str, str], ...]] = {}


def _stats_answer(stats: dict[str, Any]) -> dict[str, Any]:
    keys = tuple(stats)
    pairs = _STAT_PAIRS.get(keys)
    if pairs is None:
        if len(_STAT_PAIRS) > 1024:
            _STAT_PAIRS.clear()
        pairs = _STAT_PAIRS[keys] = tuple((k, k.replace(".", "_")) for k in keys if not k.startswith("state."))
    return {name: stats[key] for key, name in pairs}


_INACTIVE = (libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_NOSTATE)


def _warned(info: dict[str, Any], warnings: list[str]) -> dict[str, Any]:
    """An answer with the warnings of hooks that ran (an ``after_*`` hook's failure cannot undo the action)."""
    if warnings:
        info["warnings"] = warnings
    return info


def _rendered_device(res: Any, device_id: str) -> cfg.Device | None:
    """The device a resolution rendered for a spec device, or None where the flavor renders none (yet)."""
    for dev in res.domain.devices:
        if dev.device_id == device_id or dev.alias == f"{cfg.ALIAS_PREFIX}{device_id}":
            return dev  # type: ignore[no-any-return]
    return None
_JSON = msgspec.json.Decoder()


def _answer(vm: Vm, dom: libvirt.virDomain, stats: dict[str, Any]) -> dict[str, Any]:
    """A ``VmInfo`` without devices, from one stats record. A stats cycle makes one per domain of the host,
    so it asks libvirt nothing it need not (the domain id only after a change) and shares the spec's JSON."""
    state = stats.get("state.state")
    if state is None:
        state, reason = dom.state()
    else:
        reason = stats.get("state.reason", 0)
    name = state_name(state, reason)
    spec = vm.spec
    cached = vm.answer_cache
    if cached is None or cached[0] is not spec or cached[1] is not vm.guest_type:
        cached = vm.answer_cache = (spec, vm.guest_type, spec.model_dump(mode="json") if spec is not None else None,
                                    vm.guest_type.value if vm.guest_type else None)
    domain_id = None
    if state not in _INACTIVE:
        cpu = stats.get("cpu.time", 0)
        known = vm.domid
        if known is None or cpu < known[1]:
            known = vm.domid = (dom.ID(), cpu)
        domain_id = known[0]
    return {
        "id": vm.uuid, "name": vm.name, "state": vm.fault if vm.fault and name == "down" else name,
        "libvirt_state": LIBVIRT_STATES.get(state, "unknown"), "reason": reason, "external": spec is None,
        "domain_id": domain_id,
        "memory_mib": (stats.get("balloon.current") or 0) // 1024 or (spec.memory_mib if spec else None),
        "vcpus": stats.get("vcpu.current") or (spec.vcpus if spec else None),
        "stats": _stats_answer(stats),
        "spec": cached[2], "guest_type": cached[3],  # shared by every answer until the spec changes: read-only
        "fault": vm.fault,
    }


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
        self.log_root = Path("/")  # under which Flavor.driver_logs are read (the Agent sets its HostProbe.root)
        self.vms: dict[str, Vm] = {}
        self.stats = StatsReader()
        self._lock = threading.RLock()
        self._vm_locks: dict[str, threading.Lock] = {}
        self._options: tuple[float, RenderOptions | None] = (0.0, None)  # (when read, options)
        # VMs the agent itself is stopping, rebooting or restarting: their device model may go away on purpose,
        # and the device-model watchdog must not take that for a loss (it reads this, under the VM's lock)
        self.stopping: set[str] = set()
        self._host_view = host_view
        self._view: tuple[float, HostView | None] = (0.0, None)  # (when read, view)

    @property
    def conn(self) -> libvirt.virConnect:
        return self._get_conn()

    # ---- options and registry -------------------------------------------------------------------------

    def options(self) -> RenderOptions:
        """Host facts for rendering, read once a minute (the CPU count is a libvirt call), not per render."""
        when, options = self._options
        if options is not None and time.monotonic() - when < 60:
            return options
        try:
            cpus: int | None = self.conn.getInfo()[2]
        except libvirt.libvirtError:
            cpus = None
        console_dir = None
        if not self.det.emulated:
            console_dir = str(self.state_dir / "consoles")
        options = RenderOptions(host_cpus=cpus, console_log_dir=console_dir,
                                channel_dir=str(self.state_dir / "channels"))
        if cpus is not None:
            self._options = (time.monotonic(), options)
        return options

    def host_refusals(self, spec: VmSpec, prefix: str = "") -> list[Decision]:
        """What this host lacks for ``spec`` (bridges, files...); the view is read again before a refusal, so a
        bridge added a moment ago is seen (it is otherwise kept a few seconds: creates come in bursts)."""
        if self._host_view is None:
            return []
        when, view = self._view
        fresh = view is None or time.monotonic() - when > 5
        if fresh:
            view = self._host_view()
            self._view = (time.monotonic(), view)
        assert view is not None
        found = [d for d in check_spec(spec, view) if d.path.startswith(prefix)]
        if found and not fresh:
            self._view = (0.0, None)
            return self.host_refusals(spec, prefix)
        return found

    def _refuse_missing(self, spec: VmSpec, doing: str, prefix: str = "") -> None:
        missing = self.host_refusals(spec, prefix)
        if missing:
            raise Refused(f"cannot {doing}: " + "; ".join(f"{d.path}: {d.detail}" for d in missing),
                          field=missing[0].path, decisions=[d.as_dict() for d in missing])

    def vm_lock(self, uuid: str) -> threading.Lock:
        with self._lock:
            return self._vm_locks.setdefault(uuid, threading.Lock())

    def recover(self) -> dict[str, int]:
        """Read every domain from libvirt: Corral's come back with their specs; running VMs are untouched."""
        counts = {"managed": 0, "external": 0, "running": 0}
        found: dict[str, Vm] = {}
        for dom in self.conn.listAllDomains(0):
            vm = self._vm_from_domain(dom)
            found[vm.uuid] = vm
            counts["external" if vm.external else "managed"] += 1
            if dom.isActive():
                counts["running"] += 1
                if not vm.external:
                    self._reapply_links(vm, dom)
        with self._lock:
            self.vms = found
        self.bus.publish("agent", None, None, "recovered", **counts)
        return counts

    def _vm_from_domain(self, dom: libvirt.virDomain) -> Vm:
        uuid, name = dom.UUIDString(), dom.name()
        try:
            parsed = cfg.Domain.from_xml(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE | libvirt.VIR_DOMAIN_XML_SECURE))
            meta = read_metadata(parsed)
        except (cfg.XmlError, libvirt.libvirtError) as exc:
            log.warning("domain %s: cannot read its Corral metadata: %s", name, exc)
            meta = None
        if meta is None:
            return Vm(uuid, name, None)
        spec = meta.spec
        if spec.graphics is not None and spec.graphics.password is None:
            # <metadata> never holds the VNC password; take it back from <graphics>, or the next re-render
            # of the definition (any device or memory change) would drop it
            passwd = next((d.passwd for d in parsed.devices if isinstance(d, cfg.Graphics) and d.passwd), None)
            if passwd is not None:
                spec = spec.model_copy(update={"graphics": spec.graphics.model_copy(update={"password": passwd})})
        return Vm(uuid, name, spec, meta.guest_type,
                  links={n.id: n.link.value for n in spec.nics})

    def known(self, uuid: str) -> Vm | None:
        with self._lock:
            vm = self.vms.get(uuid)
        if vm is not None:
            return vm
        try:
            dom = self.conn.lookupByUUIDString(uuid)
        except libvirt.libvirtError:
            return None
        vm = self._vm_from_domain(dom)
        with self._lock:
            self.vms[uuid] = vm
        return vm

    def lookup(self, uuid: str) -> tuple[Vm, libvirt.virDomain]:
        try:
            dom = self.conn.lookupByUUIDString(uuid)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() in (libvirt.VIR_ERR_NO_DOMAIN, libvirt.VIR_ERR_INVALID_ARG):
                with self._lock:
                    self.vms.pop(uuid, None)
                raise NotFound(f"no VM {uuid} on this host") from None
            raise from_libvirt(exc, "lookup") from None
        vm = self.known(uuid)
        assert vm is not None
        return vm, dom

    def managed(self, uuid: str) -> tuple[Vm, libvirt.virDomain, VmSpec]:
        vm, dom = self.lookup(uuid)
        if vm.spec is None:
            raise Conflict(f"VM {vm.name} was not created by Corral (external); it is only listed", field="id")
        return vm, dom, vm.spec

    # ---- reading ----------------------------------------------------------------------------------------

    def info(self, vm: Vm, dom: libvirt.virDomain, stats: dict[str, Any] | None = None,
             devices: bool = True) -> dict[str, Any]:
        out = _answer(vm, dom, stats if stats is not None else self.stats.one(self.conn, dom))
        if devices:
            out["devices"] = [self._device_dict(vm, d, dom) for d in self.live_devices(vm, dom)]
        return out

    def _agent_links(self, vm: Vm) -> bool:
        """Whether this VM's NIC links are made real by the agent (libvirt ignores <link state>)."""
        gt = vm.guest_type or GuestType.HVM
        return self.flavor.rule(Feature.NIC_LINK_DOWN, gt).value == LinkControl.AGENT

    def _device_dict(self, vm: Vm, dev: LiveDevice, dom: libvirt.virDomain) -> dict[str, Any]:
        data = dev.as_dict()
        if data["kind"] == "nic" and dev.device_id in vm.links and self._agent_links(vm):
            # the host side's real state where it can be read (a running domain's vif), else the requested one
            real = self.links.state(self._vif(dom, dev)) if self._active(dom) else None
            data["link"] = real or vm.links[dev.device_id]
            data["link_requested"] = vm.links[dev.device_id]
        return data

    def live_devices(self, vm: Vm, dom: libvirt.virDomain) -> list[LiveDevice]:
        xml = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_SECURE)  # else a graphics password always reads as unset
        if vm.spec is None:
            return read_domain(xml, None, self.flavor.name, vm.guest_type)[1]
        return match_devices(cfg.Domain.from_xml(xml).devices, self._expected_devices(vm))

    def _seed_devices(self, vm: Vm, res: Any) -> None:
        """The resolution just rendered is the one ``_expected_devices`` would compute again, and its spec
        JSON the one answers carry (decoded: a third of the cost of dumping the spec again)."""
        if res.domain is not None:
            vm.devices_cache = (vm.spec, vm.guest_type, res.domain.devices)
        spec = vm.spec
        if spec is not None and res.spec_text and not (spec.graphics is not None and spec.graphics.password):
            vm.answer_cache = (spec, vm.guest_type, _JSON.decode(res.spec_text),
                               vm.guest_type.value if vm.guest_type else None)

    def _expected_devices(self, vm: Vm) -> list[cfg.Device]:
        """The devices the spec renders to, which live devices are matched against: resolved once per spec
        (``read_domain`` resolved the spec and re-validated the metadata's copy of it on every read)."""
        assert vm.spec is not None
        cached = vm.devices_cache
        if cached is None or cached[0] is not vm.spec or cached[1] != vm.guest_type:
            res = resolve(vm.spec, self.flavor, vm.guest_type)
            cached = vm.devices_cache = (vm.spec, vm.guest_type, res.domain.devices if res.domain else [])
        return cached[2]  # type: ignore[no-any-return]

    def list(self) -> list[dict[str, Any]]:
        """Every domain with state and stats from one bulk ``getAllDomainStats`` call (where the driver has it).
        The engine polls this for every host: per domain it costs two libvirt getters and one dict."""
        try:
            records = self.stats.all(self.conn)
        except libvirt.libvirtError as exc:
            raise from_libvirt(exc, "list VMs") from None
        with self._lock:  # one lock for the cycle, not one per VM
            by_key = {vm.key: vm for vm in self.vms.values()}
        out = []
        matched = 0
        for dom, stats in records:
            vm = by_key.get(dom.UUID())  # the raw 16 bytes: a third of the cost of UUIDString
            if vm is not None:
                matched += 1
            else:
                vm = self.known(dom.UUIDString())  # a domain the agent has not seen yet
                if vm is None:
                    continue
            out.append(_answer(vm, dom, stats))
        if matched != len(by_key):  # some the registry held at the start of the cycle are gone from libvirt
            listed = {vm["id"] for vm in out}
            with self._lock:
                for gone in [vm.uuid for vm in by_key.values() if vm.uuid not in listed and not vm.defining]:
                    self.vms.pop(gone, None)
        return out

    # ---- define / undefine ------------------------------------------------------------------------------

    def plan(self, spec: VmSpec) -> dict[str, Any]:
        res = resolve(spec, self.flavor, None, self.options())
        decisions = merge(res.decisions, self.host_refusals(spec))
        ok = not any(d.outcome is Outcome.REFUSED for d in decisions)
        return {"flavor": self.flavor.name, "guest_type": res.guest_type.value, "ok": ok,
                "decisions": [d.as_dict() for d in decisions]}

    def _render(self, spec: VmSpec, guest_type: GuestType | None = None) -> tuple[str, Any]:
        try:
            return render_resolution(spec, self.flavor, guest_type, self.options(), pretty=False)
        except RefusedError as exc:
            raise Refused(str(exc), field=exc.field, decisions=[d.as_dict() for d in exc.decisions]) from None

    def create(self, spec: VmSpec, start: bool = False) -> dict[str, Any]:
        """Define (and start) a new VM. Its id must be new to the host: libvirt is asked (a ``defineXML`` of a
        taken id and the same name would silently replace that domain); a name already taken makes libvirt
        refuse the definition, and that refusal is answered as a conflict on ``name``."""
        conn = self.conn
        with self._lock:
            taken = spec.id in self.vms
        if taken or self._exists(conn.lookupByUUIDString, spec.id):
            raise Conflict(f"a domain with id {spec.id!r} already exists on this host", field="id")
        spec = self._fill_macs(spec)
        xml, res = self._render(spec)
        self._refuse_missing(spec, f"create {spec.name} on this host")
        xml = self.hooks.run("before_vm_define", xml, spec.id, spec.name).xml
        vm = Vm(spec.id, spec.name, spec, res.guest_type, links={n.id: n.link.value for n in spec.nics},
                defining=True)
        self._seed_devices(vm, res)
        with self._lock:  # known before libvirt's 'defined' event: its handler need not read the domain back
            if self.vms.setdefault(vm.uuid, vm) is not vm:
                raise Conflict(f"a domain with id {spec.id!r} already exists on this host", field="id")
        with self.vm_lock(vm.uuid):  # no other action on it until it is defined (and started)
            try:
                dom = conn.defineXML(xml)
            except libvirt.libvirtError as exc:
                with self._lock:
                    self.vms.pop(vm.uuid, None)
                if self._exists(conn.lookupByName, spec.name):
                    raise Conflict(f"a domain with name {spec.name!r} already exists on this host",
                                   field="name") from None
                raise from_libvirt(exc, "define") from None
            vm.defining = False
            if start:  # the domain just defined: no lookup, and inactive by definition
                return self._start(vm, dom)
            return self.info(vm, dom, devices=False)

    @staticmethod
    def _exists(lookup: Callable[[str], libvirt.virDomain], key: str) -> bool:
        try:
            lookup(key)
        except libvirt.libvirtError:
            return False
        return True

    def _fill_macs(self, spec: VmSpec) -> VmSpec:
        """Store generated MACs in the spec, so they survive a move to a host of another flavor."""
        from corral.domain.resolve import mac_for

        if all(n.mac for n in spec.nics):
            return spec
        nics = [n if n.mac else n.model_copy(update={"mac": mac_for(n.id, self.flavor.mac_prefix)})
                for n in spec.nics]
        return spec.model_copy(update={"nics": nics})

    def _persist(self, vm: Vm, spec: VmSpec, res: Any = None) -> None:
        """Define the persistent definition (and its metadata) of the new spec: from ``res``, the resolution a
        flavor check just made of it, or rendered here."""
        if res is None:
            xml, res = self._render(spec, vm.guest_type)
        else:
            xml = res.domain.to_xml(False)
        try:
            self.conn.defineXML(xml)
        except libvirt.libvirtError as exc:
            raise from_libvirt(exc, "save the new definition") from None
        vm.spec = spec
        vm.guest_type = res.guest_type
        self._seed_devices(vm, res)

    def undefine(self, uuid: str) -> None:
        with self.vm_lock(uuid):
            vm, dom = self.lookup(uuid)
            if dom.isActive():
                raise Conflict(f"VM {vm.name} is running; stop it before deleting it")
            self.hooks.run("before_vm_undefine", lambda: dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE), vm.uuid, vm.name)
            try:
                dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_NVRAM | libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE)
            except libvirt.libvirtError:
                try:
                    dom.undefine()
                except libvirt.libvirtError as exc:
                    raise from_libvirt(exc, "undefine") from None
            with self._lock:
                self.vms.pop(uuid, None)

    # ---- lifecycle --------------------------------------------------------------------------------------

    def start(self, uuid: str) -> dict[str, Any]:
        with self.vm_lock(uuid):
            vm, dom = self.lookup(uuid)
            if dom.isActive():
                raise Conflict(f"VM {vm.name} is already running")
            if vm.spec is not None:
                self._refuse_missing(vm.spec, f"start {vm.name}")
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
                dom = self.conn.defineXML(hooked.xml)
            if vm.spec is not None and not self.det.emulated:
                (self.state_dir / "consoles").mkdir(parents=True, exist_ok=True)
            if vm.spec is not None and vm.spec.guest_agent is not None:
                (self.state_dir / "channels").mkdir(parents=True, exist_ok=True)
            dom.create()
        except libvirt.libvirtError as exc:
            raise startlog.explain(from_libvirt(exc, f"start {vm.name}"), logs) from None
        vm.fault = None
        vm.domid = None
        warnings = self._after_start(vm, dom)
        after = self.hooks.run("after_vm_start", lambda: dom.XMLDesc(0), vm.uuid, vm.name)
        return _warned(self.info(vm, dom, devices=False), [*hooked.warnings, *warnings, *after.warnings])

    def _after_start(self, vm: Vm, dom: libvirt.virDomain) -> Sequence[str]:
        """What the flavor leaves to the agent once a domain runs: links libvirt ignores, and the balloon target
        of a guest the flavor starts at its maximum. Runs after every start: the agent's own, a guest reboot,
        an on_crash restart, a watchdog restart (each is a new domain on Xen)."""
        warnings: list[str] = []
        spec = vm.spec
        if spec is None:
            return warnings
        gt = vm.guest_type or GuestType.HVM
        target = spec.memory_mib
        if target < spec.effective_max_memory_mib and \
                self.flavor.rule(Feature.MEMORY_BALLOON_HEADROOM, gt).value == MemoryAtStart.AT_MAX_THEN_BALLOON:
            try:
                dom.setMemoryFlags(target * 1024, libvirt.VIR_DOMAIN_AFFECT_LIVE)
            except libvirt.libvirtError as exc:
                msg = f"started at {spec.effective_max_memory_mib} MiB; setting the balloon to {target} MiB " \
                      f"failed: {exc.get_error_message()}"
                log.warning("VM %s: %s", vm.name, msg)
                warnings.append(msg)
        warnings += self._reapply_links(vm, dom)
        return warnings

    def needs_after_start(self, vm: Vm) -> bool:
        """Whether ``_after_start`` has anything to do for this VM (cheap: asked on every start event)."""
        spec = vm.spec
        if spec is None:
            return False
        if any(state == "down" for state in vm.links.values()) and self._agent_links(vm):
            return True
        return spec.memory_mib < spec.effective_max_memory_mib and self.flavor.rule(
            Feature.MEMORY_BALLOON_HEADROOM, vm.guest_type or GuestType.HVM).value == MemoryAtStart.AT_MAX_THEN_BALLOON

    def after_restart(self, vm: Vm, dom: libvirt.virDomain) -> None:
        """A restart by another part of the agent (the watchdog), which holds the VM's lock."""
        vm.domid = None
        self._after_start(vm, dom)

    def restarted(self, uuid: str) -> None:
        """A domain started without the agent asking (guest reboot, on_crash restart): redo ``_after_start``."""
        with self.vm_lock(uuid):
            try:
                vm, dom = self.lookup(uuid)
            except (NotFound, Conflict):
                return
            if self._active(dom):
                self._after_start(vm, dom)

    def _reapply_links(self, vm: Vm, dom: libvirt.virDomain) -> Sequence[str]:
        """Links the flavor leaves to the agent (Xen: vifD.N in dom0) are set again after every start."""
        if vm.spec is None or not self._agent_links(vm):
            return []
        down = [nid for nid, state in vm.links.items() if state == "down"]
        if not down:
            return []
        warnings = []
        devices = {d.device_id: d for d in self.live_devices(vm, dom)}
        for nid in down:
            dev = devices.get(nid)
            if dev is not None and isinstance(dev.config, cfg.Interface):
                try:
                    self.links.set(self._vif(dom, dev), "down")
                except Unsupported as exc:
                    log.warning("VM %s NIC %s: %s", vm.name, nid, exc)
                    warnings.append(f"NIC {nid} link down: {exc.message}")
        return warnings

    def _vif(self, dom: libvirt.virDomain, dev: LiveDevice) -> str:
        assert isinstance(dev.config, cfg.Interface)
        if dev.config.target_dev:
            return dev.config.target_dev
        nics = [d for d in cfg.Domain.from_xml(dom.XMLDesc(0)).devices if isinstance(d, cfg.Interface)]
        index = next(i for i, n in enumerate(nics) if n.mac == dev.config.mac)
        return f"vif{dom.ID()}.{index}"

    def shutdown(self, uuid: str, timeout: float = 60.0, force: bool = False) -> dict[str, Any]:
        """Ask the guest to stop; with ``force``, destroy it once ``timeout`` has passed. A guest still running
        at the timeout without ``force`` is a failure (``TimedOut``), never an answer that looks like success."""
        with self.vm_lock(uuid), self._stopping(uuid):
            vm, dom = self.lookup(uuid)
            if not dom.isActive():
                raise Conflict(f"VM {vm.name} is not running")
            self.hooks.run("before_vm_shutdown", lambda: dom.XMLDesc(0), vm.uuid, vm.name)
            try:
                dom.shutdown()
            except libvirt.libvirtError as exc:
                if not force:
                    raise from_libvirt(exc, f"shut down {vm.name}") from None
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and self._active(dom):
                time.sleep(0.1)
            how = "shutdown"
            if self._active(dom):
                if not force:
                    state = state_name(*dom.state())
                    raise TimedOut(f"VM {vm.name} did not stop within {timeout:g} s of the shutdown request: it is "
                                   f"still {state} (the guest ignored the request or is still shutting down); "
                                   f"shut down again with force, or stop it", field="timeout", state=state)
                how, warnings = self._destroy_after_timeout(vm, dom)
            else:
                warnings = ()
            after = self.hooks.run("after_vm_shutdown", lambda: dom.XMLDesc(0), vm.uuid, vm.name)
            info = _warned(self.info(vm, dom, devices=False), [*warnings, *after.warnings])
            info["stopped_by"] = how
            return info

    def _active(self, dom: libvirt.virDomain) -> bool:
        try:
            return bool(dom.isActive())
        except libvirt.libvirtError:
            return False

    def _destroy_after_timeout(self, vm: Vm, dom: libvirt.virDomain) -> tuple[str, Sequence[str]]:
        self.hooks.run("before_vm_destroy", lambda: dom.XMLDesc(0), vm.uuid, vm.name)
        how = "destroy"
        if self.flavor.graceful_destroy:  # libxl: "unsupported flags (0x1) in libxlDomainDestroyFlags" [L16]
            try:
                dom.destroyFlags(libvirt.VIR_DOMAIN_DESTROY_GRACEFUL)
                how = "destroy-graceful"
            except libvirt.libvirtError as exc:
                log.info("VM %s: graceful destroy refused (%s); destroying", vm.name, exc.get_error_message())
        if self._active(dom):
            try:
                dom.destroy()
                how = "destroy"
            except libvirt.libvirtError as exc:
                raise from_libvirt(exc, f"destroy {vm.name}") from None
        return how, self.hooks.run("after_vm_destroy", lambda: dom.XMLDesc(0), vm.uuid, vm.name).warnings

    def destroy(self, uuid: str) -> dict[str, Any]:
        with self.vm_lock(uuid), self._stopping(uuid):
            vm, dom = self.lookup(uuid)
            # libvirt refuses to destroy an inactive domain (OPERATION_INVALID, every driver): asking it first
            # is needed only when a before_vm_destroy hook would otherwise run for nothing
            if self.hooks.installed("before_vm_destroy") and not dom.isActive():
                raise Conflict(f"VM {vm.name} is not running")
            self.hooks.run("before_vm_destroy", lambda: dom.XMLDesc(0), vm.uuid, vm.name)
            try:
                dom.destroy()
            except libvirt.libvirtError as exc:
                if exc.get_error_code() == libvirt.VIR_ERR_OPERATION_INVALID and not self._active(dom):
                    raise Conflict(f"VM {vm.name} is not running") from None
                raise from_libvirt(exc, f"destroy {vm.name}") from None
            after = self.hooks.run("after_vm_destroy", lambda: dom.XMLDesc(0), vm.uuid, vm.name)
            return _warned(self.info(vm, dom, devices=False), after.warnings)

    @contextmanager
    def _stopping(self, uuid: str) -> Iterator[None]:
        """Marks an action of the agent that ends or replaces the domain (and its device model)."""
        self.stopping.add(uuid)
        try:
            yield
        finally:
            self.stopping.discard(uuid)

    def _simple(self, uuid: str, action: str) -> dict[str, Any]:
        with self.vm_lock(uuid):
            vm, dom = self.lookup(uuid)
            state, _ = dom.state()
            need = {"reboot": (libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_BLOCKED),
                    "pause": (libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_BLOCKED),
                    "resume": (libvirt.VIR_DOMAIN_PAUSED,)}[action]
            if state not in need:
                current = LIBVIRT_STATES.get(state, "unknown")
                raise Conflict(f"cannot {action} VM {vm.name}: it is {current}")
            try:
                {"reboot": lambda: dom.reboot(0), "pause": dom.suspend, "resume": dom.resume}[action]()
            except libvirt.libvirtError as exc:
                raise from_libvirt(exc, f"{action} {vm.name}") from None
            return self.info(vm, dom, devices=False)

    def reboot(self, uuid: str) -> dict[str, Any]:
        return self._simple(uuid, "reboot")

    def pause(self, uuid: str) -> dict[str, Any]:
        return self._simple(uuid, "pause")

    def resume(self, uuid: str) -> dict[str, Any]:
        return self._simple(uuid, "resume")

    # ---- devices, memory, vCPUs -------------------------------------------------------------------------

    def _check_flavor(self, vm: Vm, spec: VmSpec, path_prefix: str) -> Any:
        res = resolve(spec, self.flavor, vm.guest_type, self.options())
        self._refuse_missing(spec, f"change {vm.name}", path_prefix)
        bad = [d for d in res.refused if d.path.startswith(path_prefix) or path_prefix == ""]
        if res.refused:
            bad = bad or res.refused
            raise Refused(f"{self.flavor.title} refuses: " + "; ".join(f"{d.path}: {d.detail}" for d in bad),
                          field=bad[0].path, decisions=[d.as_dict() for d in bad])
        return res

    def update_device(self, uuid: str, device_id: str, change: dict[str, Any]) -> dict[str, Any]:
        with self.vm_lock(uuid):
            vm, dom, spec = self.managed(uuid)
            planned = device_change(vm.name, spec, device_id, change, self.flavor, vm.guest_type or GuestType.HVM)
            res = self._check_flavor(vm, planned.spec, planned.section)
            if planned.key == "media":
                assert isinstance(planned.device, DiskSpec)
                self._change_media(vm, dom, res, planned.device, planned.value)
            elif planned.key == "link":
                assert isinstance(planned.device, NicSpec)
                self._change_link(vm, dom, res, planned.device, planned.value)
            elif dom.isActive():  # password
                gfx = self._rendered(res, planned.device.id)
                try:
                    dom.updateDeviceFlags(etree.tostring(gfx.to_element(), encoding="unicode"),
                                          libvirt.VIR_DOMAIN_AFFECT_LIVE)
                except libvirt.libvirtError as exc:
                    raise from_libvirt(exc, "change the console password") from None
            self._persist(vm, planned.spec, res)
            if planned.key == "link":
                vm.links[planned.device.id] = planned.value
            detail = {planned.key: planned.value} if planned.key != "password" else {}
            self.bus.publish("device", vm.uuid, vm.name, device_id=planned.device.id, change=planned.key, **detail)
            return self.info(vm, dom)

    def _rendered(self, res: Any, device_id: str) -> cfg.Device:
        dev = _rendered_device(res, device_id)
        if dev is None:
            raise NotFound(f"device {device_id} is not rendered for this host", field="device_id")
        return dev

    def _change_media(self, vm: Vm, dom: libvirt.virDomain, res: Any, disk: DiskSpec, media: str | None) -> None:
        if not dom.isActive():
            return
        if self.flavor.rule(Feature.CDROM_DEVICE, res.guest_type).value == CdromDevice.READONLY_DISK:
            self._replug_media(vm, dom, res, disk.id, media)
            return
        elem = self._rendered(res, disk.id)
        try:
            dom.updateDeviceFlags(etree.tostring(elem.to_element(), encoding="unicode"), libvirt.VIR_DOMAIN_AFFECT_LIVE)
        except libvirt.libvirtError as exc:
            raise from_libvirt(exc, "change the CD-ROM media") from None

    def _replug_media(self, vm: Vm, dom: libvirt.virDomain, res: Any, disk_id: str, media: str | None) -> None:
        """Where the CD-ROM is a read-only disk (Xen PV), a media change is an unplug and a plug."""
        old = next((d for d in self.live_devices(vm, dom) if d.device_id == disk_id), None)
        if old is not None:
            try:
                dom.detachDeviceFlags(etree.tostring(old.config.to_element(), encoding="unicode"),
                                      libvirt.VIR_DOMAIN_AFFECT_LIVE)
            except libvirt.libvirtError as exc:
                raise from_libvirt(exc, "eject the media (unplug its read-only disk)") from None
        if media is None:
            return
        new = etree.tostring(self._rendered(res, disk_id).to_element(), encoding="unicode")
        try:
            dom.attachDeviceFlags(new, libvirt.VIR_DOMAIN_AFFECT_LIVE)
        except libvirt.libvirtError as exc:
            raise from_libvirt(exc, "insert the media (plug its read-only disk)") from None

    def _change_link(self, vm: Vm, dom: libvirt.virDomain, res: Any, nic: NicSpec, link: str) -> None:
        if not dom.isActive():
            return
        if self.flavor.rule(Feature.NIC_LINK_DOWN, res.guest_type).value == LinkControl.AGENT:
            dev = next((d for d in self.live_devices(vm, dom) if d.device_id == nic.id), None)
            if dev is None:
                raise NotFound(f"NIC {nic.id} is not in the running domain")
            self.links.set(self._vif(dom, dev), link)
            return
        iface = self._rendered(res, nic.id)
        assert isinstance(iface, cfg.Interface)
        iface.link_state = link
        try:
            dom.updateDeviceFlags(etree.tostring(iface.to_element(), encoding="unicode"),
                                  libvirt.VIR_DOMAIN_AFFECT_LIVE)
        except libvirt.libvirtError as exc:
            raise from_libvirt(exc, "change the NIC link") from None

    def hotplug(self, uuid: str, kind: str, data: dict[str, Any]) -> dict[str, Any]:
        with self.vm_lock(uuid):
            vm, dom, spec = self.managed(uuid)
            device, new_spec = hotplugged(vm.name, spec, kind, data, self.flavor.mac_prefix)
            res = self._check_flavor(vm, new_spec, "disks" if kind == "disk" else "nics")
            rendered = _rendered_device(res, device.id)
            warnings: list[str] = []
            # not rendered: a drive the flavor adds only later (Xen PV: an empty CD-ROM until media goes in)
            if dom.isActive() and rendered is not None:
                xml = etree.tostring(rendered.to_element(), encoding="unicode")
                xml = self.hooks.run("before_device_hotplug", xml, vm.uuid, vm.name).xml
                try:
                    dom.attachDeviceFlags(xml, libvirt.VIR_DOMAIN_AFFECT_LIVE)
                except libvirt.libvirtError as exc:
                    raise from_libvirt(exc, f"hot-plug the {kind}") from None
                warnings = self.hooks.run("after_device_hotplug", xml, vm.uuid, vm.name).warnings
            self._persist(vm, new_spec, res)
            if isinstance(device, NicSpec):
                vm.links[device.id] = device.link.value
            self.bus.publish("device", vm.uuid, vm.name, device_id=device.id, change="attached", kind=kind)
            return _warned(self.info(vm, dom), warnings)

    def unplug(self, uuid: str, device_id: str) -> dict[str, Any]:
        with self.vm_lock(uuid):
            vm, dom, spec = self.managed(uuid)
            _device, new_spec = unplugged(vm.name, spec, device_id)
            warnings: list[str] = []
            if dom.isActive():
                live = next((d for d in self.live_devices(vm, dom) if d.device_id == device_id), None)
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
            return _warned(self.info(vm, dom), warnings)

    def set_memory(self, uuid: str, memory_mib: int) -> dict[str, Any]:
        with self.vm_lock(uuid):
            vm, dom, spec = self.managed(uuid)
            new_spec = with_memory(spec, memory_mib)
            res = self._check_flavor(vm, new_spec, "")
            if dom.isActive():
                try:
                    dom.setMemoryFlags(memory_mib * 1024, libvirt.VIR_DOMAIN_AFFECT_LIVE)
                except libvirt.libvirtError as exc:
                    raise from_libvirt(exc, "set the balloon target") from None
            self._persist(vm, new_spec, res)
            self.bus.publish("device", vm.uuid, vm.name, change="memory", memory_mib=memory_mib)
            return self.info(vm, dom)

    def set_vcpus(self, uuid: str, vcpus: int) -> dict[str, Any]:
        with self.vm_lock(uuid):
            vm, dom, spec = self.managed(uuid)
            new_spec = with_vcpus(spec, vcpus)
            res = self._check_flavor(vm, new_spec, "")
            if dom.isActive():
                try:
                    dom.setVcpusFlags(vcpus, libvirt.VIR_DOMAIN_AFFECT_LIVE)
                except libvirt.libvirtError as exc:
                    raise from_libvirt(exc, "set vCPUs") from None
            self._persist(vm, new_spec, res)
            self.bus.publish("device", vm.uuid, vm.name, change="vcpus", vcpus=vcpus)
            return self.info(vm, dom)

    def console_log(self, uuid: str, tail: int) -> dict[str, Any]:
        vm, dom = self.lookup(uuid)
        path: Path | None = None
        for dev in cfg.Domain.from_xml(dom.XMLDesc(0)).devices:
            if isinstance(dev, cfg.CharDevice) and (dev.log_file or (dev.type == "file" and dev.source_path)):
                path = Path(dev.log_file or dev.source_path or "")
                break
        if path is None and self.flavor.console_daemon_log is not None:
            path = self.console_dir / self.flavor.console_daemon_log.format(name=vm.name)
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
