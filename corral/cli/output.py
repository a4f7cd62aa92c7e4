"""How every command prints its answer: ``--output table|json|yaml|markdown``, decided in this one place.

json and yaml print the data itself (the engine's answer, whole), so that scripts see every field. table and
markdown print one human view of it: rich tables on a terminal, GitHub-flavoured markdown for a ticket or a wiki
page. A command describes its human view once, as blocks (a :class:`Record` of fields, :class:`Rows` under
columns, a :class:`Text`), and :func:`show` renders them in the format asked for, so that no command can accept
a format and then ignore it. An unknown value is refused by the option itself (exit 2, naming ``--output``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import typer
import yaml
from rich.console import Console
from rich.table import Table
from rich.text import Text as RichText


class Output(StrEnum):
    TABLE = "table"
    JSON = "json"
    YAML = "yaml"
    MARKDOWN = "markdown"

    @property
    def machine(self) -> bool:
        """json and yaml: the data, whole; table and markdown: the human view."""
        return self in (Output.JSON, Output.YAML)


_current: ContextVar[Output] = ContextVar("corral_output", default=Output.TABLE)


def _remember(value: Output) -> Output:
    _current.set(Output(value))
    return value


def current_output() -> Output:
    """The ``--output`` of the command running now (for helpers not handed the value)."""
    return _current.get()


def output_option(default: Output = Output.TABLE) -> Any:
    """The ``--output``/``-o`` option every command takes (the same four values everywhere)."""
    return typer.Option(default, "--output", "-o", case_sensitive=False, callback=_remember,
                        help="table, json, yaml or markdown")


@dataclass(frozen=True)
class Record:
    """One object's fields, ``key: value``; nested values (objects, lists) printed as JSON under their key."""

    data: Mapping[str, Any]
    title: str | None = None


@dataclass(frozen=True)
class Rows:
    """Objects under columns. ``style(column, cell)`` may colour a cell on a terminal (never in markdown)."""

    columns: Sequence[str]
    rows: Sequence[Mapping[str, Any]]
    title: str | None = None
    style: Callable[[str, str], str | None] | None = None


@dataclass(frozen=True)
class Text:
    """A message; ``verbatim`` text (a console log) is written unchanged, and fenced in markdown."""

    text: str
    verbatim: bool = False


Block = Record | Rows | Text


def console() -> Console:
    # made per call: rich would keep the sys.stdout of the moment it was made (CliRunner swaps it)
    return Console(width=160, highlight=False)


def dump(data: Any, output: Output, line: bool = False) -> None:
    """The data as JSON or YAML (YAML in the keys' order, as the JSON); ``line``: JSON on one line."""
    if output is Output.YAML:
        typer.echo(yaml.safe_dump(json.loads(json.dumps(data, default=str)), sort_keys=False, allow_unicode=True),
                   nl=False)
    else:
        typer.echo(json.dumps(data, indent=None if line else 2, default=str))


def show(data: Any, output: Output, *blocks: Block, line: bool = False) -> None:
    """Print ``data`` in the format asked for; without blocks the human view is ``data`` as a record.

    ``line``: JSON on one line, for a server's announcement that whoever started it reads line by line."""
    if output.machine:
        dump(data, output, line)
        return
    if not blocks:
        blocks = (Record(data),) if isinstance(data, Mapping) else (Text(json.dumps(data, indent=2, default=str)),)
    render = _terminal if output is Output.TABLE else _markdown
    chunks = [render(block) for block in blocks]
    if output is Output.MARKDOWN:
        typer.echo("\n\n".join(c.rstrip("\n") for c in chunks if c))


def cell(value: Any, limit: int | None = 60) -> str:
    """A value as table cell text: empty for None, JSON for objects and lists (cut at ``limit``)."""
    if value is None:
        return ""
    if isinstance(value, dict | list):
        text = json.dumps(value, default=str)
        return text if limit is None else text[:limit]
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


OUTCOME_STYLES = {"native": "green", "translated": "yellow", "refused": "bold red"}


def outcome_style(column: str, text: str) -> str | None:
    """A plan's outcome column in colour: native green, translated yellow, refused red."""
    return OUTCOME_STYLES.get(text) if column == "outcome" else None


# --- terminal (rich) -------------------------------------------------------------------------------------------

def _terminal(block: Block) -> str:
    out = console()
    if isinstance(block, Text):
        if block.verbatim:
            typer.echo(block.text, nl=False)
        else:
            typer.echo(block.text)
    elif isinstance(block, Rows):
        table = Table(*block.columns, title=block.title)
        for row in block.rows:
            cells = []
            for column in block.columns:
                text = cell(row.get(column))
                style = block.style(column, text) if block.style else None
                cells.append(RichText(text, style=style or ""))
            table.add_row(*cells)
        out.print(table)
    else:
        if block.title:
            out.print(RichText(block.title, style="bold underline"))
        for key, value in block.data.items():
            line = RichText.assemble((str(key), "bold"), ": ")
            if isinstance(value, dict | list):
                out.print(line)
                out.print_json(json.dumps(value, default=str))
            else:
                line.append(cell(value))
                out.print(line)
    return ""


# --- markdown -----------------------------------------------------------------------------------------------

def _md_cell(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\r", "").replace("\n", "<br>")


def _md_table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(_md_cell(c) for c in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
    return lines


def _fence(text: str, lang: str = "") -> list[str]:
    fence = "```"
    while fence in text:
        fence += "`"
    return [fence + lang, text.rstrip("\n"), fence]


def _markdown(block: Block) -> str:
    if isinstance(block, Text):
        return "\n".join(_fence(block.text)) if block.verbatim else block.text
    lines: list[str] = [f"### {block.title}", ""] if block.title else []
    if isinstance(block, Rows):
        lines += _md_table(block.columns, [[cell(row.get(c), limit=None) for c in block.columns]
                                           for row in block.rows])
        return "\n".join(lines)
    scalars = [(str(k), cell(v)) for k, v in block.data.items() if not isinstance(v, dict | list)]
    nested = [(str(k), v) for k, v in block.data.items() if isinstance(v, dict | list)]
    if scalars:
        lines += _md_table(["field", "value"], scalars)
    for key, value in nested:
        lines += ["", f"**{key}**", "", *_fence(json.dumps(value, indent=2, default=str), "json")]
    return "\n".join(lines)
