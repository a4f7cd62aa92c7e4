"""The portal's pages, one router per page or area. ``ROUTERS`` is the order they are included in: a fixed
path (``/vms/new``) before the pattern that would also match it (``/vms/{vm_id}``)."""

from __future__ import annotations

from fastapi import APIRouter

from corral.engine.portal.pages import (
    api,
    apidocs,
    console,
    dashboard,
    events,
    hosts,
    images,
    networks,
    session,
    storage,
    stream,
    templates,
    users,
    vm,
    vms,
)

ROUTERS: tuple[APIRouter, ...] = (session.router, dashboard.router, hosts.router, vms.router, vm.router,
                                  console.router, events.router, storage.router, images.router, templates.router,
                                  networks.router, users.router, stream.router, api.router, apidocs.router)

__all__ = ["ROUTERS"]
