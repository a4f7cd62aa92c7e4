"""``corral xml``: offline commands that show what Corral would ask libvirt for."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from corral.cli.common import fail, load_data, read_text
from corral.cli.output import Output, Rows, outcome_style, output_option, show
from corral.domain.config import XmlError
from corral.domain.flavors import ACCELS, UnknownFlavor, get_flavor
from corral.domain.flavors.base import Flavor
from corral.domain.importer import import_domain
from corral.domain.matrix import matrix_json, matrix_markdown
from corral.domain.render import plan as plan_spec
from corral.domain.render import render as render_spec
from corral.domain.resolve import RefusedError
from corral.domain.spec import GuestType, SpecError, VmSpec, parse_spec

app = typer.Typer(no_args_is_help=True, help="Domain XML: import, render, plan, capability matrix.")

FlavorOpt = typer.Option(..., "--flavor", help="xen or kvm")
GuestOpt = typer.Option(None, "--guest-type", help="pv, pvh or hvm (default: the spec's)")
AccelOpt = typer.Option("kvm", "--accel", help="kvm, or tcg for QEMU without /dev/kvm")


def _load_spec(path: Path) -> VmSpec:
    try:
        return parse_spec(load_data(path, "spec"))
    except SpecError as exc:
        fail(f"invalid spec {path}: {exc}")


def _flavor(name: str, accel: str) -> Flavor:
    if accel not in ACCELS:
        fail(f"--accel: expected one of {', '.join(ACCELS)}, got {accel!r}")
    try:
        return get_flavor(name, accel=accel)
    except UnknownFlavor as exc:
        fail(f"--flavor: {exc}")


@app.command("import")
def import_cmd(domain_xml: Path = typer.Argument(..., help="libvirt domain XML file, or - for stdin"),
               output: Output = output_option(Output.JSON)) -> None:
    """Print the VmSpec of a libvirt domain; what it cannot represent goes to stderr as warnings."""
    try:
        result = import_domain(read_text(domain_xml, "domain XML"))
    except (XmlError, SpecError) as exc:
        fail(f"{domain_xml}: {exc}")
    for warning in result.warnings:
        typer.echo(f"warning: {warning}", err=True)
    show(result.spec.model_dump(mode="json"), output)


@app.command()
def render(spec: Path = typer.Argument(..., help="VmSpec (JSON or YAML), or - for stdin"),
           flavor: str = FlavorOpt, guest_type: GuestType | None = GuestOpt, accel: str = AccelOpt) -> None:
    """Print the domain XML a host of this flavor would define."""
    fl = _flavor(flavor, accel)
    try:
        typer.echo(render_spec(_load_spec(spec), fl, guest_type), nl=False)
    except RefusedError as exc:
        fail(str(exc))


@app.command()
def plan(spec: Path = typer.Argument(..., help="VmSpec (JSON or YAML), or - for stdin"),
         flavor: str = FlavorOpt, guest_type: GuestType | None = GuestOpt, accel: str = AccelOpt,
         output: Output = output_option()) -> None:
    """Print each decision (native, translated, refused); exit 2 when anything is refused."""
    decisions = plan_spec(_load_spec(spec), _flavor(flavor, accel), guest_type)
    rows = [{"field": d.path, "outcome": d.outcome.value, "detail": d.detail} for d in decisions]
    show([d.as_dict() for d in decisions], output,
         Rows(["field", "outcome", "detail"], rows, f"plan for {flavor}", outcome_style))
    refused = [d for d in decisions if d.outcome.value == "refused"]
    if refused:
        fail("refused: " + "; ".join(f"{d.path}: {d.detail}" for d in refused))


@app.command()
def matrix(output: Output = output_option(Output.MARKDOWN)) -> None:
    """Print the capability matrix of every flavor (markdown: docs/capabilities.md, reasons included)."""
    if output is Output.MARKDOWN:
        typer.echo(matrix_markdown(), nl=False)
        return
    data = matrix_json()
    rows = [{"feature": row["feature"], **{c: _matrix_cell(row["cells"][c]) for c in data["columns"]}}
            for row in data["rows"]]
    show(data, output, Rows(["feature", *data["columns"]], rows, "capability matrix", _matrix_style))


def _matrix_cell(cell: dict[str, Any]) -> str:
    if cell["outcome"] == "native":
        return "native" + (f" ({cell['value']})" if cell["value"] else "")
    if cell["outcome"] == "translated":
        return f"-> {cell['value']}" if cell["value"] else "translated"
    return "refused"


def _matrix_style(column: str, text: str) -> str | None:
    """A cell coloured by its outcome, as a plan's (the feature column plain)."""
    if column == "feature":
        return None
    return outcome_style("outcome", "translated" if text.startswith("->") else text.split(" ")[0])
