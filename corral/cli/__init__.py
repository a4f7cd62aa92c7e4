"""The ``corral`` command: one typer app, one module per command group."""

from __future__ import annotations

import typer

from corral.cli import agent as agent_cli
from corral.cli import allinone, resources
from corral.cli import engine as engine_cli
from corral.cli import simulate as simulate_cli
from corral.cli import xml as xml_cli

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Corral: Xen and KVM hosts through libvirt.")
app.add_typer(xml_cli.app, name="xml")
app.add_typer(agent_cli.app, name="agent")
resources.register(app)
app.add_typer(engine_cli.app, name="engine")
app.command("all-in-one")(allinone.all_in_one)
app.command("simulate")(simulate_cli.simulate)


def main() -> None:
    app()
