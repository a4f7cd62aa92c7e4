"""Fixtures: a small simulator behind a TestClient, and the real agent (libvirt's test driver) to compare with.

In the simulator made by ``sim``, host 1 is KVM and host 2 is Xen (``--xen-ratio 0.5`` alternates). The real
agents are libvirt's test driver presenting a KVM host (``--emulate kvm``, on ``test:///default``: every
connection to it in this process shares one driver state, so tests use fresh VM names and delete what they
create) and a Xen host (``--emulate xen``, on a test driver of its own). Each is given the bridges of the
simulated host it is compared with.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from corral.simulate import Simulator, SimulatorSettings, create_simulator_app

TOKEN = "simulate-test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
KVM_HOST, XEN_HOST = "/hosts/1", "/hosts/2"


def fresh_name(prefix: str = "simtest") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def vm_spec(name: str) -> dict[str, Any]:
    return {"name": name, "memory_mib": 256, "vcpus": 1, "disks": [{"source": "/var/lib/corral/images/t.img"}],
            "nics": [{"source": "br0"}], "graphics": {}}


@pytest.fixture
def sim() -> Simulator:
    return Simulator(SimulatorSettings(hosts=4, vms_per_host=3, seed=7, token=TOKEN, event_rate=0))


@pytest.fixture
def sim_client(sim: Simulator) -> Iterator[TestClient]:
    with TestClient(create_simulator_app(sim), headers=AUTH) as client:
        yield client


def _agent(state_dir: Path, uri: str, emulate: str, bridges: list[str]) -> Iterator[Any]:
    libvirt = pytest.importorskip("libvirt")
    from corral.agent.service import Agent, Settings

    agent = Agent(Settings(libvirt=uri, state_dir=state_dir, emulate=emulate, bridges=bridges))
    try:
        agent.start()
    except libvirt.libvirtError as exc:  # pragma: no cover - the test driver is part of libvirt's client library
        pytest.skip(f"libvirt's test driver is not usable here: {exc}")
    try:
        yield agent
    finally:
        agent.stop()


def _client(agent: Any) -> Iterator[TestClient]:
    from corral.agent.app import create_app

    with TestClient(create_app(agent, token=TOKEN), headers=AUTH) as client:
        yield client


@pytest.fixture
def real_agent(tmp_path: Path) -> Iterator[Any]:
    """KVM emulated on the shared test driver (whose network ``default`` adds the bridge ``virbr0``)."""
    yield from _agent(tmp_path / "state", "test:///default", "kvm", ["br0"])


@pytest.fixture
def real_client(real_agent: Any) -> Iterator[TestClient]:
    yield from _client(real_agent)


@pytest.fixture
def real_xen_agent(tmp_path: Path) -> Iterator[Any]:
    """Xen emulated on a test driver of its own (a node file: no domains, no networks), bridges as a dom0's."""
    node = tmp_path / "xen-node.xml"
    node.write_text("<node>\n</node>\n")
    yield from _agent(tmp_path / "xen-state", f"test://{node}", "xen", ["br0", "xenbr0"])


@pytest.fixture
def real_xen_client(real_xen_agent: Any) -> Iterator[TestClient]:
    yield from _client(real_xen_agent)


def cleanup(client: TestClient, prefix: str, vm_id: str) -> None:
    """Stop and delete a VM, whatever state a failed test left it in."""
    client.post(f"{prefix}/v1/vms/{vm_id}/destroy")
    client.delete(f"{prefix}/v1/vms/{vm_id}")
