"""``--output table|json|yaml|markdown``: every command that takes it offers the same four and honours each;
the REST commands load no engine, agent or simulator code. Offline: the ``xml`` commands and the app's own
description; the engine's commands are in ``test_allinone.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml
from typer.testing import CliRunner

from corral.cli import app
from tests.cli.support import REPO

FIXTURE = REPO / "tests" / "fixtures" / "kvm-virtio-guest.xml"
FORMATS = ["table", "json", "yaml", "markdown"]


def run(*args: str, code: int = 0) -> Any:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == code, (args, result.exit_code, result.stdout, result.stderr, result.exception)
    return result


def commands(group: Any, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    """Every leaf command of the app, by its words: ("vm", "list") -> command."""
    found: dict[tuple[str, ...], Any] = {}
    for name, command in getattr(group, "commands", {}).items():
        if getattr(command, "commands", None):
            found.update(commands(command, (*prefix, name)))
        else:
            found[(*prefix, name)] = command
    return found


def ids_out(data: Any) -> Any:
    """``data`` without its "id" keys (an import gives every device a new one)."""
    if isinstance(data, dict):
        return {k: ids_out(v) for k, v in data.items() if k != "id"}
    if isinstance(data, list):
        return [ids_out(v) for v in data]
    return data


def flat(text: str) -> str:
    """An error message without the box rich draws around it (and its line breaks)."""
    return " ".join(text.replace("│", " ").split())


def test_every_output_option_offers_the_same_four_formats() -> None:
    everything = commands(typer.main.get_command(app))
    with_output = [words for words, cmd in everything.items()
                   if any("--output" in getattr(p, "opts", []) for p in cmd.params)]
    # the launchers and the REST commands alike (simulate offered text|json only)
    for words in (("vm", "list"), ("host", "show"), ("vm", "console"), ("xml", "import"), ("xml", "matrix"),
                  ("all-in-one",), ("simulate",), ("event", "list"), ("task", "show")):
        assert words in with_output, words
    for words in with_output:
        # refused before anything runs (no engine is asked), naming the option and the four formats
        message = flat(run(*words, "-o", "xml", code=2).stderr)
        assert "'--output' / '-o'" in message, (words, message)
        assert "'xml' is not one of 'table', 'json', 'yaml', 'markdown'" in message, (words, message)


@pytest.mark.parametrize("args", [("xml", "plan", "SPEC", "--flavor", "xen"), ("xml", "import", str(FIXTURE)),
                                  ("xml", "matrix")])
def test_yaml_is_the_json_and_markdown_a_table(args: tuple[str, ...], tmp_path: Path) -> None:
    if "SPEC" in args:
        spec = tmp_path / "spec.json"
        spec.write_text(run("xml", "import", str(FIXTURE)).stdout)
        args = tuple(str(spec) if a == "SPEC" else a for a in args)
    as_json = json.loads(run(*args, "--output", "json").stdout)
    assert ids_out(yaml.safe_load(run(*args, "--output", "yaml").stdout)) == ids_out(as_json)
    assert ids_out(yaml.safe_load(run(*args, "-o", "YAML").stdout)) == ids_out(as_json)  # case ignored

    markdown = run(*args, "--output", "markdown").stdout
    table = run(*args, "--output", "table").stdout
    assert markdown != table
    assert "┃" not in markdown and "|---|" in markdown  # a markdown table, not the terminal's
    assert "┃" in table or ": " in table
    if args[1] == "plan":
        assert "| field | outcome | detail |" in markdown
        for decision in as_json:
            assert f"| {decision['path']} | {decision['outcome']} |" in markdown
            assert decision["path"] in table
    if args[1] == "import":
        assert f"| name | {as_json['name']} |" in markdown and f"name: {as_json['name']}" in table
        assert "**disks**" in markdown  # nested values fenced as JSON under their key
    if args[1] == "matrix":
        assert markdown.startswith("# Capability matrix")  # docs/capabilities.md
        assert "| feature |" in markdown and "capability matrix" in table and "refused" in table


def test_rest_commands_load_no_engine_agent_or_simulator_code() -> None:
    """``corral vm list`` is a REST client: neither importing the command modules nor building the whole app
    (launchers included, which import their servers only when run) loads server code."""
    probe = ("import sys\n"
             "import corral.cli.resources, corral.cli.client, corral.cli.output, corral.cli.xml\n"
             "rest = sorted(m for m in sys.modules if m.startswith(('corral.engine', 'corral.agent', "
             "'corral.simulate')))\n"
             "from corral.cli import app\n"
             "import typer.main\n"
             "typer.main.get_command(app)\n"
             "whole = sorted(m for m in sys.modules if m.startswith(('corral.engine', 'corral.agent', "
             "'corral.simulate')))\n"
             "print(rest, whole)\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, cwd=REPO,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[] []", done.stdout
    # the launchers are one module; every other CLI module is a REST client or offline
    cli = {p.stem for p in (REPO / "corral" / "cli").glob("*.py")}
    assert not cli & {"engine", "agent", "allinone", "simulate"}, cli
    for path in (REPO / "corral" / "cli").glob("*.py"):
        if path.stem != "launch":
            text = path.read_text()
            for package in ("corral.engine", "corral.agent", "corral.simulate"):
                assert package not in text, f"{path.name} uses {package}"
