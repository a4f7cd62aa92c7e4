"""``corral all-in-one`` started as a user would, and used through the ``corral`` command.

One all-in-one (engine + an emulated Xen host with bridge xenbr0 + an emulated KVM host with bridge br0, on
libvirt's test driver) serves the module; each test makes VMs of its own names. Every command under test runs
as a subprocess with ``--output json`` (the whole of stdout must parse) or as a table; the REST API is read
directly only to check what the CLI did. Ctrl-C and a restart are in ``test_allinone_restart.py``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cli.support import AllInOne, Cli, all_in_one, api, eventually

DOMAIN_XML = """<domain type='kvm'>
  <name>{name}</name>
  <memory unit='MiB'>256</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/><source file='/var/lib/corral/{name}.qcow2'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    {extra}
    <interface type='bridge'><source bridge='{bridge}'/><model type='virtio'/></interface>
  </devices>
</domain>
"""
FLOPPY = "<disk type='file' device='floppy'><source file='/var/lib/corral/boot.img'/><target dev='fda'/></disk>"


@pytest.fixture(scope="module")
def aio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[AllInOne, Cli]]:
    with all_in_one(tmp_path_factory.mktemp("allinone")) as running:
        yield running


def import_spec(cli: Cli, name: str, bridge: str, extra: str = "") -> Path:
    """``corral xml import`` of a foreign domain (virtio disk and NIC), saved for ``vm create --spec``."""
    xml = cli.cwd / f"{name}.xml"
    xml.write_text(DOMAIN_XML.format(name=name, bridge=bridge, extra=extra))
    out = cli.run("xml", "import", str(xml))
    spec = cli.cwd / f"{name}.json"
    spec.write_text(out.stdout)
    assert json.loads(out.stdout)["name"] == name
    return spec


def decisions(plan: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {d["path"]: (d["outcome"], d["detail"]) for d in plan["decisions"]}


def test_login_hosts_and_clusters(aio: tuple[AllInOne, Cli]) -> None:
    server, cli = aio
    saved = cli.config_home / "corral" / "cli.json"
    assert json.loads(saved.read_text()) == {"url": server.info["url"], "token": server.info["token"],
                                             "ca": Path(server.info["ca"]).read_text()}
    assert saved.stat().st_mode & 0o777 == 0o600
    # a wrong token is refused at login and nothing is saved; without a login every command says so
    other = Cli(cli.cwd / "other-config", cli.cwd)
    assert "unknown token" in other.error("login", server.info["url"], "--token", "not-the-token", "--ca",
                                          server.info["ca"], code=1)
    assert not (other.config_home / "corral" / "cli.json").exists()
    assert "not logged in" in other.error("host", "list")

    # both hosts were added and are up before all-in-one printed its line
    hosts = {h["name"]: h for h in cli.json("host", "list")["items"]}
    assert set(hosts) == {"xen-host", "kvm-host"}
    assert all(h["state"] == "up" and h["emulated"] is True for h in hosts.values()), hosts
    assert (hosts["xen-host"]["hypervisor"], hosts["xen-host"]["flavor"]) == ("xen", "xen")
    assert (hosts["kvm-host"]["hypervisor"], hosts["kvm-host"]["flavor"]) == ("kvm", "kvm")
    xen = cli.json("host", "show", "xen-host")
    assert xen["id"] == hosts["xen-host"]["id"] and "xenbr0" in xen["bridges"] and "br0" not in xen["bridges"]
    kvm = cli.json("host", "show", hosts["kvm-host"]["id"])  # by id as well as by name
    assert kvm["name"] == "kvm-host" and "br0" in kvm["bridges"] and kvm["info"]["hardware_check"]["ok"]
    table = cli.run("host", "list").stdout
    assert "xen-host" in table and "kvm-host" in table and "up" in table

    created = cli.json("cluster", "create", "lab", "--description", "the lab", "--flavor-policy", "kvm")
    assert (created["name"], created["description"], created["flavor_policy"]) == ("lab", "the lab", "kvm")
    clusters = {c["name"]: c for c in cli.json("cluster", "list")["items"]}
    assert set(clusters) == {"default", "lab"} and clusters["lab"]["id"] == created["id"]
    assert "cluster" in cli.error("cluster", "create", "lab")  # taken: a conflict, exit 2


def test_create_plan_start_stop_delete(aio: tuple[AllInOne, Cli]) -> None:
    server, cli = aio
    # ---- create from options: every option lands in the stored spec
    web = cli.json("vm", "create", "web", "--memory", "512", "--vcpus", "1",
                   "--disk", "/var/lib/corral/web.qcow2,format=qcow2", "--nic", "bridge=br0",
                   "--cdrom", "/srv/iso/installer.iso", "--kernel", "/boot/vmlinuz", "--initrd", "/boot/initrd.img",
                   "--cmdline", "console=ttyS0 quiet")
    spec = web["spec"]
    assert (web["name"], web["state"], web["host_id"]) == ("web", "down", None)
    assert (spec["memory_mib"], spec["vcpus"]) == (512, 1)
    disk, cdrom = spec["disks"]
    assert (disk["device"], disk["source"], disk["format"]) == ("disk", "/var/lib/corral/web.qcow2", "qcow2")
    assert (cdrom["device"], cdrom["source"], cdrom["readonly"]) == ("cdrom", "/srv/iso/installer.iso", True)
    assert [(n["source_type"], n["source"]) for n in spec["nics"]] == [("bridge", "br0")]
    assert (spec["kernel"], spec["initrd"], spec["cmdline"]) == (
        "/boot/vmlinuz", "/boot/initrd.img", "console=ttyS0 quiet")

    # ---- create from a spec written by ``corral xml import`` (virtio disk, virtio NIC on xenbr0)
    spec_file = import_spec(cli, "imported", "xenbr0")
    imported = cli.json("vm", "create", "--spec", str(spec_file))
    assert imported["name"] == "imported" and imported["id"] == json.loads(spec_file.read_text())["id"]

    # ---- the plans differ: virtio is translated on the Xen host, native on the KVM host
    on_xen = cli.json("vm", "plan", "imported", "--host", "xen-host")
    on_kvm = cli.json("vm", "plan", "imported", "--host", "kvm-host")
    assert (on_xen["flavor"], on_xen["host"], on_kvm["flavor"], on_kvm["host"]) == (
        "xen", "xen-host", "kvm", "kvm-host")
    assert on_xen["ok"] is True
    x, k = decisions(on_xen), decisions(on_kvm)
    # the KVM host has no bridge xenbr0: its plan says so for that field instead of "native" (issue 20 item 4)
    assert on_kvm["ok"] is False and k["nics.0.source"][0] == "refused" and "xenbr0" in k["nics.0.source"][1]
    assert x["disks.0.bus"][0] == "translated" and "virtio -> ide" in x["disks.0.bus"][1]
    assert x["nics.0.model"][0] == "translated" and "virtio -> e1000" in x["nics.0.model"][1]
    assert k["disks.0.bus"] == ("native", "virtio") and k["nics.0.model"] == ("native", "virtio")
    # the engine gave the NIC its MAC when the VM was created: both hosts render it, neither generates one
    assert "nics.0.mac" not in x and "nics.0.mac" not in k
    table = cli.run("vm", "plan", "imported", "--host", "xen-host").stdout
    assert "translated" in table and "virtio -> ide" in table

    # ---- start without a host: the scheduler picks the KVM host, the only one with bridge br0
    started = cli.json("vm", "start", "web")
    assert (started["state"], started["host_name"]) == ("up", "kvm-host"), started
    kvm_host_id = started["host_id"]
    assert {r["host"]: r["reasons"] for r in started["placement"]["rejected"]} == {
        "xen-host": ["missing bridge(s): br0"]}
    # ---- start on a named host
    started = cli.json("vm", "start", "imported", "--host", "xen-host")
    assert (started["state"], started["host_name"]) == ("up", "xen-host"), started
    shown = cli.json("vm", "show", "imported")
    assert shown["host"]["name"] == "xen-host" and shown["devices_source"] == "live"
    assert shown["live"]["state"] == "up" and shown["spec"]["disks"][0]["bus"] == "virtio"
    assert "cannot start VM web while it is up" in cli.error("vm", "start", "web")

    # ---- list and filters
    listed = {v["name"]: v for v in cli.json("vm", "list")["items"]}
    assert (listed["web"]["state"], listed["web"]["host_name"]) == ("up", "kvm-host")
    assert (listed["imported"]["state"], listed["imported"]["host_name"]) == ("up", "xen-host")
    on_kvm_host = [v["name"] for v in cli.json("vm", "list", "--host", "kvm-host", "--state", "up")["items"]]
    assert on_kvm_host == ["web"]
    table = cli.run("vm", "list").stdout
    assert "web" in table and "kvm-host" in table and "imported" in table

    # ---- stop (waits for the task), delete
    stopped = cli.json("vm", "stop", "web")
    assert (stopped["state"], stopped["host_id"], stopped["last_host_id"]) == ("down", None, kvm_host_id)
    assert cli.json("vm", "delete", "web") == {"id": web["id"], "name": "web", "deleted": True}
    assert "VM imported is up; stop it first" in cli.error("vm", "delete", "imported")

    # ---- the events tell the story
    mine = [(e["type"], e["message"]) for e in cli.json("event", "list", "--limit", "1000")["items"]
            if e["object_id"] == web["id"]]
    for expected in (("vm_created", "VM web created"), ("vm_placed", "VM web placed on kvm-host"),
                     ("vm_state", "VM web is up (start)"), ("vm_state", "VM web is down (stop)"),
                     ("vm_deleted", "VM web deleted")):
        assert expected in mine, mine
    by_object = cli.json("event", "list", "--object", imported["id"])["items"]
    assert by_object and {(e["object_id"], e["object_name"]) for e in by_object} == {(imported["id"], "imported")}
    assert "VM imported placed on xen-host" in cli.run("event", "list", "--limit", "1000").stdout
    with api(server.info) as http:  # what the CLI did is what the engine holds
        assert http.get(f"/vms/{web['id']}").status_code == 404
        assert http.get(f"/vms/{imported['id']}").json()["host_id"] == started["host_id"]


def test_no_wait_returns_a_task(aio: tuple[AllInOne, Cli]) -> None:
    server, cli = aio
    vm = cli.json("vm", "create", "nowait", "--memory", "128", "--nic", "bridge=xenbr0")
    task = cli.json("vm", "start", "nowait", "--no-wait")
    assert (task["kind"], task["object_type"], task["object_id"]) == ("vm_start", "vm", vm["id"]), task
    assert task["state"] in ("pending", "running", "succeeded") and task["finished_at"] is None
    with api(server.info) as http:
        eventually(lambda: http.get(f"/tasks/{task['id']}").json()["state"] == "succeeded", what="the start task")
        done = cli.json("task", "show", task["id"])
        assert done["state"] == "succeeded" and done["finished_at"] and done["result"]["host"] == "xen-host", done
        assert http.get(f"/vms/{vm['id']}").json()["state"] == "up"
        assert "vm_start" in cli.run("task", "show", task["id"]).stdout
        assert "no task 'nosuch'" in cli.error("task", "show", "nosuch")

        stop = cli.json("vm", "stop", "nowait", "--no-wait")
        assert stop["kind"] == "vm_stop" and stop["id"] != task["id"]
        eventually(lambda: http.get(f"/tasks/{stop['id']}").json()["state"] == "succeeded", what="the stop task")
        assert http.get(f"/vms/{vm['id']}").json()["state"] == "down"
    assert "VM nowait deleted" in cli.run("vm", "delete", "nowait").stdout


def test_errors_exit_2_with_the_reason(aio: tuple[AllInOne, Cli]) -> None:
    server, cli = aio
    for args in (("vm", "show", "ghost"), ("vm", "start", "ghost")):
        assert "no vm named or with id 'ghost'" in cli.error(*args), args

    # a floppy (the Xen flavor refuses it) on a bridge only the Xen host has: no host can run it
    floppy = cli.json("vm", "create", "--spec", str(import_spec(cli, "floppy", "xenbr0", FLOPPY)))
    assert [d["device"] for d in floppy["spec"]["disks"]] == ["disk", "floppy"]
    assert decisions(cli.json("vm", "plan", "floppy", "--host", "xen-host"))["disks.1.device"][0] == "refused"
    message = cli.error("vm", "start", "floppy")
    assert "no host can run VM floppy" in message
    assert "xen-host: xen flavor refuses disks.1.device" in message and "floppy" in message
    assert "kvm-host: missing bridge(s): xenbr0" in message

    # more memory than any host has; and with --host only that host is considered
    huge = cli.json("vm", "create", "huge", "--memory", "1000000")
    message = cli.error("vm", "start", "huge")
    assert "kvm-host: not enough free memory: needs 1000000 MiB" in message
    assert "xen-host: not enough free memory: needs 1000000 MiB" in message
    message = cli.error("vm", "start", "huge", "--host", "kvm-host")
    assert "kvm-host: not enough free memory" in message and "xen-host" not in message
    assert "no host named or with id 'atlantis'" in cli.error("vm", "start", "huge", "--host", "atlantis")
    warned = cli.json("event", "list", "--object", huge["id"], "--severity", "warning")["items"]
    assert [e["type"] for e in warned] == ["vm_no_host", "vm_no_host"], warned

    # bad input: exit 2 and the field or option at fault
    assert "disks.0.source" in cli.error("vm", "create", "rel", "--disk", "relative/path.img")
    assert "unknown option 'speed'" in cli.error("vm", "create", "rel", "--nic", "bridge=br0,speed=10")
    with api(server.info) as http:
        for vm in (floppy, huge):  # nothing ran anywhere
            row = http.get(f"/vms/{vm['id']}").json()
            assert (row["state"], row["host_id"]) == ("down", None), row
        assert [v["name"] for v in http.get("/vms", params={"name": "rel"}).json()["items"]] == []


def test_yaml_and_markdown_of_the_engines_answers(aio: tuple[AllInOne, Cli]) -> None:
    """yaml is the json answer, whole; markdown the table's view as a markdown table (both were tables)."""
    _server, cli = aio
    spec = import_spec(cli, "formats", "xenbr0")
    created = cli.json("vm", "create", "--spec", str(spec))
    for args in (("vm", "show", "formats"), ("vm", "plan", "formats", "--host", "xen-host"),
                 ("vm", "list", "--name", "formats"), ("cluster", "list")):
        as_json = cli.json(*args)
        assert yaml.safe_load(cli.run(*args, "--output", "yaml").stdout) == as_json, args
        markdown = cli.run(*args, "-o", "markdown").stdout
        assert "|---|" in markdown and "┃" not in markdown, (args, markdown)
    plan = cli.json("vm", "plan", "formats", "--host", "xen-host")
    markdown = cli.run("vm", "plan", "formats", "--host", "xen-host", "-o", "markdown").stdout
    assert "### plan of formats on xen-host (xen)" in markdown and "| field | outcome | detail |" in markdown
    for d in plan["decisions"]:
        assert f"| {d['path']} | {d['outcome']} | {d['detail'].replace('|', chr(92) + '|')} |" in markdown
    listed = cli.run("vm", "list", "--name", "formats", "-o", "markdown").stdout
    assert f"| {created['id']} | formats | down |" in listed
    shown = cli.run("vm", "show", "formats", "-o", "markdown").stdout
    assert "| name | formats |" in shown and "**spec**" in shown and "```json" in shown
    assert yaml.safe_load(cli.run("vm", "delete", "formats", "-o", "yaml").stdout) == {
        "id": created["id"], "name": "formats", "deleted": True}


