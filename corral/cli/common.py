"""Helpers shared by command groups: reading input files, failing with exit status 2 (printing: output.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, NoReturn

import typer
import yaml


def fail(message: str, code: int = 2) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def read_text(path: Path, what: str) -> str:
    try:
        return sys.stdin.read() if str(path) == "-" else path.read_text()
    except OSError as exc:
        fail(f"{what} {path}: {exc.strerror}")


def load_data(path: Path, what: str) -> Any:
    """JSON or YAML (JSON is YAML), as written by ``corral xml import``."""
    text = read_text(path, what)
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as exc:
            fail(f"{what} {path}: neither JSON nor YAML: {exc}")
