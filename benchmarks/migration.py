#!/usr/bin/env python3
"""Live migration of a 128 MiB lab guest on the QEMU pair (labs/qemu-pair, issue 13): through Corral (the
source agent's ``POST /v1/vms/{id}/migrate``, polled until done, then the destination agent's adopt) against
``virsh migrate`` of the same guest with the same flags, each way in turn, on the same two libvirtds.

Two data paths, both with PEER2PEER|LIVE|PERSIST_DEST|UNDEFINE_SOURCE:
  tunnelled  the data through the libvirt connection (Corral's default: no other port)
             -- virsh migrate --live --p2p --tunnelled --persistent --undefinesource
  direct     QEMU to QEMU over the veth (10.77.0.x), Corral's ``data_uri``
             -- the same plus --migrateuri tcp://ADDR, without --tunnelled
The guest is moved A->B by one and B->A by the other, alternating who goes first, ``--rounds`` times; the
medians and their ratio (Corral / virsh) are printed. Wall time from the request to the VM running on the
destination (for Corral: adopted there). Needs root; starts the pair if it is not running.

    python benchmarks/migration.py [--rounds 3] [--memory 128]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from fastapi.testclient import TestClient  # noqa: E402

from corral.agent.app import create_app  # noqa: E402
from corral.agent.service import Agent, Settings  # noqa: E402
from tests.qemupair import QemuPair, pair_unavailable_reason, qemu_pair  # noqa: E402

FLAGS = ["--live", "--p2p", "--persistent", "--undefinesource"]


def corral_move(src: TestClient, dst: TestClient, vm_id: str, dest_uri: str, data_uri: str | None) -> float:
    body: dict[str, Any] = {"destination": dest_uri}
    if data_uri:
        body["data_uri"] = data_uri
    t0 = time.monotonic()
    resp = src.post(f"/v1/vms/{vm_id}/migrate", json=body)
    assert resp.status_code in (200, 202), resp.text
    while (status := src.get(f"/v1/vms/{vm_id}/migration").json())["state"] == "running":
        time.sleep(0.05)
    assert status["state"] == "completed", status
    assert dst.post(f"/v1/vms/{vm_id}/adopt").json()["state"] == "up"
    return time.monotonic() - t0


def virsh_move(src_uri: str, name: str, dest_peer: str, data_uri: str | None) -> float:
    cmd = ["virsh", "-c", src_uri, "migrate", *FLAGS, name, dest_peer]
    cmd += ["--migrateuri", data_uri] if data_uri else ["--tunnelled"]
    t0 = time.monotonic()
    subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=600)
    return time.monotonic() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--memory", type=int, default=128, help="guest memory, MiB")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    pair = qemu_pair()
    if pair is None:
        sys.exit(f"QEMU pair unavailable: {pair_unavailable_reason()}")
    run(pair, args.rounds, args.memory)


def run(pair: QemuPair, rounds: int, memory: int) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="corral-bench-mig-"))
    tmp.chmod(0o755)
    agents = []
    for side, uri in (("a", pair.a_uri), ("b", pair.b_uri)):
        agent = Agent(Settings(libvirt=uri, state_dir=tmp / side, allow_tcg=True, accel="tcg"))
        agent.start()
        agents.append(agent)
    a, b = (TestClient(create_app(agent)) for agent in agents)
    vm_id = str(uuid.uuid4())
    name = f"corral-bench-mig-{vm_id[:8]}"
    spec = {"id": vm_id, "name": name, "memory_mib": memory, "vcpus": 1, "kernel": str(pair.kernel),
            "initrd": str(pair.initrd), "cmdline": "console=ttyS0 panic=-1", "consoles": [{"kind": "serial"}],
            "disks": [], "nics": []}
    assert a.post("/v1/vms?start=true", json=spec).status_code == 201
    time.sleep(15)  # booted and ticking: the guest's memory in use is its steady state
    where = "a"  # where the guest is now
    uris = {"a": (pair.a_uri, pair.a_peer_uri, pair.a_addr), "b": (pair.b_uri, pair.b_peer_uri, pair.b_addr)}
    clients = {"a": a, "b": b}
    figures: dict[tuple[str, str], list[float]] = {}
    try:
        for mode in ("tunnelled", "direct"):
            for r in range(rounds):
                for who in (("corral", "virsh") if r % 2 == 0 else ("virsh", "corral")):
                    to = "b" if where == "a" else "a"
                    data_uri = f"tcp://{uris[to][2]}" if mode == "direct" else None
                    if who == "corral":
                        took = corral_move(clients[where], clients[to], vm_id, uris[to][1], data_uri)
                    else:
                        took = virsh_move(uris[where][0], name, uris[to][1], data_uri)
                        clients[to].post(f"/v1/vms/{vm_id}/adopt")  # so its agent serves it next time
                    figures.setdefault((mode, who), []).append(took)
                    print(f"  {mode:9} {who:6} {where}->{to} {took:6.2f} s", flush=True)
                    where = to
                    time.sleep(2)
    finally:
        import libvirt
        for uri in (pair.a_uri, pair.b_uri):
            conn = libvirt.open(uri)
            for dom in conn.listAllDomains(0):
                if dom.UUIDString() == vm_id:
                    if dom.isActive():
                        dom.destroy()
                    dom.undefine()
            conn.close()
        for agent in agents:
            agent.stop()
    print(f"\n{memory} MiB guest, QEMU TCG, {rounds} migrations each way per tool (median wall time)")
    print(f"{'data path':10} {'Corral':>8} {'virsh':>8} {'ratio':>6}")
    for mode in ("tunnelled", "direct"):
        c, v = statistics.median(figures[(mode, "corral")]), statistics.median(figures[(mode, "virsh")])
        print(f"{mode:10} {c:7.2f}s {v:7.2f}s {c / v:6.2f}")


if __name__ == "__main__":
    main()
