"""The agent's mutual TLS, on this machine (libvirt's test driver, no root needed): it refuses plain HTTP, a
client certificate from another CA, an expired one, a server certificate used as a client one, and every path
but /v1/health without a certificate."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from corral.engine.pki import EnginePki
from tests.deploy.tls import check_agent_mtls, client_context, get


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def tls_agent(tmp_path: Path) -> Iterator[tuple[str, EnginePki, bytes, bytes]]:
    pki = EnginePki(tmp_path / "pki")
    pki.ensure()
    issued = pki.issue_server("agent-under-test", ["127.0.0.1", "localhost"])
    d = tmp_path / "agent"
    d.mkdir()
    (d / "agent.crt").write_bytes(issued.cert_pem)
    (d / "agent.key").write_bytes(issued.key_pem)
    os.chmod(d / "agent.key", 0o600)
    port = _free_port()
    log = open(tmp_path / "agent.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "corral", "agent", "serve", "--libvirt", "test:///default",
                             "--listen", f"127.0.0.1:{port}", "--tls-cert", str(d / "agent.crt"),
                             "--tls-key", str(d / "agent.key"), "--tls-ca", str(pki.ca_cert_path),
                             "--state-dir", str(d / "state"), "--config", os.devnull],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"https://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, (tmp_path / "agent.log").read_text()
            try:
                if get(f"{base}/v1/health", client_context(pki.ca_cert_path)).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the agent did not start"
            time.sleep(0.1)
        yield base, pki, issued.cert_pem, issued.key_pem
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


def test_agent_enforces_mutual_tls(tls_agent: tuple[str, EnginePki, bytes, bytes], tmp_path: Path) -> None:
    base, pki, cert, key = tls_agent
    seen = check_agent_mtls(base, pki, tmp_path, cert, key)
    assert set(seen) == {"plain_http", "no_cert", "other_ca", "expired", "server_cert_as_client", "wrong_name"}
    # the engine's certificate reaches every endpoint, events included
    engine = pki.client_ssl_context()
    assert "items" in get(f"{base}/v1/vms", engine).json()
    assert get(f"{base}/v1/events?after=0&wait=0", engine).status_code == 200


def test_agent_rejects_a_bearer_token_without_certificate(tls_agent: tuple[str, EnginePki, bytes, bytes]) -> None:
    base, pki, _cert, _key = tls_agent
    with httpx.Client(verify=client_context(pki.ca_cert_path), timeout=10) as c:
        r = c.get(f"{base}/v1/host", headers={"Authorization": "Bearer " + "x" * 32})
    assert r.status_code == 401
