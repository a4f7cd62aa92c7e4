"""A start whose answer is lost in transport leaves the VM ``unknown`` on its target host (issue 14).

The agent is real (test driver) and really starts the VM; the network between engine and host fails as the
answer comes back (tests/engine/netfault.py). Were the VM ``down``, a second start would place it on the other
host, on the same disks, while it runs on the first.
"""

from __future__ import annotations

import asyncio

from corral.engine.agent_client import AgentClient, AgentTarget, AgentUnreachable
from tests.engine.agents import AgentProc, free_port
from tests.engine.conftest import Api
from tests.engine.netfault import CuttingRelay
from tests.engine.test_with_agents import eventually


def test_start_answer_lost_leaves_vm_unknown_on_its_host(agents: dict[str, AgentProc], api: Api) -> None:
    kvm, xen = agents["kvm-host"], agents["xen-host"]
    with CuttingRelay(kvm.port, b"POST /v1/vms?start=true") as relay:
        for name, url, token in (("kvm-host", relay.url, kvm.token), ("xen-host", xen.url, xen.token)):
            task = api.wait_task(api.post("/hosts", {"name": name, "url": url, "token": token}, status=202))
            assert task["state"] == "succeeded", task
        kvm_id = api.get("/hosts/kvm-host")["id"]
        vm = api.post("/vms", {"name": "lost", "memory_mib": 128}, status=201)

        task = api.wait_task(api.post(f"/vms/{vm['id']}/start", {"host": "kvm-host"}, status=202), timeout=60)
        assert relay.cut.is_set()
        assert task["state"] == "failed" and task["error"]["code"] == "unreachable", task
        row = api.get(f"/vms/{vm['id']}")
        assert (row["state"], row["host_id"]) == ("unknown", kvm_id), row
        assert "may be running" in row["state_reason"]
        # the agent did start it: a second start, which would place it on xen-host, is refused
        assert kvm.call("GET", f"/v1/vms/{vm['id']}").json()["state"] == "up"
        assert api.post(f"/vms/{vm['id']}/start", status=409)["state"] == "unknown"
        events = api.get("/events", object_type="vm", object_id=vm["id"])["items"]
        assert any(e["type"] == "vm_state" and e["severity"] == "warning" and "unknown" in e["message"]
                   for e in events), events

        relay.heal()  # the host answers again: its report settles the VM up there
        eventually(lambda: api.get("/hosts/kvm-host")["state"] == "up", timeout=30)
        row = eventually(lambda: (r := api.get(f"/vms/{vm['id']}"))["state"] == "up" and r, timeout=30)
        assert row["host_id"] == kvm_id


def test_unreachable_says_whether_the_request_may_have_arrived() -> None:
    """A refused connection cannot have started anything (the VM goes back to down); a dropped one can."""
    async def main() -> tuple[AgentUnreachable, AgentUnreachable]:
        async def drop(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readline()
            writer.transport.abort()

        server = await asyncio.start_server(drop, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        client = AgentClient()
        errors = []
        try:
            for url in (f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{port}"):
                try:
                    await client.create_vm(AgentTarget(url, "t"), {"name": "x"}, start=True)
                except AgentUnreachable as exc:
                    errors.append(exc)
        finally:
            await client.aclose()
            server.close()
        return errors[0], errors[1]

    refused, dropped = asyncio.run(main())
    assert not refused.maybe_delivered
    assert dropped.maybe_delivered
