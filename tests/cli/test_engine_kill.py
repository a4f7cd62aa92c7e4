"""Kill -9 the engine while VMs run: after a restart its states match libvirt's and nothing is lost.

``corral engine serve`` (SQLite) and two ``corral agent serve --emulate xen|kvm`` agents run as processes of
their own. While the engine is dead, VMs change behind its back (one destroyed, one resumed) directly
through the agents; a task that was running at the kill (a start waiting on an agent frozen with SIGSTOP)
must come back failed, and its VM must not stay stuck in ``starting``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.cli.support import CORRAL, Cli, clean_env, eventually, free_port
from tests.engine.agents import AgentProc

ON_HOST = ("up", "paused", "shutting_down")


class Engine:
    """``corral engine serve`` in a subprocess, on a SQLite file that outlives it."""

    def __init__(self, root: Path, token: str) -> None:
        self.root, self.port = root, free_port()
        self.db = f"sqlite:///{root / 'engine.db'}"
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.http = httpx.Client(base_url=self.url + "/api/v1", headers={"Authorization": f"Bearer {token}"},
                                 timeout=30)

    def start(self) -> None:
        with (self.root / "engine.log").open("ab") as log:
            self.proc = subprocess.Popen([*CORRAL, "engine", "serve", "--db", self.db, "--listen",
                                          f"127.0.0.1:{self.port}", "--data-dir", str(self.root / "data"),
                                          "--no-tls"],
                                         stdout=log, stderr=subprocess.STDOUT, env=clean_env(), cwd=self.root)
        deadline = time.monotonic() + 60
        while True:
            assert self.proc.poll() is None, f"the engine exited:\n{self.log()}"
            try:
                if httpx.get(self.url + "/api/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"the engine did not answer:\n{self.log()}"
            time.sleep(0.2)

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        assert self.proc.wait(10) == -signal.SIGKILL

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log(self) -> str:
        return (self.root / "engine.log").read_text(errors="replace")[-3000:]

    def get(self, path: str, **params: Any) -> Any:
        resp = self.http.get(path, params=params)
        assert resp.status_code == 200, (path, resp.status_code, resp.text)
        return resp.json()

    def items(self, path: str) -> list[dict[str, Any]]:
        return list(self.get(path, limit=1000)["items"])

    def post(self, path: str, body: Any = None, status: int = 202) -> Any:
        resp = self.http.post(path, json=body)
        assert resp.status_code == status, (path, resp.status_code, resp.text)
        return resp.json()

    def task(self, task: dict[str, Any], state: str = "succeeded") -> dict[str, Any]:
        done = eventually(lambda: (t := self.get(f"/tasks/{task['id']}"))["state"] in ("succeeded", "failed") and t,
                          timeout=30, what=f"task {task['kind']}")
        assert done["state"] == state, done
        return dict(done)


@pytest.fixture
def agents(tmp_path: Path) -> Iterator[dict[str, AgentProc]]:
    procs = {"xen-host": AgentProc("xen-host", "xen", ["xenbr0"], tmp_path / "xen"),
             "kvm-host": AgentProc("kvm-host", "kvm", ["br0"], tmp_path / "kvm")}
    try:
        for a in procs.values():
            a.start()
        yield procs
    finally:
        for a in procs.values():
            if a.proc is not None and a.proc.poll() is None:
                os.kill(a.proc.pid, signal.SIGCONT)  # in case the test stopped with it frozen
            a.stop()


def libvirt_states(agents: dict[str, AgentProc]) -> dict[str, tuple[str, str]]:
    """Corral VMs on the hosts, asked of the agents directly: id -> (state, host name), running ones win."""
    seen: dict[str, tuple[str, str]] = {}
    for name, agent in agents.items():
        resp = agent.call("GET", "/v1/vms")
        assert resp.status_code == 200, resp.text
        for vm in resp.json()["items"]:
            if vm["external"]:
                continue
            if vm["id"] not in seen or vm["state"] in ON_HOST:
                seen[vm["id"]] = (vm["state"], name)
    return seen


def test_kill_9_engine_while_vms_run(tmp_path: Path, agents: dict[str, AgentProc]) -> None:
    token = Cli(tmp_path, tmp_path).run("engine", "create-token", "--db", f"sqlite:///{tmp_path / 'engine.db'}",
                                        "--name", "kill-test").stdout.strip()
    engine = Engine(tmp_path, token)
    engine.start()
    try:
        for name, agent in agents.items():
            engine.task(engine.post("/hosts", {"name": name, "url": agent.url, "token": agent.token}))
        hosts = {h["name"]: h for h in engine.items("/hosts")}
        assert {h["state"] for h in hosts.values()} == {"up"}

        def vm(name: str, bridge: str, start: bool = True) -> str:
            created = engine.post("/vms", {"name": name, "memory_mib": 128, "vcpus": 1,
                                           "nics": [{"source": bridge}]}, status=201)
            if start:
                engine.task(engine.post(f"/vms/{created['id']}/start"))
            return str(created["id"])

        on_kvm, on_xen, paused = vm("on-kvm", "br0"), vm("on-xen", "xenbr0"), vm("paused", "br0")
        engine.task(engine.post(f"/vms/{paused}/pause"))
        stopped, never = vm("stopped", "xenbr0"), vm("never", "br0", start=False)
        engine.task(engine.post(f"/vms/{stopped}/stop"))
        late = vm("late", "br0", start=False)
        expected = {on_kvm: ("up", "kvm-host"), on_xen: ("up", "xen-host"), paused: ("paused", "kvm-host")}

        def settled() -> dict[str, dict[str, Any]] | None:
            items = {v["id"]: v for v in engine.items("/vms") if not v["external"]}
            ok = all((items[i]["state"], items[i]["host_name"]) == want for i, want in expected.items())
            return items if ok else None
        vms = eventually(settled, what="the VMs settled")
        assert vms[stopped]["state"] == vms[never]["state"] == "down"

        before_vms = {v["id"]: (v["name"], v["spec"]) for v in (engine.get(f"/vms/{i}") for i in vms)}

        # ---- a task in flight: the KVM agent is frozen, so the start of "late" waits on it (and, until the
        # kill, only list endpoints are read: showing a VM asks its host for the live devices)
        kvm = agents["kvm-host"]
        assert kvm.proc is not None
        os.kill(kvm.proc.pid, signal.SIGSTOP)
        try:
            running = engine.post(f"/vms/{late}/start", {"host": "kvm-host"})
            eventually(lambda: engine.get(f"/tasks/{running['id']}")["state"] == "running", timeout=10,
                       what="the start task running")
            assert engine.get(f"/vms/{late}")["state"] == "starting"
            events = {e["id"]: e for e in engine.items("/events")}
            tasks = {t["id"]: t for t in engine.items("/tasks")}

            # ---- kill -9
            engine.kill9()
        finally:
            os.kill(kvm.proc.pid, signal.SIGCONT)

        # ---- behind its back: destroy one VM, resume another, straight through the agents
        assert agents["xen-host"].call("POST", f"/v1/vms/{on_xen}/destroy").json()["state"] == "down"
        assert kvm.call("POST", f"/v1/vms/{paused}/resume").json()["state"] == "up"
        truth = libvirt_states(agents)
        assert truth[on_xen][0] == "down" and truth[paused] == ("up", "kvm-host") and truth[on_kvm] == (
            "up", "kvm-host")

        # ---- restart on the same database
        engine.start()

        def matches() -> bool:
            now = {v["id"]: v for v in engine.items("/vms") if not v["external"]}
            assert set(now) == set(vms), "VMs lost or invented"
            for vm_id, row in now.items():
                state, host = truth.get(vm_id, ("down", ""))
                if state in ON_HOST:
                    assert (row["state"], row["host_name"]) == (state, host), (row["name"], row, truth)
                else:
                    assert (row["state"], row["host_id"]) == ("down", None), (row["name"], row)
            return True
        eventually(matches, timeout=20, what="the engine's states to match libvirt's")
        assert libvirt_states(agents) == truth  # the engine changed nothing on the hosts by coming back

        # nothing lost: hosts, VMs (with their specs), events, tasks; the task cut short is failed
        assert {h["id"]: (h["name"], h["state"]) for h in engine.items("/hosts")} == {
            h["id"]: (h["name"], "up") for h in hosts.values()}
        assert {i: (v["name"], v["spec"]) for i, v in ((i, engine.get(f"/vms/{i}")) for i in vms)} == before_vms
        after_events = {e["id"]: e for e in engine.items("/events")}
        assert all(after_events.get(i) == e for i, e in events.items())
        after_tasks = {t["id"]: t for t in engine.items("/tasks")}
        assert set(after_tasks) == set(tasks)
        for task_id, task in tasks.items():
            if task_id != running["id"]:
                assert after_tasks[task_id] == task
        cut = after_tasks[running["id"]]
        assert (cut["state"], cut["error"]["code"]) == ("failed", "interrupted"), cut["error"]
        assert cut["finished_at"] is not None
        # the engine recorded what changed while it was away, and the interruption
        new = [e for i, e in after_events.items() if i not in events]
        assert any(e["object_id"] == on_xen and e["type"] == "vm_state" and "down" in e["message"] for e in new), new
        assert any(e["object_id"] == paused and e["type"] == "vm_state" and "up" in e["message"] for e in new), new
        assert any(e["object_id"] == late and e["type"] == "task_failed" for e in new), new
        # and it goes on working: the interrupted VM starts now, the destroyed one too
        assert engine.get(f"/vms/{late}")["state_reason"]
        engine.task(engine.post(f"/vms/{late}/start", {"host": "kvm-host"}))
        engine.task(engine.post(f"/vms/{on_xen}/start"))
        assert (engine.get(f"/vms/{late}")["state"], engine.get(f"/vms/{on_xen}")["state"]) == ("up", "up")
    except BaseException:
        print(engine.log())
        raise
    finally:
        engine.stop()
        engine.http.close()
