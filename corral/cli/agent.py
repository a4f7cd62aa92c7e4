"""``corral agent serve``: run the host agent."""

from __future__ import annotations

import logging
import signal
import ssl
from pathlib import Path
from typing import Any

import typer

from corral.cli.common import fail

app = typer.Typer(no_args_is_help=True, help="The host agent (talks to libvirt on this host).")


def _listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        fail(f"--listen: expected HOST:PORT, got {value!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def tls_peer_protocol() -> type[Any]:
    """uvicorn's h11 protocol, plus the connection's verified client certificate in every request's state.

    uvicorn does not put the TLS peer into the ASGI scope; it does copy its ``app_state`` into each request's
    ``scope["state"]``, so each connection gets its own copy holding ``getpeercert()`` (taken after the
    handshake, when asyncio calls ``connection_made``)."""
    import asyncio

    from uvicorn.protocols.http.h11_impl import H11Protocol

    from corral.agent.app import PEER_CERT

    class TlsPeerH11Protocol(H11Protocol):
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            ssl_object = transport.get_extra_info("ssl_object")
            cert = ssl_object.getpeercert() if ssl_object is not None else None
            self.app_state = {**self.app_state, PEER_CERT: cert or None}
            super().connection_made(transport)

    return TlsPeerH11Protocol


@app.command()
def serve(
    libvirt_uri: str = typer.Option(None, "--libvirt", help="libvirt URI (test:///default, qemu:///system, "
                                                            "xen:///system)"),
    listen: str = typer.Option(None, "--listen", help="HOST:PORT"),
    token_file: Path = typer.Option(None, "--token-file", help="file holding the bearer token"),
    tls_cert: Path = typer.Option(None, "--tls-cert"),
    tls_key: Path = typer.Option(None, "--tls-key"),
    tls_ca: Path = typer.Option(None, "--tls-ca", help="CA that signs the engine's client certificate"),
    state_dir: Path = typer.Option(None, "--state-dir"),
    hooks_dir: Path = typer.Option(None, "--hooks-dir"),
    emulate: str = typer.Option(None, "--emulate", help="on the test driver: present a xen or kvm host"),
    allow_tcg: bool = typer.Option(None, "--allow-tcg/--no-allow-tcg", help="accept a QEMU host without /dev/kvm"),
    accel: str = typer.Option(None, "--accel", help="auto, kvm or tcg (tcg: never use KVM on this host)"),
    bridge: list[str] = typer.Option(None, "--bridge", help="extra bridge to report (emulated hosts)"),
    config: Path = typer.Option(None, "--config", help="TOML config (default /etc/corral/agent.toml if present)"),
) -> None:
    """Serve the agent API until interrupted."""
    import uvicorn

    from corral.agent.app import create_app
    from corral.agent.connection import Unavailable
    from corral.agent.service import DEFAULT_CONFIG, Agent, Settings

    values: dict[str, Any] = {}
    cfg_path = config or (DEFAULT_CONFIG if DEFAULT_CONFIG.exists() else None)
    if cfg_path is not None:
        try:
            values.update(Settings.from_toml(cfg_path))
        except ValueError as exc:
            fail(str(exc))
    given = {"libvirt": libvirt_uri, "listen": listen, "token_file": token_file, "tls_cert": tls_cert,
             "tls_key": tls_key, "tls_ca": tls_ca, "state_dir": state_dir, "hooks_dir": hooks_dir,
             "emulate": emulate, "allow_tcg": allow_tcg, "accel": accel, "bridges": bridge or None}
    values.update({k: v for k, v in given.items() if v is not None})
    settings = Settings(**values)
    tls = [settings.tls_cert, settings.tls_key, settings.tls_ca]
    if any(tls) and not all(tls):
        fail("--tls-cert, --tls-key and --tls-ca go together")
    if not all(tls) and settings.token_file is None:
        fail("give --token-file or --tls-cert/--tls-key/--tls-ca: the agent never runs unauthenticated")
    host, port = _listen(settings.listen)
    try:
        token = settings.token()
    except ValueError as exc:
        fail(str(exc))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    agent = Agent(settings)
    try:
        agent.start()
    except (Unavailable, ValueError) as exc:
        fail(str(exc))
    app_ = create_app(agent, token=token, client_certs=all(tls))
    kwargs: dict[str, Any] = {}
    if all(tls):
        # CERT_OPTIONAL so that /v1/health answers without a certificate; a certificate that is presented is
        # verified in the handshake, and the app refuses every other path without one (corral.agent.app).
        kwargs = {"ssl_certfile": str(settings.tls_cert), "ssl_keyfile": str(settings.tls_key),
                  "ssl_ca_certs": str(settings.tls_ca), "ssl_cert_reqs": ssl.CERT_OPTIONAL,
                  "http": tls_peer_protocol()}
    # uvicorn shuts down on SIGTERM and then raises the signal again; with its default action the process
    # would die right there, before agent.stop() (an emulated host would lose its domains). Note it instead,
    # clean up, then end by that signal as before.
    terminated: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, _frame: terminated.append(signum))
    try:
        # keep-alive longer than the engine's pooled connections stay idle (60 s): a POST never meets a
        # connection the agent has just closed
        uvicorn.run(app_, host=host, port=port, log_level="warning", access_log=False,
                    timeout_graceful_shutdown=3, timeout_keep_alive=75, **kwargs)
    finally:
        agent.stop()
        signal.signal(signal.SIGTERM, previous)
    if terminated:
        signal.raise_signal(signal.SIGTERM)
