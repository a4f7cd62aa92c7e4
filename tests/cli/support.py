"""Helpers for running Corral as a user does: the ``corral`` command in subprocesses.

``Cli`` runs ``corral ...`` with its own ``XDG_CONFIG_HOME`` (so ``corral login`` writes a private config) and
no ``CORRAL_URL``/``CORRAL_TOKEN`` in the environment; ``AllInOne`` is ``corral all-in-one`` in the background,
stopped with SIGINT as Ctrl-C would.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[2]
_SCRIPT = Path(sys.executable).with_name("corral")
# the installed console script, as a user runs it; ``python -m corral`` where it is not installed
CORRAL = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "corral"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CORRAL_URL", "CORRAL_TOKEN")}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    # test engines allow host paths anywhere (tests/conftest.py); a module-scoped engine starts before the autouse
    # fixture that sets it for each test
    env["CORRAL_HOST_PATHS"] = "/"
    env.update(extra)
    return env


def eventually(check: Callable[[], Any], timeout: float = 20.0, what: str = "", interval: float = 0.2) -> Any:
    """Call ``check`` until it returns something true (AssertionErrors count as not yet)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = check()
            if value:
                return value
            error = None
        except AssertionError as exc:
            value, error = None, exc
        if time.monotonic() > deadline:
            if error is not None:
                raise error
            raise AssertionError(f"not true within {timeout:g} s: {what or check}")
        time.sleep(interval)


def _default_sigint() -> None:
    # a shell without job control starts background commands with SIGINT ignored, and an ignored signal
    # stays ignored across exec; the user at a terminal has it at its default
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@dataclass
class Cli:
    """The ``corral`` command with a private config directory."""

    config_home: Path
    cwd: Path

    def run(self, *args: str, expect: int | None = 0, timeout: float = 90.0) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([*CORRAL, *args], capture_output=True, text=True, timeout=timeout, cwd=self.cwd,
                              env=clean_env(XDG_CONFIG_HOME=str(self.config_home)), check=False)
        if expect is not None:
            assert proc.returncode == expect, (
                f"corral {' '.join(args)}: exit {proc.returncode}, expected {expect}\n"
                f"stdout: {proc.stdout[-3000:]}\nstderr: {proc.stderr[-3000:]}")
        return proc

    def json(self, *args: str, expect: int = 0) -> Any:
        """Run with ``--output json``; the whole of stdout must be one JSON document."""
        proc = self.run(*args, "--output", "json", expect=expect)
        try:
            return json.loads(proc.stdout)
        except ValueError as exc:
            raise AssertionError(f"corral {' '.join(args)} --output json printed no JSON: {proc.stdout!r}") from exc

    def error(self, *args: str, code: int = 2) -> str:
        """Run a command that must fail with ``code``; returns its stderr."""
        proc = self.run(*args, expect=code)
        assert proc.stderr.strip(), f"corral {' '.join(args)} failed without a message"
        return proc.stderr


def proc_state(pid: int) -> str | None:
    """The state letter of a process (R, S, Z...), None if there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[0]


def alive(pid: int) -> bool:
    return proc_state(pid) not in (None, "Z", "X")


def children(pid: int) -> dict[int, str]:
    """Direct children of ``pid``: pid -> command line."""
    out: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) != pid:
                continue
        except (OSError, IndexError, ValueError):
            continue
        cmdline = cmdline_of(int(entry.name))
        if cmdline is not None:
            out[int(entry.name)] = cmdline
    return out


def cmdline_of(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return None


@dataclass
class AllInOne:
    """``corral all-in-one --output json`` in the background; ``info`` is the JSON line it printed first."""

    data_dir: Path
    port: int
    log: Path
    proc: subprocess.Popen[str] | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def start(self, timeout: float = 90.0) -> dict[str, Any]:
        with self.log.open("a") as err:
            self.proc = subprocess.Popen(
                [*CORRAL, "all-in-one", "--data-dir", str(self.data_dir), "--listen", f"127.0.0.1:{self.port}",
                 "--output", "json"],
                stdout=subprocess.PIPE, stderr=err, text=True, env=clean_env(), cwd=self.data_dir.parent,
                preexec_fn=_default_sigint)
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            self.stop()
            raise AssertionError(f"corral all-in-one printed nothing within {timeout:g} s:\n"
                                 f"{self.log.read_text()[-3000:]}\n{self.logs()}")
        self.info = json.loads(line)
        return self.info

    def logs(self) -> str:
        parts = []
        for path in sorted((self.data_dir / "logs").glob("*.log")):
            parts.append(f"--- {path.name}\n{path.read_text(errors='replace')[-2000:]}")
        return "\n".join(parts)

    def interrupt(self, timeout: float = 45.0) -> int:
        """Ctrl-C: SIGINT to the all-in-one process; returns its exit status."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            if self.proc.stdout is not None:
                self.proc.stdout.close()

    def stop(self) -> None:
        """Teardown: SIGINT, then SIGKILL for it and whatever children it left."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        kids = children(proc.pid)
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for pid, cmdline in kids.items():
            if alive(pid) and cmdline_of(pid) == cmdline:  # still ours, not a reused pid
                os.kill(pid, signal.SIGKILL)
        if proc.stdout is not None:
            proc.stdout.close()


def verify(info: dict[str, Any]) -> ssl.SSLContext:
    """Checks the all-in-one engine's certificate against its CA (it serves HTTPS)."""
    return ssl.create_default_context(cafile=info["ca"])


def api(info: dict[str, Any]) -> httpx.Client:
    """The engine's REST API with the all-in-one's admin token, for checks the CLI is not under test for."""
    return httpx.Client(base_url=info["url"] + "/api/v1", headers={"Authorization": f"Bearer {info['token']}"},
                        timeout=30, verify=verify(info))


@contextmanager
def all_in_one(root: Path) -> Iterator[tuple[AllInOne, Cli]]:
    """``corral all-in-one`` on ``root/data`` and a ``Cli`` logged in to it with ``corral login``."""
    (root / "config").mkdir(exist_ok=True)
    server = AllInOne(root / "data", free_port(), root / "all-in-one.stderr")
    try:
        info = server.start()
        assert info["url"] == f"https://127.0.0.1:{server.port}", info
        assert info["token"] and set(info["hosts"]) == {"xen-host", "kvm-host"}, info
        assert Path(info["data_dir"]) == server.data_dir.resolve()
        cli = Cli(root / "config", root)
        assert "logged in" in cli.run("login", info["url"], "--token", info["token"], "--ca", info["ca"]).stdout
        yield server, cli
    except BaseException:
        print(server.logs())
        raise
    finally:
        server.stop()
