"""Waiting for an engine task from a command: one place that prints its progress and turns its failure into the
command's error (exit 2, the field named), so every command that starts a task ends the same way."""

from __future__ import annotations

from typing import Any

import typer

from corral.cli.client import ApiClient
from corral.cli.common import fail
from corral.cli.output import Output, Text, show


def finish_task(api: ApiClient, task: dict[str, Any], wait: bool, output: Output, doing: str,
                progress: bool = True) -> dict[str, Any] | None:
    """The task's result once it succeeded; None (the task shown) when not waiting. Progress lines go to stderr
    unless the output is for a machine or ``progress`` is off."""
    if not wait:
        show(task, output, Text(f"{doing}: task {task['id']}"))
        return None
    quiet = output.machine or not progress
    task = api.wait_task(task, None if quiet else (lambda m: typer.echo(f"... {m}", err=True)))
    if task["state"] == "failed":
        err = task.get("error") or {}
        where = f" [{err['field']}]" if err.get("field") else ""
        fail(f"{doing} failed{where}: {err.get('message', err)}")
    return dict(task.get("result") or {})
