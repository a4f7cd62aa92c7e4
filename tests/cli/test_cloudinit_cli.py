"""``corral vm create --cloud-init user=,ssh-key=FILE,hostname=,network=dhcp|static:...`` (issue 12): the
option's value as a VmSpec's ``cloud_init``, keys read from their files, and what the engine then refuses by
field (a real engine, SQLite)."""

from __future__ import annotations

from pathlib import Path

import click
import pytest
import typer

from corral.cli.cloudinit import parse_cloud_init
from tests.cli.test_images_cli import corral, engine  # noqa: F401 - the engine fixture
from tests.engine.test_images import Engine

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJxt6G9g+a8LegMBJ+yAwHL9mOGHCiLG2pPmu0OuwuJ3 alice@laptop"
KEY2 = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJxt6G9g+a8LegMBJ+yAwHL9mOGHCiLG2pPmu0OuwuJ3 alice@desk"


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "id_ed25519.pub"
    path.write_text(f"{KEY}\n")
    return path


def test_parse_every_option(key_file: Path, tmp_path: Path) -> None:
    many = tmp_path / "authorized_keys"
    many.write_text(f"# mine\n{KEY2}\n\n")
    assert parse_cloud_init(f"user=alice,ssh-key={key_file},ssh-key={many},hostname=web1,"
                            "network=static:192.0.2.10/24,gw=192.0.2.1,dns=192.0.2.53,dns=192.0.2.54") == {
        "user": "alice", "hostname": "web1", "ssh_authorized_keys": [KEY, KEY2],
        "network": {"mode": "static", "address": "192.0.2.10/24", "gateway": "192.0.2.1",
                    "dns": ["192.0.2.53", "192.0.2.54"]}}
    assert parse_cloud_init("network=dhcp") == {"network": {"mode": "dhcp"}}
    assert parse_cloud_init("hostname=h") == {"hostname": "h"}


@pytest.mark.parametrize(("value", "says"), [
    ("user", "unknown option"),
    ("password=x", "unknown option"),
    ("user=a,user=b", "given twice"),
    ("network=static", "network=dhcp or network=static:"),
    ("network=dhcp:10.0.0.1/24", "network=dhcp or network=static:"),
    ("ssh-key=/no/such/file.pub", "cannot read"),
])
def test_parse_refusals_exit_2(value: str, says: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises((typer.Exit, click.exceptions.Exit)) as err:
        parse_cloud_init(value)
    assert err.value.exit_code == 2
    assert says in capsys.readouterr().err


def test_a_private_key_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    private = tmp_path / "id_ed25519"
    private.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n"
                       "-----END OPENSSH PRIVATE KEY-----\n")
    with pytest.raises((typer.Exit, click.exceptions.Exit)):
        parse_cloud_init(f"ssh-key={private}")
    assert "private key" in capsys.readouterr().err


def test_vm_create_with_cloud_init(engine: Engine, key_file: Path) -> None:  # noqa: F811
    corral(engine, "vm", "create", "ci1", "--memory", "128", "--nic", "bridge=br0",
           "--cloud-init", f"user=alice,ssh-key={key_file},hostname=web1,network=dhcp")
    stored = engine.call("GET", "/vms/ci1", 200)["spec"]["cloud_init"]
    assert stored == {"user": "alice", "ssh_authorized_keys": [KEY], "hostname": "web1",
                      "network": {"mode": "dhcp", "address": None, "gateway": None, "dns": []}}
    out = corral(engine, "vm", "create", "ci2", "--memory", "128", "--cloud-init", "hostname=bad_name", code=2)
    assert "cloud_init.hostname" in out.stderr
