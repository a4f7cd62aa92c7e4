"""Processes the portal's browser test drives: ``corral all-in-one``, extra agents, headless Chromium.

Everything runs as real subprocesses on 127.0.0.1 ports chosen free; each helper stops exactly the
processes it started.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[2]
OUTPUT = REPO / "test-output" / "portal"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
CORRAL = [sys.executable, "-c", "import sys; from corral.cli import main; sys.exit(main())"]
# the all-in-one engine allows host paths anywhere, as every test engine does (tests/conftest.py): set here too,
# since a module-scoped engine starts before the autouse fixture that sets it for a test
ENV = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
       "CORRAL_HOST_PATHS": "/"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"{url} did not come up:\n{log.read_text()[-3000:] if log.exists() else ''}")
        time.sleep(0.1)


def stop(proc: subprocess.Popen[bytes] | None, timeout: float = 20.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


@dataclass
class AllInOne:
    """``corral all-in-one --output json``: the first stdout line has url, token, username, password."""

    data_dir: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def start(self, timeout: float = 120.0) -> dict[str, Any]:
        self.proc = subprocess.Popen([*CORRAL, "all-in-one", "--data-dir", str(self.data_dir), "--listen",
                                      f"127.0.0.1:{self.port}", "--output", "json"], cwd=REPO, env=ENV,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        line = b""
        while not (line.startswith(b"{") and line.endswith(b"\n")):  # stderr is here too: skip warnings
            if line.endswith(b"\n"):
                line = b""
            left = deadline - time.monotonic()
            if left <= 0 or self.proc.poll() is not None:
                raise AssertionError(f"all-in-one did not print its JSON line: {line!r}\n{self.logs()}")
            ready, _, _ = select.select([self.proc.stdout], [], [], min(left, 1.0))
            if ready:
                chunk = os.read(self.proc.stdout.fileno(), 1)
                if not chunk:
                    raise AssertionError(f"all-in-one closed its output: {line!r}\n{self.logs()}")
                line += chunk
        self.info = json.loads(line)
        return self.info

    def logs(self) -> str:
        out = []
        for f in sorted((self.data_dir / "logs").glob("*.log")):
            out.append(f"--- {f.name}\n{f.read_text()[-2000:]}")
        return "\n".join(out)

    def api(self) -> httpx.Client:
        return httpx.Client(base_url=self.info["url"] + "/api/v1", timeout=60,
                            headers={"Authorization": f"Bearer {self.info['token']}"},
                            verify=ssl.create_default_context(cafile=self.info["ca"]))  # HTTPS, its own CA

    def stop(self) -> None:
        stop(self.proc, 30)


@dataclass
class Agent:
    """``corral agent serve`` on its own port with a token file; ``wrapper`` runs it inside another command."""

    root: Path
    args: list[str]
    wrapper: list[str] = field(default_factory=list)
    port: int = field(default_factory=free_port)
    token: str = field(default_factory=lambda: uuid.uuid4().hex)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Agent:
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "token").write_text(self.token + "\n")
        log = self.root / "agent.log"
        cmd = [*self.wrapper, *CORRAL, "agent", "serve", "--listen", f"127.0.0.1:{self.port}",
               "--token-file", str(self.root / "token"), "--state-dir", str(self.root / "state"), *self.args]
        with log.open("ab") as out:
            self.proc = subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=out, stderr=subprocess.STDOUT)
        wait_http(f"{self.url}/v1/health", self.proc, log)
        return self

    def stop(self) -> None:
        stop(self.proc)


@dataclass
class QemuHost:
    """An agent on the QEMU lab's libvirtd (TCG): /dev/kvm hidden from it (guests hang under this machine's
    KVM, see tests/e2e/test_agent_qemulab.py) and an empty bridge of its own for its hardware check."""

    agent: Agent
    bridge: str
    lab: Any

    def stop(self) -> None:
        self.agent.stop()
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True, check=False)


def start_qemu_host(root: Path) -> QemuHost | str:
    """The QEMU host, or why there is none (the console part of the test is skipped then)."""
    try:
        from tests.qemulab import lab_unavailable_reason, qemu_lab
    except ImportError as exc:
        return f"tests.qemulab: {exc}"
    lab = qemu_lab()
    if lab is None:
        return f"QEMU lab unavailable: {lab_unavailable_reason()}"
    bridge = "crlportal" + uuid.uuid4().hex[:4]
    ip = shutil.which("ip")
    if ip is None or subprocess.run([ip, "link", "add", "name", bridge, "type", "bridge"],
                                    capture_output=True, check=False).returncode != 0:
        return "cannot add a bridge on this machine (the QEMU host's hardware check needs one)"
    wrapper: list[str] = []
    if Path("/dev/kvm").exists():
        hide = root / "no-kvm"
        root.mkdir(parents=True, exist_ok=True)
        hide.write_text("")
        script = 'mount --bind "$0" /dev/kvm && mount -o remount,bind,ro /dev/kvm && exec "$@"'
        wrapper = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, str(hide)]
    agent = Agent(root, ["--libvirt", lab.uri, "--allow-tcg"], wrapper=wrapper)
    try:
        agent.start()
    except AssertionError as exc:
        subprocess.run(["ip", "link", "del", bridge], capture_output=True, check=False)
        return f"the QEMU agent did not start: {exc}"
    return QemuHost(agent, bridge, lab)


def wait_task(api: httpx.Client, task: dict[str, Any], timeout: float = 60.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while task["state"] in ("pending", "running"):
        assert time.monotonic() < deadline, task
        time.sleep(0.2)
        task = api.get(f"/tasks/{task['id']}").json()
    return task
