"""Images and ISOs uploaded through the engine (issue 12, upload slice), on SQLite and PostgreSQL.

The engine runs under uvicorn in a thread (a real HTTP server: the body is streamed, and a client can go away
in the middle of it). Refusals need no agent; libvirt's test driver has no ``virStorageVolUpload``, so agents on
it answer 409 ``unsupported``, which the engine passes on leaving nothing behind; the upload itself runs
against the QEMU lab's real libvirtd (``@pytest.mark.qemulab``): bytes, sha256, probed format, ISO kind, a
checksum that differs, an interrupted upload, a delete refused while a VM uses the ISO.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from corral.engine.app import create_app
from corral.engine.auth import create_token
from tests.engine.agents import REPO, AgentProc
from tests.engine.conftest import FAST
from tests.engine.test_with_agents import eventually
from tests.qemulab import lab_unavailable_reason, qemu_lab
from tests.require import unavailable

MiB = 1 << 20


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Engine:
    url: str
    token: str
    port: int
    http: httpx.Client

    def call(self, method: str, path: str, status: int, **kwargs: Any) -> Any:
        resp = self.http.request(method, path, **kwargs)
        assert resp.status_code == status, (resp.status_code, resp.text)
        body = resp.json() if resp.content else None
        if status >= 400:
            assert isinstance(body, dict) and body["code"] and body["message"], body
        return body

    def upload(self, name: str, data: bytes, status: int, chunk: int = 256 * 1024, **params: Any) -> Any:
        """A streamed body (an iterator), with its Content-Length, as the CLI sends it."""
        def chunks() -> Iterator[bytes]:
            for i in range(0, len(data), chunk):
                yield data[i:i + chunk]
        return self.call("PUT", f"/images/{name}", status, content=chunks(), params=params,
                         headers={"Content-Length": str(len(data))})

    def wait_task(self, task: dict[str, Any], timeout: float = 60.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while task["state"] not in ("succeeded", "failed"):
            assert time.monotonic() < deadline, task
            time.sleep(0.05)
            task = self.call("GET", f"/tasks/{task['id']}", 200)
        return task

    def add_host(self, name: str, agent: AgentProc) -> None:
        task = self.wait_task(self.call("POST", "/hosts", 202, json={"name": name, "url": agent.url,
                                                                     "token": agent.token}))
        assert task["state"] == "succeeded", task


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    token = create_token(db_url)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(db_url, monitor=FAST), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the engine did not start"
        time.sleep(0.05)
    http = httpx.Client(base_url=f"http://127.0.0.1:{port}/api/v1", headers={"Authorization": f"Bearer {token}"},
                        timeout=120)
    try:
        yield Engine(f"http://127.0.0.1:{port}", token, port, http)
    finally:
        http.close()
        server.should_exit = True
        thread.join(30)


def iso_bytes(size: int = 64 * 1024) -> bytes:
    """An ISO 9660 image as far as the probe reads: system area, a primary volume descriptor, a terminator."""
    pvd = b"\x01CD001\x01" + b"\0" * (2048 - 7)
    end = b"\xffCD001\x01" + b"\0" * (2048 - 7)
    data = b"\0" * 32768 + pvd + end
    return data + b"\0" * (size - len(data))


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ------------------------------------------------------------------------------------------- refusals


def test_upload_refusals_name_the_field(engine: Engine) -> None:
    data = b"x" * 1000
    assert engine.upload("disk", data, 409)["field"] == "storage"  # no domain at all
    engine.call("POST", "/storage-domains", 201, json={"name": "images", "type": "dir", "path": "/srv/images"})
    engine.call("POST", "/storage-domains", 201, json={"name": "other", "type": "dir", "path": "/srv/other"})
    assert engine.upload("-disk", data, 422, storage="images")["field"] == "name"
    assert engine.upload("disk", data, 422)["field"] == "storage"  # several domains: name one
    assert engine.upload("disk", data, 404, storage="nope")["field"] == "storage"
    no_host = engine.upload("disk", data, 409, storage="images")
    assert no_host["field"] == "storage" and "no hosts" in no_host["message"]
    assert engine.upload("disk", data, 422, storage="images", sha256="xyz")["field"] == "sha256"
    assert engine.upload("disk", data, 404, storage="images", host="nope")["field"] == "host"
    # a body without a Content-Length (chunked) cannot be streamed into a volume of a known size
    body = engine.call("PUT", "/images/disk", 411, params={"storage": "images"}, content=iter([data]))
    assert body["field"] == "Content-Length"
    assert engine.call("PUT", "/images/disk", 422, params={"storage": "images"}, content=b"")["field"] \
        == "Content-Length"
    assert engine.call("GET", "/images/nope", 404)["field"] == "image"
    assert engine.call("DELETE", "/images/nope", 404)["field"] == "image"
    assert engine.call("GET", "/images", 422, params={"kind": "floppy"})["field"] == "kind"
    assert engine.call("GET", "/images", 200)["items"] == []
    assert engine.call("GET", "/volumes", 200)["items"] == []


@pytest.fixture
def test_agents(tmp_path: Path) -> Iterator[dict[str, AgentProc]]:
    procs = {"kvm-host": AgentProc("kvm-host", "kvm", ["br0"], tmp_path / "kvm"),
             "xen-host": AgentProc("xen-host", "xen", ["xenbr0"], tmp_path / "xen")}
    try:
        for a in procs.values():
            a.start()
        yield procs
    finally:
        for a in procs.values():
            a.stop()


def test_test_driver_hosts_answer_unsupported_and_nothing_is_left(engine: Engine,
                                                                    test_agents: dict[str, AgentProc]) -> None:
    for name, a in test_agents.items():
        engine.add_host(name, a)
    engine.call("POST", "/storage-domains", 201, json={"name": "images", "type": "dir", "path": "/srv/images"})
    data = os.urandom(300 * 1024)
    body = engine.upload("cloud", data, 409, storage="images", host="kvm-host")
    assert body["code"] == "unsupported" and "virStorageVolUpload" in body["message"], body
    assert body["message"].startswith("host kvm-host: ")
    assert engine.call("GET", "/images", 200)["items"] == []
    assert engine.call("GET", "/volumes", 200)["items"] == []
    for a in test_agents.values():  # the volume the agent made for the upload is gone again
        assert a.call("GET", "/v1/storage/pools/images/volumes").json()["items"] == []

    # a name the domain has already, or one a host has without the engine knowing: never overwritten
    task = engine.wait_task(engine.call("POST", "/volumes", 202, json={"name": "disk1", "domain": "images",
                                                                        "size_bytes": MiB}))
    assert task["state"] == "succeeded", task
    assert engine.upload("disk1", data, 409, storage="images")["field"] == "name"
    r = test_agents["xen-host"].call("POST", "/v1/storage/pools/images/volumes",
                                     json={"name": "stray", "capacity_bytes": MiB})
    assert r.status_code == 201, r.text
    stray = engine.upload("stray", data, 409, storage="images", host="xen-host")
    assert stray["field"] == "name" and "does not know" in stray["message"]
    assert [v["name"] for v in engine.call("GET", "/volumes", 200)["items"]] == ["disk1"]
    assert engine.call("GET", "/images", 200)["items"] == []


# ------------------------------------------------------------------------------------------- QEMU lab


@dataclass
class LabAgent(AgentProc):
    """``corral agent serve`` on the QEMU lab's libvirtd (qemu:///system, TCG)."""

    uri: str = ""

    def start(self, timeout: float = 30.0) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "token").write_text(self.token + "\n")
        args = [sys.executable, "-m", "corral", "agent", "serve", "--libvirt", self.uri, "--allow-tcg", "--accel",
                "tcg", "--listen", f"127.0.0.1:{self.port}", "--token-file", str(self.root / "token"),
                "--state-dir", str(self.root / "state")]
        env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        log = open(self.root / "agent.log", "ab")  # noqa: SIM115 - the child owns it
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO,
                                     start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"agent exited: {(self.root / 'agent.log').read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/v1/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError("the lab agent did not answer")


