"""The VMs this agent knows, read back from libvirt, and the answers of the stats cycle.

libvirt is the source of truth: every Corral domain carries its VmSpec in ``<metadata>`` (written by
``render``); on start (and after a reconnect) the agent reads every domain back, running ones untouched. The
registry adds what libvirt does not keep (a fault libvirt does not report, link states the agent sets), one
lock per VM for the agent's actions, and per-spec caches that make the engine's poll of every VM cheap.
"""

from __future__ import annotations

import logging
import threading
import uuid as uuidlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import libvirt
import msgspec

from corral.agent.errors import Conflict, NotFound, from_libvirt
from corral.agent.events import EventBus
from corral.agent.stats import StatsReader
from corral.agent.vms.states import INACTIVE, LIBVIRT_STATES, state_name
from corral.domain import config as cfg
from corral.domain.read import read_metadata
from corral.domain.spec import GuestType, VmSpec

log = logging.getLogger(__name__)


class AnswerCache(NamedTuple):
    """What every answer about a VM shares until its spec or guest type changes (read-only to callers)."""

    spec: VmSpec | None
    guest_type: GuestType | None
    spec_json: dict[str, Any] | None
    guest_type_name: str | None


class DevicesCache(NamedTuple):
    """The devices the spec renders to for this guest type: what live devices are matched against."""

    spec: VmSpec | None
    guest_type: GuestType | None
    devices: list[cfg.Device]


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
    # and guest type it was made for.
    answer_cache: AnswerCache | None = field(default=None, repr=False, compare=False)
    devices_cache: DevicesCache | None = field(default=None, repr=False, compare=False)
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


JSON = msgspec.json.Decoder()


def answer(vm: Vm, dom: libvirt.virDomain, stats: dict[str, Any]) -> dict[str, Any]:
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
    if cached is None or cached.spec is not spec or cached.guest_type is not vm.guest_type:
        cached = vm.answer_cache = AnswerCache(spec, vm.guest_type,
                                               spec.model_dump(mode="json") if spec is not None else None,
                                               vm.guest_type.value if vm.guest_type else None)
    domain_id = None
    if state not in INACTIVE:
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
        # shared by every answer until the spec changes: read-only
        "spec": cached.spec_json, "guest_type": cached.guest_type_name,
        "fault": vm.fault,
    }


def _vm_from_domain(dom: libvirt.virDomain) -> Vm:
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
    return Vm(uuid, name, spec, meta.guest_type, links={n.id: n.link.value for n in spec.nics})


class Registry:
    """Every domain of the host the agent has seen, by UUID. Readers take ``vms`` as it is (one dict read is
    atomic); writers hold ``lock``. ``vm_lock`` serialises the agent's actions on one VM."""

    def __init__(self, get_conn: Callable[[], libvirt.virConnect], bus: EventBus, stats: StatsReader) -> None:
        self._get_conn = get_conn
        self.bus = bus
        self.stats = stats
        self.vms: dict[str, Vm] = {}
        # VM id -> (domain id, CD-ROM ids without media) of the domain the agent saw start. Kept here, not on the
        # Vm: a Vm is made again from libvirt (reconnect, a define racing a list cycle) and must not lose it
        self.started_empty: dict[str, tuple[int, frozenset[str]]] = {}
        self.lock = threading.RLock()
        self._vm_locks: dict[str, threading.Lock] = {}

    @property
    def conn(self) -> libvirt.virConnect:
        return self._get_conn()

    def vm_lock(self, uuid: str) -> threading.Lock:
        with self.lock:
            return self._vm_locks.setdefault(uuid, threading.Lock())

    def recover(self, running: Callable[[Vm, libvirt.virDomain], object]) -> dict[str, int]:
        """Read every domain from libvirt: Corral's come back with their specs; running VMs are untouched but
        for ``running(vm, dom)`` on the managed ones (what the flavor leaves to the agent, e.g. NIC links)."""
        counts = {"managed": 0, "external": 0, "running": 0}
        found: dict[str, Vm] = {}
        for dom in self.conn.listAllDomains(0):
            vm = _vm_from_domain(dom)
            found[vm.uuid] = vm
            counts["external" if vm.external else "managed"] += 1
            if dom.isActive():
                counts["running"] += 1
                if not vm.external:
                    running(vm, dom)
        with self.lock:
            self.vms = found
        self.bus.publish("agent", None, None, "recovered", **counts)
        return counts

    def known(self, uuid: str) -> Vm | None:
        with self.lock:
            vm = self.vms.get(uuid)
        if vm is not None:
            return vm
        try:
            dom = self.conn.lookupByUUIDString(uuid)
        except libvirt.libvirtError:
            return None
        vm = _vm_from_domain(dom)
        with self.lock:
            self.vms[uuid] = vm
        return vm

    def lookup(self, uuid: str) -> tuple[Vm, libvirt.virDomain]:
        try:
            dom = self.conn.lookupByUUIDString(uuid)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() in (libvirt.VIR_ERR_NO_DOMAIN, libvirt.VIR_ERR_INVALID_ARG):
                self.forget(uuid)
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

    def holds(self, uuid: str) -> bool:
        with self.lock:
            return uuid in self.vms

    def add(self, vm: Vm) -> bool:
        """Register a VM being created; False if its id is already registered."""
        with self.lock:
            return self.vms.setdefault(vm.uuid, vm) is vm

    def forget(self, uuid: str) -> None:
        with self.lock:
            self.vms.pop(uuid, None)

    def list(self) -> list[dict[str, Any]]:
        """Every domain with state and stats from one bulk ``getAllDomainStats`` call (where the driver has it).
        The engine polls this for every host: per domain it costs two libvirt getters and one dict."""
        # The registry is read before libvirt: a VM registered or defined after this snapshot cannot be taken for
        # one gone from libvirt (a define racing the cycle made the agent forget it and read it back anew).
        with self.lock:  # one lock for the cycle, not one per VM
            by_key = {vm.key: vm for vm in self.vms.values()}
            settled = {vm.uuid for vm in by_key.values() if not vm.defining}
        try:
            records = self.stats.all(self.conn)
        except libvirt.libvirtError as exc:
            raise from_libvirt(exc, "list VMs") from None
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
            out.append(answer(vm, dom, stats))
        if matched != len(by_key):  # some the registry held at the start of the cycle are gone from libvirt
            listed = {vm["id"] for vm in out}
            with self.lock:
                for gone in [u for u in settled if u not in listed]:
                    self.vms.pop(gone, None)
        return out
