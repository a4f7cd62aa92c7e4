"""``corral template ...`` and ``corral vm create --template/--disk image=/--cdrom iso=`` in a fresh
``corral all-in-one`` (issue 12): a VM started once (its volume made), sealed as a template, VMs cloned from
it (thin and full) that start; refusals exit 2 naming the field; every --output."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.cli.support import AllInOne, Cli, all_in_one


@pytest.fixture(scope="module")
def aio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[AllInOne, Cli]]:
    with all_in_one(tmp_path_factory.mktemp("allinone-templates")) as running:
        yield running


def test_template_from_vm_and_clones(aio: tuple[AllInOne, Cli]) -> None:
    _, cli = aio
    cli.json("vm", "create", "gold", "--disk", "size=64M", "--vcpus", "2", "--memory", "256")
    assert "start the VM once" in cli.error("template", "create", "t1", "--from-vm", "gold")
    host = cli.json("vm", "start", "gold")["host_name"]
    assert "[vm]" in cli.error("template", "create", "t1", "--from-vm", "gold")  # running
    cli.json("vm", "stop", "gold")

    t = cli.json("template", "create", "t1", "--from-vm", "gold", "--description", "golden")
    assert (t["name"], t["state"], t["vcpus"], t["memory_mib"]) == ("t1", "ready", 2, 256)
    assert [(v["name"], v["host"]) for v in t["volumes"]] == [("gold-disk0", host)]
    table = cli.run("template", "list").stdout
    assert "t1" in table and "gold" in table
    assert "| t1 |" in cli.run("template", "list", "-o", "markdown").stdout
    assert "gold-disk0" in cli.run("template", "show", "t1").stdout
    assert cli.json("template", "show", "t1")["id"] == t["id"]

    web1 = cli.json("vm", "create", "web1", "--template", "t1", "--memory", "128", "--cdrom", "empty")
    assert (web1["memory_mib"], web1["vcpus"]) == (128, 2)
    disks = web1["spec"]["disks"]
    assert [(d["device"], d["volume"]) for d in disks] == [("disk", "web1-disk0"), ("cdrom", None)]
    web2 = cli.json("vm", "create", "web2", "--template", "t1", "--clone", "full")
    assert web2["spec"]["disks"][0]["volume"] == "web2-disk0"
    for vm in ("web1", "web2"):
        assert cli.json("vm", "start", vm)["host_name"] == host
    vols = {v["name"]: v for v in cli.json("volume", "list")["items"]}
    assert vols["web1-disk0"]["backing_id"] == vols["gold-disk0"]["id"]
    assert vols["web2-disk0"]["backing_id"] is None and vols["web2-disk0"]["state"] == "ready"

    assert "[template]" in cli.error("template", "delete", "t1")  # clones read it
    assert "--clone goes with --template" in cli.error("vm", "create", "x", "--clone", "full")
    assert "[clone]" in cli.error("vm", "create", "x", "--template", "t1", "--clone", "half")
    for vm in ("web1", "web2", "gold"):
        if vm != "gold":
            cli.json("vm", "stop", vm)
        cli.json("vm", "delete", vm)
    assert cli.json("template", "delete", "t1")["deleted"] is True
    assert cli.json("template", "list")["items"] == []


def test_image_and_iso_options_refused_by_field(aio: tuple[AllInOne, Cli]) -> None:
    _, cli = aio
    assert "disks.0.image" in cli.error("vm", "create", "i1", "--disk", "image=nope,size=2G")
    assert "disks.0.image" in cli.error("vm", "create", "i1", "--cdrom", "iso=nope")
    assert "unknown option" in cli.error("vm", "create", "i1", "--disk", "image=x,colour=red")
