"""Schemathesis over the agent's API (``/v1``, the OpenAPI document of corral/agent/app.py): no 5xx (issue 14).

An agent on libvirt's test driver (a private driver per agent, as tests/agent/conftest.py makes them),
emulating Xen and then KVM, under uvicorn on the loopback with its bearer token. It holds a dir pool with a
volume, a running VM and a stopped one with a snapshot: each path parameter is generated or one of these names
(and ``action`` one of the real actions), so the VM, device, snapshot and storage routes do real work. Every
answer must be below 500, and a refusal the agent's JSON error (``code``, ``message``).

Excluded by name: ``GET /v1/events`` (a server-sent event stream: it stays open) and ``PUT .../content`` (the
body is an image streamed into libvirt; tests/agent/test_agent_storage.py covers it).
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis

from corral.agent.app import ACTIONS, create_app
from corral.agent.service import Agent, Settings
from tests.agent.conftest import TOKEN, spec, write_node
from tests.fuzz.support import call, fuzz, serve, summary, timed

EXCLUDED = {
    "GET /v1/events": "a server-sent event stream that stays open (tests/agent/test_agent_events.py)",
    "PUT /v1/storage/pools/{pool}/volumes/{volume}/content": "an image streamed into libvirt "
                                                             "(tests/agent/test_agent_storage.py)",
}


def seed(http: httpx.Client, root: Any) -> dict[str, list[str]]:
    """A pool with a volume, a running VM, a stopped VM with a snapshot: real names for the path parameters."""
    def ok(method: str, path: str, **kwargs: Any) -> Any:
        resp = http.request(method, path, **kwargs)
        assert resp.status_code < 300, (method, path, resp.status_code, resp.text)
        return resp.json() if resp.content else None

    ok("PUT", "/v1/storage/pools/fuzz-pool", json={"type": "dir", "path": str(root / "pool")})
    ok("POST", "/v1/storage/pools/fuzz-pool/volumes", json={"name": "fuzz-vol", "capacity_bytes": 1 << 20})
    up = spec("fuzz-up")
    ok("POST", "/v1/vms?start=true", json=up)
    disk = root / "down.qcow2"  # a snapshot needs a real qcow2 file (offline: qemu-img on the file)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "16M"], check=True, timeout=60)
    down = spec("fuzz-down", disks=[{"id": str(uuid.uuid4()), "source": str(disk), "format": "qcow2"}])
    ok("POST", "/v1/vms", json=down)
    ok("POST", f"/v1/vms/{down['id']}/snapshots", json={"name": "fuzz-snap"})
    return {"pool": ["fuzz-pool"], "volume": ["fuzz-vol"], "vm_id": [up["id"], down["id"]],
            "name": ["fuzz-snap"], "action": list(ACTIONS),
            "device_id": [up["disks"][0]["id"], up["nics"][0]["id"], down["disks"][0]["id"]]}


@pytest.fixture(scope="module", params=["xen", "kvm"])
def agent_run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp(f"agent-fuzz-{request.param}")
    agent = Agent(Settings(libvirt=write_node(root / "node.xml"), emulate=request.param, state_dir=root / "state"))
    agent.start()
    try:
        with serve(create_app(agent, token=TOKEN)) as url:
            with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60) as http:
                known = seed(http, root)
                document = http.get("/v1/openapi.json").json()
            yield {"url": url, "known": known, "schema": schemathesis.openapi.from_dict(document),
                   "flavor": request.param}
    finally:
        agent.stop()


def test_agent_api(agent_run: dict[str, Any], subtests: Any, request: pytest.FixtureRequest) -> None:
    def send(case: schemathesis.Case) -> schemathesis.Response:
        return call(case, agent_run["url"], TOKEN)

    with timed(request, f"agent OpenAPI fuzz, emulating {agent_run['flavor']}") as report:
        seen = fuzz(agent_run["schema"], subtests, send, agent_run["known"], EXCLUDED)
        report.append(summary(seen))
        assert len(seen) > 20