@contextmanager
def lab_agent(tmp_path: Path, pool: str) -> Iterator[LabAgent]:
    """An agent on the lab's libvirtd, with an empty bridge (no uplink) for the KVM host's hardware check; the
    bridge and the pool ``pool`` (if made) are removed afterwards: libvirtd is shared by all tests."""
    lab = qemu_lab()
    if lab is None:
        unavailable(f"QEMU lab unavailable: {lab_unavailable_reason()}")
    import libvirt

    agent = LabAgent("lab-host", "", [], tmp_path / "agent", uri=lab.uri)
    bridge = "ctimg" + uuid.uuid4().hex[:4]
    ip = shutil.which("ip") or "/sbin/ip"
    made = subprocess.run([ip, "link", "add", "name", bridge, "type", "bridge"], capture_output=True, check=False)
    if made.returncode != 0:
        unavailable(f"cannot create a bridge: {made.stderr.decode().strip()}")
    try:
        agent.start()
        yield agent
    finally:
        agent.stop()
        subprocess.run([ip, "link", "del", bridge], check=False)
        conn = libvirt.open(lab.uri)
        try:
            p = conn.storagePoolLookupByName(pool)
            if p.isActive():
                p.destroy()
            p.undefine()
        except libvirt.libvirtError:
            pass
        finally:
            conn.close()


def lab_host_and_domain(engine: Engine, agent: LabAgent, pool: str, where: Path) -> None:
    engine.add_host("lab-host", agent)
    host = engine.call("GET", "/hosts/lab-host", 200)
    assert host["state"] == "up", (host["state"], host.get("reason"), host.get("check"))
    d = engine.call("POST", "/storage-domains", 201, json={"name": pool, "type": "dir", "path": str(where)})
    assert [h["state"] for h in d["hosts"]] == ["active"], d["hosts"]


