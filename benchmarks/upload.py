#!/usr/bin/env python3
"""Image upload throughput through engine and agent, against ``cp`` of the same file on the same disk (issue 12).

The QEMU lab's real libvirtd (``qemu:///system``; libvirt's test driver has no ``virStorageVolUpload``) holds a
``dir`` storage pool in a scratch directory; ``corral engine serve`` (SQLite) and ``corral agent serve`` run as
processes of their own, as in production. The upload is what ``corral image upload`` does, in this process:
the file read in 1 MiB slices, its sha256 computed on the way, streamed over HTTP to the engine, which streams
it on to the agent, which writes it into libvirt's upload stream (libvirtd then writes the volume's file). The
answer's sha256 is checked against the file's. ``cp`` copies the same file (read from the page cache as well)
into the same directory. Neither syncs to disk. Each round is timed; the best and the median are printed with
the ratio of the throughputs (goal: upload >= 0.8x cp). Prints; asserts nothing. Run as root (the lab needs it):

    python benchmarks/upload.py [--size 512M] [--rounds 3] [--dir /var/tmp]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402

from corral.cli.storage import human, parse_size  # noqa: E402
from tests.qemulab import lab_unavailable_reason, qemu_lab  # noqa: E402

CHUNK = 1 << 20
CORRAL = [sys.executable, "-m", "corral"]


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start(cmd: list[str], log: Path, health: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    out = open(log, "ab")  # noqa: SIM115 - the child owns it
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO, start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"{cmd[3:5]} exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(health, timeout=1).status_code < 500:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    sys.exit(f"{cmd[3:5]} did not answer")


def wait_task(api: httpx.Client, task: dict[str, Any]) -> dict[str, Any]:
    while task["state"] not in ("succeeded", "failed"):
        time.sleep(0.05)
        task = api.get(f"/tasks/{task['id']}").json()
    if task["state"] != "succeeded":
        sys.exit(f"task failed: {task}")
    return task


def upload(api: httpx.Client, src: Path, name: str, pool: str) -> float:
    """``corral image upload``'s path: seconds, with the sha256 checked end to end."""
    digest = hashlib.sha256()

    def chunks() -> Iterator[bytes]:
        with src.open("rb") as fh:
            while data := fh.read(CHUNK):
                digest.update(data)
                yield data

    t0 = time.perf_counter()
    resp = api.put(f"/images/{name}", params={"storage": pool}, content=chunks(),
                   headers={"Content-Length": str(src.stat().st_size), "Content-Type": "application/octet-stream"},
                   timeout=httpx.Timeout(600.0, connect=10.0))
    elapsed = time.perf_counter() - t0
    if resp.status_code != 201:
        sys.exit(f"upload failed: {resp.status_code} {resp.text}")
    if resp.json()["sha256"] != digest.hexdigest():
        sys.exit("upload: the sha256 differs")
    wait_task(api, api.delete(f"/images/{resp.json()['id']}").json())
    return elapsed


def upload_to_agent(agent: httpx.Client, src: Path, name: str, pool: str) -> float:
    """The same file straight to the agent (no engine, no checksum at the client): where the time goes."""
    def chunks() -> Iterator[bytes]:
        with src.open("rb") as fh:
            while data := fh.read(CHUNK):
                yield data

    t0 = time.perf_counter()
    resp = agent.put(f"/v1/storage/pools/{pool}/volumes/{name}/content", content=chunks(),
                     headers={"Content-Length": str(src.stat().st_size)}, timeout=httpx.Timeout(600.0, connect=10.0))
    elapsed = time.perf_counter() - t0
    if resp.status_code != 200:
        sys.exit(f"upload to the agent failed: {resp.status_code} {resp.text}")
    agent.delete(f"/v1/storage/pools/{pool}/volumes/{name}").raise_for_status()
    return elapsed


def upload_with_libvirt(uri: str, src: Path, name: str, pool: str) -> float:
    """The same file into libvirt's upload stream from this process (no HTTP at all): the ceiling of any
    upload through virStorageVolUpload, which both pass through."""
    import libvirt

    conn = libvirt.open(uri)
    try:
        size = src.stat().st_size
        p = conn.storagePoolLookupByName(pool)
        vol = p.createXML(f"<volume><name>{name}</name><capacity>{size}</capacity>"
                          "<target><format type='raw'/></target></volume>", 0)
        t0 = time.perf_counter()
        stream = conn.newStream(0)
        vol.upload(stream, 0, size, 0)
        with src.open("rb") as fh:
            while data := fh.read(256 * 1024):  # libvirt's RPC carries at most 256 KiB per message
                stream.send(data)
        stream.finish()
        elapsed = time.perf_counter() - t0
        vol.delete(0)
        return elapsed
    finally:
        conn.close()


