"""``corral network`` and ``vm create --nic network=NAME`` against a real engine (uvicorn in a thread, SQLite)
with two real agents on libvirt's test driver, one reporting the bridge of network ``data``: create, list,
show (which host carries it), delete; every --output; refusals exit 2 naming the field."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
import yaml
from click.testing import Result
from typer.testing import CliRunner

from corral.cli import app
from corral.cli.resources import _nic
from corral.domain.netnames import bridge_for
from corral.engine.app import create_app
from corral.engine.auth import create_token
from corral.engine.monitor import MonitorSettings
from tests.cli.support import free_port
from tests.engine.agents import AgentProc

Env = tuple[str, str]


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Env]:
    url = f"sqlite:///{tmp_path / 'engine.db'}"
    token = create_token(url)
    agents = {"net-host": AgentProc("net-host", "kvm", ["br0", bridge_for("data")], tmp_path / "net"),
              "plain-host": AgentProc("plain-host", "kvm", ["br0"], tmp_path / "plain")}
    port = free_port()
    settings = MonitorSettings(poll_interval=0.3, flush_interval=0.05, full_every=3, sync_interval=1.0)
    server = uvicorn.Server(uvicorn.Config(create_app(url, monitor=settings), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    try:
        for a in agents.values():
            a.start()
        thread.start()
        base = f"http://127.0.0.1:{port}"
        api = httpx.Client(base_url=base + "/api/v1", headers={"Authorization": f"Bearer {token}"}, timeout=30)
        for _ in range(300):
            try:
                api.get("/hosts")
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        for name, a in agents.items():
            task = api.post("/hosts", json={"name": name, "url": a.url, "token": a.token}).json()
            while task["state"] not in ("succeeded", "failed"):
                time.sleep(0.05)
                task = api.get(f"/tasks/{task['id']}").json()
            assert task["state"] == "succeeded", task
        yield base, token
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        for a in agents.values():
            a.stop()


def corral(env: Env, *args: str, code: int = 0) -> Result:
    result = CliRunner().invoke(app, list(args), env={"CORRAL_URL": env[0], "CORRAL_TOKEN": env[1]})
    assert result.exit_code == code, (args, result.stdout, result.stderr if code else "", result.exception)
    return result


def test_nic_option() -> None:
    assert _nic("network=data,model=virtio") == {"network": "data", "model": "virtio"}
    assert _nic("bridge=br0") == {"source_type": "bridge", "source": "br0"}
    assert _nic("libvirt-network=default") == {"source_type": "network", "source": "default"}


def test_network_commands(engine: Env) -> None:
    made = json.loads(corral(engine, "network", "create", "data", "--vlan", "100", "--mtu", "9000", "--role",
                             "vm,migration", "--required", "-o", "json").stdout)
    assert (made["vlan"], made["mtu"], made["roles"], made["required"], made["bridge"]) == \
        (100, 9000, ["vm", "migration"], True, "cn-data")
    assert {h["host"]: h["carried"] for h in made["hosts"]} == {"net-host": True, "plain-host": False}
    corral(engine, "network", "create", "backup")

    shown = corral(engine, "network", "show", "data").stdout
    assert "yes" in next(line for line in shown.splitlines() if "net-host" in line), shown
    assert "no" in next(line for line in shown.splitlines() if "plain-host" in line), shown
    assert "1/2 carry it" in shown and "cn-data" in shown
    md = corral(engine, "network", "show", "data", "--output", "markdown").stdout
    assert "| host | host_state | carried |" in md and "| plain-host | up | no |" in md
    assert yaml.safe_load(corral(engine, "network", "show", "data", "-o", "yaml").stdout)["vlan"] == 100

    listed = json.loads(corral(engine, "network", "list", "-o", "json").stdout)
    assert sorted(n["name"] for n in listed["items"]) == ["backup", "data"]  # pages go by id
    table = corral(engine, "network", "list").stdout
    assert "data" in table and "vm,migration" in table and "1/2 carry it" in table
    assert [n["name"] for n in yaml.safe_load(corral(engine, "network", "list", "--role", "migration",
                                                     "-o", "yaml").stdout)["items"]] == ["data"]
    assert "| data | default | 100 | 9000 |" in corral(engine, "network", "list", "-o", "markdown").stdout

    # a VM on the network: created through the CLI, placed where the bridge is
    vm = json.loads(corral(engine, "vm", "create", "onnet", "--memory", "64", "--nic", "network=data,model=virtio",
                           "-o", "json").stdout)
    assert vm["spec"]["nics"][0]["network"] == "data" and vm["spec"]["nics"][0]["model"] == "virtio"
    corral(engine, "vm", "start", "onnet")
    assert json.loads(corral(engine, "vm", "show", "onnet", "-o", "json").stdout)["host_name"] == "net-host"

    # refusals: exit 2 naming the field
    assert "[nics.0.network]" in corral(engine, "vm", "create", "x", "--memory", "64", "--nic", "network=nope",
                                        code=2).stderr
    assert "[name]" in corral(engine, "network", "create", "data", code=2).stderr
    assert "[vlan]" in corral(engine, "network", "create", "v", "--vlan", "5000", code=2).stderr
    assert "unknown role 'backup'" in corral(engine, "network", "create", "r", "--role", "backup", code=2).stderr
    busy = corral(engine, "network", "delete", "data", code=2)
    assert "[network]" in busy.stderr and "onnet" in busy.stderr

    assert "network backup deleted" in corral(engine, "network", "delete", "backup").stdout
    assert "[network]" in corral(engine, "network", "show", "backup", code=2).stderr
