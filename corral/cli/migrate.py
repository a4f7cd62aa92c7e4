"""``corral vm migrate VM [--host H] [--bandwidth MIB] [--no-wait]`` and ``corral task cancel ID`` (issue 13,
docs/migration.md): REST clients of ``POST /api/v1/vms/{id}/migrate`` and ``DELETE /api/v1/tasks/{id}``. While
waiting, the task's progress line (``migrating to B: 45% (60/128 MiB), 3.2 s``) is printed on stderr as it
changes. A refusal exits 2 naming the field; a failed migration exits 2 with its reason (the VM is on its
source, running)."""

from __future__ import annotations

import json
from typing import Any

import typer

from corral.cli.client import ApiClient
from corral.cli.common import fail
from corral.cli.output import Output, Text, output_option, show

OutputOpt = output_option()


def vm_migrate(vm: str,
               host: str = typer.Option(None, "--host", help="destination host (default: the scheduler's choice)"),
               bandwidth: int = typer.Option(None, "--bandwidth", help="limit in MiB/s (where the flavor can)"),
               live: bool = typer.Option(True, "--live/--paused", help="--paused: the guest is paused while its "
                                         "memory is copied (hosts that cannot track dirty pages)"),
               wait: bool = typer.Option(True, "--wait/--no-wait", help="wait for the migration to end"),
               output: Output = OutputOpt) -> None:
    """Live-migrate a running VM to another host of its cluster."""
    api = ApiClient()
    v = api.resolve("vms", vm)
    body: dict[str, Any] = {}
    if host:
        body["host"] = api.resolve("hosts", host)["id"]
    if bandwidth is not None:
        body["bandwidth_mib"] = bandwidth
    if not live:
        body["live"] = False
    task = api.request("POST", f"/vms/{v['id']}/migrate", json=body)
    if not wait:
        show(task, output, Text(f"{v['name']}: migration task {task['id']} {task['state']}"))
        return
    progress = None if output.machine else (lambda m: typer.echo(f"... {m}", err=True))
    task = api.wait_task(task, progress, timeout=3600.0)
    if task["state"] == "failed":
        err = task.get("error") or {}
        extra = f"\n{json.dumps(err['rejections'], indent=2)}" if err.get("rejections") else ""
        fail(f"migration of {v['name']} failed ({err.get('code')}): {err.get('message', err)}{extra}")
    result = task.get("result") or {}
    show(result, output, Text(f"{v['name']}: on {result.get('host')} (from {result.get('from_host')}, "
                              f"{result.get('elapsed_s')} s)"))


def task_cancel(task_id: str, output: Output = OutputOpt) -> None:
    """Cancel a running task that can be cancelled (a migration: the VM stays on its source)."""
    task = ApiClient().request("DELETE", f"/tasks/{task_id}")
    show(task, output, Text(f"task {task['id']} ({task['kind']}): {task['state']}"
                            + (f": {task['message']}" if task.get("message") else "")))


def register(vm_app: typer.Typer, task_app: typer.Typer) -> None:
    vm_app.command("migrate")(vm_migrate)
    task_app.command("cancel")(task_cancel)
