"""The migration routes of a VM (issue 13): ``POST /v1/vms/{uuid}/migrate``, ``GET|DELETE
/v1/vms/{uuid}/migration``, ``POST /v1/vms/{uuid}/migration/check``, ``POST /v1/vms/{uuid}/adopt`` and
``GET /v1/migration/endpoint``, over ``corral.agent.migration.Migrations``.

Included before the agent's catch-all ``POST /v1/vms/{vm_id}/{action}``. ``corral simulate`` includes the same
routes without migrations: every one answers 409 ``unsupported`` (the OpenAPI documents stay equal).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Body, Response

from corral.agent.errors import Unsupported
from corral.agent.migration import Migrations


def migration_router(get: Callable[[], Migrations] | None, answer: Callable[..., Response]) -> APIRouter:
    router = APIRouter()

    def migrations() -> Migrations:
        if get is None:
            raise Unsupported("migration: a simulated host has no hypervisor to migrate to", field="migration")
        return get()

    @router.get("/v1/migration/endpoint", response_model=dict[str, Any])
    def endpoint() -> Response:
        return answer(migrations().endpoint())

    @router.post("/v1/vms/{vm_id}/migrate", status_code=202, response_model=dict[str, Any])
    def migrate(vm_id: str, data: Any = Body(...)) -> Response:
        status = migrations().start(vm_id, data)
        return answer(status, 200 if status["state"] != "running" else 202)

    @router.get("/v1/vms/{vm_id}/migration", response_model=dict[str, Any])
    def migration(vm_id: str) -> Response:
        return answer(migrations().status(vm_id))

    @router.delete("/v1/vms/{vm_id}/migration", response_model=dict[str, Any])
    def abort(vm_id: str) -> Response:
        return answer(migrations().abort(vm_id))

    @router.post("/v1/vms/{vm_id}/migration/check", response_model=dict[str, Any])
    def check(vm_id: str, data: Any = Body(...)) -> Response:
        return answer(migrations().check(vm_id, data))

    @router.post("/v1/vms/{vm_id}/adopt", response_model=dict[str, Any])
    def adopt(vm_id: str) -> Response:
        return answer(migrations().adopt(vm_id))

    return router
