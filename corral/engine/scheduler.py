"""Placement: which host of the VM's cluster runs it, and why every other host does not.

Filters first, collecting every reason a host fails (an operator wants all of them): host up, cluster flavor
policy, the hypervisor the VM requires (``VmSpec.hypervisor``), free memory (host memory minus reserve minus the
memory of the VMs that occupy it), vCPUs, CPU compatibility (required features; skipped when the host reports no
flags), bridges present, logical networks carried (their bridges present: ``NetworkNeed``), storage (every
storage domain the VM's disks need active on the host; a local volume that exists only on its host:
``StorageNeed``). One function (``_reasons``) decides them for every host, in
production and in tests.

The hosts that survive are asked whether their flavor can run the spec: the agent's plan, with no ``refused``
decision. A plan depends on a few facts of the host, not on the host itself (``PlanHost``: flavor, accel,
hypervisor, libvirt and hypervisor versions, emulated or not, CPU count), so hosts with equal facts are grouped
and one agent per group answers; answers are cached per (those facts, guest type, spec hash). The plan says
which guest type the host runs the VM as, which fixes the memory the VM takes at start
(``memory_at_start_mib``: a Xen HVM guest below its max starts at max), checked against each host's free memory.
Then the ranking (``_rank``): fidelity first (the guest type kept, then the fewest translated decisions), load
second (free memory, then fewest running VMs).

The database is read with three queries whatever the number of hosts: the cluster's hosts (only the columns
placement needs), one GROUP BY for the memory and VM count they carry, and their storage domain rows.
``Scheduler.candidates`` reads them at most every ``ttl`` seconds per cluster and counts in the placements it
made since (``claim``, until the start's task ends: ``release``), so a burst of starts costs one read, not one
per start. The decision recorded on the VM keeps the reasons of every rejected host and the scores of the best
``TOP_SCORES``.
"""

from __future__ import annotations

import asyncio
import hashlib
import heapq
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from corral.domain.flavors import UnknownFlavor, get_flavor
from corral.domain.flavors.base import Flavor
from corral.domain.spec import CpuMode, FeaturePolicy, GuestType, NicSource, VmSpec
from corral.engine.agent_client import AgentError, AgentTarget
from corral.engine.db.models import (
    RUNNING_STATES,
    Cluster,
    DomainHostState,
    Host,
    HostState,
    StorageDomainHost,
    Vm,
    utcnow,
)
from corral.engine.db.session import Database

TOP_SCORES = 20


class MemorySizes(Protocol):
    """A VM's memory as asked (a VmSpec), or the sums of several VMs' (the load of a host)."""

    @property
    def memory_mib(self) -> int: ...

    @property
    def effective_max_memory_mib(self) -> int: ...


def memory_at_start_mib(flavor: Flavor, guest_type: GuestType, spec: MemorySizes) -> int:
    """The memory a VM takes from a host of ``flavor`` when it starts there as ``guest_type``: its memory, or its
    maximum where the flavor starts the guest at max and lowers the balloon afterwards (Xen HVM). The scheduler
    counts this figure, not the balloon's target, or it overcommits such hosts. The rule is linear, so it also
    answers for the sums of several VMs of one guest type. The flavor's typed answer decides."""
    return flavor.memory_at_start_mib(guest_type, spec.memory_mib, spec.effective_max_memory_mib)


@dataclass(frozen=True)
class _Sizes:
    memory_mib: int
    effective_max_memory_mib: int


@dataclass(frozen=True)
class PlanHost:
    """Every fact of a host an agent's plan depends on (``VmManager.plan``): the flavor, chosen by the detected
    hypervisor and its accel; the render options — the host's CPU count (``max_vcpus`` above it is refused),
    whether it is emulated (where console logs go); and the libvirt and hypervisor versions the agent reports.
    Hosts with equal facts give equal plans for equal specs; a new fact the plan reads belongs here."""

    flavor: str | None
    accel: str | None
    hypervisor: str | None
    libvirt_version: str | None
    hypervisor_version: str | None
    emulated: bool
    cpu_count: int


