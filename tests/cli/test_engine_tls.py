"""Engine TLS end to end (issue 14): ``corral engine serve`` with its own CA, the ``corral`` command verifying
its certificate (``--ca``, or a fingerprint shown and pinned on first use), agents over mutual TLS with the
engine's CA, and what is refused: a wrong CA, a different certificate than the pinned one, an agent certificate
from another CA, plain HTTP off the loopback without ``--insecure``."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding

from corral.cli.trust import fingerprint
from corral.engine.pki import EnginePki
from tests.cli.support import CORRAL, Cli, clean_env, eventually, free_port


def _fp(pem_path: Path) -> str:
    return fingerprint(x509.load_pem_x509_certificate(pem_path.read_bytes()).public_bytes(Encoding.DER))


class Engine:
    """``corral engine serve`` in a subprocess on ``data``; ``start`` waits for its HTTPS (or HTTP) answer."""

    def __init__(self, root: Path, data: Path, port: int, *extra: str) -> None:
        self.root, self.data, self.port, self.extra = root, data, port, extra
        self.tls = "--no-tls" not in extra
        self.url = f"{'https' if self.tls else 'http'}://127.0.0.1:{port}"
        self.db = f"sqlite:///{root / 'engine.db'}"  # one database: the same token across restarts
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def ca(self) -> Path:
        return self.data / "pki" / "ca.crt"

    def verify(self) -> ssl.SSLContext | bool:
        return ssl.create_default_context(cafile=str(self.ca)) if self.tls else True

    def start(self) -> Engine:
        log = (self.root / "engine.log").open("ab")
        self.proc = subprocess.Popen([*CORRAL, "engine", "serve", "--db", self.db, "--listen",
                                      f"127.0.0.1:{self.port}", "--data-dir", str(self.data), *self.extra],
                                     stdout=log, stderr=subprocess.STDOUT, env=clean_env(), cwd=self.root,
                                     start_new_session=True)
        log.close()

        def up() -> bool:
            assert self.proc is not None and self.proc.poll() is None, self.log()
            if self.tls and not self.ca.exists():
                return False
            try:
                return httpx.get(self.url + "/api/health", verify=self.verify(), timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        eventually(up, timeout=60, what="the engine answers")
        return self

    def log(self) -> str:
        return (self.root / "engine.log").read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def _token(engine: Engine) -> str:
    out = subprocess.run([*CORRAL, "engine", "create-token", "--db", engine.db, "--data-dir", str(engine.data)],
                         capture_output=True, text=True, env=clean_env(), check=True)
    return out.stdout.strip()


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    eng = Engine(tmp_path, tmp_path / "data", free_port())
    try:
        yield eng.start()
    finally:
        eng.stop()


def test_default_is_https_from_the_engines_own_ca(engine: Engine) -> None:
    pki = engine.data / "pki"
    for name in ("server.key", "ca.key"):
        assert (pki / name).stat().st_mode & 0o777 == 0o600, name
    cert = x509.load_pem_x509_certificate((pki / "server.crt").read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {str(i) for i in san.get_values_for_type(x509.IPAddress)} == {"127.0.0.1"}
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert cert.issuer == x509.load_pem_x509_certificate(engine.ca.read_bytes()).subject
    # the plain-HTTP port answers nothing useful: it speaks TLS only
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{engine.port}/api/health", timeout=5)
    assert "SHA-256 " + _fp(pki / "server.crt") in engine.log()


def test_cli_with_the_ca_works_and_a_wrong_ca_is_refused(engine: Engine, tmp_path: Path) -> None:
    token = _token(engine)
    other = EnginePki(tmp_path / "other-pki")
    other.ensure()
    cli = Cli(tmp_path / "wrong", tmp_path)
    err = cli.error("login", engine.url, "--token", token, "--ca", str(other.ca_cert_path), code=1)
    assert "certificate" in err and "not trusted" in err, err
    assert "SHA-256 " + _fp(engine.data / "pki" / "server.crt") in err
    assert not (cli.config_home / "corral" / "cli.json").exists()

    cli = Cli(tmp_path / "right", tmp_path)
    assert "logged in" in cli.run("login", engine.url, "--token", token, "--ca", str(engine.ca)).stdout
    saved = cli.config_home / "corral" / "cli.json"
    assert saved.stat().st_mode & 0o777 == 0o600
    assert cli.json("host", "list")["items"] == []
    assert cli.json("cluster", "list")["items"] == []


def test_trust_on_first_use_pins_and_refuses_another_certificate(tmp_path: Path) -> None:
    port = free_port()
    first = Engine(tmp_path, tmp_path / "data", port).start()
    try:
        token = _token(first)
        served = _fp(first.data / "pki" / "server.crt")
        cli = Cli(tmp_path / "cfg", tmp_path)
        # not a terminal, no --yes/--fingerprint: the certificate is shown, nothing is saved
        err = cli.error("login", first.url, "--token", token, code=1)
        assert served in err and "does not trust" in err and "--fingerprint" in err, err
        assert not (cli.config_home / "corral" / "cli.json").exists()
        # a fingerprint that is not the certificate's: refused
        wrong = "AA" * 32
        assert served in cli.error("login", first.url, "--token", token, "--fingerprint", wrong, code=1)
        # the right one (lower case, no colons: as people paste them): pinned
        answer = cli.json("login", first.url, "--token", token, "--fingerprint", served.replace(":", "").lower())
        assert (answer["trust"], answer["fingerprint"]) == ("pinned", served)
        assert cli.json("host", "list")["items"] == []
    finally:
        first.stop()

    # the same URL now served with a certificate of another CA (another data dir): every command refuses it
    second = Engine(tmp_path, tmp_path / "data2", port).start()
    try:
        other = _fp(second.data / "pki" / "server.crt")
        assert other != served
        err = cli.error("host", "list", code=1)
        assert "not the pinned one" in err and other in err and served in err, err
        # logging in again does not silently trust the new certificate, even with --yes
        assert "not the pinned one" in cli.error("login", second.url, "--token", token, "--yes", code=1)
        # another config directory: --yes pins what it is shown
        fresh = Cli(tmp_path / "cfg-yes", tmp_path)
        assert fresh.json("login", second.url, "--token", token, "--yes")["fingerprint"] == other
        assert fresh.json("host", "list")["items"] == []
    finally:
        second.stop()


def _refused_before_binding(tmp_path: Path, *args: str) -> str:
    port = free_port()
    proc = subprocess.run([*CORRAL, "engine", "serve", "--db", f"sqlite:///{tmp_path / 'r.db'}", "--data-dir",
                           str(tmp_path / "r"), *args, "--listen", f"0.0.0.0:{port}"], capture_output=True,
                          text=True, env=clean_env(), timeout=60, check=False)
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    with socket.socket() as s:
        s.bind(("0.0.0.0", port))  # nobody took the port
    return proc.stderr


def test_plain_http_off_the_loopback_needs_insecure(tmp_path: Path) -> None:
    err = _refused_before_binding(tmp_path, "--no-tls")
    assert "--insecure" in err and "plain HTTP" in err, err
    # HTTPS on the unspecified address: the certificate's names must come from the operator
    assert "--tls-name" in _refused_before_binding(tmp_path)
    assert "wildcard" in _refused_before_binding(tmp_path, "--tls-name", "*.example.com")
    assert "--tls-key" in _refused_before_binding(tmp_path, "--tls-cert", str(tmp_path / "none.crt"))


def test_plain_http_on_the_loopback_is_allowed(tmp_path: Path) -> None:
    eng = Engine(tmp_path, tmp_path / "data", free_port(), "--no-tls").start()
    try:
        assert httpx.get(eng.url + "/api/health", timeout=5).status_code == 200
        assert not (eng.data / "pki" / "server.crt").exists()
    finally:
        eng.stop()


def _agent(tmp_path: Path, pki: EnginePki, name: str) -> tuple[str, subprocess.Popen[bytes]]:
    """``corral agent serve`` over mutual TLS with a server certificate ``pki`` issued, and the engine's CA
    (``tls_ca``) for its clients."""
    d = tmp_path / name
    d.mkdir()
    issued = pki.issue_server(name, ["127.0.0.1"])
    (d / "agent.crt").write_bytes(issued.cert_pem)
    (d / "agent.key").write_bytes(issued.key_pem)
    os.chmod(d / "agent.key", 0o600)
    port = free_port()
    log = (d / "agent.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "corral", "agent", "serve", "--libvirt", "test:///default",
                             "--listen", f"127.0.0.1:{port}", "--tls-cert", str(d / "agent.crt"),
                             "--tls-key", str(d / "agent.key"), "--tls-ca", str(tmp_path / "data/pki/ca.crt"),
                             "--state-dir", str(d / "state"), "--emulate", "kvm", "--config", os.devnull],
                            stdout=log, stderr=subprocess.STDOUT, env=clean_env(), start_new_session=True)
    log.close()
    verify = ssl.create_default_context(cafile=str(pki.ca_cert_path))
    url = f"https://127.0.0.1:{port}"

    def up() -> bool:
        assert proc.poll() is None, (d / "agent.log").read_text()
        try:
            return httpx.get(url + "/v1/health", verify=verify, timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    eventually(up, timeout=60, what=f"agent {name} answers")
    return url, proc


def test_agents_over_mutual_tls_and_an_agent_of_another_ca_refused(engine: Engine, tmp_path: Path) -> None:
    token = _token(engine)
    pki = EnginePki(engine.data / "pki")
    other = EnginePki(tmp_path / "other-pki")
    other.ensure()
    procs = []
    try:
        good, p1 = _agent(tmp_path, pki, "tls-host")
        bad, p2 = _agent(tmp_path, other, "foreign-host")
        procs = [p1, p2]
        cli = Cli(tmp_path / "cfg", tmp_path)
        cli.run("login", engine.url, "--token", token, "--ca", str(engine.ca))
        with httpx.Client(base_url=engine.url + "/api/v1", headers={"Authorization": f"Bearer {token}"},
                          verify=engine.verify(), timeout=30) as api:
            tasks = {}
            for name, url in (("tls-host", good), ("foreign-host", bad)):
                resp = api.post("/hosts", json={"name": name, "url": url})
                assert resp.status_code == 202, resp.text
                tasks[name] = resp.json()

            def finished(name: str) -> dict[str, object] | None:
                task = api.get(f"/tasks/{tasks[name]['id']}").json()
                return task if task["state"] in ("succeeded", "failed") else None

            ok = eventually(lambda: finished("tls-host"), timeout=60, what="tls-host added")
            refused = eventually(lambda: finished("foreign-host"), timeout=60, what="foreign-host tried")
        assert ok["state"] == "succeeded", ok
        assert refused["state"] == "failed" and "certificate" in str(refused["error"]).lower(), refused
        states = {h["name"]: h["state"] for h in cli.json("host", "list")["items"]}
        assert states["tls-host"] == "up", states
        assert states.get("foreign-host") != "up", states
    finally:
        for proc in procs:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


def test_portal_session_cookie_is_secure_over_tls(engine: Engine, tmp_path: Path) -> None:
    password = tmp_path / "password"
    password.write_text("correct horse battery staple\n")
    subprocess.run([*CORRAL, "engine", "create-admin", "--db", engine.db, "--data-dir", str(engine.data),
                    "--password-file", str(password)], check=True, env=clean_env(), capture_output=True)
    with httpx.Client(base_url=engine.url, verify=engine.verify(), timeout=30) as web:
        page = web.get("/portal/login")
        assert page.status_code == 200
        form = {"username": "admin", "password": "correct horse battery staple", "next": "/portal/"}
        if 'name="csrf"' in page.text:  # a login form with a CSRF field sends it back
            form["csrf"] = page.text.split('name="csrf"', 1)[1].split('value="', 1)[1].split('"', 1)[0]
        resp = web.post("/portal/login", data=form)
    assert resp.status_code == 303, resp.text
    cookie = resp.headers["set-cookie"].lower()
    assert "corral_session=" in cookie and "; secure" in cookie and "httponly" in cookie, cookie


def test_fingerprint_format_matches_openssl(tmp_path: Path) -> None:
    """What the engine logs and the CLI shows is ``openssl x509 -fingerprint -sha256`` (colon-separated)."""
    pki = EnginePki(tmp_path / "pki")
    pki.ensure()
    cert = x509.load_pem_x509_certificate(pki.ca_pem)
    assert _fp(pki.ca_cert_path) == ":".join(f"{b:02X}" for b in cert.fingerprint(hashes.SHA256()))
