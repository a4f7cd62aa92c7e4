"""``corral vm snapshot create|list|revert|delete`` against a real engine with real test-driver agents (the
engine fixture of the storage CLI tests): every --output, the task's result, refusals exit 2 naming the field."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from corral.cli.storage import parse_size
from tests.cli.test_storage_cli import corral, engine
from tests.engine.agents import AgentProc

__all__ = ["engine"]  # the fixture, used by name
assert parse_size  # the storage CLI module is the one imported for its fixture


def test_vm_snapshot_commands(engine: tuple[str, str, dict[str, AgentProc]], tmp_path: Path) -> None:
    url, token, _ = engine
    env = (url, token)
    spec = {"name": "snapcli", "memory_mib": 128, "vcpus": 1,
            "disks": [{"source": "/var/lib/corral/images/snapcli.qcow2", "format": "qcow2"}]}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    corral(env, "vm", "create", "snapcli", "--spec", str(tmp_path / "spec.json"), "-o", "json")
    corral(env, "vm", "start", "snapcli", "--host", "kvm-host")

    made = json.loads(corral(env, "vm", "snapshot", "create", "snapcli", "s1", "-d", "first", "-o", "json").stdout)
    assert made["snapshot"]["name"] == "s1" and made["snapshot"]["memory"] is True and made["host"] == "kvm-host"
    table = corral(env, "vm", "snapshot", "list", "snapcli").stdout
    assert "s1" in table and "first" in table and "libvirt" in table
    listed = yaml.safe_load(corral(env, "vm", "snapshot", "list", "snapcli", "-o", "yaml").stdout)
    assert [s["name"] for s in listed["items"]] == ["s1"] and listed["mechanism"] == "libvirt"
    assert "| s1 |" in corral(env, "vm", "snapshot", "list", "snapcli", "--output", "markdown").stdout

    dup = corral(env, "vm", "snapshot", "create", "snapcli", "s1", code=2)
    assert "[name]" in dup.stderr
    bad = corral(env, "vm", "snapshot", "create", "snapcli", "no good", code=2)
    assert "[name]" in bad.stderr

    corral(env, "vm", "stop", "snapcli")
    reverted = corral(env, "vm", "snapshot", "revert", "snapcli", "s1").stdout
    assert "reverted to snapshot s1: up" in reverted
    deleted = json.loads(corral(env, "vm", "snapshot", "delete", "snapcli", "s1", "-o", "json").stdout)
    assert deleted["deleted"] is True
    assert json.loads(corral(env, "vm", "snapshot", "list", "snapcli", "-o", "json").stdout)["items"] == []
    gone = corral(env, "vm", "snapshot", "delete", "snapcli", "s1", code=2)
    assert "[name]" in gone.stderr
