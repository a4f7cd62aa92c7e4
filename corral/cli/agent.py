"""``corral agent serve``: run the host agent."""

from __future__ import annotations

import logging
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
             "emulate": emulate, "allow_tcg": allow_tcg, "bridges": bridge or None}
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
    app_ = create_app(agent, token=token)
    kwargs: dict[str, Any] = {}
    if all(tls):
        kwargs = {"ssl_certfile": str(settings.tls_cert), "ssl_keyfile": str(settings.tls_key),
                  "ssl_ca_certs": str(settings.tls_ca), "ssl_cert_reqs": ssl.CERT_REQUIRED}
    try:
        uvicorn.run(app_, host=host, port=port, log_level="warning", access_log=False,
                    timeout_graceful_shutdown=3, **kwargs)
    finally:
        agent.stop()
