"""Logical networks (issue 18, engine side) on SQLite and PostgreSQL with real test-driver agents: one host
reports the bridge of network ``data`` (``cn-data``), the other only ``br0``.

Create/list/show/delete and their refusals by field; a VM on ``data`` is placed only on the host that carries
it (the other host's reason names network and bridge); the spec the host receives is a plain bridge NIC while
the stored spec keeps the network's name; a host without a required network shows it and gets one event.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from corral.domain.netnames import bridge_for
from tests.engine.agents import AgentProc
from tests.engine.conftest import Api
from tests.engine.test_with_agents import add_hosts


@pytest.fixture
def net_agents(tmp_path: Path) -> Iterator[dict[str, AgentProc]]:
    procs = {"net-host": AgentProc("net-host", "kvm", ["br0", bridge_for("data")], tmp_path / "net"),
             "plain-host": AgentProc("plain-host", "kvm", ["br0"], tmp_path / "plain")}
    try:
        for a in procs.values():
            a.start()
        yield procs
    finally:
        for a in procs.values():
            a.stop()


def _events(api: Api, type_: str) -> list[dict[str, Any]]:
    return [e for e in api.get("/events", limit=1000)["items"] if e["type"] == type_]


def test_create_list_show_delete_and_refusals(api: Api) -> None:
    net = api.post("/networks", {"name": "data", "vlan": 100, "mtu": 9000, "roles": ["vm", "migration"],
                                 "description": "tenant traffic"}, status=201)
    assert (net["name"], net["vlan"], net["mtu"], net["roles"], net["required"], net["bridge"], net["cluster"]) == \
        ("data", 100, 9000, ["vm", "migration"], False, "cn-data", "default")
    plain = api.post("/networks", {"name": "mgmt-network-long", "roles": ["management"], "required": True},
                     status=201)
    assert plain["vlan"] is None and plain["mtu"] == 1500 and plain["bridge"] == bridge_for("mgmt-network-long")
    assert [n["name"] for n in api.get("/networks", cluster="default")["items"]] == ["data", "mgmt-network-long"]
    assert [n["name"] for n in api.get("/networks", role="migration")["items"]] == ["data"]
    assert [n["name"] for n in api.get("/networks", role="vm")["items"]] == ["data"]
    assert [n["name"] for n in api.get("/networks", role="management")["items"]] == ["mgmt-network-long"]
    assert api.get("/networks", role="storage")["items"] == []
    assert api.get("/networks/data")["description"] == "tenant traffic"
    assert api.get(f"/networks/{net['id']}")["name"] == "data"

    for body, status, field in [
        ({"name": "data"}, 409, "name"),
        ({"name": "bad.name"}, 422, "name"),
        ({"name": "x", "vlan": 4095}, 422, "vlan"),
        ({"name": "x", "vlan": 0}, 422, "vlan"),
        ({"name": "x", "mtu": 67}, 422, "mtu"),
        ({"name": "x", "mtu": 65536}, 422, "mtu"),
        ({"name": "x", "roles": ["backup"]}, 422, "roles.0"),
        ({"name": "x", "roles": ["vm", "vm"]}, 422, "roles"),
        ({"name": "x", "cluster": "nope"}, 404, "cluster"),
        ({"name": "x", "colour": "red"}, 422, "colour"),
    ]:
        answer = api.post("/networks", body, status=status)
        assert answer["field"] == field, (body, answer)
    assert api.get("/networks/nope", status=404)["field"] == "network"

    api.call("DELETE", "/networks/mgmt-network-long", 204)
    assert [n["name"] for n in api.get("/networks")["items"]] == ["data"]
    assert [e["object_id"] for e in _events(api, "network_removed")] == [plain["id"]]


def test_vm_nic_names_a_network_of_its_cluster(api: Api) -> None:
    api.post("/networks", {"name": "data"}, status=201)
    bad = api.post("/vms", {"name": "v", "memory_mib": 64, "nics": [{"source": "br0"}, {"network": "other"}]},
                   status=404)
    assert bad["field"] == "nics.1.network", bad
    both = api.post("/vms", {"name": "v", "memory_mib": 64, "nics": [{"network": "data", "source": "br0"}]},
                    status=422)
    assert both["field"] == "nics.0.network", both
    vm = api.post("/vms", {"name": "v", "memory_mib": 64, "nics": [{"network": "data"}]}, status=201)
    assert vm["spec"]["nics"][0]["network"] == "data"
    spec = vm["spec"]
    spec["nics"][0] = {"network": "gone"}
    assert api.call("PUT", f"/vms/{vm['id']}", 404, json=spec)["field"] == "nics.0.network"  # type: ignore[index]
    # the network cannot go while the VM's NIC names it (a VM merely named like it does not count)
    api.post("/vms", {"name": "data", "memory_mib": 64, "nics": [{"source": "br0"}]}, status=201)
    refused = api.call("DELETE", "/networks/data", 409)
    assert refused["field"] == "network" and refused["vms"] == ["v"], refused  # type: ignore[index]
    assert api.get("/networks/data")["vms"] == ["v"]
    api.call("DELETE", f"/vms/{vm['id']}", 204)
    api.call("DELETE", "/networks/data", 204)


def test_vm_is_placed_only_where_its_network_is(net_agents: dict[str, AgentProc], api: Api) -> None:
    add_hosts(api, net_agents)
    api.post("/networks", {"name": "data", "vlan": 10}, status=201)
    shown = api.get("/networks/data")
    assert {h["host"]: h["carried"] for h in shown["hosts"]} == {"net-host": True, "plain-host": False}
    assert (shown["hosts_total"], shown["hosts_carrying"]) == (2, 1)

    vm = api.post("/vms", {"name": "on-data", "memory_mib": 64, "nics": [{"network": "data"}]}, status=201)
    task = api.wait_task(api.post(f"/vms/{vm['id']}/start", status=202))
    assert task["state"] == "succeeded", task
    assert task["result"]["host"] == "net-host"
    rejected = {r["host"]: r["reasons"] for r in task["result"]["placement"]["rejected"]}
    assert rejected == {"plain-host": ["network data (bridge cn-data) not on this host"]}
    # the host received a plain bridge NIC; the engine keeps the network's name
    on_host = net_agents["net-host"].call("GET", f"/v1/vms/{vm['id']}").json()
    nic = on_host["spec"]["nics"][0]
    assert (nic["source_type"], nic["source"], nic.get("network")) == ("bridge", "cn-data", None), on_host
    assert api.get(f"/vms/{vm['id']}")["spec"]["nics"][0]["network"] == "data"
    # hot-plug: a network of another cluster or none is refused by field before the host is asked
    err = api.post(f"/vms/{vm['id']}/devices", {"nic": {"network": "nope"}}, status=404)
    assert err["field"] == "nic.network", err
    api.wait_task(api.post(f"/vms/{vm['id']}/stop", status=202))

    # a VM asked onto the host without the network is refused with the reason
    task = api.wait_task(api.post(f"/vms/{vm['id']}/start", {"host": "plain-host"}, status=202))
    assert task["state"] == "failed" and task["error"]["code"] == "no_host", task
    assert "plain-host: network data (bridge cn-data) not on this host" in task["error"]["message"]


def test_host_missing_a_required_network(net_agents: dict[str, AgentProc], api: Api) -> None:
    add_hosts(api, net_agents)
    api.post("/networks", {"name": "data", "required": True}, status=201)
    plain = api.get("/hosts/plain-host")["networks"]
    assert plain["missing_required"] == ["data"] and plain["reason"] == "missing required network(s): data"
    assert plain["items"][0] | {"network_id": None} == {"network_id": None, "network": "data", "bridge": "cn-data",
                                                         "vlan": None, "required": True, "carried": False}
    assert api.get("/hosts/net-host")["networks"]["missing_required"] == []
    missing = _events(api, "network_missing")
    assert [(e["object_id"], e["detail"]["network"]) for e in missing] == \
        [(api.get("/hosts/plain-host")["id"], "data")]
    assert missing[0]["severity"] == "warning"
    # activating the host again: still missing, not news (one event while it stays missing)
    api.wait_task(api.post("/hosts/plain-host/activate", status=202))
    assert len(_events(api, "network_missing")) == 1
    assert api.get("/hosts/plain-host")["state"] == "up"  # unfit for VMs on data, not for the others
