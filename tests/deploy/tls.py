"""Probing an agent's mutual TLS from a test: which clients it answers and which it refuses."""

from __future__ import annotations

import ssl
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

from corral.engine.pki import ENGINE_CN, EnginePki


def client_context(ca: Path, cert_pem: bytes | None = None, key_pem: bytes | None = None,
                   tmp: Path | None = None) -> ssl.SSLContext:
    """Trust ``ca`` for the agent's certificate and present ``cert_pem`` (if any) as the client certificate."""
    ctx = ssl.create_default_context(cafile=str(ca))
    if cert_pem is not None and key_pem is not None:
        assert tmp is not None
        tmp.mkdir(parents=True, exist_ok=True)
        (tmp / "c.pem").write_bytes(cert_pem)
        (tmp / "k.pem").write_bytes(key_pem)
        ctx.load_cert_chain(str(tmp / "c.pem"), str(tmp / "k.pem"))
    return ctx


def get(url: str, ctx: ssl.SSLContext | bool) -> httpx.Response:
    with httpx.Client(verify=ctx, timeout=10) as c:
        return c.get(url)


def refused(url: str, ctx: ssl.SSLContext | bool) -> str:
    """The transport error a refused client sees (fails the test if the agent answered)."""
    try:
        resp = get(url, ctx)
    except httpx.TransportError as exc:
        return f"{type(exc).__name__}: {exc}"
    raise AssertionError(f"the agent answered {resp.status_code}: {resp.text[:200]}")


def check_agent_mtls(base: str, pki: EnginePki, tmp: Path, agent_cert: bytes | None = None,
                     agent_key: bytes | None = None) -> dict[str, str]:
    """Assert the agent at ``base`` (``https://...``) enforces mutual TLS; returns what each refusal looked like."""
    seen: dict[str, str] = {}
    # the engine's own client: answers
    engine = pki.client_ssl_context()
    assert get(f"{base}/v1/host", engine).status_code == 200
    # plain HTTP on the TLS port: no answer
    seen["plain_http"] = refused(base.replace("https://", "http://") + "/v1/health", False)
    # no client certificate: health only
    anon = client_context(pki.ca_cert_path)
    assert get(f"{base}/v1/health", anon).status_code == 200
    r = get(f"{base}/v1/host", anon)
    assert r.status_code == 401 and r.json()["code"] == "unauthorized", r.text
    seen["no_cert"] = f"401 {r.json()['message']}"
    # a client certificate from another CA
    other = EnginePki(tmp / "other-ca")
    other.ensure()
    cert = other.issue(ENGINE_CN, server=False)
    seen["other_ca"] = refused(f"{base}/v1/host", client_context(pki.ca_cert_path, cert.cert_pem, cert.key_pem,
                                                                  tmp / "c-other"))
    # an expired certificate from the right CA
    now = datetime.now(UTC)
    cert = pki.issue(ENGINE_CN, server=False, not_before=now - timedelta(days=20), not_after=now - timedelta(days=1))
    seen["expired"] = refused(f"{base}/v1/host", client_context(pki.ca_cert_path, cert.cert_pem, cert.key_pem,
                                                                 tmp / "c-expired"))
    # a certificate of the right CA that is not for clients (an agent's server certificate)
    if agent_cert is not None and agent_key is not None:
        seen["server_cert_as_client"] = refused(
            f"{base}/v1/host", client_context(pki.ca_cert_path, agent_cert, agent_key, tmp / "c-server"))
    # a client certificate of the right CA but not the engine's name
    cert = pki.issue("someone-else", server=False)
    r = get(f"{base}/v1/host", client_context(pki.ca_cert_path, cert.cert_pem, cert.key_pem, tmp / "c-name"))
    assert r.status_code == 401, r.text
    seen["wrong_name"] = f"401 {r.json()['message']}"
    return seen
