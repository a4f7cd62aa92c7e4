"""``/v1/host/network``: the host's networks, changed safely (corral.agent.netsetup.safe).

The agent serves them over its ``HostNetwork``; ``corral simulate`` has the same routes (so both OpenAPI
documents stay equal, tests/simulate/test_same_api.py), answering 409 ``unsupported``: a simulated host has no
links. So does an emulated host (libvirt's test driver) unless the agent's ``netns`` setting points it at a
network namespace: a development agent must never rewire the machine it runs on.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Body, Response

from corral.agent.errors import Invalid, Unsupported
from corral.agent.netsetup.config import parse_config
from corral.agent.netsetup.safe import HostNetwork

NO_NETWORK = ("host network: this host's links are not Corral's to change (a simulated host, or libvirt's test "
              "driver without the agent setting netns naming a network namespace)")


def hostnet_router(get_ops: Callable[[], HostNetwork | None] | None, answer: Callable[..., Response]) -> APIRouter:
    """``answer``: the caller's JSON encoder. ``get_ops`` None, or answering None: every route is 409."""
    router = APIRouter(prefix="/v1/host/network")

    def ops() -> HostNetwork:
        hostnet = get_ops() if get_ops is not None else None
        if hostnet is None:
            raise Unsupported(NO_NETWORK, field="netns")
        return hostnet

    @router.get("", response_model=dict[str, Any])
    def show_network() -> Response:
        return answer(ops().show())

    @router.put("", response_model=dict[str, Any])
    def change_network(data: Any = Body(...)) -> Response:
        hostnet = ops()
        return answer(hostnet.change(parse_config(data)))

    @router.post("/confirm", response_model=dict[str, Any])
    def confirm_network(data: Any = Body(...)) -> Response:
        hostnet = ops()
        change_id = data.get("id") if isinstance(data, dict) else None
        if not isinstance(change_id, str) or not change_id:
            raise Invalid("id: the pending change's id (from PUT /v1/host/network)", field="id")
        return answer(hostnet.confirm(change_id))

    return router
