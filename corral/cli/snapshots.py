"""``corral vm snapshot create|list|revert|delete VM NAME``: a VM's snapshots, over the engine's REST API (issue 12).

Taking, reverting and deleting are tasks: the command waits for them (``--no-wait`` prints the task) and
prints the task's progress on stderr; a failed task exits 2 with the field it names (``[state]`` for a live
snapshot a Xen host cannot take, ``[disks.0.format]`` for a raw disk).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import typer

from corral.cli.client import ApiClient
from corral.cli.output import Output, Record, Rows, Text, output_option, show
from corral.cli.tasks import finish_task

OutputOpt = output_option()
WaitOpt = typer.Option(True, "--wait/--no-wait", help="wait for the task to finish")

snapshot_app = typer.Typer(no_args_is_help=True, help="A VM's snapshots: with its memory where it runs on KVM, "
                                                      "of its stopped qcow2 disks on Xen.")

COLUMNS = ["name", "created_at", "vm_state", "memory", "current", "description"]


def _vm(api: ApiClient, vm: str) -> dict[str, Any]:
    return api.resolve("vms", vm)


def _path(vm_id: str, *rest: str) -> str:
    return f"/vms/{vm_id}/snapshots" + "".join("/" + quote(r, safe="") for r in rest)




@snapshot_app.command("list")
def snapshot_list(vm: str, output: Output = OutputOpt) -> None:
    """The VM's snapshots, as its host has them (oldest first)."""
    api = ApiClient()
    data = api.get(_path(_vm(api, vm)["id"]))
    show(data, output, Rows(COLUMNS, data["items"], f"snapshots of {vm} on {data['host']} ({data['mechanism']})"))


@snapshot_app.command("create")
def snapshot_create(vm: str, name: str, description: str = typer.Option("", "--description", "-d"),
                    wait: bool = WaitOpt, output: Output = OutputOpt) -> None:
    """Take a snapshot: disks and memory of a running KVM VM; the disks of a stopped one (Xen: stopped only)."""
    api = ApiClient()
    v = _vm(api, vm)
    task = api.request("POST", _path(v["id"]), json={"name": name, "description": description})
    result = finish_task(api, task, wait, output, f"taking snapshot {name} of {v['name']}")
    if result is not None:
        show(result, output, Record(result.get("snapshot") or {}, f"snapshot {name} of {v['name']}"))


@snapshot_app.command("revert")
def snapshot_revert(vm: str, name: str, wait: bool = WaitOpt, output: Output = OutputOpt) -> None:
    """Bring the VM back to the snapshot (a snapshot taken running comes back running)."""
    api = ApiClient()
    v = _vm(api, vm)
    result = finish_task(api, api.request("POST", _path(v["id"], name, "revert")), wait, output,
                   f"reverting {v['name']} to snapshot {name}")
    if result is not None:
        show(result, output, Text(f"{v['name']} reverted to snapshot {name}: {result.get('state', '?')}"))


@snapshot_app.command("delete")
def snapshot_delete(vm: str, name: str, wait: bool = WaitOpt, output: Output = OutputOpt) -> None:
    api = ApiClient()
    v = _vm(api, vm)
    result = finish_task(api, api.request("DELETE", _path(v["id"], name)), wait, output,
                   f"deleting snapshot {name} of {v['name']}")
    if result is not None:
        show(result, output, Text(f"snapshot {name} of {v['name']} deleted"))
