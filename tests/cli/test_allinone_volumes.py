"""``corral vm create NAME --disk size=1G`` then ``corral vm start NAME`` in a fresh ``corral all-in-one``
(issue 12): the all-in-one's ``local`` dir domain takes the new volume, made on the host the VM is placed on;
``--disk volume=NAME`` attaches a kept one; bad ``--disk`` values exit 2 naming the option or the field."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.cli.support import AllInOne, Cli, all_in_one, api


@pytest.fixture(scope="module")
def aio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[AllInOne, Cli]]:
    with all_in_one(tmp_path_factory.mktemp("allinone-volumes")) as running:
        yield running


def test_vm_with_a_new_disk_works_out_of_the_box(aio: tuple[AllInOne, Cli]) -> None:
    server, cli = aio
    web = cli.json("vm", "create", "web1", "--disk", "size=1G")
    disk = web["spec"]["disks"][0]
    assert (disk["volume"], disk["storage"], disk["format"], disk["source"]) == ("web1-disk0", "local", "qcow2", None)
    pending = cli.json("volume", "list", "--vm", web["id"])["items"]
    assert [(v["name"], v["state"], v["capacity_bytes"]) for v in pending] == [("web1-disk0", "pending", 1 << 30)]

    started = cli.json("vm", "start", "web1")
    assert started["state"] == "up", started
    vol = cli.json("volume", "list", "--name", "web1-disk0")["items"][0]
    assert (vol["state"], vol["host"]) == ("ready", started["host_name"]), vol
    assert vol["path"].endswith("/images/web1-disk0"), vol
    with api(server.info) as rest:
        shown = rest.get(f"/vms/{web['id']}").json()
    assert [d["source"] for d in shown["devices"] if d["kind"] == "disk"] == [vol["path"]]

    cli.json("vm", "stop", "web1")
    assert cli.json("vm", "start", "web1")["host_name"] == started["host_name"]  # where its volume is
    cli.json("vm", "stop", "web1")
    kept = cli.json("vm", "delete", "web1", "--keep-volumes")
    assert kept["kept_volumes"] is True
    left = cli.json("volume", "list", "--name", "web1-disk0")["items"]
    assert [(v["state"], v["vm_id"]) for v in left] == [("ready", None)]  # kept, no longer owned
    again = cli.json("vm", "create", "web2", "--disk", "volume=web1-disk0")
    cli.json("vm", "delete", "web2")  # attached, not its own: it stays
    assert [v["name"] for v in cli.json("volume", "list", "--name", "web1-disk0")["items"]] == ["web1-disk0"]
    assert again["spec"]["disks"][0]["volume"] == "web1-disk0"
    cli.json("volume", "delete", "web1-disk0")
    assert cli.json("volume", "list", "--name", "web1-disk0")["items"] == []


def test_disk_options(aio: tuple[AllInOne, Cli]) -> None:
    _, cli = aio
    task = cli.json("volume", "create", "data1", "--storage", "local", "--size", "64M", "--format", "raw")
    data1 = task.get("result", task)
    assert data1["name"] == "data1", task
    vm = cli.json("vm", "create", "db1", "--disk", "volume=data1,bus=virtio",
                  "--disk", "size=512M,format=raw,storage=local", "--disk", "/srv/raw.img,format=raw")
    d0, d1, d2 = vm["spec"]["disks"]
    assert (d0["volume"], d0["format"], d0["bus"]) == ("data1", "raw", "virtio")
    assert (d1["volume"], d1["format"]) == ("db1-disk1", "raw")
    assert (d2["source"], d2["volume"]) == ("/srv/raw.img", None)
    cli.json("vm", "delete", "db1")
    assert [v["name"] for v in cli.json("volume", "list")["items"]] == ["data1"]  # attached, not its own

    assert "unknown option 'volume'" in cli.error("vm", "create", "x1", "--disk", "size=1G,volume=data1")
    assert "disks.0.storage" in cli.error("vm", "create", "x1", "--disk", "size=1G,storage=nope")
    assert "disks.0.volume" in cli.error("vm", "create", "x1", "--disk", "volume=nope")
    assert "unknown option 'colour'" in cli.error("vm", "create", "x1", "--disk", "size=1G,colour=red")
    assert "give a PATH, size=SIZE" in cli.error("vm", "create", "x1", "--disk", "format=raw")
    assert "--disk size=" in cli.error("vm", "create", "x1", "--disk", "size=lots")