def test_host_show_lists_the_hardware_check(aio: tuple[AllInOne, Cli]) -> None:
    _server, cli = aio
    for host in ("xen-host", "kvm-host"):
        check = cli.json("host", "show", host)["info"]["hardware_check"]  # by name as well as by id
        assert check["ok"] is True and check["items"], check
        table = cli.run("host", "show", host).stdout
        markdown = cli.run("host", "show", host, "--output", "markdown").stdout
        assert "hardware check: ok" in table and "### hardware check: ok" in markdown
        for item in check["items"]:  # every item: its name, ok or FAIL, and the detail
            row = [line for line in table.splitlines() if f" {item['name']} " in line and item["detail"] in line]
            assert len(row) == 1 and " ok " in row[0], (item, table)
            assert f"| {item['name']} | ok | {item['detail']} |" in markdown, markdown


def test_console_of_a_vm_without_one_fails_and_says_why(aio: tuple[AllInOne, Cli]) -> None:
    _server, cli = aio
    quiet = cli.cwd / "quiet.json"
    quiet.write_text(json.dumps({"name": "quiet", "memory_mib": 128, "consoles": [],
                                 "nics": [{"source": "xenbr0"}]}))
    cli.json("vm", "create", "--spec", str(quiet))
    cli.json("vm", "create", "chatty", "--memory", "128", "--nic", "bridge=xenbr0")  # a serial console
    for name in ("quiet", "chatty"):
        assert cli.json("vm", "start", name, "--host", "xen-host")["state"] == "up"
    for output in ("table", "json"):
        message = cli.error("vm", "console", "quiet", "--output", output)
        assert "VM quiet has no serial port or console" in message, message
    log = cli.json("vm", "console", "chatty")
    assert log["path"] and isinstance(log["log"], str)
    cli.run("vm", "console", "chatty")
    for name in ("quiet", "chatty"):
        cli.json("vm", "stop", name)
        cli.json("vm", "delete", name)
