"""``/v1/vms/{uuid}/snapshots``: the routes of a VM's snapshots, over any object that does them.

The agent serves them over ``corral.agent.snapshots.Snapshots``; ``corral simulate`` over its in-memory hosts,
with the same routes, so both OpenAPI documents stay equal (tests/simulate/test_same_api.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from fastapi import APIRouter, Body, Response

from corral.agent.errors import Unsupported
from corral.agent.snapshots import SnapshotBody, parse_body


class SnapshotOps(Protocol):
    def list_all(self, uuid: str) -> dict[str, Any]: ...
    def create(self, uuid: str, body: SnapshotBody) -> dict[str, Any]: ...
    def revert(self, uuid: str, name: str) -> dict[str, Any]: ...
    def delete(self, uuid: str, name: str) -> None: ...


def snapshots_router(get_ops: Callable[[], SnapshotOps] | None, answer: Callable[..., Response]) -> APIRouter:
    """``answer``: the caller's JSON encoder (the agent's msgspec one). Included before the agent's catch-all
    ``POST /v1/vms/{vm_id}/{action}`` route, which would otherwise take ``.../snapshots``. Without ``get_ops``
    (the simulator's hosts, which have no disks) every route answers 409 ``unsupported``."""
    router = APIRouter(prefix="/v1/vms/{vm_id}/snapshots")

    def ops() -> SnapshotOps:
        if get_ops is None:
            raise Unsupported("snapshots: this host has no disks to snapshot (a simulated host)", field="snapshot")
        return get_ops()

    @router.get("", response_model=dict[str, Any])
    def list_snapshots(vm_id: str) -> Response:
        return answer(ops().list_all(vm_id))

    @router.post("", status_code=201, response_model=dict[str, Any])
    def create_snapshot(vm_id: str, data: Any = Body(...)) -> Response:
        return answer(ops().create(vm_id, parse_body(data)), 201)

    @router.post("/{name}/revert", response_model=dict[str, Any])
    def revert_snapshot(vm_id: str, name: str) -> Response:
        return answer(ops().revert(vm_id, name))

    @router.delete("/{name}", status_code=204)
    def delete_snapshot(vm_id: str, name: str) -> Response:
        ops().delete(vm_id, name)
        return Response(status_code=204)

    return router