# (host facts, the spec's guest type, spec hash): the whole input of a plan
PlanKey = tuple[PlanHost, str, str]


@dataclass
class Candidate:
    """What the scheduler knows about one host."""

    id: str
    name: str
    state: str
    flavor: str | None
    cpu_count: int
    cpu_flags: list[str]
    memory_mib: int
    reserved_memory_mib: int
    bridges: list[str]
    target: AgentTarget
    accel: str | None = None
    hypervisor: str | None = None
    libvirt_version: str | None = None
    hypervisor_version: str | None = None
    emulated: bool = False
    committed_mib: int = 0
    running_vms: int = 0
    # storage domain id -> (state, reason, free bytes): the host's storage_domain_hosts rows
    storage: dict[str, tuple[str, str, int | None]] = field(default_factory=dict)

    @property
    def free_mib(self) -> int:
        return self.memory_mib - self.reserved_memory_mib - self.committed_mib

    @property
    def plan_host(self) -> PlanHost:
        return PlanHost(self.flavor, self.accel, self.hypervisor, self.libvirt_version, self.hypervisor_version,
                        self.emulated, self.cpu_count)


@dataclass(frozen=True)
class PlanAnswer:
    """What placement keeps of an agent's plan: the guest type the host runs the VM as, the refused decisions,
    and how many decisions are translations."""

    guest_type: GuestType | None
    refused: tuple[dict[str, Any], ...]
    translated: int

    @classmethod
    def of(cls, plan: dict[str, Any]) -> PlanAnswer:
        decisions = plan.get("decisions", [])
        try:
            gt: GuestType | None = GuestType(str(plan.get("guest_type")))
        except ValueError:
            gt = None
        return cls(gt, tuple(d for d in decisions if d.get("outcome") == "refused"),
                   sum(1 for d in decisions if d.get("outcome") == "translated"))


@dataclass
class Placement:
    """The decision, as recorded on the VM. ``memory_mib``: what the VM takes from the chosen host at start."""

    host_id: str | None
    host_name: str | None
    rejected: dict[str, dict[str, Any]] = field(default_factory=dict)
    scores: dict[str, float] = field(default_factory=dict)
    translated: dict[str, int] = field(default_factory=dict)
    memory_mib: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"time": utcnow().isoformat(), "host_id": self.host_id, "host": self.host_name,
                "rejected": [{"host_id": k, **v} for k, v in self.rejected.items()],
                "scores": self.scores, "translated": self.translated, "memory_mib": self.memory_mib}

    def summary(self) -> str:
        return "; ".join(f"{v['host']}: {', '.join(v['reasons'])}" for v in self.rejected.values())


