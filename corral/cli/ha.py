"""HA and power management over the engine's REST API (issue 13, docs/ha.md).

``corral host fencing set|show|remove H``, ``corral host fence-test H``, ``corral host confirm-rebooted H`` and
``corral vm set-ha VM on|off [--priority N]`` (there is no general ``vm edit`` yet; ``vm create --ha`` sets it at
creation). Refusals exit 2 naming the field, as the engine answers them."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import typer

from corral.cli.client import ApiClient
from corral.cli.common import fail
from corral.cli.output import Output, Record, output_option, show

OutputOpt = output_option()

fencing_app = typer.Typer(no_args_is_help=True, help="A host's power management (a fence-agents agent).")


def _seg(ref: str) -> str:
    return quote(ref, safe="")


def parse_options(items: list[str] | None) -> dict[str, str]:
    """``--option ip=10.0.0.5`` (repeatable) -> {"ip": "10.0.0.5"}; a malformed one exits 2 naming it."""
    out: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            fail(f"--option {item!r}: write KEY=VALUE (e.g. ip=10.0.0.5)")
        out[key.strip()] = value
    return out


def _view(data: dict[str, Any]) -> Record:
    config = data.get("config") or {}
    options = config.get("options") or {}
    shown = {k: ("(set)" if v is None and k in (config.get("secrets_set") or []) else v) for k, v in options.items()}
    return Record({"host": data.get("host"), "host state": data.get("host_state"),
                   "agent": config.get("agent") or "none", "options": " ".join(f"{k}={v}" for k, v in shown.items()),
                   "timeout": config.get("timeout"), "fence state": data.get("state") or "-",
                   "reason": data.get("reason") or "", "changed": data.get("changed_at")})


@fencing_app.command("set")
def fencing_set(host: str,
                agent: str = typer.Option(..., "--agent", help="fence_ipmilan, fence_virsh, ... or a path to a script "
                                          "agent (in the engine's PATH or CORRAL_FENCE_PATH)"),
                option: list[str] = typer.Option(None, "--option", help="KEY=VALUE for the agent's stdin "
                                                 "(ip=, username=, plug=, lanplus=1 ...), repeatable"),
                password_prompt: bool = typer.Option(False, "--password-prompt",
                                                     help="ask for the agent's password (not echoed)"),
                timeout: int = typer.Option(60, "--timeout", help="seconds for each run of the agent"),
                output: Output = OutputOpt) -> None:
    """Set the host's power management; the engine checks the agent is installed."""
    options: dict[str, Any] = dict(parse_options(option))
    if password_prompt:
        options["password"] = typer.prompt("fence agent password", hide_input=True, err=True)
    elif "password" not in options:
        options["password"] = None  # keep a password stored before
    body = {"agent": agent, "options": options, "timeout": timeout}
    data = ApiClient().request("PUT", f"/hosts/{_seg(host)}/fencing", json=body)
    show(data, output, _view(data))


@fencing_app.command("show")
def fencing_show(host: str, output: Output = OutputOpt) -> None:
    """The host's power management (secrets shown as '(set)') and its fencing state."""
    data = ApiClient().get(f"/hosts/{_seg(host)}/fencing")
    show(data, output, _view(data))


@fencing_app.command("remove")
def fencing_remove(host: str, output: Output = OutputOpt) -> None:
    data = ApiClient().request("PUT", f"/hosts/{_seg(host)}/fencing", json={"agent": None})
    show(data, output, _view(data))


def fence_test(host: str, output: Output = OutputOpt) -> None:
    """Ask the host's fence agent for its power status (nothing is powered off). Exit 1 if it cannot tell."""
    data = ApiClient().request("POST", f"/hosts/{_seg(host)}/fence-test")
    show(data, output, Record({"host": data.get("host"), "power": data.get("power"), "exit": data.get("exit"),
                               "output": data.get("output")}))
    if not data.get("ok"):
        raise typer.Exit(1)


def confirm_rebooted(host: str, yes: bool = typer.Option(False, "--yes", help="do not ask"),
                     output: Output = OutputOpt) -> None:
    """Confirm that a host which does not answer is powered off or was rebooted: its VMs are released and its
    HA VMs started elsewhere. Wrong, this runs two copies of a VM on the same disks."""
    if not yes and not typer.confirm(f"Is host {host} really powered off or rebooted?"):
        raise typer.Exit(1)
    data = ApiClient().request("POST", f"/hosts/{_seg(host)}/confirm-rebooted")
    show(data, output, _view(data))


def vm_set_ha(vm: str, state: str = typer.Argument(..., help="on or off"),
              priority: int = typer.Option(None, "--priority", help="0-100, highest restarted first"),
              output: Output = OutputOpt) -> None:
    """Make a VM highly available (restarted elsewhere after its host was fenced) or not."""
    if state not in ("on", "off"):
        fail(f"STATE {state!r}: on or off")
    body: dict[str, Any] = {"ha": state == "on"}
    if priority is not None:
        body["priority"] = priority
    data = ApiClient().request("PUT", f"/vms/{_seg(vm)}/ha", json=body)
    show(data, output, Record(data))


def register(host_app: typer.Typer, vm_app: typer.Typer) -> None:
    host_app.add_typer(fencing_app, name="fencing")
    host_app.command("fence-test")(fence_test)
    host_app.command("confirm-rebooted")(confirm_rebooted)
    vm_app.command("set-ha")(vm_set_ha)
