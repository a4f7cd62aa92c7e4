"""The systemd unit a deploy writes on a host with systemd (this machine has no systemd running, so the deploy
tests take the start-script path): systemd's own checker accepts it, and its ExecStart line, run as written,
serves the agent with the config file the deploy writes."""

from __future__ import annotations

import shlex
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from corral.engine.deploy import units

VENV = Path(sys.prefix)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def unit_text(config: Path) -> str:
    values = {"service": units.SERVICE, "venv": shlex.quote(str(VENV)), "config": shlex.quote(str(config)),
              "pidfile": "/run/corral-agent.pid", "log": "/var/log/corral/agent.log"}
    return units.UNIT.format(**values)


def agent_config(tmp_path: Path, port: int) -> Path:
    """The deploy's agent.toml, as ``_configure`` writes it, for the test driver and a token (no certificates)."""
    token = tmp_path / "token"
    token.write_text("unit-test-token-0123456789")
    config = tmp_path / "agent.toml"
    config.write_text(units.agent_toml({"libvirt": "test:///default", "listen": f"127.0.0.1:{port}",
                                    "token_file": str(token), "state_dir": str(tmp_path / "state"),
                                    "allow_tcg": True}))
    return config


def test_systemd_accepts_the_unit(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian package systemd)")
    if not (VENV / "bin" / "corral").exists():
        pytest.skip(f"no corral command in {VENV}/bin (the project is not installed in this Python)")
    unit = tmp_path / f"{units.SERVICE}.service"
    unit.write_text(unit_text(agent_config(tmp_path, free_port())))
    done = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    broken = tmp_path / "broken" / unit.name  # the checker does refuse a unit it cannot run
    broken.parent.mkdir()
    broken.write_text(unit.read_text().replace(str(VENV), "/nowhere"))
    assert subprocess.run([analyze, "verify", str(broken)], capture_output=True, timeout=60).returncode != 0


def test_the_units_command_serves_the_agent(tmp_path: Path) -> None:
    if not (VENV / "bin" / "corral").exists():
        pytest.skip(f"no corral command in {VENV}/bin (the project is not installed in this Python)")
    port = free_port()
    text = unit_text(agent_config(tmp_path, port))
    exec_start = next(line for line in text.splitlines() if line.startswith("ExecStart="))
    proc = subprocess.Popen(shlex.split(exec_start.removeprefix("ExecStart=")), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/v1/health", timeout=2).json()
                break
            except httpx.TransportError:
                assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else "agent exited"
                assert time.monotonic() < deadline, "the agent did not answer"
                time.sleep(0.2)
        assert health["status"] == "ok" and health["libvirt"] is True
        denied = httpx.get(f"http://127.0.0.1:{port}/v1/vms", timeout=5)
        assert denied.status_code == 401  # the token file of the config is in force
    finally:
        proc.terminate()
        proc.wait(20)
