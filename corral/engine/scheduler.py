"""Placement: which host of the VM's cluster runs it, and why every other host does not.

Filters first, cheapest first, collecting every reason a host fails (an operator wants all of them):
host up, cluster flavor policy, free memory (host memory minus reserve minus the memory of the VMs that
occupy it), vCPUs, CPU compatibility (required features; skipped when the host reports no flags),
bridges present. The hosts that survive are asked whether their flavor can run the spec — the agent's
plan with no ``refused`` decision. Plans depend on the flavor and the host's libvirt/hypervisor, not on the
host itself, so hosts are grouped by that signature and one agent per group answers; answers are cached
per (signature, spec hash). Then weights: most free memory first, fewest running VMs second.

The database is read with two queries whatever the number of hosts: the cluster's hosts (only the columns
placement needs), and one GROUP BY for the memory and VM count they carry. ``Scheduler.candidates`` reads
them at most every ``ttl`` seconds per cluster and counts in the placements it made since (``claim``, until
the start's task ends: ``release``), so a burst of starts costs one read, not one per start. The decision
recorded on the VM keeps the reasons of every rejected host and the scores of the best ``TOP_SCORES``.
"""

from __future__ import annotations

import asyncio
import hashlib
import heapq
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from corral.domain.spec import CpuMode, FeaturePolicy, NicSource, VmSpec
from corral.engine.agent_client import AgentError, AgentTarget
from corral.engine.db.models import RUNNING_STATES, Cluster, Host, HostState, Vm, utcnow
from corral.engine.db.session import Database

TOP_SCORES = 20


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
    signature: str
    target: AgentTarget
    committed_mib: int = 0
    running_vms: int = 0

    @property
    def free_mib(self) -> int:
        return self.memory_mib - self.reserved_memory_mib - self.committed_mib


@dataclass
class Placement:
    """The decision, as recorded on the VM."""

    host_id: str | None
    host_name: str | None
    rejected: dict[str, dict[str, Any]] = field(default_factory=dict)
    scores: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"time": utcnow().isoformat(), "host_id": self.host_id, "host": self.host_name,
                "rejected": [{"host_id": k, **v} for k, v in self.rejected.items()],
                "scores": self.scores}

    def summary(self) -> str:
        return "; ".join(f"{v['host']}: {', '.join(v['reasons'])}" for v in self.rejected.values())