@pytest.fixture
def lab_engine(engine: Engine, tmp_path: Path) -> Iterator[tuple[Engine, str, Path, LabAgent]]:
    """The engine with one host on the lab's libvirtd and a dir domain ``ct-*`` in tmp_path."""
    pool, where = f"ct-{uuid.uuid4().hex[:8]}", tmp_path / "images"
    with lab_agent(tmp_path, pool) as agent:
        lab_host_and_domain(engine, agent, pool, where)
        yield engine, pool, where, agent


@pytest.mark.qemulab
def test_upload_images_and_isos_end_to_end(lab_engine: tuple[Engine, str, Path, LabAgent], tmp_path: Path) -> None:
    engine, pool, where, _ = lab_engine
    # raw bytes named like qcow2: streamed through engine and agent, the same bytes on the host
    data = os.urandom(5 * MiB + 4321)
    img = engine.upload("disk.qcow2", data, 201, storage=pool)
    assert (img["kind"], img["format"], img["size_bytes"], img["sha256"]) == ("image", "raw", len(data), sha(data))
    assert img["host"] == "lab-host" and img["shared"] is False and img["state"] == "ready"
    assert img["path"] == str(where / "disk.qcow2") and img["cdrom"] is None
    assert (where / "disk.qcow2").read_bytes() == data

    # a qcow2 image: probed from its bytes, its virtual size as capacity
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(tmp_path / "c.img"), "64M"], check=True)
    cloud = (tmp_path / "c.img").read_bytes()
    img = engine.upload("cloud", cloud, 201, storage=pool, sha256=sha(cloud))
    assert (img["kind"], img["format"], img["capacity_bytes"], img["size_bytes"]) == \
        ("image", "qcow2", 64 * MiB, len(cloud))

    # an ISO 9660 image is kind iso and offered as CD-ROM media
    iso = iso_bytes()
    img = engine.upload("installer", iso, 201, chunk=1000)  # small chunks: the signature spans several
    assert (img["kind"], img["format"]) == ("iso", "raw")
    assert img["cdrom"] == {"device": "cdrom", "source": str(where / "installer"), "format": "raw",
                            "readonly": True}
    assert [i["name"] for i in engine.call("GET", "/images", 200, params={"kind": "iso"})["items"]] == ["installer"]
    assert {i["name"] for i in engine.call("GET", "/images", 200, params={"kind": "image"})["items"]} == \
        {"disk.qcow2", "cloud"}
    assert engine.call("GET", "/images/installer", 200)["sha256"] == sha(iso)
    assert engine.call("GET", "/volumes/installer", 200)["state"] == "ready"  # an image is a volume

    # a checksum that is not the one announced: nothing kept, on the host or in the engine
    wrong = engine.upload("bad", data[:MiB], 422, storage=pool, sha256="0" * 64)
    assert wrong["field"] == "sha256" and wrong["received"] == sha(data[:MiB])
    assert not (where / "bad").exists()
    assert engine.call("GET", "/volumes", 200, params={"name": "bad"})["items"] == []
    assert engine.upload("cloud", cloud, 409, storage=pool)["field"] == "name"

    # delete: refused while a VM has the ISO in its CD-ROM, done (as a task) once it has not
    vm = engine.call("POST", "/vms", 201, json={"name": "inst", "memory_mib": 256, "vcpus": 1, "disks": [
        {"device": "cdrom", "source": str(where / "installer")}]})
    refused = engine.call("DELETE", "/images/installer", 409)
    assert refused["field"] == "volume" and refused["vms"] == ["inst"]
    engine.call("DELETE", f"/vms/{vm['id']}", 204)
    task = engine.wait_task(engine.call("DELETE", "/images/installer", 202))
    assert task["state"] == "succeeded", task
    assert not (where / "installer").exists()
    assert engine.call("GET", "/images/installer", 404)["field"] == "image"
    assert engine.call("GET", "/volumes", 200, params={"name": "installer"})["items"] == []


@pytest.mark.qemulab
def test_interrupted_upload_leaves_no_volume_and_no_record(lab_engine: tuple[Engine, str, Path, LabAgent]) -> None:
    engine, pool, where, _ = lab_engine
    with socket.create_connection(("127.0.0.1", engine.port)) as sock:
        sock.sendall((f"PUT /api/v1/images/partial?storage={pool} HTTP/1.1\r\nHost: x\r\n"
                      f"Authorization: Bearer {engine.token}\r\nContent-Length: {64 * MiB}\r\n\r\n").encode())
        sock.sendall(os.urandom(4 * MiB))
        eventually(lambda: (where / "partial").exists(), 30)
        assert engine.call("GET", "/volumes/partial", 200)["state"] == "creating"
    # the client is gone after 4 of 64 MiB: neither the volume nor the engine's record stays
    eventually(lambda: not (where / "partial").exists(), 30)
    eventually(lambda: engine.call("GET", "/volumes", 200, params={"name": "partial"})["items"] == [], 30)
    assert engine.call("GET", "/images", 200)["items"] == []
    # and the name is free again
    data = os.urandom(MiB)
    assert engine.upload("partial", data, 201, storage=pool)["sha256"] == sha(data)