def copy(src: Path, dst: Path, sync: bool = False) -> float:
    """``cp``; with ``sync`` followed by ``sync FILE`` (fdatasync), what an upload does before it answers."""
    t0 = time.perf_counter()
    subprocess.run(["cp", str(src), str(dst)], check=True)
    if sync:
        subprocess.run(["sync", "--data", str(dst)], check=True)
    elapsed = time.perf_counter() - t0
    dst.unlink()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="512M", help="file size (binary units), default 512M")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", default="/var/tmp", help="where the file and the pool live (one disk)")
    args = parser.parse_args()
    size = parse_size(args.size)
    lab = qemu_lab()
    if lab is None:
        sys.exit(f"QEMU lab unavailable: {lab_unavailable_reason()}")
    import libvirt

    scratch = Path(tempfile.mkdtemp(prefix="corral-bench-upload-", dir=args.dir))
    pool = f"bench-{uuid.uuid4().hex[:8]}"
    bridge = "ctbench" + uuid.uuid4().hex[:4]
    ip = shutil.which("ip") or "/sbin/ip"
    procs: list[subprocess.Popen[bytes]] = []
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    try:
        src = scratch / "image.raw"
        with src.open("wb") as fh:  # random bytes: nothing along the way can shortcut zeros
            for _ in range(0, size, 16 * CHUNK):
                fh.write(os.urandom(min(16 * CHUNK, size - fh.tell())))
        # a KVM host's hardware check wants a bridge: an empty one, no uplink, removed afterwards
        subprocess.run([ip, "link", "add", "name", bridge, "type", "bridge"], check=True)

        db = f"sqlite:///{scratch / 'engine.db'}"
        token = subprocess.run([*CORRAL, "engine", "create-token", "--db", db, "--data-dir", str(scratch / "engine")],
                               check=True, capture_output=True, text=True, env=env).stdout.strip()
        port, agent_port = free_port(), free_port()
        (scratch / "agent-token").write_text(uuid.uuid4().hex)
        procs.append(start([*CORRAL, "agent", "serve", "--libvirt", lab.uri, "--allow-tcg", "--accel", "tcg",
                            "--listen", f"127.0.0.1:{agent_port}", "--token-file", str(scratch / "agent-token"),
                            "--state-dir", str(scratch / "agent")], scratch / "agent.log",
                           f"http://127.0.0.1:{agent_port}/v1/health", env))
        procs.append(start([*CORRAL, "engine", "serve", "--db", db, "--listen", f"127.0.0.1:{port}",
                            "--data-dir", str(scratch / "engine"), "--no-tls"], scratch / "engine.log",
                           f"http://127.0.0.1:{port}/api/health", env))
        api = httpx.Client(base_url=f"http://127.0.0.1:{port}/api/v1", headers={"Authorization": f"Bearer {token}"},
                           timeout=60)
        wait_task(api, api.post("/hosts", json={"name": "lab", "url": f"http://127.0.0.1:{agent_port}",
                                                "token": (scratch / "agent-token").read_text()}).json())
        made = api.post("/storage-domains", json={"name": pool, "type": "dir", "path": str(scratch / "pool")}).json()
        if [h["state"] for h in made.get("hosts", [])] != ["active"]:
            sys.exit(f"the storage domain is not active on the lab host: {made}")

        agent = httpx.Client(base_url=f"http://127.0.0.1:{agent_port}",
                             headers={"Authorization": f"Bearer {(scratch / 'agent-token').read_text()}"})
        ups, direct, raw, cps, synced = [], [], [], [], []
        for i in range(args.rounds):
            ups.append(upload(api, src, f"up{i}", pool))
            direct.append(upload_to_agent(agent, src, f"direct{i}", pool))
            raw.append(upload_with_libvirt(lab.uri, src, f"raw{i}", pool))
            cps.append(copy(src, scratch / "pool" / f"cp{i}"))
            synced.append(copy(src, scratch / "pool" / f"cps{i}", sync=True))
        mib = size / (1 << 20)
        print(f"upload throughput, {human(size)} of random bytes, {args.rounds} rounds, {platform.node()}, "
              f"{os.cpu_count()} CPUs, {scratch}")
        print(f"{'':28}{'best s':>9}{'median s':>10}{'MiB/s (best)':>14}")
        for label, times in (("image upload (engine+agent)", ups), ("agent alone (no engine)", direct),
                             ("libvirt upload stream alone", raw),
                             ("cp (same file, same disk)", cps), ("cp + sync --data", synced)):
            print(f"{label:28}{min(times):9.3f}{statistics.median(times):10.3f}{mib / min(times):14.1f}")
        ratio_best = min(cps) / min(ups)
        ratio_median = statistics.median(cps) / statistics.median(ups)
        print(f"ratio upload/cp throughput: best {ratio_best:.2f}x, median {ratio_median:.2f}x (goal >= 0.8x: "
              f"{'met' if ratio_best >= 0.8 else 'not met'})")
        print(f"ratio upload/(cp + sync) throughput: best {min(synced) / min(ups):.2f}x, median "
              f"{statistics.median(synced) / statistics.median(ups):.2f}x (the upload syncs before it answers)")
    finally:
        for p in procs:
            p.terminate()
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
        conn = libvirt.open(lab.uri)
        try:
            p2 = conn.storagePoolLookupByName(pool)
            if p2.isActive():
                p2.destroy()
            p2.undefine()
        except libvirt.libvirtError:
            pass
        finally:
            conn.close()
        subprocess.run([ip, "link", "del", bridge], check=False, capture_output=True)
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
