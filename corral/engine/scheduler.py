"""Placement: which host of the VM's cluster runs it, and why every other host does not.

Filters first, cheapest first, collecting every reason a host fails (an operator wants all of them):
host up, cluster flavor policy, free memory (host memory minus reserve minus the memory of the VMs that
occupy it), vCPUs, CPU compatibility (required features; skipped when the host reports no flags),
bridges present. The hosts that survive are asked whether their flavor can run the spec — the agent's
plan with no ``refused`` decision. Plans depend on the flavor and the host's libvirt/hypervisor, not on the
host itself, so hosts are grouped by that signature and one agent per group answers; answers are cached
per (signature, spec hash). Then weights: most free memory first, fewest running VMs second.

The database is read with two queries whatever the number of hosts: the cluster's hosts, and one
GROUP BY for the memory and VM count they carry.
"""

from __future__ import annotations

import asyncio
import hashlib
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


def static_reasons(spec: VmSpec, c: Candidate, flavor_policy: str = "any") -> list[str]:
    """Every filter except the flavor's plan; an empty list means the host passes them."""
    reasons: list[str] = []
    if c.state != HostState.UP.value:
        reasons.append(f"host is {c.state}")
    if flavor_policy not in ("any", "") and c.flavor != flavor_policy:
        reasons.append(f"cluster allows {flavor_policy} hosts, this host is {c.flavor}")
    if spec.memory_mib > c.free_mib:
        reasons.append(f"not enough free memory: needs {spec.memory_mib} MiB, {max(c.free_mib, 0)} MiB free")
    if c.cpu_count and spec.vcpus > c.cpu_count:
        reasons.append(f"needs {spec.vcpus} vCPUs, host has {c.cpu_count} CPUs")
    if spec.cpu is not None and spec.cpu.mode is CpuMode.CUSTOM and c.cpu_flags:
        flags = set(c.cpu_flags)
        missing = [f.name for f in spec.cpu.features if f.policy is FeaturePolicy.REQUIRE and f.name not in flags]
        if missing:
            reasons.append(f"CPU lacks required features: {', '.join(missing)}")
    bridges = set(c.bridges)
    wanted = sorted({n.source for n in spec.nics if n.source_type is NicSource.BRIDGE} - bridges)
    if wanted:
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
    hosts = s.scalars(select(Host).where(Host.cluster_id == cluster_id).order_by(Host.name)).all()
    load = s.execute(
        select(Vm.host_id, func.coalesce(func.sum(Vm.memory_mib), 0), func.count(Vm.id))
        .join(Host, Host.id == Vm.host_id)
        .where(Host.cluster_id == cluster_id, Vm.state.in_([st.value for st in RUNNING_STATES]))
        .group_by(Vm.host_id)
    ).all()
    per_host = {hid: (int(mem), int(n)) for hid, mem, n in load}
    out = []
    for h in hosts:
        mem, n = per_host.get(h.id, (0, 0))
        out.append(Candidate(
            id=h.id, name=h.name, state=h.state, flavor=h.flavor, cpu_count=h.cpu_count,
            cpu_flags=list(h.cpu_flags or []), memory_mib=h.memory_mib, reserved_memory_mib=h.reserved_memory_mib,
            bridges=list(h.bridges or []), signature=host_signature(h),
            target=AgentTarget(h.agent_url, h.agent_token), committed_mib=mem, running_vms=n))
    return policy, out


class Scheduler:
    def __init__(self, plan: PlanFn, cache: PlanCache | None = None) -> None:
        self.plan = plan
        self.cache = cache or PlanCache()

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
        for c in candidates:
            if only_host is not None and c.id != only_host:
                continue
            reasons = static_reasons(spec, c, flavor_policy)
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
        scored = weigh(fit)
        if not scored:
            return Placement(None, None, rejected)
        best = scored[0][1]
        return Placement(best.id, best.name, rejected, {c.name: s for s, c in scored})
