"""Certificate renewal: agent certificates with less than ``before`` left are renewed through the same SSH path
as the deploy (the engine's key, the pinned host key), as tasks; the engine's client certificate too."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from corral.engine.context import EngineContext
from corral.engine.db.models import Host, HostState
from corral.engine.deploy.deployer import engine_credentials, run_deploy, stored_options
from corral.engine.deploy.options import DeployOptions
from corral.engine.deploy.ssh import Credentials
from corral.engine.errors import ApiError
from corral.engine.events import record
from corral.engine.pki import RENEW_BEFORE
from corral.engine.tasks import TaskContext

log = logging.getLogger(__name__)


@dataclass
class CertRenewer:
    """Renews agent certificates with less than ``before`` left (and the engine's client certificate),
    through the same SSH path as the deploy, with the engine's key and the pinned host key."""

    ctx: EngineContext
    interval: float = 6 * 3600.0
    first_delay: float = 60.0
    before: timedelta = RENEW_BEFORE
    _task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="cert-renewer")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    async def _loop(self) -> None:
        await asyncio.sleep(self.first_delay)
        while True:
            try:
                await self.check()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("certificate renewal check")
            await asyncio.sleep(self.interval)

    async def check(self) -> list[dict[str, Any]]:
        """Submit a renewal task per host whose certificate expires soon; returns the tasks."""
        ctx = self.ctx
        if ctx.pki is None:
            return []
        if await asyncio.to_thread(ctx.pki.renew_client_if_needed, self.before):
            await ctx.db.run(lambda s: record(s, "engine_cert_renewed", "the engine's client certificate was renewed"))
        limit = datetime.now(UTC) + self.before

        def due(s: Session) -> list[str]:
            q = select(Host.id).where(Host.cert_expires_at.is_not(None), Host.cert_expires_at < limit,
                                      Host.ssh_host_key.is_not(None),
                                      Host.state != HostState.INSTALLING.value)
            return list(s.scalars(q))
        tasks = []
        for host_id in await ctx.db.run(due):
            if host_id not in ctx.deploying:
                tasks.append(await submit_renewal(ctx, host_id))
        return tasks


async def submit_renewal(ctx: EngineContext, host_id: str) -> dict[str, Any]:
    def load(s: Session) -> tuple[Credentials, DeployOptions, str]:
        h = s.get(Host, host_id)
        if h is None:
            raise ApiError("no such host", code="not_found", status=404)
        if h.ssh_address is None or h.ssh_host_key is None:
            raise ApiError(f"host {h.name} was not deployed over SSH; nothing to renew", code="conflict", status=409)
        return engine_credentials(ctx, h), stored_options(h), h.name
    creds, options, name = await ctx.db.run(load)

    async def work(task: TaskContext) -> dict[str, Any]:
        return await run_deploy(ctx, task, host_id, creds, options, "renew")
    return await ctx.tasks.submit("host_renew_cert", work, object_type="host", object_id=host_id,
                                  message=f"renewing the agent certificate of {name}")
