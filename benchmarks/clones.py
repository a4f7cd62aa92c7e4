#!/usr/bin/env python3
"""Thin clones from one template through the engine (issue 12): how long 100 VMs take.

One engine in-process (SQLite file, the API through its ASGI app as the tests call it) and one agent on libvirt's
test driver (a real process, real HTTP): a VM with a 1 GiB disk is started once (its volume made), stopped and
sealed as template ``gold``; then

1. create: ``POST /vms {"name", "template": "gold"}`` N times (each records a pending thin-clone volume);
2. start: each VM started one after another (placement, the thin clone made by the agent's ``POST volumes``
   with ``backing``, the domain defined and started) — the engine's and agent's cost per clone, the test
   driver's own cost being near nothing (it writes no file).

    python benchmarks/clones.py [--count 100]

Prints the totals and the figure per VM; nothing is kept. The QEMU lab's figure (real qemu-img overlays) is not
measured here: making a qcow2 overlay is one small file write per clone.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from fastapi.testclient import TestClient  # noqa: E402

from corral.engine.app import create_app  # noqa: E402
from corral.engine.auth import create_token  # noqa: E402
from tests.engine.agents import AgentProc  # noqa: E402


def wait(client: TestClient, task: dict[str, Any]) -> dict[str, Any]:
    while task["state"] not in ("succeeded", "failed"):
        time.sleep(0.01)
        task = client.get(f"/api/v1/tasks/{task['id']}").json()
    if task["state"] != "succeeded":
        raise RuntimeError(task)
    return task


def run(count: int, tmp: Path) -> dict[str, float]:
    url = f"sqlite:///{tmp / 'engine.db'}"
    token = create_token(url)
    agent = AgentProc("bench-host", "kvm", ["br0"], tmp / "agent")
    agent.start()
    try:
        with TestClient(create_app(url), headers={"Authorization": f"Bearer {token}"}) as c:
            wait(c, c.post("/api/v1/hosts", json={"name": "bench-host", "url": agent.url,
                                                  "token": agent.token}).json())
            c.post("/api/v1/storage-domains", json={"name": "local", "type": "dir", "path": str(tmp / "images")})
            gold = c.post("/api/v1/vms", json={"name": "gold", "memory_mib": 32, "disks": [
                {"size_bytes": 1 << 30}]}).json()
            wait(c, c.post(f"/api/v1/vms/{gold['id']}/start").json())
            wait(c, c.post(f"/api/v1/vms/{gold['id']}/stop", json={}).json())
            wait(c, c.post("/api/v1/templates", json={"name": "gold", "vm": "gold"}).json())

            created, started = [], []
            ids = []
            t0 = time.perf_counter()
            for i in range(count):
                t = time.perf_counter()
                r = c.post("/api/v1/vms", json={"name": f"clone{i}", "template": "gold", "memory_mib": 32})
                assert r.status_code == 201, r.text
                ids.append(r.json()["id"])
                created.append(time.perf_counter() - t)
            create_total = time.perf_counter() - t0
            for vm_id in ids:  # stopped again after each start (not counted): the test host's memory is small
                t = time.perf_counter()
                wait(c, c.post(f"/api/v1/vms/{vm_id}/start").json())
                started.append(time.perf_counter() - t)
                wait(c, c.post(f"/api/v1/vms/{vm_id}/stop", json={}).json())
            start_total = sum(started)
            clones = c.get("/api/v1/templates/gold").json()["clones"]
            assert len(clones) == count + 1, len(clones)  # and gold's own disk
            return {"create_total": create_total, "create_median": statistics.median(created),
                    "start_total": start_total, "start_median": statistics.median(started)}
    finally:
        agent.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--count", type=int, default=100)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        f = run(args.count, Path(tmp))
    n = args.count
    print(f"{n} thin-clone VMs from one template (engine in-process on SQLite, one test-driver agent)")
    print(f"  create (POST /vms with template): {f['create_total']:.2f} s total, "
          f"{1000 * f['create_median']:.1f} ms median per VM")
    print(f"  start (clone volume made + defined + started): {f['start_total']:.2f} s total, "
          f"{1000 * f['start_median']:.1f} ms median per VM")
    print(f"  together: {f['create_total'] + f['start_total']:.2f} s for {n} VMs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
