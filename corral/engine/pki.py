"""The engine's certificate authority, its TLS client certificate and its SSH key.

Created on the engine's first start in ``<data dir>/pki`` (directory 0700, private keys 0600, written
atomically under a lock so two engines starting on one data dir cannot make two CAs):

* ``ca.key`` / ``ca.crt`` -- the CA (EC P-256, 10 years) that signs every agent's server certificate and
  the engine's client certificate. An agent accepts only clients whose certificate this CA signed.
* ``engine.key`` / ``engine.crt`` -- the engine's client certificate (CN ``corral-engine``, extended key
  usage *clientAuth* only), presented by the one pooled HTTP client to every agent. Renewed when it has
  less than ``RENEW_BEFORE`` left.
* ``server.key`` / ``server.crt`` -- the engine's HTTPS certificate (serverAuth), made by ``ensure_server`` when
  ``corral engine serve`` runs without ``--tls-cert``: its names are the operator's (the listen address,
  ``--tls-name``), never wildcards and never guessed from the machine's host name. Issued again at a start when
  the names changed or less than ``RENEW_BEFORE`` is left.
* ``ssh_engine`` / ``ssh_engine.pub`` -- the engine's own SSH key (ed25519). Deploy adds the public key to
  the host's ``authorized_keys`` so that reinstall and certificate renewal need no operator password.

Agent certificates carry *serverAuth* only, so an agent's certificate cannot be used to talk to another
agent (OpenSSL checks the purpose when a server verifies a client).
"""

from __future__ import annotations

import fcntl
import ipaddress
import os
import re
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

ENGINE_CN = "corral-engine"
CA_DAYS = 3650
CERT_DAYS = 365
RENEW_BEFORE = timedelta(days=30)


@dataclass(frozen=True)
class Issued:
    cert_pem: bytes
    key_pem: bytes
    not_after: datetime
    serial: int

    @property
    def fingerprint(self) -> str:
        cert = x509.load_pem_x509_certificate(self.cert_pem)
        return cert.fingerprint(hashes.SHA256()).hex()


def _write_private(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write ``data`` with ``mode`` from the first byte on, then rename over ``path`` (atomic)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    tmp.replace(path)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Corral"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn[:64])])


def san_entries(names: list[str]) -> list[x509.GeneralName]:
    out: list[x509.GeneralName] = []
    seen: set[str] = set()
    for name in names:
        name = name.strip().strip("[]")
        if not name or name in seen:
            continue
        seen.add(name)
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            out.append(x509.DNSName(name))
    return out


def cert_not_after(pem: bytes) -> datetime:
    return x509.load_pem_x509_certificate(pem).not_valid_after_utc


class CertNameError(ValueError):
    """A certificate name the engine will not put in its own certificate."""


_DNS = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}"
                  r"[A-Za-z0-9])?)*\.?$")


def server_names(names: list[str]) -> list[str]:
    """The names for the engine's HTTPS certificate, checked: IP addresses or DNS names, no wildcard, no
    unspecified address (0.0.0.0 or :: is no name a client can check)."""
    out: list[str] = []
    for raw in names:
        name = raw.strip().strip("[]")
        try:
            ip = ipaddress.ip_address(name)
        except ValueError:
            if "*" in name:
                raise CertNameError(f"{raw!r}: wildcard names are not put in the engine's certificate") from None
            if not _DNS.match(name):
                raise CertNameError(f"{raw!r} is neither an IP address nor a DNS name") from None
            name = name.rstrip(".").lower()
        else:
            if ip.is_unspecified:
                raise CertNameError(f"{raw!r} is the unspecified address, not a name clients connect to")
            name = str(ip)
        if name not in out:
            out.append(name)
    if not out:
        raise CertNameError("no name for the engine's certificate")
    return out


def cert_names(pem: bytes) -> set[str]:
    """The DNS names and IP addresses of a certificate's subjectAltName."""
    cert = x509.load_pem_x509_certificate(pem)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    return {*san.get_values_for_type(x509.DNSName), *(str(ip) for ip in san.get_values_for_type(x509.IPAddress))}


