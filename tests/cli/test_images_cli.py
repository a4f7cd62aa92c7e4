"""``corral image upload|list|delete`` against a real engine (uvicorn in a thread, SQLite) and real agents: on
libvirt's test driver the upload is refused by the host (409 unsupported, exit 2, nothing left); on the QEMU
lab's libvirtd a file and an ISO go through with their sha256 checked, are listed by kind in every --output,
and are deleted."""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
import yaml
from click.testing import Result
from typer.testing import CliRunner

from corral.cli import app
from corral.engine.app import create_app
from corral.engine.auth import create_token
from tests.engine.agents import AgentProc
from tests.engine.conftest import FAST
from tests.engine.test_images import Engine, free_port, iso_bytes, lab_agent, lab_host_and_domain


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    url = f"sqlite:///{tmp_path / 'engine.db'}"
    token = create_token(url)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(url, monitor=FAST), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the engine did not start"
        time.sleep(0.05)
    http = httpx.Client(base_url=f"http://127.0.0.1:{port}/api/v1", headers={"Authorization": f"Bearer {token}"},
                        timeout=60)
    try:
        yield Engine(f"http://127.0.0.1:{port}", token, port, http)
    finally:
        http.close()
        server.should_exit = True
        thread.join(30)


def corral(engine: Engine, *args: str, code: int = 0) -> Result:
    result = CliRunner().invoke(app, list(args), env={"CORRAL_URL": engine.url, "CORRAL_TOKEN": engine.token})
    assert result.exit_code == code, (args, result.stdout, result.stderr if code else "", result.exception)
    return result


def test_upload_to_a_test_driver_host_exits_2_and_leaves_nothing(engine: Engine, tmp_path: Path) -> None:
    agent = AgentProc("kvm-host", "kvm", ["br0"], tmp_path / "kvm")
    agent.start()
    try:
        engine.add_host("kvm-host", agent)
        engine.call("POST", "/storage-domains", 201, json={"name": "images", "type": "dir", "path": "/srv/images"})
        f = tmp_path / "disk.img"
        f.write_bytes(os.urandom(200_000))
        out = corral(engine, "image", "upload", str(f), code=2)
        assert "unsupported" in out.stderr and "virStorageVolUpload" in out.stderr and "kvm-host" in out.stderr
        assert json.loads(corral(engine, "image", "list", "-o", "json").stdout)["items"] == []
        assert engine.call("GET", "/volumes", 200)["items"] == []
        bad = corral(engine, "image", "upload", str(f), "--name", "no/slash", code=2)
        assert "--name" in bad.stderr
        assert "image" in corral(engine, "image", "delete", "nope", code=2).stderr
    finally:
        agent.stop()


@pytest.mark.qemulab
def test_upload_list_delete_on_the_lab(engine: Engine, tmp_path: Path) -> None:
    pool, where = f"ct-{uuid.uuid4().hex[:8]}", tmp_path / "images"
    with lab_agent(tmp_path, pool) as agent:
        lab_host_and_domain(engine, agent, pool, where)
        data = os.urandom(3 * (1 << 20) + 17)
        f = tmp_path / "cloud.img"
        f.write_bytes(data)
        img = json.loads(corral(engine, "image", "upload", str(f), "--storage", pool, "-o", "json").stdout)
        assert (img["name"], img["kind"], img["format"]) == ("cloud.img", "image", "raw")
        assert img["sha256"] == hashlib.sha256(data).hexdigest() and img["size_bytes"] == len(data)
        assert (where / "cloud.img").read_bytes() == data

        iso = tmp_path / "debian.iso"
        iso.write_bytes(iso_bytes())
        text = corral(engine, "image", "upload", str(iso), "--name", "installer", "--progress").stdout
        assert "iso installer uploaded" in text and "(checked)" in text, text
        assert "uploading again" in corral(engine, "image", "upload", str(iso), "--name", "again",
                                               "--progress").stderr

        isos = yaml.safe_load(corral(engine, "image", "list", "--kind", "iso", "-o", "yaml").stdout)["items"]
        assert {i["name"] for i in isos} == {"installer", "again"}
        assert isos[0]["cdrom"]["device"] == "cdrom"
        table = corral(engine, "image", "list").stdout
        assert "cloud.img" in table and "installer" in table and "lab-host" in table
        assert "| installer | iso | raw |" in corral(engine, "image", "list", "-o", "markdown").stdout

        assert "name" in corral(engine, "image", "upload", str(f), "--storage", pool, code=2).stderr  # taken
        gone = json.loads(corral(engine, "image", "delete", "installer", "-o", "json").stdout)
        assert gone["deleted"] is True and not (where / "installer").exists()
        assert "again deleted" in corral(engine, "image", "delete", "again", "--storage", pool).stdout
        assert [i["name"] for i in json.loads(corral(engine, "image", "list", "-o", "json").stdout)["items"]] \
            == ["cloud.img"]
