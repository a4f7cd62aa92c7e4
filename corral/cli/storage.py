"""``corral storage|volume``: storage domains and volumes, over the engine's REST API (issue 12).

Sizes are given as ``10G``, ``512M``, ``1T`` or bytes; the units are binary (``G`` is GiB), as qemu-img and
virsh read them. json and yaml print the engine's answers whole (bytes); tables show sizes in GiB/MiB.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote

import typer

from corral.cli.client import ApiClient
from corral.cli.common import fail
from corral.cli.output import Output, Record, Rows, Text, output_option, show
from corral.cli.tasks import finish_task

OutputOpt = output_option()
WaitOpt = typer.Option(True, "--wait/--no-wait", help="wait for the task to finish")

storage_app = typer.Typer(no_args_is_help=True, help="Storage domains: where volumes live (dir, nfs, logical).")
volume_app = typer.Typer(no_args_is_help=True, help="Volumes: disk images in a storage domain.")

_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGTP]?)(?:I?B)?\s*$", re.IGNORECASE)


def parse_size(text: str, option: str = "--size") -> int:
    """``10G`` -> 10 GiB in bytes; a plain number is bytes."""
    m = _SIZE.match(text)
    if not m:
        fail(f"{option} {text!r}: give a size such as 10G, 512M, 1T or a number of bytes")
    value = int(float(m.group(1)) * _UNITS[m.group(2).upper()])
    if value <= 0:
        fail(f"{option} {text!r}: the size must be more than 0")
    return value


def human(n: Any) -> str:
    if not isinstance(n, int):
        return ""
    for unit, size in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def _seg(ref: str) -> str:
    return quote(ref, safe="")


def _state_style(column: str, text: str) -> str | None:
    if column != "state":
        return None
    return {"active": "green", "ready": "green", "error": "bold red", "inactive": "yellow"}.get(text)


# --- storage domains -------------------------------------------------------------------------------------

@storage_app.command("list")
def storage_list(cluster: str = typer.Option(None, "--cluster"), limit: int = typer.Option(100),
                 output: Output = OutputOpt) -> None:
    data = ApiClient().get("/storage-domains", cluster=cluster, limit=limit)
    rows = [{**d, "hosts": f"{d['hosts_active']}/{d['hosts_total']} active"
             + (f", {d['hosts_error']} error" if d["hosts_error"] else ""),
             "where": d.get("path") or (d.get("source") or {}).get("vg") or ""} for d in data["items"]]
    show(data, output, Rows(["name", "cluster", "type", "where", "hosts", "volumes", "id"], rows,
                            "storage domains"))


@storage_app.command("add")
def storage_add(
    name: str,
    type_: str = typer.Option(..., "--type", help="dir, nfs or logical"),
    path: str = typer.Option(None, "--path", help="dir: the directory on each host; nfs: the mount point"),
    server: str = typer.Option(None, "--server", help="nfs: the NFS server"),
    export: str = typer.Option(None, "--export", help="nfs: the exported directory"),
    vg: str = typer.Option(None, "--vg", help="logical: the LVM volume group"),
    port: int = typer.Option(None, "--port", help="nfs: the server's NFS port (default 2049)"),
    nfs_version: int = typer.Option(None, "--nfs-version", help="nfs: 3 or 4 (mount with nfsvers=N)"),
    mount_option: list[str] = typer.Option(None, "--mount-option", help="nfs: a further mount option, "
                                           "'name' or 'name=value' (repeatable)"),
    cluster: str = typer.Option(None, "--cluster", help="default: the 'default' cluster"),
    output: Output = OutputOpt,
) -> None:
    """Add a storage domain: it is defined and started on every up host of the cluster; `show` says how each
    host took it."""
    body: dict[str, Any] = {"name": name, "type": type_}
    source: dict[str, Any] = {k: v for k, v in (("host", server), ("dir", export), ("vg", vg), ("port", port),
                                                ("nfs_version", nfs_version)) if v}
    if mount_option:
        source["mount_options"] = list(mount_option)
    if path:
        body["path"] = path
    if source:
        body["source"] = source
    if cluster:
        body["cluster"] = cluster
    _show_domain(ApiClient().request("POST", "/storage-domains", json=body), output)


@storage_app.command("show")
def storage_show(domain: str, output: Output = OutputOpt) -> None:
    """A domain and its state on each host of its cluster (capacity, free space, or why it is not there)."""
    _show_domain(ApiClient().get(f"/storage-domains/{_seg(domain)}"), output)


def _show_domain(data: dict[str, Any], output: Output) -> None:
    hosts = [{**h, "capacity": human(h.get("capacity_bytes")), "free": human(h.get("free_bytes"))}
             for h in data.get("hosts") or []]
    record = {k: v for k, v in data.items() if k != "hosts"}
    show(data, output, Record(record, f"storage domain {data['name']}"),
         Rows(["host", "state", "capacity", "free", "reason"], hosts, "on each host", _state_style))


@storage_app.command("remove")
def storage_remove(domain: str, output: Output = OutputOpt) -> None:
    """Remove a storage domain (refused while it holds volumes); its pools are undefined, files stay."""
    api = ApiClient()
    d = api.get(f"/storage-domains/{_seg(domain)}")
    api.request("DELETE", f"/storage-domains/{d['id']}")
    show({"id": d["id"], "name": d["name"], "removed": True}, output, Text(f"storage domain {d['name']} removed"))


# --- volumes -----------------------------------------------------------------------------------------------

def _volume_rows(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**v, "size": human(v.get("capacity_bytes")), "storage": v.get("domain")} for v in items]


VOLUME_COLUMNS = ["name", "storage", "host", "format", "size", "state", "vm", "path", "id"]


@volume_app.command("list")
def volume_list(storage: str = typer.Option(None, "--storage", help="storage domain"),
                host: str = typer.Option(None, "--host"), vm: str = typer.Option(None, "--vm"),
                name: str = typer.Option(None, "--name"), limit: int = typer.Option(100),
                after: str = typer.Option(None), output: Output = OutputOpt) -> None:
    api = ApiClient()
    if vm:
        vm = api.resolve("vms", vm)["id"]
    data = api.get("/volumes", domain=storage, host=host, vm=vm, name=name, limit=limit, after=after)
    show(data, output, Rows(VOLUME_COLUMNS, _volume_rows(data["items"]), "volumes", _state_style))


@volume_app.command("create")
def volume_create(
    name: str,
    storage: str = typer.Option(..., "--storage", help="storage domain (name or id)"),
    size: str = typer.Option(..., "--size", help="e.g. 10G, 512M"),
    format_: str = typer.Option(None, "--format", help="qcow2 (default) or raw (the only one on logical)"),
    host: str = typer.Option(None, "--host", help="local domains: the host (default: most free space)"),
    wait: bool = WaitOpt,
    output: Output = OutputOpt,
) -> None:
    """Create an empty volume (a task)."""
    body: dict[str, Any] = {"name": name, "domain": storage, "size_bytes": parse_size(size)}
    if format_:
        body["format"] = format_
    if host:
        body["host"] = host
    api = ApiClient()
    task = api.request("POST", "/volumes", json=body)
    _task_result(api, task, wait, output, f"creating volume {name}")


@volume_app.command("resize")
def volume_resize(volume: str, size: str = typer.Argument(..., help="the new size, e.g. 20G (volumes only grow)"),
                  storage: str = typer.Option(None, "--storage", help="its storage domain, where several domains "
                  "have a volume of that name"),
                  wait: bool = WaitOpt, output: Output = OutputOpt) -> None:
    """Grow a volume (a task): online when a running VM uses it and its hypervisor can, else offline."""
    api = ApiClient()
    task = api.request("POST", f"/volumes/{_seg(_volume_ref(api, volume, storage))}/resize",
                       json={"size_bytes": parse_size(size)})
    _task_result(api, task, wait, output, f"growing volume {volume}")


def _volume_ref(api: ApiClient, volume: str, storage: str | None) -> str:
    if not storage:
        return volume
    found = api.get("/volumes", domain=storage, name=volume, limit=2)["items"]
    if not found:
        fail(f"storage domain {storage} has no volume {volume!r}")
    return str(found[0]["id"])


@volume_app.command("delete")
def volume_delete(volume: str, storage: str = typer.Option(None, "--storage", help="its storage domain, "
                  "where several domains have a volume of that name"),
                  wait: bool = WaitOpt, output: Output = OutputOpt) -> None:
    """Delete a volume (a task); refused while a VM uses it."""
    api = ApiClient()
    task = api.request("DELETE", f"/volumes/{_seg(_volume_ref(api, volume, storage))}")
    _task_result(api, task, wait, output, f"deleting volume {volume}")


def _task_result(api: ApiClient, task: dict[str, Any], wait: bool, output: Output, doing: str) -> None:
    result = finish_task(api, task, wait, output, doing)
    if result is None:
        return
    if result.get("deleted"):
        show(result, output, Text(f"volume {result.get('name')} deleted"))
    else:
        show(result, output, Rows(VOLUME_COLUMNS, _volume_rows([result]), "volume", _state_style))


def register(app: typer.Typer) -> None:
    app.add_typer(storage_app, name="storage")
    app.add_typer(volume_app, name="volume")
