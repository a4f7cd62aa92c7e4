"""Scheduler: filters with every reason, plan grouping and caching, weights, and the two-query load."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from corral.domain.spec import parse_spec
from corral.engine.agent_client import AgentTarget, AgentUnreachable
from corral.engine.db.models import Host, Vm
from corral.engine.db.session import Database
from corral.engine.scheduler import Candidate, Scheduler, load_candidates, static_reasons, weigh


def cand(name: str, **kw: Any) -> Candidate:
    base: dict[str, Any] = dict(id=name, name=name, state="up", flavor="kvm", cpu_count=8, cpu_flags=[],
                                memory_mib=8192, reserved_memory_mib=256, bridges=["br0"], signature="kvm",
                                target=AgentTarget(f"http://{name}")
                                )
    base.update(kw)
    return Candidate(**base)


SPEC = parse_spec({"name": "v", "memory_mib": 1024, "vcpus": 2, "nics": [{"source": "br0"}]})


def test_static_filters_collect_every_reason() -> None:
    h = cand("h", state="maintenance", flavor="xen", cpu_count=1, memory_mib=1000, bridges=[])
    reasons = static_reasons(SPEC, h, "kvm")
    assert reasons[0] == "host is maintenance"
    assert any("cluster allows kvm" in r for r in reasons)
    assert any("not enough free memory" in r for r in reasons)
    assert any("needs 2 vCPUs" in r for r in reasons)
    assert "missing bridge(s): br0" in reasons
    assert static_reasons(SPEC, cand("ok")) == []


def test_cpu_features_checked_only_when_known() -> None:
    spec = parse_spec({"name": "c", "memory_mib": 64, "cpu": {"mode": "custom", "model": "Haswell",
                                                              "features": [{"name": "avx2"}]}})
    assert static_reasons(spec, cand("unknown-flags")) == []
    assert static_reasons(spec, cand("has", cpu_flags=["avx2", "sse"])) == []
    assert static_reasons(spec, cand("lacks", cpu_flags=["sse"])) == ["CPU lacks required features: avx2"]


def test_weights_free_memory_and_vm_count() -> None:
    a = cand("a", committed_mib=4000, running_vms=2)
    b = cand("b", committed_mib=0, running_vms=2)
    c = cand("c", committed_mib=0, running_vms=0)
    assert [x.name for _, x in weigh([a, b, c])] == ["c", "b", "a"]
    scores = dict((x.name, sc) for sc, x in weigh([a, b, c]))
    assert scores["c"] == 2.0


def test_place_groups_plans_by_signature_and_caches() -> None:
    calls: list[str] = []

    async def plan(target: AgentTarget, spec: dict[str, Any]) -> dict[str, Any]:
        calls.append(target.url)
        if "xen" in target.url:
            return {"decisions": [{"path": "disks.0", "outcome": "refused", "detail": "no floppy on Xen"}]}
        return {"decisions": [{"path": "nics.0", "outcome": "native", "detail": ""}]}

    hosts = [cand(f"kvm{i}", committed_mib=i * 100) for i in range(5)]
    hosts += [cand(f"xen{i}", flavor="xen", signature="xen") for i in range(5)]
    sched = Scheduler(plan)
    placement = asyncio.run(sched.place(SPEC, hosts))
    assert placement.host_name == "kvm0"
    assert len(calls) == 2  # one agent per signature, not one per host
    assert all("flavor refuses disks.0: no floppy on Xen" in placement.rejected[f"xen{i}"]["reasons"][0]
               for i in range(5))
    asyncio.run(sched.place(SPEC, hosts))
    assert len(calls) == 2  # cached per (signature, spec hash)
    only = asyncio.run(sched.place(SPEC, hosts, only_host="kvm3"))
    assert only.host_name == "kvm3" and only.rejected == {}


def test_place_reports_unreachable_plan() -> None:
    async def plan(target: AgentTarget, spec: dict[str, Any]) -> dict[str, Any]:
        raise AgentUnreachable("connection refused")

    placement = asyncio.run(Scheduler(plan).place(SPEC, [cand("a")]))
    assert placement.host_id is None
    assert "connection refused" in placement.rejected["a"]["reasons"][0]
    assert "a: cannot get the flavor's plan" in placement.summary()


@pytest.mark.parametrize("n_hosts", [50])
def test_load_candidates_sums_running_vms(db_url: str, n_hosts: int) -> None:
    from corral.engine.api.clusters import default_cluster

    db = Database(db_url)
    db.migrate()
    try:
        def seed(s: Any) -> str:
            c = default_cluster(s)
            for i in range(n_hosts):
                s.add(Host(id=f"h{i:03d}", name=f"h{i:03d}", cluster_id=c.id, agent_url=f"http://h{i}",
                           state="up", memory_mib=4096, cpu_flags=[], bridges=[], info={}))
            s.flush()
            for j in range(30):
                s.add(Vm(id=f"v{j:03d}", name=f"v{j:03d}", cluster_id=c.id, memory_mib=100, vcpus=1,
                         state="up" if j % 3 else "down", host_id=f"h{j % 2:03d}" if j % 3 else None))
            return c.id
        cluster_id = db.call(seed)
        statements: list[str] = []
        from sqlalchemy import event

        event.listen(db.engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
        policy, cands = db.call(lambda s: load_candidates(s, cluster_id))
        assert policy == "any" and len(cands) == n_hosts
        assert len(statements) == 3  # policy, hosts, one GROUP BY: no query per host
        by = {c.name: c for c in cands}
        assert by["h000"].running_vms == 10 and by["h000"].committed_mib == 1000
        assert by["h001"].running_vms == 10 and by["h002"].running_vms == 0
    finally:
        db.dispose()