def spec_hash(spec: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


@dataclass(frozen=True)
class StorageNeed:
    """A storage domain a VM's disks need (``corral.engine.vmvolumes.needs``). ``host_id``: a local domain's
    volume that exists already lives on that host only ("" when its host was removed); ``new_bytes``: what the
    VM's volumes still to be made take there, checked against the free space where it is all allocated at once
    (``preallocated``: an LVM volume group)."""

    domain_id: str
    domain: str
    host_id: str | None = None
    host: str | None = None
    volume: str | None = None
    new_bytes: int = 0
    preallocated: bool = False


def _storage_reasons(needs: tuple[StorageNeed, ...], c: Candidate) -> list[str]:
    reasons: list[str] = []
    for n in needs:
        if n.host_id is not None and n.host_id != c.id:
            where = f"lives on host {n.host}" if n.host else "has no host any more (its host was removed)"
            reasons.append(f"volume {n.volume} {where}")
            continue
        state, why, free = c.storage.get(n.domain_id, (DomainHostState.INACTIVE.value, "not realised here yet", None))
        if state != DomainHostState.ACTIVE.value:
            reasons.append(f"storage domain {n.domain} not active here ({state}: {why or 'no reason given'})")
        elif n.preallocated and free is not None and n.new_bytes > free:
            reasons.append(f"storage domain {n.domain} has {free} bytes free here, the VM's new volumes need "
                           f"{n.new_bytes}")
    return reasons


@dataclass(frozen=True)
class NetworkNeed:
    """A logical network a VM's NICs name (``corral.engine.networks.needs``): a host carries it when its bridge
    (``corral.domain.netnames.bridge_for``) is among the host's bridges."""

    network: str
    bridge: str


@dataclass(frozen=True)
class _Needs:
    """What a spec asks of every host, worked out once per placement rather than once per host."""

    memory_mib: int
    vcpus: int
    features: tuple[str, ...]
    bridges: frozenset[str]
    hypervisor: str
    storage: tuple[StorageNeed, ...] = ()
    networks: tuple[NetworkNeed, ...] = ()

    @classmethod
    def of(cls, spec: VmSpec, storage: tuple[StorageNeed, ...] = (),
           networks: tuple[NetworkNeed, ...] = ()) -> _Needs:
        features: tuple[str, ...] = ()
        if spec.cpu is not None and spec.cpu.mode is CpuMode.CUSTOM:
            features = tuple(f.name for f in spec.cpu.features if f.policy is FeaturePolicy.REQUIRE)
        # a network's bridge is checked as the network (its reason names both), not again as a bare bridge
        of_networks = {n.bridge for n in networks}
        return cls(spec.memory_mib, spec.vcpus, features,
                   frozenset(n.source for n in spec.nics
                             if n.source_type is NicSource.BRIDGE and n.source not in of_networks),
                   spec.hypervisor.value, storage, networks)


def _reasons(needs: _Needs, c: Candidate, flavor_policy: str) -> list[str]:
    """Why a host cannot run the VM, before its flavor's plan; empty when it passes. The memory checked here is
    the least the VM can take (``memory_mib``); the figure at start is checked once the plan gave the guest
    type (``Scheduler.place``)."""
    reasons: list[str] = []
    if c.state != HostState.UP.value:
        reasons.append(f"host is {c.state}")
    if flavor_policy not in ("any", "") and c.flavor != flavor_policy:
        reasons.append(f"cluster allows {flavor_policy} hosts, this host is {c.flavor}")
    if needs.hypervisor != "any" and c.flavor != needs.hypervisor:
        reasons.append(f"the VM requires a {needs.hypervisor} host, this host is {c.flavor}")
    if needs.memory_mib > c.free_mib:
        reasons.append(f"not enough free memory: needs {needs.memory_mib} MiB, {max(c.free_mib, 0)} MiB free")
    if c.cpu_count and needs.vcpus > c.cpu_count:
        reasons.append(f"needs {needs.vcpus} vCPUs, host has {c.cpu_count} CPUs")
    if needs.features and c.cpu_flags:
        flags = set(c.cpu_flags)
        missing = [f for f in needs.features if f not in flags]
        if missing:
            reasons.append(f"CPU lacks required features: {', '.join(missing)}")
    if needs.bridges and not needs.bridges.issubset(c.bridges):
        wanted = sorted(needs.bridges.difference(c.bridges))
        reasons.append(f"missing bridge(s): {', '.join(wanted)}")
    for net in needs.networks:
        if net.bridge not in c.bridges:
            reasons.append(f"network {net.network} (bridge {net.bridge}) not on this host")
    if needs.storage:
        reasons += _storage_reasons(needs.storage, c)
    return reasons


@dataclass(frozen=True)
class _Fit:
    """A host that can run the VM, with what its ranking needs."""

    host: Candidate
    guest_type_kept: bool
    translated: int
    memory_mib: int


def _rank(fit: list[_Fit], k: int) -> list[tuple[float, _Fit]]:
    """The best ``k`` hosts, best first, each with its load score.

    The order is lexicographic: (1) hosts that run the VM as the guest type it asks for, before hosts that
    translate it (PV made HVM changes how the guest boots and which drivers it needs: the whole VM, not one
    setting); (2) fewer translated decisions; (3) the load score — free memory as a share of the freest host's
    plus emptiness as a share of the fullest host's VM count, in [0, 2]; (4) the name.

    Lexicographic and not a dominant weight: the load score is relative to the other hosts, so a weight per
    translation would be an exchange rate between running the VM as asked and balancing the cluster that no
    one can choose well — and one above 2 is lexicographic anyway, only harder to read. No amount of free
    memory makes a translated setting run as asked; load decides among hosts that run the VM equally faithfully.
    """
    if not fit:
        return []
    max_free = max(f.host.free_mib for f in fit) or 1
    max_vms = max(f.host.running_vms for f in fit) or 1
    scored = [(round(f.host.free_mib / max_free + (1 - f.host.running_vms / max_vms), 6), f) for f in fit]
    return heapq.nsmallest(k, scored, key=lambda sf: (not sf[1].guest_type_kept, sf[1].translated, -sf[0],
                                                       sf[1].host.name))


PlanFn = Callable[[AgentTarget, dict[str, Any]], Awaitable[dict[str, Any]]]


class PlanCache:
    """``PlanKey`` → the plan's answer; bounded, entries expire."""

    def __init__(self, ttl: float = 600.0, size: int = 10000) -> None:
        self.ttl, self.size = ttl, size
        self._data: dict[PlanKey, tuple[float, PlanAnswer]] = {}

    def get(self, key: PlanKey) -> PlanAnswer | None:
        hit = self._data.get(key)
        if hit is None or hit[0] < time.monotonic():
            return None
        return hit[1]

    def put(self, key: PlanKey, answer: PlanAnswer) -> None:
        if len(self._data) >= self.size:
            self._data.clear()
        self._data[key] = (time.monotonic() + self.ttl, answer)


def _committed(flavor_name: str | None, accel: str | None, sums: list[tuple[str | None, int, int]]) -> int:
    """The memory the running VMs of one host take, from their sums per guest type: each guest type's VMs at
    the figure they start with on this host's flavor (``memory_at_start_mib``)."""
    total = 0
    for gt_name, memory, maximum in sums:
        try:
            flavor = get_flavor(flavor_name or "", accel=accel or "kvm")
            gt = GuestType(str(gt_name))
        except (UnknownFlavor, ValueError):  # an external VM (no spec) or a host without a flavor yet
            total += memory
            continue
        total += memory_at_start_mib(flavor, gt, _Sizes(memory, maximum))
    return total


def load_candidates(s: Session, cluster_id: str) -> tuple[str, list[Candidate]]:
    """The cluster's flavor policy and its hosts with their load: three queries (hosts, load, storage rows)."""
    policy = s.scalar(select(Cluster.flavor_policy).where(Cluster.id == cluster_id)) or "any"
    # columns, not Host objects: the whole capability document (``info``) is not decoded for every host
    info = Host.info
    hosts = s.connection().execute(select(
        Host.id, Host.name, Host.state, Host.flavor, Host.accel, Host.hypervisor, Host.emulated, Host.cpu_count,
        Host.cpu_flags, Host.memory_mib, Host.reserved_memory_mib, Host.bridges, Host.agent_url, Host.agent_token,
        info["libvirt_version"].as_string(), info["hypervisor_version"].as_string(),
    ).where(Host.cluster_id == cluster_id).order_by(Host.name)).all()
    # per host and guest type: the VMs' memory and their maximum (a Xen HVM guest starts at its maximum)
    guest_type = Vm.spec["guest_type"].as_string().label("guest_type")
    load = s.execute(
        select(Vm.host_id, guest_type, func.coalesce(func.sum(Vm.memory_mib), 0),
               func.coalesce(func.sum(func.coalesce(Vm.spec["max_memory_mib"].as_integer(), Vm.memory_mib)), 0),
               func.count(Vm.id))
        .join(Host, Host.id == Vm.host_id)
        .where(Host.cluster_id == cluster_id, Vm.state.in_([st.value for st in RUNNING_STATES]))
        .group_by(Vm.host_id, guest_type)
    ).all()
    # the storage domains of the cluster's hosts as each saw them (no rows: a cluster without storage domains)
    storage: dict[str, dict[str, tuple[str, str, int | None]]] = {}
    for hid, domain_id, st, reason, free in s.execute(
            select(StorageDomainHost.host_id, StorageDomainHost.domain_id, StorageDomainHost.state,
                   StorageDomainHost.reason, StorageDomainHost.free_bytes)
            .join(Host, Host.id == StorageDomainHost.host_id).where(Host.cluster_id == cluster_id)):
        storage.setdefault(hid, {})[domain_id] = (st, reason or "", free)
    per_host: dict[str, tuple[list[tuple[str | None, int, int]], int]] = {}
    for hid, gt, mem, maximum, n in load:
        sums, count = per_host.get(hid, ([], 0))
        sums.append((gt, int(mem), int(maximum)))
        per_host[hid] = (sums, count + int(n))
    out = []
    for (host_id, name, state, flavor, accel, hypervisor, emulated, cpu_count, cpu_flags, memory_mib, reserved,
         bridges, url, token, libvirt_version, hypervisor_version) in hosts:
        sums, n = per_host.get(host_id, ([], 0))
        out.append(Candidate(
            id=host_id, name=name, state=state, flavor=flavor, accel=accel, hypervisor=hypervisor,
            emulated=bool(emulated), libvirt_version=libvirt_version, hypervisor_version=hypervisor_version,
            cpu_count=cpu_count, cpu_flags=list(cpu_flags or []), memory_mib=memory_mib,
            reserved_memory_mib=reserved, bridges=list(bridges or []), target=AgentTarget(url, token),
            committed_mib=_committed(flavor, accel, sums), running_vms=n, storage=storage.get(host_id, {})))
    return policy, out


class Scheduler:
    def __init__(self, plan: PlanFn, cache: PlanCache | None = None, *, ttl: float = 1.0) -> None:
        self.plan = plan
        self.cache = cache or PlanCache()
        self.ttl = ttl
        self._clusters: dict[str, tuple[float, str, dict[str, Candidate]]] = {}
        self._reading: dict[str, asyncio.Lock] = {}
        self._claims: dict[str, tuple[str, str, int]] = {}  # vm id -> (cluster id, host id, memory MiB)

    async def candidates(self, db: Database, cluster_id: str) -> tuple[str, list[Candidate]]:
        """``load_candidates``, read at most every ``ttl`` seconds, with this scheduler's claims counted in."""
        hit = self._clusters.get(cluster_id)
        if hit is None or hit[0] < time.monotonic():
            async with self._reading.setdefault(cluster_id, asyncio.Lock()):  # one read for a burst of starts
                hit = self._clusters.get(cluster_id)
                if hit is None or hit[0] < time.monotonic():
                    policy, cands = await db.run(lambda s: load_candidates(s, cluster_id))
                    by_id = {c.id: c for c in cands}
                    for claimed_cluster, host_id, memory in self._claims.values():
                        c = by_id.get(host_id) if claimed_cluster == cluster_id else None
                        if c is not None:  # placed, not yet running there as far as the database knows
                            c.committed_mib += memory
                            c.running_vms += 1
                    hit = self._clusters[cluster_id] = (time.monotonic() + self.ttl, policy, by_id)
        return hit[1], list(hit[2].values())

    def claim(self, cluster_id: str, vm_id: str, host_id: str, memory_mib: int) -> None:
        """A VM placed on a host: count it there until ``release`` (its start finished, the database shows it).
        ``memory_mib``: what it takes there at start (``Placement.memory_mib``)."""
        self._claims[vm_id] = (cluster_id, host_id, memory_mib)
        hit = self._clusters.get(cluster_id)
        c = hit[2].get(host_id) if hit else None
        if c is not None:
            c.committed_mib += memory_mib
            c.running_vms += 1

    def release(self, vm_id: str) -> None:
        self._claims.pop(vm_id, None)

    def forget(self, cluster_id: str | None = None) -> None:
        """Read the hosts again at the next placement (a host changed state, was added or removed)."""
        if cluster_id is None:
            self._clusters.clear()
        else:
            self._clusters.pop(cluster_id, None)

    async def _answer(self, group: list[Candidate], spec: dict[str, Any], key: PlanKey) -> PlanAnswer | str:
        """The plan's answer for one group of hosts with equal ``PlanHost``, or an error text when no agent
        answers."""
        cached = self.cache.get(key)
        if cached is not None:
            return cached
        last = "no agent answered"
        for c in group[:3]:
            try:
                plan = await self.plan(c.target, spec)
            except AgentError as exc:
                last = exc.message
                continue
            answer = PlanAnswer.of(plan)
            self.cache.put(key, answer)
            return answer
        return last

    async def place(self, spec: VmSpec, candidates: list[Candidate], *, flavor_policy: str = "any",
                    only_host: str | None = None, storage: tuple[StorageNeed, ...] = (),
                    networks: tuple[NetworkNeed, ...] = ()) -> Placement:
        """``storage``: the domains the VM's disks need (``corral.engine.vmvolumes.needs``); ``networks``: the
        logical networks its NICs name (``corral.engine.networks.needs``)."""
        rejected: dict[str, dict[str, Any]] = {}
        survivors: list[Candidate] = []
        needs = _Needs.of(spec, storage, networks)
        for c in candidates:
            if only_host is not None and c.id != only_host:
                continue
            reasons = _reasons(needs, c, flavor_policy)
            if reasons:
                rejected[c.id] = {"host": c.name, "reasons": reasons}
            else:
                survivors.append(c)
        spec_json = spec.model_dump(mode="json")
        digest = spec_hash(spec_json)
        groups: dict[PlanHost, list[Candidate]] = {}
        for c in survivors:
            groups.setdefault(c.plan_host, []).append(c)
        answers = await asyncio.gather(*(self._answer(g, spec_json, (facts, spec.guest_type.value, digest))
                                         for facts, g in groups.items()))
        fit: list[_Fit] = []
        for group, answer in zip(groups.values(), answers, strict=True):
            for c in group:
                reason = self._refusal(spec, c, answer)
                if isinstance(reason, str):
                    rejected[c.id] = {"host": c.name, "reasons": [reason]}
                else:
                    fit.append(reason)
        ranked = _rank(fit, TOP_SCORES)
        if not ranked:
            return Placement(None, None, rejected)
        best = ranked[0][1]
        return Placement(best.host.id, best.host.name, rejected, {f.host.name: s for s, f in ranked},
                         {f.host.name: f.translated for _, f in ranked}, best.memory_mib)

    @staticmethod
    def _refusal(spec: VmSpec, c: Candidate, answer: PlanAnswer | str) -> str | _Fit:
        """Why the plan's answer keeps the VM off host ``c``, or the host as a fit."""
        if isinstance(answer, str):
            return f"cannot get the flavor's plan: {answer}"
        if answer.refused:
            details = [f"{d.get('path')}: {d.get('detail')}" for d in answer.refused]
            return f"{c.flavor} flavor refuses {'; '.join(details)}"
        gt = answer.guest_type or spec.guest_type
        try:
            memory = memory_at_start_mib(get_flavor(c.flavor or "", accel=c.accel or "kvm"), gt, spec)
        except UnknownFlavor as exc:
            return str(exc)
        if memory > c.free_mib:
            why = f" ({gt.value} guests start at their max memory on {c.flavor})" if memory > spec.memory_mib else ""
            return f"not enough free memory: needs {memory} MiB{why}, {max(c.free_mib, 0)} MiB free"
        return _Fit(c, gt is spec.guest_type, answer.translated, memory)
