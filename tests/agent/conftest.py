"""Fixtures of the agent tests: real agents on libvirt's test driver, their HTTP API in-process.

Isolation: every ``agent_factory`` agent opens ``test:///<node file>`` (a node file written per test), which
gives each connection a fresh, private test driver with no domain in it. Only the recovery tests use
``test:///default``, whose state is shared by every connection of this process (and dropped when the last
one closes); they name their VMs uniquely and undefine them afterwards.
"""

from __future__ import annotations

import socket
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import libvirt
import pytest
import uvicorn

from corral.agent.app import create_app
from corral.agent.service import Agent, Settings

with warnings.catch_warnings():  # starlette's TestClient warns about httpx at import time
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

TOKEN = "corral-test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
BRIDGE = "corralbr0"

NODE_XML = f"""<node>
  <cpu>
    <nodes>1</nodes><sockets>1</sockets><cores>4</cores><threads>1</threads>
    <active>4</active><mhz>2000</mhz><model>i686</model>
  </cpu>
  <memory>8388608</memory>
  <network>
    <name>lab</name>
    <bridge name='{BRIDGE}'/>
  </network>
</node>
"""


def write_node(path: Path) -> str:
    """A test-driver node file; ``test://`` + the path opens a private driver on it."""
    path.write_text(NODE_XML)
    return f"test://{path}"


class Api:
    """A TestClient that sends the bearer token and checks the error shape of every 4xx/5xx answer."""

    def __init__(self, agent: Agent, token: str | None = TOKEN) -> None:
        self.agent = agent
        self.client = TestClient(create_app(agent, token=token))

    def request(self, method: str, path: str, *, expect: int | None = None, auth: bool = True,
                **kwargs: Any) -> Any:
        headers = {**(AUTH if auth else {}), **kwargs.pop("headers", {})}
        resp = self.client.request(method, path, headers=headers, **kwargs)
        if resp.status_code >= 400:
            body = resp.json()
            assert set(body) >= {"code", "message", "field"}, body
            assert isinstance(body["message"], str) and body["message"]
        if expect is not None:
            assert resp.status_code == expect, (resp.status_code, resp.text)
        return resp

    def get(self, path: str, **kw: Any) -> Any:
        return self.request("GET", path, **kw)

    def post(self, path: str, **kw: Any) -> Any:
        return self.request("POST", path, **kw)

    def put(self, path: str, **kw: Any) -> Any:
        return self.request("PUT", path, **kw)

    def patch(self, path: str, **kw: Any) -> Any:
        return self.request("PATCH", path, **kw)

    def delete(self, path: str, **kw: Any) -> Any:
        return self.request("DELETE", path, **kw)

    def create(self, spec: dict[str, Any], start: bool = False) -> dict[str, Any]:
        resp = self.post(f"/v1/vms?start={str(start).lower()}", json=spec, expect=201)
        return resp.json()  # type: ignore[no-any-return]

    def conn(self) -> libvirt.virConnect:
        """The agent's own connection: with a private test driver, the only view of its state."""
        return self.agent.connection.conn


def spec(name: str | None = None, **extra: Any) -> dict[str, Any]:
    """A small VmSpec as JSON: one disk, one NIC on the node's bridge, a serial console."""
    data: dict[str, Any] = {
        "id": str(uuid.uuid4()),
        "name": name or f"vm-{uuid.uuid4().hex[:8]}",
        "memory_mib": 256,
        "disks": [{"id": str(uuid.uuid4()), "source": "/var/lib/corral/images/a.raw"}],
        "nics": [{"id": str(uuid.uuid4()), "source": BRIDGE}],
    }
    data.update(extra)
    return data


def wait_for(check: Callable[[], Any], timeout: float = 5.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


@pytest.fixture
def agent_factory(tmp_path: Path) -> Iterator[Callable[..., Agent]]:
    agents: list[Agent] = []
    counter = iter(range(1000))

    def make(emulate: str | None = None, uri: str | None = None, **settings: Any) -> Agent:
        n = next(counter)
        if uri is None:
            uri = write_node(tmp_path / f"node{n}.xml")
        settings.setdefault("state_dir", tmp_path / f"state{n}")
        agent = Agent(Settings(libvirt=uri, emulate=emulate, **settings))
        agent.start()
        agents.append(agent)
        return agent

    yield make
    for agent in agents:
        agent.stop()


@pytest.fixture(params=[None, "xen", "kvm"], ids=["test", "xen", "kvm"])
def emulate(request: pytest.FixtureRequest) -> str | None:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
def api(agent_factory: Callable[..., Agent], emulate: str | None) -> Api:
    """The API of a fresh agent, once per host kind: plain test driver, emulated Xen, emulated KVM."""
    return Api(agent_factory(emulate))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Served:
    """The agent's app under a real uvicorn on a loopback port, in a thread of this process."""

    def __init__(self, agent: Agent, token: str | None = TOKEN) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(create_app(agent, token=token), host="127.0.0.1", port=self.port,
                                log_level="warning", access_log=False, timeout_graceful_shutdown=1)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="uvicorn-test", daemon=True)

    def __enter__(self) -> Served:
        self.thread.start()
        wait_for(lambda: self.server.started, 10, "uvicorn to start")
        return self

    def __exit__(self, *_exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)
