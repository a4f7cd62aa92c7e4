"""``corral engine serve|create-token``: run the engine alone, manage its API tokens."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from corral.cli.agent import _listen
from corral.cli.common import fail

app = typer.Typer(no_args_is_help=True, help="The engine (REST API, database, monitoring, scheduler).")


def data_home() -> Path:
    return Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "corral"


def default_db(data_dir: Path) -> str:
    return f"sqlite:///{data_dir / 'engine.db'}"


@app.command()
def serve(db: str = typer.Option(None, "--db", help="sqlite:///FILE or postgresql+psycopg://USER@HOST/DB"),
          listen: str = typer.Option("127.0.0.1:8080", "--listen", help="HOST:PORT"),
          data_dir: Path = typer.Option(None, "--data-dir", help="state directory (default: user data dir)")) -> None:
    """Serve the engine until interrupted; migrations are applied on start."""
    from corral.engine.app import run_engine

    data = data_dir or data_home()
    data.mkdir(parents=True, exist_ok=True)
    host, port = _listen(listen)
    url = db or default_db(data)
    if not (url.startswith("sqlite:") or url.startswith("postgresql")):
        fail(f"--db: expected sqlite:///FILE or postgresql+psycopg://..., got {url!r}")
    run_engine(url, host, port, data)


@app.command("create-token")
def create_token_cmd(db: str = typer.Option(None, "--db"), name: str = typer.Option("admin", "--name"),
                     data_dir: Path = typer.Option(None, "--data-dir")) -> None:
    """Create an API token (printed once; only its hash is stored)."""
    from corral.engine.auth import create_token

    data = data_dir or data_home()
    data.mkdir(parents=True, exist_ok=True)
    typer.echo(create_token(db or default_db(data), name))


@app.command("create-admin")
def create_admin_cmd(
    username: str = typer.Option("admin", "--username", "-u", help="the portal user name"),
    password_file: Path = typer.Option(None, "--password-file", help="read the password from this file "
                                       "('-' = standard input); default: prompt on a terminal, else generate one"),
    update: bool = typer.Option(False, "--update", help="set a new password if the user exists"),
    db: str = typer.Option(None, "--db"),
    data_dir: Path = typer.Option(None, "--data-dir"),
) -> None:
    """Create an admin user for the portal (the password is stored as a scrypt hash)."""
    import sys

    from corral.cli.common import read_text
    from corral.engine.portal.users import UserError, create_admin

    data = data_dir or data_home()
    data.mkdir(parents=True, exist_ok=True)
    password: str | None = None
    if password_file is not None:
        password = read_text(password_file, "password file").rstrip("\r\n")
    elif sys.stdin.isatty():
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    try:
        result = create_admin(db or default_db(data), username, password, update=update)
    except UserError as exc:
        fail(f"{exc}" + ("; use --update to set a new password" if exc.field == "username" else ""))
    if password is None:
        typer.echo(f"user {username} created; password: {result}")
    else:
        typer.echo(f"user {username} {'updated' if update else 'created'}")
