"""Recovery: a new agent on the same libvirt finds Corral's VMs (from their <metadata>) and leaves them be.

These tests share ``test:///default`` (one state per process, with its pre-existing running domain 'test');
they name their VMs uniquely and undefine them afterwards.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import libvirt
import pytest

from corral.agent.service import Agent

from .conftest import BRIDGE, Api, spec, wait_for

DEFAULT = "test:///default"


@pytest.fixture
def default_conn() -> Iterator[libvirt.virConnect]:
    """A connection of our own to test:///default; undefines what the test made there."""
    conn = libvirt.open(DEFAULT)
    before = {d.UUIDString() for d in conn.listAllDomains(0)}
    yield conn
    for dom in conn.listAllDomains(0):
        if dom.UUIDString() not in before:
            if dom.isActive():
                dom.destroy()
            dom.undefine()
    conn.close()


@pytest.mark.parametrize("emulate", [None, "xen"], ids=["test", "xen"])
def test_a_second_agent_recovers_the_vms_untouched(agent_factory: Callable[..., Agent],
                                                     default_conn: libvirt.virConnect, emulate: str | None) -> None:
    first = Api(agent_factory(emulate, uri=DEFAULT, bridges=[BRIDGE]))
    tag = uuid.uuid4().hex[:6]
    running = first.create(spec(f"rec-run-{tag}", graphics={"type": "vnc"}, max_memory_mib=512), start=True)
    stopped = first.create(spec(f"rec-off-{tag}", nics=[{"source": BRIDGE, "link": "down"}]))
    first.post(f"/v1/vms/{running['id']}/pause", expect=200)
    dom = default_conn.lookupByUUIDString(running["id"])
    domain_id = dom.ID()
    wait_for(lambda: any(e["detail"].get("event") == "suspended"
                         for e in first.get("/v1/events?wait=0").json()["items"]), 10, "the suspended event")
    mark = first.agent.bus.last_seq

    second_agent = agent_factory(emulate, uri=DEFAULT, bridges=[BRIDGE])
    second = Api(second_agent)
    recovered = second.get("/v1/events?wait=0&after=0", expect=200).json()["items"][0]
    assert recovered["type"] == "agent" and recovered["state"] == "recovered"
    assert recovered["detail"]["managed"] >= 2 and recovered["detail"]["external"] >= 1
    items = {v["id"]: v for v in second.get("/v1/vms", expect=200).json()["items"]}
    for made in (running, stopped):
        got = items[made["id"]]
        assert got["external"] is False and got["spec"] == made["spec"]
        assert got["guest_type"] == "hvm"
    assert items[running["id"]]["state"] == "paused" and items[running["id"]]["domain_id"] == domain_id
    assert items[stopped["id"]]["state"] == "down" and items[stopped["id"]]["domain_id"] is None
    # the pre-existing domain is listed, as someone else's
    test_dom = default_conn.lookupByName("test")
    assert items[test_dom.UUIDString()]["external"] is True and items[test_dom.UUIDString()]["spec"] is None
    # untouched: same domain, same state, and no lifecycle event since the first agent saw the pause
    assert dom.ID() == domain_id and dom.state()[0] == libvirt.VIR_DOMAIN_PAUSED
    assert not [e for e in first.agent.bus.since(mark) if e.vm_id in (running["id"], stopped["id"])]
    # and the recovered VMs are the second agent's to run: devices keep their identities
    shown = second.get(f"/v1/vms/{stopped['id']}", expect=200).json()
    nic_id = stopped["spec"]["nics"][0]["id"]
    nic = next(d for d in shown["devices"] if d["id"] == nic_id)
    assert nic["matched_by"] == "alias" and nic["link"] == "down"
    second.post(f"/v1/vms/{running['id']}/resume", expect=200)
    second.put(f"/v1/vms/{running['id']}/memory", json={"memory_mib": 384}, expect=200)
    second.post(f"/v1/vms/{running['id']}/destroy", expect=200)
    second.delete(f"/v1/vms/{running['id']}", expect=204)
    assert running["id"] not in {v["id"] for v in first.get("/v1/vms", expect=200).json()["items"]}


def test_a_recovered_vm_keeps_its_vnc_password(agent_factory: Callable[..., Agent],
                                               default_conn: libvirt.virConnect) -> None:
    first = Api(agent_factory(uri=DEFAULT, bridges=[BRIDGE]))
    vm = first.create(spec(f"rec-pw-{uuid.uuid4().hex[:6]}", graphics={"password": "pw123"}))
    second = Api(agent_factory(uri=DEFAULT, bridges=[BRIDGE]))
    info = second.put(f"/v1/vms/{vm['id']}/memory", json={"memory_mib": 200}, expect=200).json()
    assert next(d for d in info["devices"] if d["kind"] == "graphics")["password_set"] is True
    secure = default_conn.lookupByUUIDString(vm["id"]).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE
                                                                | libvirt.VIR_DOMAIN_XML_SECURE)
    assert "passwd='pw123'" in secure


def test_a_vm_defined_by_another_agent_later_is_picked_up(agent_factory: Callable[..., Agent],
                                                         default_conn: libvirt.virConnect) -> None:
    watcher = Api(agent_factory(uri=DEFAULT, bridges=[BRIDGE]))
    maker = Api(agent_factory(uri=DEFAULT, bridges=[BRIDGE]))
    vm = maker.create(spec(f"rec-late-{uuid.uuid4().hex[:6]}"), start=True)
    got = watcher.get(f"/v1/vms/{vm['id']}", expect=200).json()
    assert got["external"] is False and got["spec"] == vm["spec"] and got["state"] == "up"
    # the watcher heard libvirt's events about it
    wait_for(lambda: [e for e in watcher.agent.bus.since(0) if e.vm_id == vm["id"] and e.state == "up"], 10,
             "the watcher's lifecycle event")


def test_the_default_host_has_numa_cells(agent_factory: Callable[..., Agent], default_conn: libvirt.virConnect) -> None:
    host = Api(agent_factory(uri=DEFAULT, bridges=[BRIDGE])).get("/v1/host", expect=200).json()
    assert len(host["numa_cells"]) == 2
    assert all(c["cpus"] and c["memory_mib"] for c in host["numa_cells"])


def test_after_the_connection_drops_the_agent_reconnects_and_recovers(agent_factory: Callable[..., Agent],
                                                                      default_conn: libvirt.virConnect) -> None:
    agent = agent_factory(uri=DEFAULT, bridges=[BRIDGE])
    api = Api(agent)
    vm = api.create(spec(f"rec-re-{uuid.uuid4().hex[:6]}"), start=True)
    old = agent.connection.conn
    agent.connection._closed_cb(old, libvirt.VIR_CONNECT_CLOSE_REASON_EOF, None)  # what libvirt calls
    wait_for(lambda: agent.connection.reconnects == 1 and api.get("/v1/health").json()["libvirt"], 10,
             "the reconnect")
    assert agent.connection.conn is not old
    recovered = [e for e in agent.bus.since(0) if e.type == "agent" and e.state == "recovered"]
    assert len(recovered) == 2
    assert api.get(f"/v1/vms/{vm['id']}", expect=200).json()["state"] == "up"
    old.close()
    # events are registered again on the new connection
    api.post(f"/v1/vms/{vm['id']}/destroy", expect=200)
    wait_for(lambda: [e for e in agent.bus.since(recovered[-1].seq) if e.vm_id == vm["id"] and e.state == "down"],
             10, "a lifecycle event on the new connection")