class EnginePki:
    """The files under ``directory``; ``ensure()`` creates what is missing and renews the client cert."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.ca_key_path = directory / "ca.key"
        self.ca_cert_path = directory / "ca.crt"
        self.client_key_path = directory / "engine.key"
        self.client_cert_path = directory / "engine.crt"
        self.server_key_path = directory / "server.key"
        self.server_cert_path = directory / "server.crt"
        self.ssh_key_path = directory / "ssh_engine"
        self.ssh_pub_path = directory / "ssh_engine.pub"
        self._contexts: list[ssl.SSLContext] = []

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)
        fd = os.open(self.dir / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def ensure(self) -> list[str]:
        """Create the CA, client certificate and SSH key if missing; return what was created or renewed."""
        done: list[str] = []
        with self._locked():
            if not (self.ca_key_path.exists() and self.ca_cert_path.exists()):
                self._create_ca()
                done.append("ca")
                for p in (self.client_cert_path, self.client_key_path):
                    p.unlink(missing_ok=True)
            if not self.client_cert_path.exists() or self.client_expires() - datetime.now(UTC) < RENEW_BEFORE:
                self._issue_client()
                done.append("client certificate")
            if not (self.ssh_key_path.exists() and self.ssh_pub_path.exists()):
                self._create_ssh_key()
                done.append("ssh key")
        if "client certificate" in done:
            self._reload_contexts()
        return done

    # CA
    def _create_ca(self) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.now(UTC)
        name = _name("Corral engine CA")
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=CA_DAYS))
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                             content_commitment=False, key_encipherment=False,
                                             data_encipherment=False, key_agreement=False,
                                             encipher_only=False, decipher_only=False), critical=True)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
                .sign(key, hashes.SHA256()))
        _write_private(self.ca_key_path, _key_pem(key))
        _write_private(self.ca_cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)

    def _ca(self) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        key = serialization.load_pem_private_key(self.ca_key_path.read_bytes(), None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return key, x509.load_pem_x509_certificate(self.ca_cert_path.read_bytes())

    @property
    def ca_pem(self) -> bytes:
        return self.ca_cert_path.read_bytes()

    def issue(self, cn: str, *, server: bool, sans: list[str] | None = None, days: int = CERT_DAYS,
              not_before: datetime | None = None, not_after: datetime | None = None) -> Issued:
        """A new key and a certificate signed by the CA (``server``: serverAuth, else clientAuth)."""
        ca_key, ca_cert = self._ca()
        key = ec.generate_private_key(ec.SECP256R1())
        start = not_before or datetime.now(UTC) - timedelta(minutes=5)
        end = not_after or start + timedelta(days=days)
        end = min(end, ca_cert.not_valid_after_utc)
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        serial = x509.random_serial_number()
        builder = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(ca_cert.subject)
                   .public_key(key.public_key()).serial_number(serial)
                   .not_valid_before(start).not_valid_after(end)
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=False,
                                                key_agreement=True, content_commitment=False,
                                                data_encipherment=False, key_cert_sign=False, crl_sign=False,
                                                encipher_only=False, decipher_only=False), critical=True)
                   .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                                  critical=False))
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(san_entries(sans)), critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())
        return Issued(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key), cert.not_valid_after_utc,
                      serial)

    def issue_server(self, cn: str, sans: list[str], days: int = CERT_DAYS) -> Issued:
        return self.issue(cn, server=True, sans=sans, days=days)

    # the engine's client certificate
    def _issue_client(self) -> None:
        issued = self.issue(ENGINE_CN, server=False)
        _write_private(self.client_key_path, issued.key_pem)
        _write_private(self.client_cert_path, issued.cert_pem, 0o644)

    def client_expires(self) -> datetime:
        return cert_not_after(self.client_cert_path.read_bytes())

    def client_ssl_context(self) -> ssl.SSLContext:
        """Verifies agents against the CA and presents the engine's client certificate. Contexts handed out
        are reloaded in place when the client certificate is renewed (new connections use the new one)."""
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(self.ca_cert_path))
        ctx.load_cert_chain(str(self.client_cert_path), str(self.client_key_path))
        self._contexts.append(ctx)
        return ctx

    def _reload_contexts(self) -> None:
        for ctx in self._contexts:
            ctx.load_cert_chain(str(self.client_cert_path), str(self.client_key_path))

    def renew_client_if_needed(self, before: timedelta = RENEW_BEFORE) -> bool:
        with self._locked():
            if self.client_expires() - datetime.now(UTC) >= before:
                return False
            self._issue_client()
        self._reload_contexts()
        return True

    # the engine's HTTPS certificate
    def ensure_server(self, names: list[str]) -> bool:
        """The engine's server certificate for ``names`` (checked by :func:`server_names`), issued by the CA when
        missing, for other names, or with less than ``RENEW_BEFORE`` left; True when it was (re)issued.
        Call ``ensure()`` first (the CA)."""
        wanted = server_names(names)
        with self._locked():
            if self.server_cert_path.exists() and self.server_key_path.exists():
                pem = self.server_cert_path.read_bytes()
                if (cert_names(pem) == set(wanted)
                        and cert_not_after(pem) - datetime.now(UTC) >= RENEW_BEFORE):
                    return False
            issued = self.issue(wanted[0], server=True, sans=wanted)
            _write_private(self.server_key_path, issued.key_pem)
            _write_private(self.server_cert_path, issued.cert_pem, 0o644)
        return True

    # SSH
    def _create_ssh_key(self) -> None:
        key = ed25519.Ed25519PrivateKey.generate()
        priv = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                 serialization.NoEncryption())
        pub = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        _write_private(self.ssh_key_path, priv)
        _write_private(self.ssh_pub_path, pub + b" corral-engine\n", 0o644)

    @property
    def ssh_private_key(self) -> bytes:
        return self.ssh_key_path.read_bytes()

    @property
    def ssh_public_line(self) -> str:
        return self.ssh_pub_path.read_text().strip()
