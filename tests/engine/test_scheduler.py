"""Scheduler: filters with every reason, plan grouping and caching, ranking, and the two-query load.

Every test goes through ``Scheduler.place`` (and ``Scheduler.candidates`` where the database matters): the
path production takes. Plans come from ``domain_plan``, the agent's own decisions made in process.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import select

from corral.domain.flavors import get_flavor
from corral.domain.resolve import RenderOptions, resolve
from corral.domain.spec import VmSpec, parse_spec
from corral.engine.agent_client import AgentTarget, AgentUnreachable
from corral.engine.db.models import Host, Vm
from corral.engine.db.session import Database
from corral.engine.scheduler import Candidate, Placement, PlanFn, Scheduler

Facts = tuple[str, str | None, int]  # flavor, accel, CPU count


def domain_plan(facts: Callable[[str], Facts]) -> PlanFn:
    """The agent's plan as ``VmManager.plan`` makes it (``resolve`` with the host's flavor and CPU count), in
    process: the real decisions without a libvirt connection per host. ``facts``: agent URL -> host facts."""
    async def plan(target: AgentTarget, spec: dict[str, Any]) -> dict[str, Any]:
        flavor, accel, cpus = facts(target.url)
        res = resolve(parse_spec(spec), get_flavor(flavor, accel=accel or "kvm"), None, RenderOptions(host_cpus=cpus))
        return {"flavor": flavor, "guest_type": res.guest_type.value, "ok": not res.refused,
                "decisions": [d.as_dict() for d in res.decisions]}
    return plan


def cand(name: str, **kw: Any) -> Candidate:
    base: dict[str, Any] = dict(id=name, name=name, state="up", flavor="kvm", accel="kvm", cpu_count=8,
                                cpu_flags=[], memory_mib=8192, reserved_memory_mib=256, bridges=["br0"],
                                target=AgentTarget(f"http://{name}"))
    base.update(kw)
    return Candidate(**base)


def place(spec: VmSpec, hosts: list[Candidate], **kw: Any) -> Placement:
    by_url = {c.target.url: c for c in hosts}
    plan = domain_plan(lambda url: (by_url[url].flavor or "", by_url[url].accel, by_url[url].cpu_count))
    return asyncio.run(Scheduler(plan).place(spec, hosts, **kw))


SPEC = parse_spec({"name": "v", "memory_mib": 1024, "vcpus": 2, "nics": [{"source": "br0"}]})


def test_filters_collect_every_reason() -> None:
    bad = cand("bad", state="maintenance", flavor="xen", cpu_count=1, memory_mib=1000, bridges=[])
    placement = place(SPEC, [bad, cand("ok")], flavor_policy="kvm")
    assert placement.host_name == "ok"
    reasons = placement.rejected["bad"]["reasons"]
    assert reasons[0] == "host is maintenance"
    assert "cluster allows kvm hosts, this host is xen" in reasons
    assert "not enough free memory: needs 1024 MiB, 744 MiB free" in reasons
    assert "needs 2 vCPUs, host has 1 CPUs" in reasons
    assert "missing bridge(s): br0" in reasons
    assert list(placement.rejected) == ["bad"]


def test_cpu_features_checked_only_when_known() -> None:
    spec = parse_spec({"name": "c", "memory_mib": 64, "cpu": {"mode": "custom", "model": "Haswell",
                                                              "features": [{"name": "avx2"}]}})
    placement = place(spec, [cand("unknown-flags"), cand("has", cpu_flags=["avx2", "sse"]),
                             cand("lacks", cpu_flags=["sse"])])
    assert placement.rejected == {"lacks": {"host": "lacks", "reasons": ["CPU lacks required features: avx2"]}}
    assert set(placement.scores) == {"unknown-flags", "has"}


def test_load_weighs_free_memory_then_vm_count() -> None:
    a = cand("a", committed_mib=4000, running_vms=2)
    b = cand("b", committed_mib=0, running_vms=2)
    c = cand("c", committed_mib=0, running_vms=0)
    placement = place(SPEC, [a, b, c])
    assert list(placement.scores) == ["c", "b", "a"] and placement.host_name == "c"
    assert placement.scores["c"] == 2.0 and placement.translated == {"a": 0, "b": 0, "c": 0}


def test_place_groups_plans_by_host_facts_and_caches() -> None:
    calls: list[str] = []

    async def plan(target: AgentTarget, spec: dict[str, Any]) -> dict[str, Any]:
        calls.append(target.url)
        if "xen" in target.url:
            return {"guest_type": "hvm",
                    "decisions": [{"path": "disks.0", "outcome": "refused", "detail": "no floppy on Xen"}]}
        return {"guest_type": "hvm", "decisions": [{"path": "nics.0", "outcome": "native", "detail": ""}]}

    hosts = [cand(f"kvm{i}", committed_mib=i * 100) for i in range(5)]
    hosts += [cand(f"xen{i}", flavor="xen", accel=None) for i in range(5)]
    sched = Scheduler(plan)
    placement = asyncio.run(sched.place(SPEC, hosts))
    assert placement.host_name == "kvm0"
    assert len(calls) == 2  # one agent per group of equal host facts, not one per host
    assert all("flavor refuses disks.0: no floppy on Xen" in placement.rejected[f"xen{i}"]["reasons"][0]
               for i in range(5))
    asyncio.run(sched.place(SPEC, hosts))
    assert len(calls) == 2  # cached per (host facts, guest type, spec hash)
    only = asyncio.run(sched.place(SPEC, hosts, only_host="kvm3"))
    assert only.host_name == "kvm3" and only.rejected == {}


def test_place_reports_unreachable_plan() -> None:
    async def plan(target: AgentTarget, spec: dict[str, Any]) -> dict[str, Any]:
        raise AgentUnreachable("connection refused")

    placement = asyncio.run(Scheduler(plan).place(SPEC, [cand("a")]))
    assert placement.host_id is None
    assert "connection refused" in placement.rejected["a"]["reasons"][0]
    assert "a: cannot get the flavor's plan" in placement.summary()


def test_fewer_translations_outweigh_free_memory() -> None:
    """Issue 20, 9: a PV VM went to the KVM host (more free memory), translated to HVM."""
    xen = cand("xen", flavor="xen", accel=None, committed_mib=6000)
    kvm = cand("kvm")
    pv = parse_spec({"name": "pv", "memory_mib": 512, "guest_type": "pv", "kernel": "/boot/vmlinuz",
                     "nics": [{"source": "br0"}]})
    placement = place(pv, [kvm, xen])
    assert placement.host_name == "xen"
    assert placement.scores["kvm"] > placement.scores["xen"]  # the load alone would have chosen kvm
    # an HVM VM runs with fewer translations on KVM (virtio natively, serial console logged by libvirt)
    hvm = parse_spec({"name": "hvm", "memory_mib": 512, "nics": [{"source": "br0"}]})
    busy_kvm = cand("kvm", committed_mib=6000)
    placement = place(hvm, [busy_kvm, cand("xen", flavor="xen", accel=None)])
    assert placement.host_name == "kvm" and placement.translated["kvm"] < placement.translated["xen"]


def test_vm_can_require_a_hypervisor() -> None:
    hosts = [cand("kvm"), cand("xen", flavor="xen", accel=None, committed_mib=6000)]
    spec = parse_spec({"name": "x", "memory_mib": 512, "hypervisor": "xen", "nics": [{"source": "br0"}]})
    placement = place(spec, hosts)
    assert placement.host_name == "xen"
    assert placement.rejected["kvm"]["reasons"] == ["the VM requires a xen host, this host is kvm"]
    none = place(spec, hosts[:1])
    assert none.host_id is None and "kvm: the VM requires a xen host, this host is kvm" in none.summary()
    assert parse_spec({"name": "y", "memory_mib": 64}).hypervisor.value == "any"


def test_xen_hvm_below_max_is_counted_at_max() -> None:
    """Issue 15: a Xen HVM guest below its max starts at max; counting the lower figure overcommits Xen hosts."""
    spec = parse_spec({"name": "m", "memory_mib": 512, "max_memory_mib": 2048, "nics": [{"source": "br0"}]})
    free_1024 = {"memory_mib": 1024 + 256}
    placement = place(spec, [cand("xen", flavor="xen", accel=None, **free_1024), cand("kvm", **free_1024)])
    assert placement.host_name == "kvm" and placement.memory_mib == 512
    assert placement.rejected["xen"]["reasons"] == [
        "not enough free memory: needs 2048 MiB (hvm guests start at their max memory on xen), 1024 MiB free"]
    roomy = place(spec, [cand("xen", flavor="xen", accel=None, memory_mib=2048 + 256)])
    assert roomy.host_name == "xen" and roomy.memory_mib == 2048
    pv = parse_spec({"name": "p", "memory_mib": 512, "max_memory_mib": 2048, "guest_type": "pv",
                     "kernel": "/boot/vmlinuz", "nics": [{"source": "br0"}]})
    assert place(pv, [cand("xen", flavor="xen", accel=None, **free_1024)]).memory_mib == 512  # PV starts low


def _seed_hosts(db: Database, hosts: list[dict[str, Any]]) -> str:
    from corral.engine.api.clusters import default_cluster

    def seed(s: Any) -> str:
        c = default_cluster(s)
        for h in hosts:
            s.add(Host(**{"id": h["name"], "cluster_id": c.id, "agent_url": f"http://{h['name']}", "state": "up",
                          "cpu_flags": [], "bridges": [], "reserved_memory_mib": 0,
                          "info": {"libvirt_version": "9.0.0", "hypervisor_version": "7.2.0"}, **h}))
        return str(c.id)
    return db.call(seed)


def db_plan(db: Database) -> PlanFn:
    return domain_plan(lambda url: db.call(lambda s: s.execute(
        select(Host.flavor, Host.accel, Host.cpu_count).where(Host.agent_url == url)).one()._tuple()))


def test_plan_cache_key_holds_the_host_cpu_count(db_url: str) -> None:
    """Two hosts alike but for their CPU count: the small one's plan refuses max_vcpus above its CPUs, and a
    plan the big host answered must not stand for it (the agent would refuse the start)."""
    db = Database(db_url)
    db.migrate()
    try:
        cluster = _seed_hosts(db, [
            {"name": "big", "flavor": "kvm", "accel": "kvm", "hypervisor": "kvm", "cpu_count": 16,
             "memory_mib": 4096},
            {"name": "small", "flavor": "kvm", "accel": "kvm", "hypervisor": "kvm", "cpu_count": 4,
             "memory_mib": 8192}])
        sched = Scheduler(db_plan(db))
        spec = parse_spec({"name": "wide", "memory_mib": 512, "vcpus": 2, "max_vcpus": 8})
        _, cands = asyncio.run(sched.candidates(db, cluster))
        placement = asyncio.run(sched.place(spec, cands))
        assert placement.host_name == "big"  # small has more free memory, but cannot take 8 vCPUs
        assert "8 vCPUs asked; the host has 4 CPUs" in placement.rejected["small"]["reasons"][0]
        # the big host's plan is cached now; a placement on the small host alone still hears its own plan
        only = asyncio.run(sched.place(spec, cands, only_host="small"))
        assert only.host_id is None and "the host has 4 CPUs" in only.summary()
    finally:
        db.dispose()


@pytest.mark.parametrize("n_hosts", [50])
def test_load_candidates_sums_running_vms(db_url: str, n_hosts: int) -> None:
    db = Database(db_url)
    db.migrate()
    try:
        cluster_id = _seed_hosts(db, [{"name": f"h{i:03d}", "memory_mib": 4096, "flavor": "kvm" if i else "xen"}
                                      for i in range(n_hosts)])

        def seed(s: Any) -> None:
            for j in range(30):
                spec = {"guest_type": "hvm", "max_memory_mib": 300 if j < 6 else None}
                s.add(Vm(id=f"v{j:03d}", name=f"v{j:03d}", cluster_id=cluster_id, memory_mib=100, vcpus=1,
                         spec=spec, state="up" if j % 3 else "down", host_id=f"h{j % 2:03d}" if j % 3 else None))
            # an external VM has no spec: its memory counts as reported
            s.add(Vm(id="ext", name="ext", cluster_id=cluster_id, memory_mib=50, vcpus=1, external=True,
                     state="up", host_id="h000"))
        db.call(seed)
        sched = Scheduler(db_plan(db))
        statements: list[str] = []
        from sqlalchemy import event

        event.listen(db.engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
        policy, cands = asyncio.run(sched.candidates(db, cluster_id))
        assert policy == "any" and len(cands) == n_hosts
        assert len(statements) == 4  # policy, hosts, one GROUP BY, storage rows: no query per host
        by = {c.name: c for c in cands}
        # h000 (Xen): 10 running HVM VMs of 100 MiB, two of them (v002, v004) with max 300: they start at max
        assert by["h000"].running_vms == 11 and by["h000"].committed_mib == 8 * 100 + 2 * 300 + 50
        # h001 (KVM): v001 and v005 have max 300 too, but KVM starts a guest at its memory
        assert by["h001"].running_vms == 10 and by["h001"].committed_mib == 1000
        assert by["h002"].running_vms == 0 and by["h002"].plan_host.cpu_count == 0
    finally:
        db.dispose()
