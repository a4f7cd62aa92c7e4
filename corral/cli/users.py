"""``corral user list|create|disable|enable|set-role`` and ``corral token list|create|revoke``, over the engine's
REST API (``/api/v1/users``, ``/api/v1/tokens``). Users and roles are for admins; everyone manages their own
tokens. ``token create`` prints the token itself on stdout (only once: the engine keeps its hash), so
``TOKEN=$(corral token create ci)`` works; with ``--output json`` the whole answer, the token under ``token``."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import typer

from corral.cli.client import ApiClient
from corral.cli.common import fail
from corral.cli.output import Output, Rows, output_option, show

OutputOpt = output_option()
ROLES = ("viewer", "operator", "admin")

user_app = typer.Typer(no_args_is_help=True, help="Users and their roles (admin, operator, viewer).")
token_app = typer.Typer(no_args_is_help=True, help="API tokens: yours, or anyone's for an admin.")

USER_COLUMNS = ["username", "role", "disabled", "last_login_at", "created_at", "id"]
TOKEN_COLUMNS = ["name", "user", "role", "state", "expires_at", "last_used_at", "id"]


def _role(role: str) -> str:
    if role not in ROLES:
        fail(f"--role: one of {', '.join(ROLES)}, not {role!r}")
    return role


@user_app.command("list")
def user_list(role: str = typer.Option(None, "--role", help="only users of this role"),
              output: Output = OutputOpt) -> None:
    data = ApiClient().get("/users", role=role, limit=1000)
    show(data, output, Rows(USER_COLUMNS, data["items"], "users"))


@user_app.command("create")
def user_create(name: str, role: str = typer.Option(..., "--role", help="viewer, operator or admin"),
                password: str = typer.Option(None, "--password", help="at least 8 characters"),
                password_prompt: bool = typer.Option(False, "--password-prompt", help="ask for it (not echoed)"),
                output: Output = OutputOpt) -> None:
    """A local user (password hashed with scrypt by the engine)."""
    if (password is None) == (not password_prompt):
        fail("give --password P or --password-prompt (one of them)")
    if password_prompt:
        password = typer.prompt("password", hide_input=True, confirmation_prompt=True)
    show(ApiClient().request("POST", "/users", json={"username": name, "role": _role(role),
                                                     "password": password}), output)


def _patch(name: str, body: dict[str, Any], output: Output) -> None:
    show(ApiClient().request("PATCH", f"/users/{quote(name, safe='')}", json=body), output)


@user_app.command("disable")
def user_disable(name: str, output: Output = OutputOpt) -> None:
    """Its sessions and tokens stop working at once."""
    _patch(name, {"disabled": True}, output)


@user_app.command("enable")
def user_enable(name: str, output: Output = OutputOpt) -> None:
    _patch(name, {"disabled": False}, output)


@user_app.command("set-role")
def user_set_role(name: str, role: str = typer.Argument(..., help="viewer, operator or admin"),
                  output: Output = OutputOpt) -> None:
    _patch(name, {"role": _role(role)}, output)


@token_app.command("list")
def token_list(user: str = typer.Option(None, "--user", help="this user's tokens (admins)"),
               output: Output = OutputOpt) -> None:
    data = ApiClient().get("/tokens", user=user, limit=1000)
    show(data, output, Rows(TOKEN_COLUMNS, data["items"], "tokens"))


@token_app.command("create")
def token_create(name: str = typer.Argument("cli", help="a name to recognise it by"),
                 user: str = typer.Option(None, "--user", help="its owner (admins; default: you)"),
                 role: str = typer.Option(None, "--role", help="at most the owner's role (default: theirs)"),
                 expires: str = typer.Option("90d", "--expires", help="30d, 12h, 45m, 2w or never"),
                 output: Output = OutputOpt) -> None:
    body: dict[str, Any] = {"name": name, "expires": expires}
    if user:
        body["user"] = user
    if role:
        body["role"] = _role(role)
    data = ApiClient().request("POST", "/tokens", json=body)
    if output.machine:
        show(data, output)
        return
    typer.echo(f"token {data['name']} ({data['role']}) for {data['user'] or 'no user'}, expires "
               f"{data['expires_at'] or 'never'}; shown once:", err=True)
    typer.echo(data["token"])


@token_app.command("revoke")
def token_revoke(token: str = typer.Argument(..., help="its id, or its name"), output: Output = OutputOpt) -> None:
    show(ApiClient().request("DELETE", f"/tokens/{quote(token, safe='')}"), output)


def register(app: typer.Typer) -> None:
    app.add_typer(user_app, name="user")
    app.add_typer(token_app, name="token")
