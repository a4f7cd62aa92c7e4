"""``corral login URL --token TOKEN``: check the token, decide how the engine's certificate is trusted, save both.

Over https the certificate is verified before the token is sent: against ``--ca FILE``; else against the
certificate already pinned for this URL; else the system's CAs. A certificate the system does not trust is shown
(subject, issuer, SHA-256 fingerprint) and pinned once the operator accepts it: ``--fingerprint`` (it must match),
``--yes``, or the prompt on a terminal. Plain http:// is for the loopback only, unless ``--insecure``.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

import httpx
import typer

from corral.cli import trust as tls
from corral.cli.client import ApiClient, save_login, saved_trust
from corral.cli.common import fail, read_text
from corral.cli.output import Output, Text, output_option, show
from corral.cli.trust import Trust
from corral.loopback import is_loopback


def _ca_trust(path: Path) -> Trust:
    from cryptography import x509

    pem = read_text(path, "--ca")
    try:
        x509.load_pem_x509_certificates(pem.encode())
    except ValueError:
        fail(f"--ca {path}: no PEM certificate in it")
    return Trust(ca_pem=pem)


def _system_trusts(url: str) -> bool:
    """True when the system's CAs accept the engine's certificate (nothing but the handshake is sent)."""
    try:
        with httpx.Client(verify=Trust().context(), timeout=15) as http:
            http.get(url + "/api/health")
    except httpx.HTTPError as exc:
        if tls.is_verify_error(exc):
            return False
        fail(f"cannot reach the engine at {url}: {exc}", code=1)
    return True


def _pin(url: str, expected: str | None, yes: bool) -> Trust:
    """Show the certificate the engine presents and pin it if the operator accepts it."""
    try:
        der = tls.presented_certificate(url)
    except OSError as exc:
        fail(f"cannot reach the engine at {url}: {exc}", code=1)
    shown = tls.fingerprint(der)
    typer.echo(f"The engine at {url} presented a certificate this system does not trust:\n{tls.describe(der)}",
               err=True)
    if expected is not None:
        if shown != expected:
            fail(f"the engine's certificate has SHA-256 fingerprint {shown}, not the --fingerprint {expected}: "
                 "not trusted", code=1)
    elif not yes:
        if not typer.get_text_stream("stdin").isatty():
            fail("not trusted: check the fingerprint above with the engine's operator, then pass --fingerprint "
                 "SHA256 (or --yes), or give the engine's CA with --ca FILE", code=1)
        if not typer.confirm("Trust and pin this certificate?", default=False, err=True):
            fail("not trusted; nothing saved", code=1)
    return Trust(pinned_pem=tls.der_to_pem(der))


def login(url: str = typer.Argument(..., help="engine URL, e.g. https://127.0.0.1:8080"),
          token: str = typer.Option(..., "--token", help="API token"),
          ca: Path = typer.Option(None, "--ca", help="verify the engine's certificate against this CA (PEM; the "
                                  "engine's own is <data dir>/pki/ca.crt)"),
          fingerprint_: str = typer.Option(None, "--fingerprint", help="pin the engine's certificate if its "
                                           "SHA-256 fingerprint is this (for scripts)"),
          yes: bool = typer.Option(False, "--yes", "-y", help="pin the certificate shown without asking"),
          insecure: bool = typer.Option(False, "--insecure", help="allow plain http:// off the loopback"),
          output: Output = output_option()) -> None:
    """Check the token against the engine and save it, with how its certificate is trusted, for later commands."""
    url = url.rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        fail(f"URL: expected https://HOST:PORT, got {url!r}")
    if ca is not None and fingerprint_ is not None:
        fail("give --ca or --fingerprint, not both")
    expected = None
    if fingerprint_ is not None:
        try:
            expected = tls.normalize_fingerprint(fingerprint_)
        except ValueError as exc:
            fail(f"--fingerprint: {exc}")
    if parts.scheme == "http":
        if ca is not None or expected is not None:
            fail("--ca and --fingerprint verify an https:// URL; this one is plain http://")
        if not is_loopback(parts.hostname) and not insecure:
            fail(f"{url}: plain HTTP off this machine would send the token in clear; use the engine's https:// "
                 "URL, or --insecure")
        trust = Trust()
    elif ca is not None:
        trust = _ca_trust(ca)
    elif expected is not None:
        trust = _pin(url, expected, yes)
    else:
        previous = saved_trust(url)
        if previous is not None and previous != Trust():
            trust = previous  # logging in again: a certificate other than the one trusted before is refused
        elif _system_trusts(url):
            trust = Trust()
        else:
            trust = _pin(url, None, yes)
    ApiClient(url, token, trust=trust).get("/clusters", limit=1)
    path = save_login(url, token, trust)
    how = {"ca": "the CA given", "pinned": f"pinned SHA-256 {trust.pinned_fingerprint}", "none": "system CAs"}
    kind = "ca" if trust.ca_pem else "pinned" if trust.pinned_pem else "none"
    show({"url": url, "config": str(path), "trust": kind, "fingerprint": trust.pinned_fingerprint}, output,
         Text(f"logged in to {url}; token saved in {path}"
              + (f"; certificate: {how[kind]}" if parts.scheme == "https" else "")))
