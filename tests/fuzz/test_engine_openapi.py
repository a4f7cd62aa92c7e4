"""Schemathesis over the engine's REST API (``/api/v1``, the OpenAPI document FastAPI makes): no 5xx (issue 14).

The engine runs on SQLite in a temporary directory (PostgreSQL shares every handler and is covered route by
route by tests/engine; one database keeps CI time bounded), under uvicorn on the loopback, with two real agents
on libvirt's test driver registered as hosts (``xen-host`` emulating Xen, ``kvm-host`` KVM), a storage domain,
a volume, a running VM, a stopped one and a template: the path parameters are either generated or one of these
names, so host, VM, storage and snapshot routes do real work, not only 404s. DELETE keeps generated names (the
seeded objects stay for the routes after it).

Two runs: as an admin (every route is exercised past its access rule) and as a viewer (every route above the
viewer's role must answer 403, the others no 5xx). Each answer must be below 500, and a refusal must be the
API's JSON error. Excluded by name: ``PUT /api/v1/images/{name}``, whose body is a file streamed to an agent
(tests/engine/test_images.py covers it), and ``POST /api/v1/hosts`` and ``.../reinstall``, whose bodies name
hosts the engine would connect to (tests send traffic only to the loopback and the labs). The console
WebSockets are not in the document.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis

from corral.engine import access
from corral.engine.app import create_app
from corral.engine.auth import Role, create_token
from tests.engine.agents import AgentProc
from tests.engine.conftest import FAST
from tests.fuzz.support import call, fuzz, serve, summary, timed

# Examples per operation: the admin run crosses the handlers; the viewer's is about the refusals, which come
# before any handler runs (fewer suffice, and CI time stays bounded: both runs together ~1.5 min on 2 CPUs).
ADMIN_EXAMPLES = 15
VIEWER_EXAMPLES = 5
EXCLUDED = {
    "PUT /api/v1/images/{name}": "its body is a file streamed to an agent (tests/engine/test_images.py)",
    # tests send traffic only to the loopback and the labs: a generated agent URL or SSH address would be
    # connected to (any host name, any port); their refusals are tested in tests/engine/test_api.py and
    # test_agent_url_transport.py, the deploy against the deploy tests' own sshd
    "POST /api/v1/hosts": "its bodies name agent URLs and SSH hosts the engine would connect to",
    "POST /api/v1/hosts/{host}/reinstall": "its bodies name SSH credentials and agent URLs the engine would use",
}


class Engine:
    def __init__(self, url: str, admin: str) -> None:
        self.url = url
        self.http = httpx.Client(base_url=url + "/api/v1", headers={"Authorization": f"Bearer {admin}"}, timeout=60)

    def ok(self, method: str, path: str, **kwargs: Any) -> Any:
        resp = self.http.request(method, path, **kwargs)
        assert resp.status_code < 300, (method, path, resp.status_code, resp.text)
        return resp.json() if resp.content else None

    def task(self, method: str, path: str, **kwargs: Any) -> Any:
        """Start a task and wait for it to succeed."""
        task = self.ok(method, path, **kwargs)
        for _ in range(1200):
            if task["state"] in ("succeeded", "failed"):
                break
            task = self.ok("GET", f"/tasks/{task['id']}")
            time.sleep(0.05)
        assert task["state"] == "succeeded", task
        return task


def seed(engine: Engine, agents: dict[str, AgentProc], root: Path) -> dict[str, list[str]]:
    """Real objects for the path parameters: hosts, a storage domain and volume, VMs, a template, a user."""
    for name, agent in agents.items():
        engine.task("POST", "/hosts", json={"name": name, "url": agent.url, "token": agent.token})
    engine.ok("POST", "/storage-domains", json={"name": "fuzz-dir", "type": "dir", "path": str(root / "pool")})
    engine.task("POST", "/volumes", json={"name": "fuzz-vol", "domain": "fuzz-dir", "size_bytes": 1 << 20})
    up = engine.ok("POST", "/vms", json={"name": "fuzz-up", "memory_mib": 128, "vcpus": 1,
                                         "nics": [{"source": "br0"}]})
    engine.task("POST", f"/vms/{up['id']}/start")
    engine.ok("POST", "/vms", json={"name": "fuzz-down", "memory_mib": 128, "vcpus": 1})
    engine.task("POST", "/templates", json={"name": "fuzz-tpl", "vm": "fuzz-down"})
    engine.ok("POST", "/users", json={"username": "fuzz-user", "role": "operator", "password": "pass-" * 3})
    tasks = [t["id"] for t in engine.ok("GET", "/tasks")["items"][:2]]
    return {"host": list(agents), "vm": ["fuzz-up", "fuzz-down", up["id"]], "cluster": ["default"],
            "domain": ["fuzz-dir"], "volume": ["fuzz-vol"], "template": ["fuzz-tpl"], "user": ["fuzz-user"],
            "task_id": tasks, "image": [], "name": []}


def viewer_token(engine: Engine) -> str:
    engine.ok("POST", "/users", json={"username": "fuzz-viewer", "role": "viewer", "password": "pass-" * 3})
    return str(engine.ok("POST", "/tokens", json={"name": "fuzz", "user": "fuzz-viewer", "expires": "1d"})["token"])


@pytest.fixture(scope="module")
def engine_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("engine-fuzz")
    mp = pytest.MonkeyPatch()
    mp.setenv("CORRAL_HOST_PATHS", "/")  # as every test engine (tests/conftest.py): specs may name any path
    db_url = f"sqlite:///{root / 'engine.db'}"
    admin = create_token(db_url)
    agents = {"xen-host": AgentProc("xen-host", "xen", ["xenbr0"], root / "xen"),
              "kvm-host": AgentProc("kvm-host", "kvm", ["br0"], root / "kvm")}
    try:
        for agent in agents.values():
            agent.start()
        with serve(create_app(db_url, monitor=FAST)) as url:
            engine = Engine(url, admin)
            known = seed(engine, agents, root)
            viewer = viewer_token(engine)
            document = engine.ok("GET", "/openapi.json")
            engine.http.close()
            yield {"url": url, "admin": admin, "viewer": viewer, "known": known, "document": document}
    finally:
        for agent in agents.values():
            agent.stop()
        mp.undo()


@pytest.fixture(scope="module")
def engine_schema(engine_run: dict[str, Any]) -> Any:
    return schemathesis.openapi.from_dict(engine_run["document"])


def test_engine_api_as_admin(engine_run: dict[str, Any], engine_schema: Any, subtests: Any,
                             request: pytest.FixtureRequest) -> None:
    def send(case: schemathesis.Case) -> schemathesis.Response:
        return call(case, engine_run["url"], engine_run["admin"])

    with timed(request, "engine OpenAPI fuzz, admin") as report:
        seen = fuzz(engine_schema, subtests, send, engine_run["known"], EXCLUDED, max_examples=ADMIN_EXAMPLES)
        report.append(summary(seen))
        assert len(seen) > 40


def test_engine_api_as_viewer(engine_run: dict[str, Any], engine_schema: Any, subtests: Any,
                              request: pytest.FixtureRequest) -> None:
    def send(case: schemathesis.Case) -> schemathesis.Response:
        response = call(case, engine_run["url"], engine_run["viewer"])
        need = access.RULES.get(f"{case.method.upper()} {case.operation.path}", Role.ADMIN)
        if need is not None and not Role.VIEWER.allows(need):
            # a valid request is refused for the role; an invalid one may be refused before the role is looked
            # at (a body that does not parse: 400 or 422; schemathesis' negative mode also drops the Authorization:
            # 401)
            positive = case.meta is None or case.meta.generation.mode.is_positive
            assert response.status_code == 403 if positive else 400 <= response.status_code < 500, (
                case.method, case.formatted_path, response.status_code, response.text)
        return response

    with timed(request, "engine OpenAPI fuzz, viewer") as report:
        seen = fuzz(engine_schema, subtests, send, engine_run["known"], EXCLUDED, max_examples=VIEWER_EXAMPLES)
        report.append(summary(seen))
        assert len(seen) > 40
