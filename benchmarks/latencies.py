#!/usr/bin/env python3
"""How fast the agent and all-in-one react: the timings the tests no longer assert (issue 15).

The tests prove the behaviour (a long poll is woken by the event, a hook is killed at its timeout and the
answer names it, Ctrl-C stops every process of all-in-one); how long each takes depends on the machine and
is printed here instead:

1. long poll: an event published while ``GET /v1/events?wait=60`` waits -> the answer (agent in-process on
   libvirt's test driver, through the ASGI app as the tests call it);
2. hook timeout: ``POST /v1/vms/{id}/start`` with a ``before_vm_start`` hook that sleeps past the agent's
   ``hook_timeout`` (1 s) -> the 409 answer; the figure above 1 s is the agent's overshoot;
3. all-in-one Ctrl-C: SIGINT -> the process has exited with every child stopped (engine + two agents).

    python benchmarks/latencies.py [--rounds 5] [--no-allinone]

Prints a table (median, min and max over the rounds); nothing is written.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from fastapi.testclient import TestClient  # noqa: E402

from corral.agent.app import create_app  # noqa: E402
from corral.agent.service import Agent, Settings  # noqa: E402

TOKEN = "benchmark-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
NODE_XML = """<node>
  <cpu><nodes>1</nodes><sockets>1</sockets><cores>8</cores><threads>1</threads>
       <active>8</active><mhz>2000</mhz><model>i686</model></cpu>
  <memory>1073741824</memory>
</node>
"""


def make_agent(tmp: Path, label: str, **settings: object) -> Agent:
    node = tmp / f"node-{label}.xml"
    node.write_text(NODE_XML)
    agent = Agent(Settings(libvirt=f"test://{node}", state_dir=tmp / f"state-{label}", **settings))  # type: ignore[arg-type]
    agent.start()
    return agent


def long_poll(tmp: Path, rounds: int) -> list[float]:
    """Seconds from publishing an event (once the poll waits) to the answer holding it."""
    agent = make_agent(tmp, "events")
    client = TestClient(create_app(agent, token=TOKEN))
    figures = []
    try:
        for _ in range(rounds):
            last = agent.bus.last_seq
            published: list[float] = []

            def publish(published: list[float] = published) -> None:
                deadline = time.monotonic() + 60
                while not agent.bus._waiters and time.monotonic() < deadline:
                    time.sleep(0.001)
                published.append(time.monotonic())
                agent.bus.publish("agent", state="ping")

            thread = threading.Thread(target=publish)
            thread.start()
            resp = client.get("/v1/events", params={"after": last, "wait": 60}, headers=AUTH)
            answered = time.monotonic()
            thread.join()
            assert resp.status_code == 200 and resp.json()["items"], resp.text
            figures.append(answered - published[0])
    finally:
        agent.stop()
    return figures


def hook_timeout(tmp: Path, rounds: int) -> list[float]:
    """Seconds from the start request to its 409 answer, with a hook that outlives a 1 s timeout."""
    hooks = tmp / "hooks"
    script = hooks / "before_vm_start" / "60-slow"
    script.parent.mkdir(parents=True)
    script.write_text("#!/bin/sh\nsleep 30\n")
    script.chmod(0o755)
    agent = make_agent(tmp, "hooks", hooks_dir=hooks, hook_timeout=1.0)
    client = TestClient(create_app(agent, token=TOKEN))
    figures = []
    try:
        for i in range(rounds):
            spec = {"id": str(uuid.uuid4()), "name": f"bench-hook-{i}", "memory_mib": 128}
            resp = client.post("/v1/vms", json=spec, headers=AUTH)
            assert resp.status_code in (200, 201), resp.text
            t0 = time.monotonic()
            resp = client.post(f"/v1/vms/{spec['id']}/start", headers=AUTH)
            figures.append(time.monotonic() - t0)
            assert resp.status_code == 409 and "timed out" in resp.json()["message"], resp.text
    finally:
        agent.stop()
    return figures


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def allinone_stop(tmp: Path, rounds: int) -> list[float]:
    """Seconds from Ctrl-C (SIGINT) to the exit of ``corral all-in-one`` (it stops its children first)."""
    figures = []
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
    for i in range(rounds):
        data = tmp / f"allinone-{i}"
        log = (tmp / f"allinone-{i}.log").open("w")
        proc = subprocess.Popen(
            [sys.executable, "-m", "corral", "all-in-one", "--data-dir", str(data),
             "--listen", f"127.0.0.1:{_free_port()}", "--output", "json"],
            stdout=subprocess.PIPE, stderr=log, text=True, env=env, cwd=tmp,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        try:
            assert proc.stdout is not None
            ready, _, _ = select.select([proc.stdout], [], [], 180)
            line = proc.stdout.readline() if ready else ""
            if not line:
                raise SystemExit(f"corral all-in-one did not start; see {log.name}")
            json.loads(line)
            t0 = time.monotonic()
            proc.send_signal(signal.SIGINT)
            status = proc.wait(timeout=120)
            figures.append(time.monotonic() - t0)
            if status != 0:
                raise SystemExit(f"corral all-in-one exited {status} after Ctrl-C; see {log.name}")
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-allinone", action="store_true", help="skip the all-in-one row (slowest)")
    args = parser.parse_args(argv)
    rows: list[tuple[str, str, Callable[[Path, int], list[float]], int]] = [
        ("long poll: event -> answer", "ms", long_poll, args.rounds),
        ("hook past its 1 s timeout: start -> 409", "s", hook_timeout, args.rounds),
    ]
    if not args.no_allinone:
        rows.append(("all-in-one: Ctrl-C -> exit", "s", allinone_stop, max(1, min(args.rounds, 3))))
    print("| what | rounds | median | min | max |\n|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="corral-latencies-") as tmp:
        for label, unit, measure, rounds in rows:
            figures = measure(Path(tmp), rounds)
            scale = 1000.0 if unit == "ms" else 1.0
            med, lo, hi = (f"{x * scale:.{1 if unit == 'ms' else 2}f} {unit}"
                           for x in (statistics.median(figures), min(figures), max(figures)))
            print(f"| {label} | {rounds} | {med} | {lo} | {hi} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
