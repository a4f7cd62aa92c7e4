"""An NFS (netfs) pool's port, NFS version and mount options (issue 12: the shared domain on the NFS lab).

libvirt 9.0 passes ``<protocol ver='N'/>`` to mount(8) as ``nfsvers=N`` but never ``<host port>``, so the agent
also writes the port as a mount option (``<fs:mount_opts>``). On libvirt's test driver the pool keeps the port
and the version (it drops the fs namespace); on the QEMU lab's real libvirtd the mount command line -- which
libvirt quotes in its error, the build host's kernel having no NFS -- shows what reaches mount.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from lxml import etree

from corral.agent.service import Agent
from corral.agent.storage import FS_NS
from tests.agent.conftest import Api
from tests.agent.test_agent_storage import POOLS, _name, lab_api  # noqa: F401  (lab_api is a fixture)


@pytest.fixture
def tapi(agent_factory: Callable[..., Agent]) -> Api:
    return Api(agent_factory())


def _netfs(path: Path, **source: Any) -> dict[str, Any]:
    return {"type": "netfs", "path": str(path), "source": {"host": "10.0.2.2", "dir": "/export", **source}}


def test_port_and_version_are_kept_and_compared(tapi: Api, tmp_path: Path) -> None:
    body = _netfs(tmp_path / "mnt", port=20490, protocol_version=4, mount_options=["soft", "timeo=50"])
    pool = tapi.put(f"{POOLS}/shared", json=body, expect=200).json()
    assert pool["source"] == {"host": "10.0.2.2", "dir": "/export", "format": "nfs", "port": 20490,
                              "protocol_version": 4}
    xml = etree.fromstring(tapi.conn().storagePoolLookupByName("shared").XMLDesc(0).encode())
    assert xml.find("source/host").get("port") == "20490" and xml.find("source/protocol").get("ver") == "4"
    assert tapi.put(f"{POOLS}/shared", json=body, expect=200).json() == pool  # idempotent
    # another port or version under that name is refused by field, the pool untouched
    other = tapi.put(f"{POOLS}/shared", json={**body, "source": {**body["source"], "port": 2049}}, expect=409).json()
    assert other["field"] == "source.port" and "20490" in other["message"]
    other = tapi.put(f"{POOLS}/shared", json={**body, "source": {**body["source"], "protocol_version": 3}},
                     expect=409).json()
    assert other["field"] == "source.protocol_version"
    # a pool without them stays as it was (no port, no version in its source)
    plain = tapi.put(f"{POOLS}/plain", expect=200, json={**_netfs(tmp_path / "plain"), "source": {
        "host": "10.0.2.2", "dir": "/export2"}}).json()
    assert plain["source"] == {"host": "10.0.2.2", "dir": "/export2", "format": "nfs"}


@pytest.mark.parametrize(("source", "field"), [
    ({"port": 0}, "source.port"),
    ({"port": 65536}, "source.port"),
    ({"port": "2049"}, "source.port"),
    ({"protocol_version": 5}, "source.protocol_version"),
    ({"mount_options": ["rw,exec"]}, "source.mount_options.0"),
    ({"mount_options": ["soft", "x y"]}, "source.mount_options.1"),
    ({"mount_options": ["a=b'c"]}, "source.mount_options.0"),
    ({"mount_options": ["soft"] * 17}, "source.mount_options"),
])
def test_bad_options_are_refused_by_field(tapi: Api, tmp_path: Path, source: dict[str, Any], field: str) -> None:
    answer = tapi.put(f"{POOLS}/shared", json=_netfs(tmp_path / "mnt", **source), expect=422).json()
    assert answer["field"] == field, answer
    assert tapi.conn().listAllStoragePools() == []


def test_the_pool_xml_carries_the_port_as_a_mount_option() -> None:
    from corral.agent.storage import pool_xml
    from corral.agent.storage_bodies import parse_pool

    body = parse_pool(_netfs(Path("/mnt/x"), port=2049, protocol_version=4, mount_options=["addr=10.0.2.2"]))
    root = etree.fromstring(pool_xml("p", body).encode())
    assert [o.get("name") for o in root.iterfind(f"{{{FS_NS}}}mount_opts/{{{FS_NS}}}option")] == \
        ["port=2049", "addr=10.0.2.2"]
    plain = etree.fromstring(pool_xml("p", parse_pool(_netfs(Path("/mnt/x")))).encode())
    assert plain.find(f"{{{FS_NS}}}mount_opts") is None and not plain.nsmap


@pytest.mark.qemulab
def test_real_libvirt_mounts_with_the_version_port_and_options(lab_api: Api, tmp_path: Path) -> None:  # noqa: F811
    api, pool = lab_api, _name()
    body = _netfs(tmp_path / "mnt", port=20490, protocol_version=4, mount_options=["soft"])
    body["source"]["host"] = "127.0.0.1"
    answer = api.put(f"{POOLS}/{pool}", json=body, expect=502).json()
    # the build host's kernel has no NFS: libvirt's error quotes the mount command it ran
    message = answer["message"]
    assert "mount" in message and "nfsvers=4" in message and "port=20490" in message and "soft" in message, message
    listed = next(p for p in api.get(POOLS, expect=200).json()["items"] if p["name"] == pool)
    assert listed["source"] == {"host": "127.0.0.1", "dir": "/export", "format": "nfs", "port": 20490,
                                "protocol_version": 4, "mount_options": ["soft"]}
    api.delete(f"{POOLS}/{pool}", expect=204)
