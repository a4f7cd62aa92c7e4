"""The REST API under ``/api/v1``: one router per resource, bearer-token auth and the
route's role (``corral.engine.access``) on all of them."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from corral.engine.api import (
    clusters,
    devices,
    events,
    fencing,
    hosts,
    images,
    metrics,
    migrate,
    networks,
    snapshots,
    storage,
    tasks,
    templates,
    tokens,
    users,
    vms,
)
from corral.engine.api.deps import require_token


def api_router() -> APIRouter:
    router = APIRouter(prefix="/api/v1", dependencies=[Depends(require_token)])
    for module in (clusters, hosts, migrate, vms, devices, events, tasks, metrics, storage, images, templates,
                   snapshots, networks, fencing):
        router.include_router(module.router)
    for module in (users, tokens):
        router.include_router(module.router)
    return router
