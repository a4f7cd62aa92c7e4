"""The engine process: FastAPI app with the REST API; monitoring and tasks live in its lifespan.

``create_app`` migrates the database first (so a fresh SQLite file or PostgreSQL database just works),
fails tasks a previous run left unfinished, and starts the monitor when the app starts; ``run_engine`` is
what ``corral engine serve`` and ``corral all-in-one`` call.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from corral.engine.agent_client import AgentClient
from corral.engine.api import api_router
from corral.engine.apidocs import openapi_router
from corral.engine.auth import TokenChecker
from corral.engine.context import EngineContext
from corral.engine.db.session import Database
from corral.engine.deploy import CertRenewer, interrupted_deploys
from corral.engine.errors import install_handlers
from corral.engine.failures import install_failure_handlers
from corral.engine.ha import HaController, HaSettings
from corral.engine.limits import BodyLimit
from corral.engine.monitor import Monitor, MonitorSettings
from corral.engine.pki import EnginePki
from corral.engine.scheduler import Scheduler
from corral.engine.tasks import TaskRunner
from corral.private import private_dir

log = logging.getLogger(__name__)

API_TITLE = "Corral engine API"


def create_app(db_url: str, *, monitor: MonitorSettings | None = None, auth: bool = True,
               start_monitor: bool = True,
               agent_verify: bool | str | ssl.SSLContext | None = None, data_dir: Path | None = None,
               cert_renew_interval: float = 6 * 3600.0, insecure: bool = False,
               ha: HaSettings | None = None) -> FastAPI:
    """Build the engine app on the database at ``db_url`` (``sqlite:///PATH`` or ``postgresql+psycopg://``).

    With a ``data_dir`` the engine has its CA (``<data_dir>/pki``, created on first start): agents deployed over
    SSH are reached with mutual TLS, and their certificates are renewed every ``cert_renew_interval`` seconds
    when they have less than 30 days left. ``insecure`` lets hosts be added by a plain-HTTP agent URL off the
    loopback (corral.engine.transport)."""
    db = Database(db_url)
    db.migrate()
    tasks = TaskRunner(db)
    orphans = tasks.fail_orphans()
    if orphans:
        log.warning("%d task(s) of a previous run were interrupted", orphans)
    db.call(interrupted_deploys)
    pki: EnginePki | None = None
    if data_dir is not None:
        private_dir(data_dir)  # 0700: the database, the CA key, credentials (corral.private)
        pki = EnginePki(data_dir / "pki")
        created = pki.ensure()
        if created:
            log.info("engine PKI in %s: created %s", pki.dir, ", ".join(created))
    holder: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        verify = agent_verify if agent_verify is not None else (pki.client_ssl_context() if pki else True)
        agents = AgentClient(verify=verify)
        mon = Monitor(db, agents, tasks.busy_vms, monitor, released=tasks.released)
        ctx = EngineContext(db=db, agents=agents, tasks=tasks, monitor=mon, scheduler=Scheduler(agents.plan),
                            tokens=TokenChecker(db), auth=auth, pki=pki, insecure=insecure)
        app.state.corral = ctx
        holder["ctx"] = ctx
        renewer = CertRenewer(ctx, interval=cert_renew_interval)
        app.state.cert_renewer = renewer
        ha_controller = HaController(ctx, ha)  # fences lost hosts, restarts their HA VMs (issue 13)
        mon.cycle_hooks.append(ha_controller.kick)
        app.state.ha = ha_controller
        if start_monitor:
            await mon.start()
            if pki is not None:
                renewer.start()
        try:
            yield
        finally:
            await renewer.stop()
            await mon.stop()
            await ha_controller.stop()
            await tasks.cancel_all()
            await agents.aclose()
            db.dispose()

    # no public document or CDN-loaded docs page: corral.engine.apidocs serves the document to API callers
    app = FastAPI(title=API_TITLE, version="1", lifespan=lifespan, openapi_url=None, docs_url=None, redoc_url=None)
    install_handlers(app)
    install_failure_handlers(app)  # JSON 500, and 503 + Retry-After when the database cannot answer
    app.add_middleware(BodyLimit)  # 413 above 1 MiB, image uploads excepted (corral.engine.limits)
    app.include_router(api_router())
    app.include_router(openapi_router())
    from corral.engine.portal import mount_portal

    mount_portal(app)  # the admin portal: /portal (pages, live updates, consoles); / redirects there

    @app.get("/api/health", tags=["health"])
    def health() -> dict[str, str]:
        return {"status": "ok"}

    app.state.db = db
    return app


def serve(db_url: str, listen: str, **kwargs: Any) -> None:
    """``listen`` is ``HOST:PORT`` (``[::1]:8700`` for IPv6)."""
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"--listen wants HOST:PORT, not {listen!r}")
    run_engine(db_url, host.strip("[]"), int(port), **kwargs)


def run_engine(db_url: str, host: str, port: int, data_dir: Path | None = None, *,
               tls: tuple[Path, Path] | None = None, forwarded_allow_ips: str | None = None,
               **kwargs: Any) -> None:
    """Run the engine in the foreground until interrupted. ``data_dir`` holds engine files (created).
    ``tls`` (certificate, key): serve HTTPS with them; the portal's cookies are then ``Secure``.
    ``forwarded_allow_ips``: the proxies whose ``X-Forwarded-For``/``-Proto`` are believed (comma-separated
    addresses or networks); by default none, whatever uvicorn's environment says: a client's address is the
    connection's peer, which the login limiter counts (corral.engine.portal.limiter)."""
    import uvicorn

    if data_dir is not None:
        data_dir.mkdir(parents=True, exist_ok=True)
    app = create_app(db_url, data_dir=data_dir, **kwargs)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="info", lifespan="on",
                                           timeout_graceful_shutdown=3,
                                           ssl_certfile=str(tls[0]) if tls else None,
                                           ssl_keyfile=str(tls[1]) if tls else None,
                                           proxy_headers=bool(forwarded_allow_ips),
                                           forwarded_allow_ips=forwarded_allow_ips or ""))
    app.state.uvicorn = server  # the portal's live streams end when it is stopping (should_exit)
    server.run()
