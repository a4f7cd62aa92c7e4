"""The agent's server certificate: issued by the engine's CA for the names the engine reaches the host by,
written to the host's PKI directory (key 0600) next to the CA certificate that verifies the engine.

Its names come only from the operator (the SSH address, the agent URL's host), never from the host itself: a
host's ``hostname`` is whatever its root set, and the engine's CA would vouch for it: ``*.example.com``, another
host's name, or the engine's own (which the CLI verifies against the same CA). A name that is not one host name
or address (a wildcard, an empty label) is refused by the field that gave it. The certificate's SHA-256 is
recorded with the host (``deploy.cert.sha256``), and the deploy checks that the agent it then reaches serves
exactly that certificate (``served_fingerprint``)."""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import re
import shlex
import socket
import ssl

from corral.engine.deploy.options import DeployFailed
from corral.engine.deploy.ssh import Remote
from corral.engine.deploy.units import Layout
from corral.engine.pki import EnginePki, Issued

_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


def host_name_or_address(name: str) -> bool:
    """One IP address or one DNS host name (RFC 1123 labels): no wildcard, no empty label."""
    try:
        ipaddress.ip_address(name.strip("[]"))
        return True
    except ValueError:
        pass
    labels = name.rstrip(".").split(".")
    return 0 < len(name) <= 253 and all(_LABEL.match(label) for label in labels)


def names(address: str, url_host: str) -> list[str]:
    """Subject alternative names: the ways the operator said the engine reaches the agent (the SSH address, the
    agent URL's host), without duplicates or blanks."""
    out: list[str] = []
    for field, name in (("ssh.address", address), ("options.agent_url", url_host)):
        if not name:
            continue
        if not host_name_or_address(name):
            raise DeployFailed("certificate", f"{field}: {name!r} is not one host name or address; a certificate "
                               "is issued for such names only", code="invalid")
        if name not in out:
            out.append(name)
    return out


def served_fingerprint(host: str, port: int, context: ssl.SSLContext, timeout: float = 10.0) -> str:
    """The SHA-256 of the certificate the agent at ``host:port`` serves (the handshake verified by ``context``)."""
    with socket.create_connection((host.strip("[]"), port), timeout=timeout) as raw, \
            context.wrap_socket(raw, server_hostname=host.strip("[]")) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return hashlib.sha256(der).hexdigest()


async def install_certificate(remote: Remote, layout: Layout, pki: EnginePki, common_name: str, sans: list[str],
                              days: int) -> Issued:
    issued = await asyncio.to_thread(pki.issue_server, common_name, sans, days)
    q = shlex.quote(layout.pki)
    await remote.must(f"mkdir -p {q} && chmod 700 {q}", "certificate", "mkdir")
    await remote.write(f"{layout.pki}/agent.key", issued.key_pem, 0o600, "certificate")
    await remote.write(f"{layout.pki}/agent.crt", issued.cert_pem, 0o644, "certificate")
    await remote.write(f"{layout.pki}/ca.crt", pki.ca_pem, 0o644, "certificate")
    return issued
