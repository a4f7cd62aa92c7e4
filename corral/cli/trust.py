"""How the CLI trusts the engine's HTTPS certificate: a CA, one pinned certificate, or the system's CAs.

``corral login URL --ca FILE`` keeps that CA; ``corral login URL`` against a certificate the system does not
trust shows its SHA-256 fingerprint and, once the operator accepts it (``--yes``, ``--fingerprint``, or the
prompt), pins that very certificate. Every later connection is verified by OpenSSL in the TLS handshake,
before a request (and its token) is sent:

* a CA: the usual chain and host name checks, with that CA as the only trust anchor;
* a pin: the pinned certificate is the only trust anchor (``VERIFY_X509_PARTIAL_CHAIN`` lets a non-CA
  certificate be one), so only a server holding that certificate's key gets through, whatever names it has;
* neither: the system's CAs (``ssl.create_default_context``).

A refused certificate is then fetched once more, without verification and without sending anything, only to
tell the operator what was presented (its fingerprint, and the pinned one).
"""

from __future__ import annotations

import hashlib
import socket
import ssl
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import serialization


def fingerprint(der: bytes) -> str:
    """SHA-256 of a DER certificate as ``AB:CD:...`` (what ``openssl x509 -fingerprint -sha256`` prints)."""
    return ":".join(f"{b:02X}" for b in hashlib.sha256(der).digest())


def normalize_fingerprint(text: str) -> str:
    """``AB:CD..``, ``abcd..`` or ``SHA256:AB:CD..`` as :func:`fingerprint` prints it; ValueError otherwise."""
    raw = text.strip()
    if raw.upper().startswith("SHA256:") or raw.upper().startswith("SHA256="):
        raw = raw[7:]
    digits = raw.replace(":", "").replace(" ", "").upper()
    if len(digits) != 64 or any(c not in "0123456789ABCDEF" for c in digits):
        raise ValueError(f"{text!r} is not a SHA-256 fingerprint (64 hex digits, colons optional)")
    return ":".join(digits[i:i + 2] for i in range(0, 64, 2))


def der_to_pem(der: bytes) -> str:
    return x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM).decode()


def pem_to_der(pem: str) -> bytes:
    return x509.load_pem_x509_certificate(pem.encode()).public_bytes(serialization.Encoding.DER)


def describe(der: bytes) -> str:
    """Subject, issuer, validity and fingerprint of a certificate, for a person to decide on."""
    cert = x509.load_der_x509_certificate(der)
    return (f"  subject:     {cert.subject.rfc4514_string()}\n  issuer:      {cert.issuer.rfc4514_string()}\n"
            f"  valid until: {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC\n  SHA-256:     {fingerprint(der)}")


@dataclass(frozen=True)
class Trust:
    """What the CLI trusts for one engine: ``ca_pem`` (a CA), ``pinned_pem`` (exactly this certificate), or
    neither (the system's CAs). Saved in the CLI config with the login."""

    ca_pem: str | None = None
    pinned_pem: str | None = None

    def __post_init__(self) -> None:
        if self.ca_pem and self.pinned_pem:
            raise ValueError("a CA or a pinned certificate, not both")

    @property
    def pinned_fingerprint(self) -> str | None:
        return fingerprint(pem_to_der(self.pinned_pem)) if self.pinned_pem else None

    def context(self) -> ssl.SSLContext:
        if self.pinned_pem:
            ctx = ssl.create_default_context(cadata=self.pinned_pem)
            ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
            ctx.check_hostname = False  # the certificate itself is pinned: its names add nothing
            return ctx
        if self.ca_pem:
            return ssl.create_default_context(cadata=self.ca_pem)
        return ssl.create_default_context()

    def config(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.ca_pem:
            out["ca"] = self.ca_pem
        if self.pinned_pem:
            out["pinned_certificate"] = self.pinned_pem
            out["fingerprint"] = self.pinned_fingerprint
        return out

    @classmethod
    def from_config(cls, data: dict[str, Any]) -> Trust:
        """Read back what :meth:`config` wrote; a pinned certificate must still match its fingerprint."""
        trust = cls(ca_pem=data.get("ca") or None, pinned_pem=data.get("pinned_certificate") or None)
        if trust.pinned_pem and data.get("fingerprint") != trust.pinned_fingerprint:
            raise ValueError("the pinned certificate does not match the pinned fingerprint")
        return trust

    def describe(self) -> str:
        if self.pinned_pem:
            return f"the pinned certificate (SHA-256 {self.pinned_fingerprint})"
        return "the CA given at login" if self.ca_pem else "the system's CAs"


def presented_certificate(url: str, timeout: float = 10.0) -> bytes:
    """The certificate the server at ``url`` presents (DER), by a TLS handshake that sends nothing else."""
    parts = urlsplit(url)
    host, port = parts.hostname or "", parts.port or 443
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # only to show it; nothing is sent over this connection
    with socket.create_connection((host, port), timeout=timeout) as sock, \
            ctx.wrap_socket(sock, server_hostname=host) as tls:
        der = tls.getpeercert(binary_form=True)
    if not der:
        raise ssl.SSLError(f"{url} presented no certificate")
    return der


def is_verify_error(exc: BaseException) -> bool:
    """True when ``exc`` (an httpx error) or one of its causes is a refused certificate."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def refusal(url: str, trust: Trust, exc: BaseException) -> str:
    """The message for a certificate ``trust`` refused: why, what was presented, what to do."""
    reason = str(exc)
    if "certificate verify failed:" in reason:
        reason = reason.split("certificate verify failed:", 1)[1].split("(_ssl", 1)[0].strip()
    try:
        shown = f"it presented SHA-256 {fingerprint(presented_certificate(url))}"
    except (OSError, ValueError) as err:
        shown = f"its certificate could not be read again: {err}"
    if trust.pinned_pem:
        return (f"the engine's certificate at {url} is not the pinned one ({reason}): {shown}, pinned "
                f"{trust.pinned_fingerprint}. If the engine's certificate was replaced on purpose, check the new "
                f"fingerprint with its operator and run 'corral login {url} --fingerprint NEW'")
    return (f"the engine's certificate at {url} is not trusted by {trust.describe()} ({reason}): {shown}. "
            f"Run 'corral login {url} --ca FILE' with the engine's CA (<data dir>/pki/ca.crt), or check the "
            "fingerprint and pin it with --fingerprint")
