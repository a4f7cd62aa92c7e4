"""Real agents for engine tests: ``corral agent serve`` on libvirt's test driver, one process per host.

A process each, because every connection to ``test:///default`` inside one process shares one driver
state: two in-process agents would see each other's domains. ``--emulate xen|kvm`` makes the test driver
present that hypervisor and use its flavor.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class AgentProc:
    name: str
    emulate: str
    bridges: list[str]
    root: Path
    port: int = field(default_factory=free_port)
    token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "token").write_text(self.token + "\n")
        args = [sys.executable, "-m", "corral", "agent", "serve", "--libvirt", "test:///default",
                "--listen", f"127.0.0.1:{self.port}", "--token-file", str(self.root / "token"),
                "--state-dir", str(self.root / "state"), "--emulate", self.emulate]
        for b in self.bridges:
            args += ["--bridge", b]
        env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        log = open(self.root / "agent.log", "ab")  # noqa: SIM115 - the child owns it
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO,
                                     start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"agent {self.name} exited: {(self.root / 'agent.log').read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/v1/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"agent {self.name} did not answer")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def call(self, method: str, path: str, **kwargs: object) -> httpx.Response:
        return httpx.request(method, self.url + path, headers={"Authorization": f"Bearer {self.token}"},
                             timeout=30, **kwargs)  # type: ignore[arg-type]
