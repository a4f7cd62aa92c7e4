"""Ctrl-C on ``corral all-in-one`` stops every process it started; a second start finds the same state.

The emulated hosts keep their test-driver domains in their state directories across the restart, as a real
host keeps its VMs, so a VM that ran before Ctrl-C runs again after, on the same host.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx

from tests.cli.support import alive, all_in_one, api, children, eventually, verify

SPEC_XML = """<domain type='kvm'><name>on-xen</name><memory unit='MiB'>256</memory><vcpu>1</vcpu>
  <os><type arch='x86_64'>hvm</type></os>
  <devices><disk type='file' device='disk'><source file='/var/lib/corral/on-xen.img'/><target dev='vda'
    bus='virtio'/></disk><interface type='bridge'><source bridge='xenbr0'/><model type='virtio'/></interface>
  </devices></domain>"""


def snapshot(http: httpx.Client) -> dict[str, Any]:
    def items(path: str) -> list[dict[str, Any]]:
        return list(http.get(path, params={"limit": 1000}).json()["items"])
    return {"hosts": sorted((h["id"], h["name"], h["state"], h["flavor"]) for h in items("/hosts")),
            "clusters": sorted(c["id"] for c in items("/clusters")),
            "vms": {v["id"]: (v["name"], v["state"], v["host_id"], v["external"]) for v in items("/vms")}}


def test_ctrl_c_stops_everything_and_a_restart_finds_the_same_state(tmp_path: Path) -> None:
    with all_in_one(tmp_path) as (server, cli):
        assert server.proc is not None
        kept = cli.json("vm", "create", "kept", "--memory", "256", "--nic", "bridge=br0",
                        "--disk", "/var/lib/corral/kept.qcow2,format=qcow2")
        assert cli.json("vm", "start", "kept")["host_name"] == "kvm-host"
        idle = cli.json("vm", "create", "idle", "--memory", "128")
        (tmp_path / "on-xen.xml").write_text(SPEC_XML)
        (tmp_path / "on-xen.json").write_text(cli.run("xml", "import", str(tmp_path / "on-xen.xml")).stdout)
        on_xen = cli.json("vm", "create", "--spec", str(tmp_path / "on-xen.json"))
        assert cli.json("vm", "start", "on-xen")["host_name"] == "xen-host"
        with api(server.info) as http:
            before = snapshot(http)
            events = [e["id"] for e in http.get("/events", params={"limit": 1000}).json()["items"]]
        assert {before["vms"][v["id"]][1] for v in (kept, on_xen)} == {"up"}
        assert before["vms"][idle["id"]][1] == "down"

        # ---- Ctrl-C: the engine and both agents stop, then all-in-one exits
        kids = children(server.proc.pid)
        kinds = sorted(next((k for k in ("agent serve", "engine serve") if f"corral {k}" in c), c)
                       for c in kids.values())
        assert kinds == ["agent serve", "agent serve", "engine serve"], kids
        # (how long this takes is printed by benchmarks/latencies.py, not asserted here)
        assert server.interrupt() == 0, server.log.read_text()
        assert [pid for pid in kids if alive(pid)] == [], kids
        assert "stopping" in server.log.read_text()
        try:
            httpx.get(server.info["url"] + "/api/health", timeout=2, verify=verify(server.info))
            raise AssertionError("the engine still answers after Ctrl-C")
        except httpx.TransportError:
            pass
        # each emulated host saved its domains (the test driver keeps them in memory only)
        for host, vm in (("kvm-host", kept), ("xen-host", on_xen)):
            saved = json.loads((server.data_dir / "agents" / host / "state" / "test-driver-domains.json").read_text())
            assert [d["active"] for d in saved if vm["id"] in d["xml"]] == [True], (host, saved)

        # ---- the same data directory: the same URL and token (the saved login still works), same state
        first = dict(server.info)
        info = server.start()
        assert (info["url"], info["token"]) == (first["url"], first["token"])
        hosts = {h["name"]: h for h in cli.json("host", "list")["items"]}
        assert sorted((h["id"], h["name"], h["state"], h["flavor"]) for h in hosts.values()) == before["hosts"]
        with api(info) as http:
            eventually(lambda: snapshot(http) == before, timeout=20, what="the state from before Ctrl-C")
            time.sleep(4)  # a full poll of both hosts later, nothing has moved
            assert snapshot(http) == before
            after = {e["id"] for e in http.get("/events", params={"limit": 1000}).json()["items"]}
            assert set(events) <= after
        listed = {v["name"]: v for v in cli.json("vm", "list")["items"]}
        assert (listed["kept"]["state"], listed["kept"]["host_name"]) == ("up", "kvm-host")
        assert (listed["on-xen"]["state"], listed["on-xen"]["host_name"]) == ("up", "xen-host")
        assert (listed["idle"]["state"], listed["idle"]["host_name"]) == ("down", None)
        shown = cli.json("vm", "show", "kept")
        assert shown["live"]["state"] == "up" and shown["devices_source"] == "live"
        # the agent itself runs it again (asked directly, with its own token)
        agent_dir = server.data_dir / "agents" / "kvm-host"
        direct = httpx.get(f"http://127.0.0.1:{(agent_dir / 'port').read_text().strip()}/v1/vms/{kept['id']}",
                           headers={"Authorization": f"Bearer {(agent_dir / 'token').read_text().strip()}"},
                           timeout=10)
        assert direct.status_code == 200 and direct.json()["state"] == "up", direct.text
        # and it goes on working
        assert cli.json("vm", "stop", "kept")["state"] == "down"
