"""Console policy through the engine (issue 14), on SQLite and PostgreSQL with real test-driver agents emulating a
Xen dom0 and a KVM host: a VM's console listens on its host's loopback; a network address is refused by field
unless an admin allowed public consoles in the VM's cluster, and even then only where the flavor can protect it
(KVM with a password; never on Xen, whose VNC cannot have one [L12]). The setting is checked again at start."""

from __future__ import annotations

from tests.engine.agents import AgentProc
from tests.engine.conftest import Api
from tests.engine.test_with_agents import add_hosts

PUBLIC = {"type": "vnc", "listen": "0.0.0.0", "password": "s3cret12"}


def test_public_console_needs_the_cluster_setting(agents: dict[str, AgentProc], api: Api) -> None:
    add_hosts(api, agents)
    cluster = api.get("/clusters")["items"][0]
    assert cluster["allow_public_console"] is False
    refused = api.post("/vms", {"name": "pub", "memory_mib": 128, "graphics": PUBLIC}, status=422)
    assert refused["field"] == "graphics.listen" and "allow_public_console" in refused["message"], refused
    # a loopback console needs nothing
    api.post("/vms", {"name": "loop", "memory_mib": 128, "graphics": {"type": "vnc"}}, status=201)

    allowed = api.call("PATCH", f"/clusters/{cluster['id']}", 200, json={"allow_public_console": True})
    assert isinstance(allowed, dict) and allowed["allow_public_console"] is True
    vm = api.post("/vms", {"name": "pub", "memory_mib": 128, "graphics": PUBLIC}, status=201)
    # allowed by the cluster, still only where a password can be rendered: KVM, not Xen
    kvm = api.get(f"/vms/{vm['id']}/plan", host="kvm-host")
    xen = api.get(f"/vms/{vm['id']}/plan", host="xen-host")
    listen = {p["flavor"]: next(d for d in p["decisions"] if d["path"] == "graphics.listen") for p in (kvm, xen)}
    assert listen["kvm"]["outcome"] == "native", listen
    assert listen["xen"]["outcome"] == "refused" and "[L12]" in listen["xen"]["detail"], listen
    task = api.wait_task(api.post(f"/vms/{vm['id']}/start", status=202))
    assert task["state"] == "succeeded", task
    assert api.get(f"/vms/{vm['id']}")["host_name"] == "kvm-host"
    api.wait_task(api.post(f"/vms/{vm['id']}/stop", {}, status=202))

    # the admin takes the setting back: the next start is refused by field, the VM stays down
    api.call("PATCH", f"/clusters/{cluster['id']}", 200, json={"allow_public_console": False})
    task = api.wait_task(api.post(f"/vms/{vm['id']}/start", status=202))
    assert task["state"] == "failed" and "graphics.listen" in str(task.get("error")), task
    assert api.get(f"/vms/{vm['id']}")["state"] == "down"
    # and a spec change must come back to the loopback
    spec = api.get(f"/vms/{vm['id']}")["spec"]
    refused = api.call("PUT", f"/vms/{vm['id']}", 422, json=spec)
    assert isinstance(refused, dict) and refused["field"] == "graphics.listen"
    spec["graphics"]["listen"] = "127.0.0.1"
    api.call("PUT", f"/vms/{vm['id']}", 200, json=spec)
