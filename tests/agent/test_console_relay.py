"""The agent's console relay WebSockets on libvirt's test driver: authenticated like every route, and a console
that cannot be opened closed with a code that carries the HTTP status and a reason (test-driver domains run no
VNC server and have no console stream; the relay itself is tested on the QEMU lab, tests/e2e/test_console_relay.py)."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest
from starlette.websockets import WebSocketDisconnect

from corral.agent.service import Agent
from tests.agent.conftest import AUTH, Api, spec


def closed_with(api: Api, path: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    with api.client.websocket_connect(path, headers=AUTH if headers is None else headers) as ws, \
            pytest.raises(WebSocketDisconnect) as caught:
        ws.receive_bytes()
    return caught.value.code, caught.value.reason


@pytest.mark.parametrize("kind", ["vnc", "serial"])
def test_console_websocket_needs_the_agent_credentials(agent_factory: Callable[..., Agent], kind: str) -> None:
    api = Api(agent_factory())
    vm = api.create(spec(graphics={"type": "vnc"}, consoles=[{"kind": "serial"}]), start=True)
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        with pytest.raises(WebSocketDisconnect) as caught, \
                api.client.websocket_connect(f"/v1/vms/{vm['id']}/console/{kind}", headers=headers):
            pass
        assert caught.value.code == 1008
        assert "token" in caught.value.reason


@pytest.mark.parametrize("kind", ["vnc", "serial"])
def test_console_of_an_unknown_vm(agent_factory: Callable[..., Agent], kind: str) -> None:
    api = Api(agent_factory())
    code, reason = closed_with(api, f"/v1/vms/{uuid.uuid4()}/console/{kind}")
    assert code == 4404 and "no VM" in reason


def test_console_of_a_stopped_vm(agent_factory: Callable[..., Agent]) -> None:
    api = Api(agent_factory())
    vm = api.create(spec(graphics={"type": "vnc"}, consoles=[{"kind": "serial"}]))
    for kind in ("vnc", "serial"):
        code, reason = closed_with(api, f"/v1/vms/{vm['id']}/console/{kind}")
        assert code == 4409 and "not running" in reason, (kind, code, reason)


def test_test_driver_has_no_vnc_server_nor_console_stream(agent_factory: Callable[..., Agent]) -> None:
    api = Api(agent_factory())
    vm = api.create(spec(consoles=[{"kind": "serial"}]), start=True)
    code, reason = closed_with(api, f"/v1/vms/{vm['id']}/console/vnc")
    assert code == 4409 and "no VNC server" in reason, (code, reason)
    code, reason = closed_with(api, f"/v1/vms/{vm['id']}/console/serial")
    assert code == 4409, (code, reason)
