"""``corral template create|list|show|delete``: templates made from stopped VMs, over the engine's REST API.

``corral template create NAME --from-vm VM`` seals the VM's volumes as the template's read-only base volumes
(the VM goes on as a thin clone of them); ``corral vm create NAME --template T [--clone thin|full]`` makes a VM
whose disks are clones of them. json and yaml print the engine's answers whole.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import typer

from corral.cli.client import ApiClient
from corral.cli.output import Output, Record, Rows, Text, output_option, show
from corral.cli.storage import human
from corral.cli.tasks import finish_task

OutputOpt = output_option()
WaitOpt = typer.Option(True, "--wait/--no-wait", help="wait for the task to finish")

template_app = typer.Typer(no_args_is_help=True, help="Templates: stopped VMs sealed as base volumes to clone.")

COLUMNS = ["name", "state", "memory_mib", "vcpus", "disks", "clones", "source_vm", "cluster", "id"]


def _rows(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**t, "disks": len(t.get("volumes") or []), "clones": len(t.get("clones") or [])} for t in items]




def _show(t: dict[str, Any], output: Output) -> None:
    volumes = [{**v, "size": human(v.get("capacity_bytes"))} for v in t.get("volumes") or []]
    record = {k: v for k, v in t.items() if k not in ("spec", "volumes")}
    show(t, output, Record(record, f"template {t['name']}"),
         Rows(["name", "domain", "host", "format", "size", "path"], volumes, "base volumes (read-only)"))


@template_app.command("create")
def template_create(name: str, from_vm: str = typer.Option(..., "--from-vm", help="a stopped VM (name or id)"),
                    description: str = typer.Option("", "--description"), wait: bool = WaitOpt,
                    output: Output = OutputOpt) -> None:
    """Make a template from a stopped VM: its volumes become the template's read-only base volumes, and the
    VM's disks thin clones of them."""
    api = ApiClient()
    task = api.request("POST", "/templates", json={"name": name, "vm": from_vm, "description": description})
    result = finish_task(api, task, wait, output, f"template {name} from VM {from_vm}")
    if result is not None:
        _show(result, output)


@template_app.command("list")
def template_list(name: str = typer.Option(None, "--name"), limit: int = typer.Option(100),
                  after: str = typer.Option(None), output: Output = OutputOpt) -> None:
    data = ApiClient().get("/templates", name=name, limit=limit, after=after)
    show(data, output, Rows(COLUMNS, _rows(data["items"]), "templates"))


@template_app.command("show")
def template_show(template: str, output: Output = OutputOpt) -> None:
    """A template, its base volumes and the clones that read them."""
    _show(ApiClient().get(f"/templates/{quote(template, safe='')}"), output)


@template_app.command("delete")
def template_delete(template: str, wait: bool = WaitOpt, output: Output = OutputOpt) -> None:
    """Delete a template and its base volumes; refused while a VM's disk is a clone of one."""
    api = ApiClient()
    task = api.request("DELETE", f"/templates/{quote(template, safe='')}")
    result = finish_task(api, task, wait, output, f"deleting template {template}")
    if result is not None:
        show(result, output, Text(f"template {result.get('name', template)} deleted"))


def register(app: typer.Typer) -> None:
    app.add_typer(template_app, name="template")