def spec_hash(spec: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def host_signature(h: Host) -> str:
    """Hosts with equal signatures give equal plans for equal specs."""
    info = h.info or {}
    return "|".join(str(x) for x in (h.flavor, h.accel, info.get("hypervisor"), info.get("libvirt_version"),
                                     info.get("hypervisor_version"), info.get("emulated")))


@dataclass(frozen=True)
class _Needs:
    """What a spec asks of every host, worked out once per placement rather than once per host."""

    memory_mib: int
    vcpus: int
    features: tuple[str, ...]
    bridges: frozenset[str]

    @classmethod
    def of(cls, spec: VmSpec) -> _Needs:
        features: tuple[str, ...] = ()
        if spec.cpu is not None and spec.cpu.mode is CpuMode.CUSTOM:
            features = tuple(f.name for f in spec.cpu.features if f.policy is FeaturePolicy.REQUIRE)
        return cls(spec.memory_mib, spec.vcpus, features,
                   frozenset(n.source for n in spec.nics if n.source_type is NicSource.BRIDGE))


def static_reasons(spec: VmSpec, c: Candidate, flavor_policy: str = "any") -> list[str]:
    """Every filter except the flavor's plan; an empty list means the host passes them."""
    return _reasons(_Needs.of(spec), c, flavor_policy)


def _reasons(needs: _Needs, c: Candidate, flavor_policy: str) -> list[str]:
    reasons: list[str] = []
    if c.state != HostState.UP.value:
        reasons.append(f"host is {c.state}")
    if flavor_policy not in ("any", "") and c.flavor != flavor_policy:
        reasons.append(f"cluster allows {flavor_policy} hosts, this host is {c.flavor}")
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
    return reasons


def weigh(survivors: list[Candidate]) -> list[tuple[float, Candidate]]:
    """Score each host in [0, 2]: free memory share plus emptiness share; best first, ties by name."""
    if not survivors:
        return []
    max_free = max(c.free_mib for c in survivors) or 1
    max_vms = max(c.running_vms for c in survivors) or 1
    scored = [(round(c.free_mib / max_free + (1 - c.running_vms / max_vms), 6), c) for c in survivors]
    scored.sort(key=lambda sc: (-sc[0], sc[1].name))
    return scored


def _best(survivors: list[Candidate], k: int) -> list[tuple[float, Candidate]]:
    """The first ``k`` of ``weigh``, without sorting every host."""
    if not survivors:
        return []
    max_free = max(c.memory_mib - c.reserved_memory_mib - c.committed_mib for c in survivors) or 1
    max_vms = max(c.running_vms for c in survivors) or 1
    scored = [(round((c.memory_mib - c.reserved_memory_mib - c.committed_mib) / max_free
                     + (1 - c.running_vms / max_vms), 6), c) for c in survivors]
    return heapq.nsmallest(k, scored, key=lambda sc: (-sc[0], sc[1].name))


PlanFn = Callable[[AgentTarget, dict[str, Any]], Awaitable[dict[str, Any]]]


class PlanCache:
    """(host signature, spec hash) → refused decisions; bounded, entries expire."""

    def __init__(self, ttl: float = 600.0, size: int = 10000) -> None:
        self.ttl, self.size = ttl, size
        self._data: dict[tuple[str, str], tuple[float, list[dict[str, Any]]]] = {}

    def get(self, key: tuple[str, str]) -> list[dict[str, Any]] | None:
        hit = self._data.get(key)
        if hit is None or hit[0] < time.monotonic():
            return None
        return hit[1]

    def put(self, key: tuple[str, str], refused: list[dict[str, Any]]) -> None:
        if len(self._data) >= self.size:
            self._data.clear()
        self._data[key] = (time.monotonic() + self.ttl, refused)


def load_candidates(s: Session, cluster_id: str) -> tuple[str, list[Candidate]]:
    """The cluster's flavor policy and its hosts with their load: two queries."""
    policy = s.scalar(select(Cluster.flavor_policy).where(Cluster.id == cluster_id)) or "any"
    # columns, not Host objects: the whole capability document (``info``) is not decoded for every host
    info = Host.info
    hosts = s.connection().execute(select(
        Host.id, Host.name, Host.state, Host.flavor, Host.accel, Host.cpu_count, Host.cpu_flags, Host.memory_mib,
        Host.reserved_memory_mib, Host.bridges, Host.agent_url, Host.agent_token, info["hypervisor"].as_string(),
        info["libvirt_version"].as_string(), info["hypervisor_version"].as_string(), info["emulated"].as_string(),
    ).where(Host.cluster_id == cluster_id).order_by(Host.name)).all()
    load = s.execute(
        select(Vm.host_id, func.coalesce(func.sum(Vm.memory_mib), 0), func.count(Vm.id))
        .join(Host, Host.id == Vm.host_id)
        .where(Host.cluster_id == cluster_id, Vm.state.in_([st.value for st in RUNNING_STATES]))
        .group_by(Vm.host_id)
    ).all()
    per_host = {hid: (int(mem), int(n)) for hid, mem, n in load}
    out = []
    for (host_id, name, state, flavor, accel, cpu_count, cpu_flags, memory_mib, reserved, bridges, url, token,
         *signed) in hosts:
        mem, n = per_host.get(host_id, (0, 0))
        out.append(Candidate(
            id=host_id, name=name, state=state, flavor=flavor, cpu_count=cpu_count,
            cpu_flags=list(cpu_flags or []), memory_mib=memory_mib, reserved_memory_mib=reserved,
            bridges=list(bridges or []), signature="|".join(str(x) for x in (flavor, accel, *signed)),
            target=AgentTarget(url, token), committed_mib=mem, running_vms=n))
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
        """A VM placed on a host: count it there until ``release`` (its start finished, the database shows it)."""
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

    async def _refused(self, group: list[Candidate], spec: dict[str, Any], key: str) -> list[dict[str, Any]] | str:
        """The refused decisions for one signature group, or an error text when no agent answers."""
        cached = self.cache.get((group[0].signature, key))
        if cached is not None:
            return cached
        last = "no agent answered"
        for c in group[:3]:
            try:
                plan = await self.plan(c.target, spec)
            except AgentError as exc:
                last = exc.message
                continue
            refused = [d for d in plan.get("decisions", []) if d.get("outcome") == "refused"]
            self.cache.put((c.signature, key), refused)
            return refused
        return last

    async def place(self, spec: VmSpec, candidates: list[Candidate], *, flavor_policy: str = "any",
                    only_host: str | None = None) -> Placement:
        rejected: dict[str, dict[str, Any]] = {}
        survivors: list[Candidate] = []
        needs = _Needs.of(spec)
        up, any_flavor = HostState.UP.value, flavor_policy in ("any", "")
        for c in candidates:
            if only_host is not None and c.id != only_host:
                continue
            # the usual case first, without building any reason (thousands of hosts per placement)
            if (c.state == up and (any_flavor or c.flavor == flavor_policy) and not needs.features
                    and needs.memory_mib <= c.memory_mib - c.reserved_memory_mib - c.committed_mib
                    and not (c.cpu_count and needs.vcpus > c.cpu_count)
                    and all(b in c.bridges for b in needs.bridges)):
                survivors.append(c)
                continue
            reasons = _reasons(needs, c, flavor_policy)
            if reasons:
                rejected[c.id] = {"host": c.name, "reasons": reasons}
            else:
                survivors.append(c)
        spec_json = spec.model_dump(mode="json")
        key = spec_hash(spec_json)
        groups: dict[str, list[Candidate]] = {}
        for c in survivors:
            groups.setdefault(c.signature, []).append(c)
        answers = await asyncio.gather(*(self._refused(g, spec_json, key) for g in groups.values()))
        fit: list[Candidate] = []
        for group, answer in zip(groups.values(), answers, strict=True):
            for c in group:
                if isinstance(answer, str):
                    rejected[c.id] = {"host": c.name, "reasons": [f"cannot get the flavor's plan: {answer}"]}
                elif answer:
                    details = [f"{d.get('path')}: {d.get('detail')}" for d in answer]
                    rejected[c.id] = {"host": c.name, "reasons": [f"{c.flavor} flavor refuses {'; '.join(details)}"]}
                else:
                    fit.append(c)
        scored = _best(fit, TOP_SCORES)
        if not scored:
            return Placement(None, None, rejected)
        best = scored[0][1]
        return Placement(best.id, best.name, rejected, {c.name: s for s, c in scored})
