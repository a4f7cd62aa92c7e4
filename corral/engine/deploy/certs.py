"""The agent's server certificate: issued by the engine's CA for the names the engine reaches the host by,
written to the host's PKI directory (key 0600) next to the CA certificate that verifies the engine."""

from __future__ import annotations

import asyncio
import shlex

from corral.engine.deploy.ssh import Remote
from corral.engine.deploy.units import Layout
from corral.engine.pki import EnginePki, Issued


def names(address: str, url_host: str, hostname: str) -> list[str]:
    """Subject alternative names: every way the engine may reach the agent, without duplicates or blanks."""
    return list(dict.fromkeys(n for n in (address, url_host, hostname) if n))


async def install_certificate(remote: Remote, layout: Layout, pki: EnginePki, common_name: str, sans: list[str],
                              days: int) -> Issued:
    issued = await asyncio.to_thread(pki.issue_server, common_name, sans, days)
    q = shlex.quote(layout.pki)
    await remote.must(f"mkdir -p {q} && chmod 700 {q}", "certificate", "mkdir")
    await remote.write(f"{layout.pki}/agent.key", issued.key_pem, 0o600, "certificate")
    await remote.write(f"{layout.pki}/agent.crt", issued.cert_pem, 0o644, "certificate")
    await remote.write(f"{layout.pki}/ca.crt", pki.ca_pem, 0o644, "certificate")
    return issued
