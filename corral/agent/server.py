"""Serving the agent's API with uvicorn (``corral agent serve``), as ``corral.engine.app.run_engine`` serves the
engine's: mutual TLS with the client's certificate in every request, and a clean stop on SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import ssl
from typing import Any

from corral.agent.service import Agent, Settings


def tls_peer_protocol() -> type[Any]:
    """uvicorn's h11 protocol, plus the connection's verified client certificate in every request's state.

    uvicorn does not put the TLS peer into the ASGI scope; it does copy its ``app_state`` into each request's
    ``scope["state"]``, so each connection gets its own copy holding ``getpeercert()`` (taken after the
    handshake, when asyncio calls ``connection_made``)."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    from corral.agent.app import PEER_CERT

    class TlsPeerH11Protocol(H11Protocol):
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            ssl_object = transport.get_extra_info("ssl_object")
            cert = ssl_object.getpeercert() if ssl_object is not None else None
            self.app_state = {**self.app_state, PEER_CERT: cert or None}
            super().connection_made(transport)

    return TlsPeerH11Protocol


def run_agent(settings: Settings, host: str, port: int, token: str | None) -> None:
    """Start the agent, serve its API on ``host:port`` until interrupted, then stop it.

    Raises what ``Agent.start`` raises (``Unavailable``, ``ValueError``) before anything is served. With all
    three of ``tls_cert``, ``tls_key`` and ``tls_ca`` set the API runs mutual TLS; else ``token`` guards it."""
    import uvicorn

    from corral.agent.app import create_app

    tls = bool(settings.tls_cert and settings.tls_key and settings.tls_ca)
    agent = Agent(settings)
    agent.start()
    app = create_app(agent, token=token, client_certs=tls)
    kwargs: dict[str, Any] = {}
    if tls:
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
        uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False,
                    timeout_graceful_shutdown=3, timeout_keep_alive=75, **kwargs)
    finally:
        agent.stop()
        signal.signal(signal.SIGTERM, previous)
    if terminated:
        signal.raise_signal(signal.SIGTERM)
