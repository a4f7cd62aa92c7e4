"""The ``corral`` command: one typer app, one module per command group.

``launch`` holds every command that starts a process (engine, agent, simulator, all-in-one); the others talk to
the engine's REST API only (``resources``, ``storage``, ``images``) or work offline (``xml``)."""

from __future__ import annotations

import typer

from corral.cli import console as console_cli
from corral.cli import ha, images, launch, migrate, networks, resources, storage, templates, users
from corral.cli import xml as xml_cli

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Corral: Xen and KVM hosts through libvirt.")
app.add_typer(xml_cli.app, name="xml")
app.add_typer(launch.agent_app, name="agent")
resources.register(app)
console_cli.register(resources.vm_app)
ha.register(resources.host_app, resources.vm_app)
migrate.register(resources.vm_app, resources.task_app)
storage.register(app)
networks.register(app)
images.register(app)
templates.register(app)
users.register(app)
app.add_typer(launch.engine_app, name="engine")
app.command("all-in-one")(launch.all_in_one)
app.command("simulate")(launch.simulate)


def main() -> None:
    app()
