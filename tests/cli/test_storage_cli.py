"""``corral storage`` and ``corral volume`` against a real engine (uvicorn in a thread, SQLite) with two real
agents on libvirt's test driver: add, list, show (each host's state, the reason of one that cannot have the
domain), volume create/list/delete, remove; every --output; refusals exit 2 naming the field."""

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
from corral.cli.storage import parse_size
from corral.engine.app import create_app
from corral.engine.auth import create_token
from corral.engine.monitor import MonitorSettings
from tests.cli.support import free_port
from tests.engine.agents import AgentProc


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[tuple[str, str, dict[str, AgentProc]]]:
    url = f"sqlite:///{tmp_path / 'engine.db'}"
    token = create_token(url)
    agents = {"xen-host": AgentProc("xen-host", "xen", ["xenbr0"], tmp_path / "xen"),
              "kvm-host": AgentProc("kvm-host", "kvm", ["br0"], tmp_path / "kvm")}
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
        # kvm-host has a pool "images" of its own, defined otherwise: it cannot take the domain
        r = agents["kvm-host"].call("PUT", "/v1/storage/pools/images", json={"type": "dir", "path": "/srv/other"})
        assert r.status_code == 200, r.text
        for name, a in agents.items():
            task = api.post("/hosts", json={"name": name, "url": a.url, "token": a.token}).json()
            while task["state"] not in ("succeeded", "failed"):
                time.sleep(0.05)
                task = api.get(f"/tasks/{task['id']}").json()
            assert task["state"] == "succeeded", task
        yield base, token, agents
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        for a in agents.values():
            a.stop()


def corral(env: tuple[str, str], *args: str, code: int = 0) -> Result:
    result = CliRunner().invoke(app, list(args), env={"CORRAL_URL": env[0], "CORRAL_TOKEN": env[1]})
    assert result.exit_code == code, (args, result.stdout, result.stderr if code else "", result.exception)
    return result


def test_parse_size() -> None:
    assert parse_size("10G") == 10 << 30 and parse_size("512M") == 512 << 20 and parse_size("1T") == 1 << 40
    assert parse_size("1GiB") == 1 << 30 and parse_size("4096") == 4096 and parse_size("1.5G") == 3 << 29


