"""Agent certificates name only what the operator gave, and the deploy pins the one it issued (issue 14)."""

from __future__ import annotations

import re
import ssl
from pathlib import Path

import pytest
from cryptography import x509

from corral.engine.deploy import certs
from corral.engine.deploy.options import DeployFailed, DeployOptions
from corral.engine.pki import EnginePki
from tests.deploy.conftest import Api, libvirt_uri_for_tests
from tests.deploy.sshhost import SshHost
from tests.deploy.test_deploy_ssh import body


def test_names_come_from_the_operator_and_are_single_names() -> None:
    assert certs.names("10.0.0.5", "agent.example.com") == ["10.0.0.5", "agent.example.com"]
    assert certs.names("fe80::1", "fe80::1") == ["fe80::1"]
    for bad, field in (("*.example.com", "ssh.address"), ("a..b", "ssh.address")):
        with pytest.raises(DeployFailed, match=re.escape(field)):
            certs.names(bad, "")
    with pytest.raises(DeployFailed, match=r"options\.agent_url"):
        certs.names("10.0.0.5", "*.example.com")
    with pytest.raises(ValueError, match="agent_url"):
        DeployOptions(agent_url="https://*.example.com:8470")
    assert DeployOptions(agent_url="https://[fe80::1]:8470").agent_url


def test_deployed_certificate_names_the_address_only_and_is_pinned(api: Api, sshhost: SshHost,
                                                                   engine_dir: Path) -> None:
    """A real deploy: the host's own ``hostname`` is not among the names; the agent serves the pinned one."""
    root = sshhost.dir / "root-names"
    sshhost.roots.append(root)  # type: ignore[attr-defined]
    task = api.wait(api.post("/hosts", body(sshhost, "named", root, 8477, allow_tcg=True,
                                            libvirt_uri=libvirt_uri_for_tests())))
    assert task["state"] == "succeeded", (task["error"], task["message"])
    h = api.host("named")
    assert h["deploy"]["cert"]["sans"] == [sshhost.address]
    cert = x509.load_pem_x509_certificate((root / "etc/corral/pki/agent.crt").read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(n.value) for n in san] == [sshhost.address]
    pki = EnginePki(engine_dir / "pki")
    ctx = ssl.create_default_context(cafile=str(pki.ca_cert_path))
    ctx.load_cert_chain(str(pki.client_cert_path), str(pki.client_key_path))
    assert certs.served_fingerprint(sshhost.address, 8477, ctx) == h["deploy"]["cert"]["sha256"]
