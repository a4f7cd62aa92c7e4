"""``corral vm create --ha``, ``corral vm set-ha``, ``corral host fencing|fence-test|confirm-rebooted`` (issue 13)
against a real engine (uvicorn in a thread, SQLite) and a real test-driver agent."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.cli.test_users_cli import engine, run  # noqa: F401 - the fixture
from tests.engine.agents import REPO, AgentProc


@pytest.fixture(autouse=True)
def fence_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORRAL_FENCE_PATH", str(REPO / "labs" / "fence"))


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[AgentProc]:
    a = AgentProc("h1", "kvm", ["br0"], tmp_path / "h1")
    a.start()
    try:
        yield a
    finally:
        a.stop()


def test_vm_ha_commands(engine: tuple[str, str]) -> None:  # noqa: F811
    vm = json.loads(run(engine, "vm", "create", "web", "--memory", "64", "--ha", "--ha-priority", "40", "-o", "json"))
    assert vm["ha"] is True and vm["ha_priority"] == 40
    assert json.loads(run(engine, "vm", "create", "batch", "--memory", "64", "-o", "json"))["ha"] is False
    off = yaml.safe_load(run(engine, "vm", "set-ha", "web", "off", "-o", "yaml"))
    assert off == {"id": vm["id"], "name": "web", "ha": False, "ha_priority": 40}
    assert json.loads(run(engine, "vm", "set-ha", "batch", "on", "--priority", "90", "-o", "json"))["ha_priority"] == 90
    assert "on or off" in run(engine, "vm", "set-ha", "web", "maybe", code=2)
    assert "priority" in run(engine, "vm", "set-ha", "web", "on", "--priority", "300", code=2)
    assert "ha_priority" in run(engine, "vm", "create", "x", "--memory", "64", "--ha-priority", "-1", code=2)


def test_host_fencing_commands(engine: tuple[str, str], agent: AgentProc, tmp_path: Path) -> None:  # noqa: F811
    run(engine, "host", "add", "h1", "--url", agent.url, "--token", agent.token)
    sleeper = subprocess.Popen(["sleep", "300"])
    try:
        pidfile = tmp_path / "h1.pid"
        pidfile.write_text(f"{sleeper.pid}\n")
        out = run(engine, "host", "fencing", "set", "h1", "--agent", "fence_corral_lab", "--option",
                  f"pidfile={pidfile}", "--option", "username=admin", "--password-prompt", "-o", "json",
                  stdin="pw-fence\n")
        data = json.loads(out)
        assert data["config"]["options"]["password"] is None and "pw-fence" not in out
        shown = run(engine, "host", "fencing", "show", "h1")
        assert "fence_corral_lab" in shown and "password=(set)" in shown and "pw-fence" not in shown
        assert "| agent" in run(engine, "host", "fencing", "show", "h1", "-o", "markdown")
        test = json.loads(run(engine, "host", "fence-test", "h1", "-o", "json"))
        assert test["power"] == "on" and test["exit"] == 0
        assert sleeper.poll() is None  # a test powers nothing off
        # setting it again without --password-prompt keeps the stored password
        run(engine, "host", "fencing", "set", "h1", "--agent", "fence_corral_lab", "--option", f"pidfile={pidfile}")
        assert "password=(set)" in run(engine, "host", "fencing", "show", "h1")
    finally:
        sleeper.kill()
        sleeper.wait()
    assert "off" in run(engine, "host", "fence-test", "h1")
    assert "[agent]" in run(engine, "host", "fencing", "set", "h1", "--agent", "fence_no_such_agent", code=2)
    assert "KEY=VALUE" in run(engine, "host", "fencing", "set", "h1", "--agent", "fence_corral_lab",
                               "--option", "novalue", code=2)
    assert "only a host that does not answer" in run(engine, "host", "confirm-rebooted", "h1", "--yes", code=2)
    run(engine, "host", "fencing", "remove", "h1")
    assert "agent" in run(engine, "host", "fence-test", "h1", code=2)
