"""``corral simulate`` as a user runs it: one process, 200 agents over real HTTP, SSE with resume."""

from __future__ import annotations

import asyncio
import json
import os
import select
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]
# the command as the CLI will register it (``corral simulate``), in an app of its own
RUN = ("import typer; from corral.cli.launch import simulate; app = typer.Typer(); app.command()(simulate); "
       "app()")


def start(*args: str, timeout: float = 120.0) -> tuple[subprocess.Popen[str], str]:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-c", RUN, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, cwd=REPO, start_new_session=True)
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    line = proc.stdout.readline() if ready else ""
    if not line:
        stop(proc)
        pytest.fail(f"corral simulate printed nothing: {proc.stderr.read() if proc.stderr else ''}")
    return proc, line


def stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def simulator() -> Iterator[dict[str, Any]]:
    proc, line = start("--hosts", "200", "--vms-per-host", "5", "--listen", "127.0.0.1:0", "--seed", "42",
                       "--event-rate", "0", "--output", "json")
    try:
        yield json.loads(line)
    finally:
        stop(proc)


def test_two_hundred_hosts_start_and_answer(simulator: dict[str, Any]) -> None:
    url, hosts, token = simulator["url"], simulator["hosts"], simulator["token"]
    assert url.startswith("http://127.0.0.1:") and len(hosts) == 200 and len(token) >= 16
    assert hosts[0] == f"{url}/hosts/1" and hosts[-1] == f"{url}/hosts/200"
    auth = {"Authorization": f"Bearer {token}"}
    with httpx.Client(headers=auth, timeout=30) as client:
        flavors = set()
        for host in [*hosts[::20], hosts[-1]]:
            assert client.get(f"{host}/v1/health", headers={"Authorization": ""}).json()["status"] == "ok"
            assert client.get(f"{host}/v1/vms", headers={"Authorization": ""}).status_code == 401
            items = client.get(f"{host}/v1/vms").json()["items"]
            assert len(items) == 5 and all(v["spec"]["name"] == v["name"] for v in items)
            info = client.get(f"{host}/v1/host").json()
            assert info["hardware_check"]["ok"] is True
            flavors.add(info["flavor"])
        assert flavors == {"xen", "kvm"}
        assert client.get(f"{url}/hosts/201/v1/health").status_code == 404
        assert client.get(f"{url}/").json()["vms"] == 1000


def test_event_stream_resumes_from_last_event_id(simulator: dict[str, Any]) -> None:
    host = simulator["hosts"][6]
    auth = {"Authorization": f"Bearer {simulator['token']}"}
    with httpx.Client(headers=auth, timeout=30) as client:
        first = read_events(client, f"{host}/v1/events", {"after": "0"}, 1)
        assert first[0]["seq"] == 1 and first[0]["state"] == "recovered"
        vm = next(v for v in client.get(f"{host}/v1/vms").json()["items"] if v["state"] == "up")
        assert client.post(f"{host}/v1/vms/{vm['id']}/pause").status_code == 200
        assert client.post(f"{host}/v1/vms/{vm['id']}/resume").status_code == 200
        resumed = read_events(client, f"{host}/v1/events", {}, 2, headers={"Last-Event-ID": "1"})
        assert [(e["seq"], e["state"], e["detail"]["event"]) for e in resumed] == [
            (2, "paused", "suspended"), (3, "up", "resumed")]
        polled = client.get(f"{host}/v1/events", params={"after": 2, "wait": 0}).json()
        assert [e["seq"] for e in polled["items"]] == [3] and polled["last"] == 3


def read_events(client: httpx.Client, url: str, params: dict[str, str], count: int,
                headers: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """The first ``count`` events of an SSE stream, checking the framing (``id:``, ``event:``, ``data:``)."""
    events: list[dict[str, Any]] = []
    with client.stream("GET", url, params=params, headers=headers) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        lines: list[str] = []
        for line in resp.iter_lines():
            if line:
                lines.append(line)
                continue
            fields = dict(x.split(": ", 1) for x in lines if not x.startswith(":") and ": " in x)
            lines = []
            if "data" in fields:
                event = json.loads(fields["data"])
                assert fields["id"] == str(event["seq"]) and fields["event"] == event["type"]
                events.append(event)
                if len(events) == count:
                    break
    return events


def test_text_output_and_token_file(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("a-token-from-a-file-0123\n")
    proc, line = start("--hosts", "3", "--vms-per-host", "2", "--listen", "127.0.0.1:0", "--token-file",
                       str(token_file), "--xen-ratio", "1", "--event-rate", "0")
    try:
        assert "3 agents (3 xen, 0 kvm)" in line and "/hosts/<n> for n = 1..3" in line
        assert f"token from {token_file}" in line
        url = line.split(" at ", 1)[1].split("/hosts/", 1)[0]
        resp = httpx.get(f"{url}/hosts/3/v1/vms", headers={"Authorization": "Bearer a-token-from-a-file-0123"})
        assert resp.status_code == 200 and len(resp.json()["items"]) == 2
    finally:
        stop(proc)


def test_bad_arguments_fail_clearly() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for args, message in ((["--token", "short"], "at least 16"), (["--listen", "nowhere"], "HOST:PORT")):
        done = subprocess.run([sys.executable, "-c", RUN, "--hosts", "1", *args], capture_output=True, text=True,
                              env=env, cwd=REPO, timeout=60)
        assert done.returncode == 2 and message in done.stderr


def test_the_engines_agent_client_drives_a_simulated_host(simulator: dict[str, Any]) -> None:
    from corral.engine.agent_client import AgentClient, AgentError, AgentTarget

    async def run() -> None:
        client = AgentClient()
        target = AgentTarget(simulator["hosts"][41], simulator["token"])
        try:
            assert (await client.health(target))["status"] == "ok"
            assert (await client.host(target))["flavor"] in ("xen", "kvm")
            assert (await client.host_stats(target))["vms"]["total"] == 5
            before = (await client.events_poll(target, 0))["last"]
            spec = {"name": "engine-made", "memory_mib": 256, "disks": [{"source": "/var/lib/corral/images/e.img"}],
                    "nics": [{"source": "br0"}]}
            assert (await client.plan(target, spec))["ok"] is True
            vm = await client.create_vm(target, spec, start=True)
            assert vm["state"] == "up" and len(await client.list_vms(target)) == 6
            assert (await client.action(target, vm["id"], "pause"))["state"] == "paused"
            try:
                await client.action(target, vm["id"], "pause")
            except AgentError as exc:
                assert (exc.status, exc.code) == (409, "conflict")
            else:
                raise AssertionError("pausing a paused VM must fail")
            stopped = await client.shutdown(target, vm["id"], timeout=0, force=True)
            assert stopped["state"] == "down" and stopped["stopped_by"] in ("destroy", "destroy-graceful")
            await client.delete_vm(target, vm["id"])
            seen: list[str] = []
            async for event in client.events_stream(target, before):
                seen.append(event["state"])
                if event["state"] == "deleted":
                    break
            assert seen == ["down", "up", "paused", "down", "deleted"]
        finally:
            await client.aclose()

    asyncio.run(run())
