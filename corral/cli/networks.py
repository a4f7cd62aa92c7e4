"""``corral network``: logical networks of a cluster, over the engine's REST API (issue 18).

A network is carried on each host by the Linux bridge its name gives (docs/networks.md); ``show`` says which
hosts of its cluster carry it. A VM's NIC names one with ``corral vm create --nic network=NAME``.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import typer

from corral.cli.client import ApiClient
from corral.cli.common import fail
from corral.cli.output import Output, Record, Rows, Text, output_option, show

OutputOpt = output_option()
ROLES = ("management", "vm", "migration", "storage")

network_app = typer.Typer(no_args_is_help=True,
                          help="Logical networks: VLAN, MTU, roles; carried on hosts as Linux bridges.")

COLUMNS = ["name", "cluster", "vlan", "mtu", "roles", "required", "bridge", "hosts", "id"]


def _seg(ref: str) -> str:
    return quote(ref, safe="")


def _row(n: dict[str, Any]) -> dict[str, Any]:
    return {**n, "vlan": n.get("vlan") or "-", "roles": ",".join(n.get("roles") or []),
            "required": "yes" if n.get("required") else "no",
            "hosts": f"{n.get('hosts_carrying', 0)}/{n.get('hosts_total', 0)} carry it"}


def _carried_style(column: str, text: str) -> str | None:
    if column != "carried":
        return None
    return {"yes": "green", "no": "bold red"}.get(text)


def parse_roles(text: str | None) -> list[str] | None:
    """``vm,migration`` -> ["vm", "migration"]; an unknown role exits 2 naming it."""
    if text is None:
        return None
    roles = [r.strip() for r in text.split(",") if r.strip()]
    for r in roles:
        if r not in ROLES:
            fail(f"--role {text}: unknown role {r!r} ({', '.join(ROLES)})")
    return roles


@network_app.command("list")
def network_list(cluster: str = typer.Option(None, "--cluster"), role: str = typer.Option(None, "--role"),
                 limit: int = typer.Option(100), after: str = typer.Option(None),
                 output: Output = OutputOpt) -> None:
    data = ApiClient().get("/networks", cluster=cluster, role=role, limit=limit, after=after)
    show(data, output, Rows(COLUMNS, [_row(n) for n in data["items"]], "networks"))


@network_app.command("create")
def network_create(
    name: str,
    vlan: int = typer.Option(None, "--vlan", help="802.1Q VLAN id (1-4094); none: untagged"),
    mtu: int = typer.Option(None, "--mtu", help="default 1500"),
    role: str = typer.Option(None, "--role", help="comma-separated: management, vm, migration, storage "
                                                  "(default: vm)"),
    required: bool = typer.Option(False, "--required/--optional",
                                  help="every host of the cluster must carry it"),
    description: str = typer.Option(None, "--description"),
    cluster: str = typer.Option(None, "--cluster", help="default: the 'default' cluster"),
    output: Output = OutputOpt,
) -> None:
    """Create a logical network; `show` says which hosts carry it (have its bridge)."""
    body: dict[str, Any] = {"name": name, "required": required}
    roles = parse_roles(role)
    for key, value in (("vlan", vlan), ("mtu", mtu), ("roles", roles), ("description", description),
                       ("cluster", cluster)):
        if value is not None:
            body[key] = value
    _show(ApiClient().request("POST", "/networks", json=body), output)


@network_app.command("show")
def network_show(network: str, cluster: str = typer.Option(None, "--cluster"), output: Output = OutputOpt) -> None:
    """A network, each host of its cluster carrying it or not, and the VMs with a NIC on it."""
    _show(ApiClient().get(f"/networks/{_seg(network)}", cluster=cluster), output)


def _show(data: dict[str, Any], output: Output) -> None:
    hosts = [{**h, "carried": "yes" if h.get("carried") else "no"} for h in data.get("hosts") or []]
    record = {k: v for k, v in _row(data).items() if k not in ("hosts",)}
    record["vms"] = ", ".join(data.get("vms") or []) or "none"
    record["hosts"] = f"{data.get('hosts_carrying', 0)}/{data.get('hosts_total', 0)} carry it"
    show(data, output, Record(record, f"network {data['name']}"),
         Rows(["host", "host_state", "carried"], hosts, "on each host", _carried_style))


@network_app.command("delete")
def network_delete(network: str, cluster: str = typer.Option(None, "--cluster"),
                   output: Output = OutputOpt) -> None:
    """Delete a network (refused while a VM's NIC names it). The hosts' bridges stay."""
    api = ApiClient()
    n = api.get(f"/networks/{_seg(network)}", cluster=cluster)
    api.request("DELETE", f"/networks/{n['id']}")
    show({"id": n["id"], "name": n["name"], "deleted": True}, output, Text(f"network {n['name']} deleted"))


def register(app: typer.Typer) -> None:
    app.add_typer(network_app, name="network")