def test_storage_and_volume_commands(engine: tuple[str, str, dict[str, AgentProc]]) -> None:
    url, token, agents = engine
    env = (url, token)
    added = json.loads(corral(env, "storage", "add", "images", "--type", "dir", "--path", "/srv/images",
                              "-o", "json").stdout)
    assert {h["host"]: h["state"] for h in added["hosts"]} == {"xen-host": "active", "kvm-host": "error"}

    shown = corral(env, "storage", "show", "images").stdout
    kvm_line = next(line for line in shown.splitlines() if "kvm-host" in line)
    assert "error" in kvm_line and "/srv/other" in shown, shown  # the reason, on the host's line
    assert "100.0 GiB" in next(line for line in shown.splitlines() if "xen-host" in line)
    md = corral(env, "storage", "show", "images", "-o", "markdown").stdout
    assert "| host | state | capacity | free | reason |" in md and "| xen-host | active |" in md
    as_yaml = yaml.safe_load(corral(env, "storage", "show", "images", "-o", "yaml").stdout)
    assert as_yaml["name"] == "images" and len(as_yaml["hosts"]) == 2

    listed = json.loads(corral(env, "storage", "list", "-o", "json").stdout)
    assert [(d["name"], d["hosts_active"], d["hosts_error"]) for d in listed["items"]] == [("images", 1, 1)]
    table = corral(env, "storage", "list").stdout
    assert "1/2 active, 1 error" in table and "/srv/images" in table
    assert "| images |" in corral(env, "storage", "list", "--output", "markdown").stdout

    made = json.loads(corral(env, "volume", "create", "disk1", "--storage", "images", "--size", "1G",
                             "-o", "json").stdout)
    assert made["host"] == "xen-host" and made["capacity_bytes"] == 1 << 30 and made["format"] == "qcow2"
    raw = corral(env, "volume", "create", "disk2", "--storage", "images", "--size", "512M", "--format", "raw").stdout
    assert "disk2" in raw and "512.0 MiB" in raw and "raw" in raw
    vols = json.loads(corral(env, "volume", "list", "--storage", "images", "-o", "json").stdout)
    assert {v["name"] for v in vols["items"]} == {"disk1", "disk2"}
    assert "1.0 GiB" in corral(env, "volume", "list").stdout
    assert yaml.safe_load(corral(env, "volume", "list", "--name", "disk1", "-o", "yaml").stdout)["items"][0][
        "path"] == "/srv/images/disk1"
    assert "| disk2 | images | xen-host | raw |" in corral(env, "volume", "list", "-o", "markdown").stdout

    # refusals: exit 2, the field named
    busy = corral(env, "storage", "remove", "images", code=2)
    assert "[domain]" in busy.stderr and "2 volume(s)" in busy.stderr
    dup = corral(env, "volume", "create", "disk1", "--storage", "images", "--size", "1G", code=2)
    assert "[name]" in dup.stderr
    not_there = corral(env, "volume", "create", "x", "--storage", "images", "--size", "1G", "--host", "kvm-host",
                       code=2)
    assert "[host]" in not_there.stderr and "/srv/other" in not_there.stderr
    assert "[path]" in corral(env, "storage", "add", "bad", "--type", "dir", "--path", "rel", code=2).stderr
    assert "--size" in corral(env, "volume", "create", "x", "--storage", "images", "--size", "lots", code=2).stderr
    # resize: refusals by field; the test driver cannot grow a volume, and the CLI says so with the host's words
    assert "[size_bytes]" in corral(env, "volume", "resize", "disk1", "512M", code=2).stderr
    assert "cannot grow" not in (no := corral(env, "volume", "resize", "disk1", "2G", code=2).stderr)
    assert "unsupported" in no or "virStorageVolResize" in no, no
    assert "no volume 'nope'" in corral(env, "volume", "resize", "nope", "2G", "--storage", "images", code=2).stderr

    deleted = json.loads(corral(env, "volume", "delete", "disk1", "-o", "json").stdout)
    assert deleted == {"id": made["id"], "name": "disk1", "deleted": True}
    assert "volume disk2 deleted" in corral(env, "volume", "delete", "disk2", "--storage", "images").stdout
    assert agents["xen-host"].call("GET", "/v1/storage/pools/images/volumes").json()["items"] == []
    assert "storage domain images removed" in corral(env, "storage", "remove", "images").stdout
    assert json.loads(corral(env, "storage", "list", "-o", "json").stdout)["items"] == []
    assert "[domain]" in corral(env, "storage", "show", "images", code=2).stderr


def test_all_in_one_has_a_dir_domain_on_each_host(tmp_path: Path) -> None:
    """``corral all-in-one`` makes a ``dir`` domain for its hosts' cluster, so a volume can be made at once."""
    from tests.cli.support import all_in_one

    with all_in_one(tmp_path) as (server, cli):
        assert server.info["storage"] == "local"
        shown = cli.json("storage", "show", "local")
        assert shown["type"] == "dir" and shown["path"] == str(server.data_dir.resolve() / "images")
        assert {h["host"]: h["state"] for h in shown["hosts"]} == {"xen-host": "active", "kvm-host": "active"}
        made = cli.json("volume", "create", "disk1", "--storage", "local", "--size", "1G")
        assert made["state"] == "ready" and made["host"] in ("xen-host", "kvm-host")


def test_storage_add_nfs_with_its_mount_options(engine: tuple[str, str, dict[str, AgentProc]]) -> None:
    url, token, _agents = engine
    env = (url, token)
    added = json.loads(corral(env, "storage", "add", "shared", "--type", "nfs", "--path", "/mnt/shared",
                              "--server", "nfs1", "--export", "/export", "--port", "2050", "--nfs-version", "4",
                              "--mount-option", "soft", "--mount-option", "timeo=50", "-o", "json").stdout)
    assert added["source"] == {"host": "nfs1", "dir": "/export", "port": 2050, "nfs_version": 4,
                               "mount_options": ["soft", "timeo=50"]}, added
    bad = corral(env, "storage", "add", "bad", "--type", "nfs", "--path", "/mnt/bad", "--server", "nfs1",
                 "--export", "/export", "--nfs-version", "5", code=2)
    assert "[source.nfs_version]" in bad.stderr, bad.stderr
    assert "storage domain shared removed" in corral(env, "storage", "remove", "shared").stdout
