"""``corral vm console VM``: the VM's serial console, interactive, like ``virsh console``.

In a terminal it connects to the engine's console WebSocket (``/api/v1/vms/{id}/console/serial``, the API
token as bearer, the engine's certificate verified as for every call), which the agent of the VM's host relays
to the VM's serial or PV console; the terminal is put in raw mode and ``Ctrl-]`` ends the session. Without a
terminal (a script, a pipe) or with ``--log`` it prints the console log instead, as it always did;
``--interactive`` relays without a terminal too (bytes from stdin to the VM, the VM's to stdout).

Exit status: 0 when the user or the VM ended the session, 2 when the VM has no console to open (unknown, not
running), 1 when the engine or the host cannot be reached.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Iterator
from typing import Any

import typer

from corral.cli.client import ApiClient
from corral.cli.common import fail
from corral.cli.output import Output, output_option
from corral.cli.resources import vm_console as print_console_log

ESCAPE = b"\x1d"  # Ctrl-], as virsh console


def ws_url(api_url: str, vm_id: str) -> str:
    base = api_url.rstrip("/")
    scheme, rest = base.split("://", 1)
    return f"{'wss' if scheme == 'https' else 'ws'}://{rest}/api/v1/vms/{vm_id}/console/serial"


@contextlib.contextmanager
def raw_terminal(fd: int) -> Iterator[None]:
    """The terminal in raw mode (every key as typed, no echo, no signals) while the console is open."""
    if not os.isatty(fd):
        yield
        return
    import termios
    import tty

    saved = termios.tcgetattr(fd)
    try:
        tty.setraw(fd)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def relay(api: ApiClient, vm: dict[str, Any]) -> int:
    """Relay stdin to the VM's console and its output to stdout until Ctrl-], the end of stdin or of the
    console; the exit status."""
    from websockets.exceptions import ConnectionClosed, InvalidStatus
    from websockets.sync.client import connect

    url = ws_url(api.url, vm["id"])
    headers = {"Authorization": str(api.http.headers.get("Authorization", ""))}
    ssl_context = api.ssl_context if url.startswith("wss://") else None
    try:
        ws = connect(url, additional_headers=headers, ssl=ssl_context, subprotocols=["binary"],  # type: ignore[list-item]
                     open_timeout=15, max_size=None, close_timeout=2)
    except InvalidStatus as exc:
        fail(f"the engine refused the console: HTTP {exc.response.status_code} (is the API token still good?)",
             code=1)
    except (OSError, TimeoutError) as exc:
        fail(f"cannot reach the engine at {api.url}: {exc}", code=1)
    stdin, stdout = sys.stdin.fileno(), sys.stdout.buffer
    tty = os.isatty(stdin)
    if tty:
        typer.echo(f"Connected to the serial console of VM {vm['name']} (escape character is ^])", err=True)

    def pump_input() -> None:
        """stdin -> the VM, on its own thread; Ctrl-] or the end of stdin closes the connection."""
        try:
            while chunk := os.read(stdin, 1024):
                if ESCAPE in chunk:
                    before = chunk.split(ESCAPE, 1)[0]
                    if before:
                        ws.send(before)
                    break
                ws.send(chunk)
        except (OSError, ConnectionClosed):
            return
        with contextlib.suppress(Exception):
            ws.close()

    with raw_terminal(stdin):
        threading.Thread(target=pump_input, name="console-input", daemon=True).start()
        try:
            for message in ws:
                data = message if isinstance(message, bytes) else message.encode()
                stdout.write(data)
                stdout.flush()
        except ConnectionClosed:
            pass
    code = ws.close_code or 1000
    reason = ws.close_reason or ""
    if tty:
        typer.echo("", err=True)
    if 4000 <= code < 5000:
        fail(reason or f"the console was closed with code {code}", code=2 if code in (4404, 4409) else 1)
    return 0


def vm_console(
    vm: str,
    log: bool = typer.Option(False, "--log", help="print the console log instead of connecting"),
    interactive: bool = typer.Option(False, "--interactive", "-i",
                                     help="connect even when stdin is not a terminal"),
    tail: int = typer.Option(65536, "--tail", help="with --log: how many bytes of the log"),
    output: Output = output_option(),
) -> None:
    """Open the VM's serial console (Ctrl-] quits); without a terminal, or with --log, print its console log."""
    if log or not (interactive or (sys.stdin.isatty() and sys.stdout.isatty())):
        print_console_log(vm, tail, output)
        return
    api = ApiClient()
    v = api.get(f"/vms/{api.resolve('vms', vm)['id']}")
    if v.get("state") not in ("up", "paused", "shutting_down", "migrating"):
        fail(f"VM {v['name']} is {v.get('state')}; its console exists while it runs")
    raise typer.Exit(relay(api, v))


def register(vm_app: typer.Typer) -> None:
    vm_app.command("console")(vm_console)
