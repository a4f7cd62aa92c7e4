"""NIC MACs: chosen by the engine from its own range, kept when a VM moves between KVM and Xen hosts, and never
shared by two VMs (create, PUT, hot-plug, import; two transactions at once), on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, text
from sqlalchemy.orm import Session

from corral.domain.importer import import_domain
from corral.domain.resolve import mac_for
from corral.domain.spec import parse_spec
from corral.engine import macs
from corral.engine.api.clusters import default_cluster
from corral.engine.db.models import Vm, VmMac
from corral.engine.db.session import Database
from corral.engine.errors import Conflict
from tests.engine.agents import AgentProc
from tests.engine.conftest import Api
from tests.engine.test_with_agents import add_hosts

SHARED_XML = Path(__file__).resolve().parents[3] / "shared" / "libvirt-xen-xml"


def vm_body(name: str, *macs_: str | None) -> dict[str, Any]:
    return {"name": name, "memory_mib": 128, "vcpus": 1,
            "nics": [{"source": "br0", **({"mac": m} if m else {})} for m in macs_]}


def nic_macs(vm: dict[str, Any]) -> list[str]:
    return [n["mac"] for n in vm["spec"]["nics"]]


def test_engine_gives_a_mac_from_its_range_and_keeps_it(api: Api) -> None:
    vm = api.post("/vms", vm_body("pooled", None, None), status=201)
    first, second = nic_macs(vm)
    assert first.startswith(macs.DEFAULT_PREFIX + ":") and second.startswith(macs.DEFAULT_PREFIX + ":")
    assert first != second
    assert api.get(f"/vms/{vm['id']}")["spec"]["nics"][0]["mac"] == first
    # a PUT that leaves a NIC's MAC out keeps the MAC that NIC has; a new NIC gets one from the pool
    spec = vm["spec"]
    nics = [{k: v for k, v in n.items() if k != "mac"} for n in spec["nics"]] + [{"source": "br0"}]
    put = api.call("PUT", f"/vms/{vm['id']}", 200, json={**spec, "nics": nics})
    assert nic_macs(put)[:2] == [first, second] and nic_macs(put)[2].startswith(macs.DEFAULT_PREFIX)  # type: ignore[index]


def test_duplicate_macs_are_refused_naming_the_other_vm(api: Api) -> None:
    a = api.post("/vms", vm_body("alpha", "52:54:00:AA:BB:01"), status=201)
    assert nic_macs(a) == ["52:54:00:aa:bb:01"]
    # create: the same MAC, in another case, on the second NIC
    err = api.post("/vms", vm_body("beta", "52:54:00:aa:bb:02", "52:54:00:Aa:bB:01"), status=409)
    assert (err["code"], err["field"], err["mac"]) == ("mac_in_use", "nics.1.mac", "52:54:00:aa:bb:01")
    assert err["used_by"]["vm"] == "alpha" and err["used_by"]["vm_id"] == a["id"]
    assert "alpha" in err["message"]
    assert api.get("/vms", name="beta")["items"] == []  # nothing of it stored
    b = api.post("/vms", vm_body("beta", "52:54:00:aa:bb:02"), status=201)  # 02 was not kept by the refusal
    # PUT: taking alpha's MAC is refused; alpha giving it up frees it
    err = api.call("PUT", f"/vms/{b['id']}", 409, json={**b["spec"], "nics": [
        {**b["spec"]["nics"][0], "mac": "52:54:00:AA:BB:01"}]})
    assert (err["field"], err["used_by"]["vm"]) == ("nics.0.mac", "alpha")  # type: ignore[index]
    api.call("PUT", f"/vms/{a['id']}", 200, json={**a["spec"], "nics": [
        {**a["spec"]["nics"][0], "mac": "52:54:00:aa:bb:03"}]})
    api.call("PUT", f"/vms/{b['id']}", 200, json={**b["spec"], "nics": [
        {**b["spec"]["nics"][0], "mac": "52:54:00:aa:bb:01"}]})
    # a deleted VM's MACs are free again
    assert api.post("/vms", vm_body("gamma", "52:54:00:aa:bb:03"), status=409)["used_by"]["vm"] == "alpha"
    api.call("DELETE", f"/vms/{a['id']}", 204)
    api.post("/vms", vm_body("gamma", "52:54:00:aa:bb:03"), status=201)


def test_two_imported_domains_with_one_mac(api: Api) -> None:
    """Issue 20: two of libvirt's Xen test domains share 00:16:3e:66:92:9c; imported and created, the second is
    refused by name (the operator renamed it and gave it its own UUID, as two guests would have)."""
    hpet = import_domain((SHARED_XML / "xlconfigdata__test-fullvirt-hpet-timer.xml").read_bytes()).spec
    qed = import_domain((SHARED_XML / "xlconfigdata__test-disk-qed.xml").read_bytes()).spec
    assert hpet.nics[0].mac == qed.nics[0].mac == "00:16:3e:66:92:9c"
    first = api.post("/vms", hpet.model_dump(mode="json"), status=201)
    second = {**qed.model_dump(mode="json"), "name": "XenGuest2-qed", "id": str(uuid.uuid4())}
    err = api.post("/vms", second, status=409)
    assert (err["field"], err["used_by"]["vm"], err["used_by"]["vm_id"]) == ("nics.0.mac", "XenGuest2", first["id"])


def test_two_transactions_cannot_both_take_one_mac(db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two VMs take the same MAC at once: each is held after its check found the MAC free until the other has
    checked too, so both go on to insert it. One commits; the other's insert fails on the table's primary key,
    and its unit of work, run once more, answers 409 naming the winner."""
    db = Database(db_url)
    db.migrate()

    def new_vm(s: Session, name: str) -> str:
        vm = Vm(id=str(uuid.uuid4()), name=name, cluster_id=default_cluster(s).id, spec={}, state="down")
        s.add(vm)
        return vm.id

    ids = {name: db.call(lambda s, n=name: new_vm(s, n)) for name in ("one", "two")}  # type: ignore[misc]
    checked = threading.Barrier(2, timeout=20)
    calls: list[str] = []
    real_owners = macs.owners

    def owners_then_wait(s: Session, wanted: Any, but: str) -> Any:
        found = real_owners(s, wanted, but)
        calls.append(but)
        if len(calls) <= 2:  # the first check of each: wait for the other's
            assert found == {}
            checked.wait()
        return found

    monkeypatch.setattr(macs, "owners", owners_then_wait)
    results: dict[str, Any] = {}

    def take(name: str) -> None:
        spec = parse_spec(vm_body(name, "52:54:00:12:34:56") | {"id": ids[name]})
        try:
            results[name] = macs.call(db, lambda s: macs.hold(s, ids[name], spec))
        except BaseException as exc:
            results[name] = exc

    threads = [threading.Thread(target=take, args=(n,)) for n in ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    refused = [n for n, r in results.items() if isinstance(r, Conflict)]
    assert len(refused) == 1, results
    winner = "one" if refused == ["two"] else "two"
    err = results[refused[0]]
    assert (err.field, err.extra["used_by"]["vm"], err.extra["used_by"]["vm_id"]) == ("nics.0.mac", winner,
                                                                                       ids[winner])
    assert len(calls) == 3  # the loser checked once more
    rows = db.call(lambda s: s.execute(select(VmMac.mac, VmMac.vm_id)).all())
    assert [tuple(r) for r in rows] == [("52:54:00:12:34:56", ids[winner])]
    db.dispose()


def test_mac_prefix_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    assert macs.check_prefix(" 02:AB ") == "02:ab"
    for bad in ("01:00:5e", "56:6f:c0:00:00:00", "zz", ""):
        with pytest.raises(macs.MacPoolError):
            macs.check_prefix(bad)
    monkeypatch.setenv(macs.PREFIX_ENV, "02:00:00:01")
    assert macs.pool_prefix() == "02:00:00:01"


# ---- with real agents: one emulating Xen, one KVM, both with bridge br0

@pytest.fixture
def shared_bridge_agents(tmp_path: Path) -> Iterator[dict[str, AgentProc]]:
    procs = {"xen-host": AgentProc("xen-host", "xen", ["br0"], tmp_path / "xen"),
             "kvm-host": AgentProc("kvm-host", "kvm", ["br0"], tmp_path / "kvm")}
    try:
        for a in procs.values():
            a.start()
        yield procs
    finally:
        for a in procs.values():
            a.stop()


def live_nic_macs(api: Api, vm_id: str) -> list[str]:
    shown = api.get(f"/vms/{vm_id}")
    assert shown["devices_source"] == "live", shown
    return [d["mac"] for d in shown["devices"] if d["kind"] == "nic"]


def run_on(api: Api, vm_id: str, host: str) -> None:
    task = api.wait_task(api.post(f"/vms/{vm_id}/start", {"host": host}, status=202))
    assert task["state"] == "succeeded", task


def stop(api: Api, vm_id: str) -> None:
    task = api.wait_task(api.post(f"/vms/{vm_id}/stop", {}, status=202))
    assert task["state"] == "succeeded", task


def test_vm_keeps_its_macs_between_kvm_and_xen_and_hot_plug_refuses_a_used_one(
        shared_bridge_agents: dict[str, AgentProc], api: Api, db_url: str) -> None:
    add_hosts(api, shared_bridge_agents)
    vm = api.post("/vms", vm_body("mover", None), status=201)
    stored = nic_macs(vm)
    run_on(api, vm["id"], "kvm-host")
    assert live_nic_macs(api, vm["id"]) == stored
    stop(api, vm["id"])
    run_on(api, vm["id"], "xen-host")
    assert live_nic_macs(api, vm["id"]) == stored  # not Xen's 00:16:3e one
    assert nic_macs(api.get(f"/vms/{vm['id']}")) == stored

    # hot-plug: another VM's MAC is refused before the host sees it
    api.post("/vms", vm_body("other", "52:54:00:00:00:77"), status=201)
    err = api.post(f"/vms/{vm['id']}/devices", {"nic": {"source": "br0", "mac": "52:54:00:00:00:77"}}, status=409)
    assert (err["code"], err["field"], err["used_by"]["vm"]) == ("mac_in_use", "nic.mac", "other")
    # a plug the host refuses (the test driver cannot attach live) leaves the VM holding only its own MACs
    for nic in ({"source": "br0", "mac": "52:54:00:00:00:88"}, {"source": "br0"}):
        err = api.post(f"/vms/{vm['id']}/devices", {"nic": nic}, status=409)
        assert err["code"] == "unsupported", err
    db = Database(db_url)
    held = db.call(lambda s: s.scalars(select(VmMac.mac).where(VmMac.vm_id == vm["id"])).all())
    assert list(held) == stored
    api.post("/vms", vm_body("third", "52:54:00:00:00:88"), status=201)
    stop(api, vm["id"])
    db.dispose()


def test_sync_follows_the_spec_a_host_answered(db_url: str) -> None:
    """After a hot-plug or unplug the VM holds its new spec's MACs; one another VM holds is kept by that VM and
    warned about (the host already runs it)."""
    db = Database(db_url)
    db.migrate()

    def setup(s: Session) -> tuple[str, str]:
        c = default_cluster(s).id
        a = Vm(id=str(uuid.uuid4()), name="a", cluster_id=c, spec={}, state="up")
        b = Vm(id=str(uuid.uuid4()), name="b", cluster_id=c, spec={}, state="up")
        s.add_all([a, b])
        s.flush()
        macs.hold(s, a.id, parse_spec(vm_body("a", "52:54:00:00:00:01") | {"id": a.id}))
        macs.hold(s, b.id, parse_spec(vm_body("b", "52:54:00:00:00:02") | {"id": b.id}))
        return a.id, b.id
    a, b = db.call(setup)

    def held(s: Session) -> dict[str, str]:
        return {r[0]: r[1] for r in s.execute(select(VmMac.mac, VmMac.vm_id))}
    spec = {"nics": [{"id": "n1", "mac": "52:54:00:00:00:01"}, {"id": "n2", "mac": "52:54:00:00:00:03"},
                     {"id": "n3", "mac": "52:54:00:00:00:02"}]}
    db.call(lambda s: macs.sync(s, a, spec))
    assert db.call(held) == {"52:54:00:00:00:01": a, "52:54:00:00:00:03": a, "52:54:00:00:00:02": b}
    events = db.call(lambda s: s.execute(text("SELECT type, message FROM events WHERE type = 'vm_mac_duplicate'"))
                     .all())
    assert [tuple(e) for e in events] == [("vm_mac_duplicate", "VM a uses MAC 52:54:00:00:00:02, which VM b holds")]
    db.call(lambda s: macs.sync(s, a, {"nics": [spec["nics"][1]]}))
    assert db.call(held) == {"52:54:00:00:00:03": a, "52:54:00:00:00:02": b}
    db.dispose()


def test_vm_stored_without_macs_keeps_the_one_its_last_host_generated(
        shared_bridge_agents: dict[str, AgentProc], api: Api, db_url: str) -> None:
    """A VM stored before the engine chose MACs, defined on a KVM host which generated its MAC: started on a
    Xen host, it keeps that MAC, now stored and held."""
    hosts = add_hosts(api, shared_bridge_agents)
    vm = api.post("/vms", vm_body("legacy", None), status=201)
    legacy_spec = {**vm["spec"], "nics": [{**vm["spec"]["nics"][0], "mac": None}]}
    defined = shared_bridge_agents["kvm-host"].call("POST", "/v1/vms", json=legacy_spec)
    assert defined.status_code in (200, 201), defined.text
    kvm_mac = defined.json()["spec"]["nics"][0]["mac"]
    assert kvm_mac == mac_for(legacy_spec["nics"][0]["id"], "52:54:00")
    db = Database(db_url)

    def as_before(s: Session) -> None:
        row = s.get(Vm, vm["id"])
        assert row is not None
        row.spec, row.last_host_id = legacy_spec, hosts["kvm-host"]["id"]
        s.execute(text("DELETE FROM vm_macs"))
    db.call(as_before)
    run_on(api, vm["id"], "xen-host")
    assert live_nic_macs(api, vm["id"]) == [kvm_mac] == nic_macs(api.get(f"/vms/{vm['id']}"))
    assert api.post("/vms", vm_body("copy", kvm_mac), status=409)["used_by"]["vm"] == "legacy"
    stop(api, vm["id"])
    db.dispose()


def test_vms_recovered_from_hosts_hold_their_macs(db_url: str) -> None:
    """A VM monitoring finds on a host with a Corral spec (the engine had lost it) holds its MACs: a new VM
    cannot take them. A second one found with a MAC already held does not fail monitoring's batch."""
    from corral.engine.db.models import Host
    from corral.engine.reconcile import HostReport, apply_reports

    db = Database(db_url)
    db.migrate()

    def seed(s: Session) -> str:
        c = default_cluster(s).id
        s.add(Host(id="H", name="H", cluster_id=c, agent_url="http://H", state="up", cpu_flags=[], bridges=[],
                   info={}))
        return c
    db.call(seed)

    def found(vm_id: str, name: str) -> dict[str, Any]:
        spec = parse_spec(vm_body(name, "52:54:00:00:00:aa") | {"id": vm_id}).model_dump(mode="json")
        return {"id": vm_id, "name": name, "state": "up", "external": False, "spec": spec}
    first, second = str(uuid.uuid4()), str(uuid.uuid4())
    db.call(lambda s: apply_reports(s, [HostReport("H", [found(first, "lost")], True)], set()))
    db.call(lambda s: apply_reports(s, [HostReport("H", [found(first, "lost"), found(second, "twin")], True)],
                                    set()))
    assert db.call(lambda s: s.scalar(select(Vm.name).where(Vm.id == second))) == "twin"
    newcomer = str(uuid.uuid4())

    def create(s: Session) -> None:
        s.add(Vm(id=newcomer, name="new", cluster_id=default_cluster(s).id, spec={}, state="down"))
        s.flush()
        macs.hold(s, newcomer, parse_spec(vm_body("new", "52:54:00:00:00:AA") | {"id": newcomer}))
    with pytest.raises(Conflict) as refused:
        macs.call(db, create)
    assert refused.value.extra["used_by"]["vm"] == "lost"
    db.dispose()


def test_migration_copies_the_macs_of_stored_vms(db_url: str) -> None:
    """Upgrading a database whose VMs were stored before ``vm_macs``: their MACs become held, lower case; where
    two VMs already shared one, the older keeps it (and the other is refused at its next spec change)."""
    from datetime import timedelta

    from sqlalchemy import column, insert, table

    from corral.engine.db.migrate import upgrade
    from corral.engine.db.models import utcnow

    db = Database(db_url)
    upgrade(db.engine, "0003")
    now = utcnow()
    old, young, bare = (str(uuid.uuid4()) for _ in range(3))

    def vm(vm_id: str, name: str, age: int, *nic_macs: str | None) -> dict[str, Any]:
        spec = vm_body(name) | {"id": vm_id, "nics": [{"id": str(uuid.uuid4()), "source": "br0", "mac": m}
                                                       for m in nic_macs]}
        return {"id": vm_id, "name": name, "cluster_id": "c", "external": False, "spec": spec, "memory_mib": 128,
                "vcpus": 1, "state": "down", "state_reason": "", "created_at": now - timedelta(days=age),
                "updated_at": now, "state_changed_at": now}
    # the tables as revision 0003 has them: the models' later columns (with their defaults) are not there yet
    clusters = table("clusters", *(column(c) for c in ("id", "name", "description", "flavor_policy", "created_at")))
    vms = table("vms", *(column(c) for c in vm(bare, "bare", 3, None)))
    vms.c.spec.type = Vm.__table__.c.spec.type  # JSON, as the model stores it
    with db.engine.begin() as conn:
        conn.execute(insert(clusters), [{"id": "c", "name": "c", "description": "", "flavor_policy": "any",
                                         "created_at": now}])
        conn.execute(insert(vms), [vm(young, "young", 1, "52:54:00:00:00:0B"),
                                   vm(old, "old", 2, "52:54:00:00:00:0b", "52:54:00:00:00:0c"),
                                   vm(bare, "bare", 3, None)])
    db.migrate()
    rows = db.call(lambda s: {r[0]: r[1] for r in s.execute(select(VmMac.mac, VmMac.vm_id))})
    assert rows == {"52:54:00:00:00:0b": old, "52:54:00:00:00:0c": old}
    db.dispose()
