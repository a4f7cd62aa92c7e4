"""The commands that start Corral's processes: ``corral engine serve|create-token|create-admin``, ``corral agent
serve``, ``corral simulate`` and ``corral all-in-one`` (which runs the first two as child processes).

This is the only CLI module that uses engine, agent or simulator code (the engine commands also open its
database directly), and always by an import inside the command, so that the rest of the CLI stays a pure REST
client: ``corral vm list`` loads none of it. The servers themselves live with their code
(``corral.engine.app.run_engine``, ``corral.agent.server.run_agent``, ``corral.simulate.runner.serve``); here
are options, validation and, for all-in-one, the supervision of the child processes.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import typer

from corral.cli.common import fail, read_text
from corral.cli.output import Output, Record, Text, output_option, show

engine_app = typer.Typer(no_args_is_help=True, help="The engine (REST API, database, monitoring, scheduler).")
agent_app = typer.Typer(no_args_is_help=True, help="The host agent (talks to libvirt on this host).")


def listen_address(value: str, any_port: bool = False) -> tuple[str, int]:
    """``--listen HOST:PORT`` (``[v6]:PORT`` too); ``any_port``: port 0 picks a free one."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not (0 if any_port else 1) <= int(port) < 65536:
        fail(f"--listen: expected HOST:PORT{' (PORT 0 picks a free port)' if any_port else ''}, got {value!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def data_home() -> Path:
    return Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "corral"


def default_db(data_dir: Path) -> str:
    return f"sqlite:///{data_dir / 'engine.db'}"


# --- corral engine ---------------------------------------------------------------------------------------------

def engine_tls(data: Path, host: str, tls_cert: Path | None, tls_key: Path | None, names: list[str] | None,
               no_tls: bool, insecure: bool) -> tuple[Path, Path] | None:
    """The certificate and key ``engine serve`` serves HTTPS with (None: plain HTTP), after the checks: the
    operator's files, else the engine's own certificate from its CA (made or renewed now, for the listen
    address and ``--tls-name``). Plain HTTP off the loopback only with ``--insecure``."""
    from corral.loopback import is_loopback

    if no_tls:
        if tls_cert or tls_key or names:
            fail("--no-tls serves plain HTTP: no --tls-cert, --tls-key or --tls-name with it")
        if not is_loopback(host) and not insecure:
            fail(f"--listen {host}: plain HTTP off the loopback sends tokens, passwords and session cookies in "
                 "clear; serve HTTPS (the default, or --tls-cert/--tls-key), or add --insecure")
        return None
    if tls_cert or tls_key:
        if not (tls_cert and tls_key):
            fail("--tls-cert and --tls-key go together")
        if names:
            fail("--tls-name names the engine's own certificate; with --tls-cert the names are in that file")
        try:
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(str(tls_cert), str(tls_key))
        except (OSError, ssl.SSLError) as exc:
            fail(f"--tls-cert {tls_cert} / --tls-key {tls_key}: {getattr(exc, 'strerror', None) or exc}")
        return tls_cert, tls_key
    from corral.engine.pki import CertNameError, EnginePki

    wanted = list(names or [])
    if host not in ("0.0.0.0", "::"):
        wanted.insert(0, host)
        if is_loopback(host):
            wanted.append("localhost")
    elif not wanted:
        fail(f"--listen {host}: give --tls-name with the name(s) or address(es) clients reach the engine at "
             "(its certificate names only what the operator says), or --tls-cert/--tls-key")
    pki = EnginePki(data / "pki")
    pki.ensure()
    try:
        pki.ensure_server(wanted)
    except CertNameError as exc:
        fail(f"--tls-name: {exc}")
    return pki.server_cert_path, pki.server_key_path


@engine_app.command("serve")
def engine_serve(db: str = typer.Option(None, "--db", help="sqlite:///FILE or postgresql+psycopg://USER@HOST/DB"),
                 listen: str = typer.Option("127.0.0.1:8080", "--listen", help="HOST:PORT"),
                 data_dir: Path = typer.Option(None, "--data-dir",
                                               help="state directory (default: user data dir)"),
                 tls_cert: Path = typer.Option(None, "--tls-cert", help="serve HTTPS with this certificate "
                                               "(PEM, chain included; default: one from the engine's CA)"),
                 tls_key: Path = typer.Option(None, "--tls-key", help="the key of --tls-cert (PEM)"),
                 tls_name: list[str] = typer.Option(None, "--tls-name", help="a DNS name or address for the "
                                                    "engine's own certificate, besides the listen address "
                                                    "(repeatable)"),
                 no_tls: bool = typer.Option(False, "--no-tls", help="serve plain HTTP (loopback only, unless "
                                             "--insecure)"),
                 insecure: bool = typer.Option(False, "--insecure", help="allow plain HTTP off the loopback: "
                                               "--no-tls on any address, and http:// agent URLs"),
                 forwarded_allow_ips: str = typer.Option(None, "--forwarded-allow-ips", help="reverse proxies "
                                                         "whose X-Forwarded-For is believed (default: none)")) -> None:
    """Serve the engine until interrupted; migrations are applied on start.

    HTTPS by default, with a certificate issued by the engine's own CA (<data dir>/pki/ca.crt; give it to
    'corral login URL --ca FILE'), or the operator's --tls-cert/--tls-key."""
    from corral.engine.app import run_engine

    data = data_dir or data_home()
    data.mkdir(parents=True, exist_ok=True)
    host, port = listen_address(listen)
    url = db or default_db(data)
    if not (url.startswith("sqlite:") or url.startswith("postgresql")):
        fail(f"--db: expected sqlite:///FILE or postgresql+psycopg://..., got {url!r}")
    tls = engine_tls(data, host, tls_cert, tls_key, tls_name, no_tls, insecure)
    if tls is not None:
        from corral.cli.trust import fingerprint, pem_to_der

        own = tls[0] == data / "pki" / "server.crt"
        data = data.resolve()
        print_url = f"https://{'[' + host + ']' if ':' in host else host}:{port}"
        typer.echo(f"engine: HTTPS at {print_url}, certificate SHA-256 "
                   f"{fingerprint(pem_to_der(tls[0].read_text()))}"
                   + (f"; its CA: {data / 'pki' / 'ca.crt'} (corral login {print_url} --ca FILE)" if own else ""),
                   err=True)
    run_engine(url, host, port, data, tls=tls, insecure=insecure, forwarded_allow_ips=forwarded_allow_ips)


@engine_app.command("create-token")
def create_token_cmd(db: str = typer.Option(None, "--db"), name: str = typer.Option("admin", "--name"),
                     data_dir: Path = typer.Option(None, "--data-dir")) -> None:
    """Create an API token (printed once; only its hash is stored)."""
    from corral.engine.auth import create_token

    data = data_dir or data_home()
    data.mkdir(parents=True, exist_ok=True)
    typer.echo(create_token(db or default_db(data), name))


@engine_app.command("create-admin")
def create_admin_cmd(
    username: str = typer.Option("admin", "--username", "-u", help="the portal user name"),
    password_file: Path = typer.Option(None, "--password-file", help="read the password from this file "
                                       "('-' = standard input); default: prompt on a terminal, else generate one"),
    update: bool = typer.Option(False, "--update", help="set a new password if the user exists"),
    db: str = typer.Option(None, "--db"),
    data_dir: Path = typer.Option(None, "--data-dir"),
) -> None:
    """Create an admin user for the portal (the password is stored as a scrypt hash)."""
    from corral.engine.portal.users import UserError, create_admin

    data = data_dir or data_home()
    data.mkdir(parents=True, exist_ok=True)
    password: str | None = None
    if password_file is not None:
        password = read_text(password_file, "password file").rstrip("\r\n")
    elif sys.stdin.isatty():
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    try:
        result = create_admin(db or default_db(data), username, password, update=update)
    except UserError as exc:
        fail(f"{exc}" + ("; use --update to set a new password" if exc.field == "username" else ""))
    if password is None:
        typer.echo(f"user {username} created; password: {result}")
    else:
        typer.echo(f"user {username} {'updated' if update else 'created'}")


# --- corral agent ----------------------------------------------------------------------------------------------

@agent_app.command("serve")
def agent_serve(
    libvirt_uri: str = typer.Option(None, "--libvirt", help="libvirt URI (test:///default, qemu:///system, "
                                                            "xen:///system)"),
    listen: str = typer.Option(None, "--listen", help="HOST:PORT"),
    token_file: Path = typer.Option(None, "--token-file", help="file holding the bearer token"),
    tls_cert: Path = typer.Option(None, "--tls-cert"),
    tls_key: Path = typer.Option(None, "--tls-key"),
    tls_ca: Path = typer.Option(None, "--tls-ca", help="CA that signs the engine's client certificate"),
    state_dir: Path = typer.Option(None, "--state-dir"),
    hooks_dir: Path = typer.Option(None, "--hooks-dir"),
    emulate: str = typer.Option(None, "--emulate", help="on the test driver: present a xen or kvm host"),
    allow_tcg: bool = typer.Option(None, "--allow-tcg/--no-allow-tcg", help="accept a QEMU host without /dev/kvm"),
    accel: str = typer.Option(None, "--accel", help="auto, kvm or tcg (tcg: never use KVM on this host)"),
    bridge: list[str] = typer.Option(None, "--bridge", help="extra bridge to report (emulated hosts)"),
    config: Path = typer.Option(None, "--config", help="TOML config (default /etc/corral/agent.toml if present)"),
) -> None:
    """Serve the agent API until interrupted."""
    from corral.agent.connection import Unavailable
    from corral.agent.server import run_agent
    from corral.agent.service import DEFAULT_CONFIG, Settings

    values: dict[str, Any] = {}
    cfg_path = config or (DEFAULT_CONFIG if DEFAULT_CONFIG.exists() else None)
    if cfg_path is not None:
        try:
            values.update(Settings.from_toml(cfg_path))
        except ValueError as exc:
            fail(str(exc))
    given = {"libvirt": libvirt_uri, "listen": listen, "token_file": token_file, "tls_cert": tls_cert,
             "tls_key": tls_key, "tls_ca": tls_ca, "state_dir": state_dir, "hooks_dir": hooks_dir,
             "emulate": emulate, "allow_tcg": allow_tcg, "accel": accel, "bridges": bridge or None}
    values.update({k: v for k, v in given.items() if v is not None})
    settings = Settings(**values)
    tls = [settings.tls_cert, settings.tls_key, settings.tls_ca]
    if any(tls) and not all(tls):
        fail("--tls-cert, --tls-key and --tls-ca go together")
    if not all(tls) and settings.token_file is None:
        fail("give --token-file or --tls-cert/--tls-key/--tls-ca: the agent never runs unauthenticated")
    host, port = listen_address(settings.listen)
    try:
        token = settings.token()
    except ValueError as exc:
        fail(str(exc))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        run_agent(settings, host, port, token)
    except (Unavailable, ValueError) as exc:
        fail(str(exc))


# --- corral simulate -------------------------------------------------------------------------------------------

def _sim_token(token: str | None, token_file: Path | None, seed: int) -> str:
    if token and token_file:
        fail("give --token or --token-file, not both")
    if token_file is not None:
        try:
            token = token_file.read_text().strip()
        except OSError as exc:
            fail(f"token file {token_file}: {exc.strerror}")
    if token is None:
        from corral.simulate.simvm import derive_token

        return derive_token(seed)
    if len(token) < 16 or any(c.isspace() for c in token):
        fail("the token must be at least 16 characters, without spaces (as the agent's)")
    return token


def simulate(
    hosts: int = typer.Option(10, "--hosts", min=0, help="how many simulated hosts (agents)"),
    vms_per_host: int = typer.Option(20, "--vms-per-host", min=0, help="VMs each host starts with"),
    listen: str = typer.Option("127.0.0.1:8471", "--listen", help="HOST:PORT (PORT 0: any free port)"),
    seed: int = typer.Option(None, "--seed", help="makes hosts, VMs, token and random changes reproducible"),
    xen_ratio: float = typer.Option(0.5, "--xen-ratio", min=0.0, max=1.0, help="share of Xen hosts (rest KVM)"),
    token: str = typer.Option(None, "--token", help="the bearer token every host takes (>= 16 characters)"),
    token_file: Path = typer.Option(None, "--token-file", help="file holding the bearer token"),
    event_rate: float = typer.Option(1.0, "--event-rate", min=0.0,
                                     help="random VM pauses/crashes per second over all hosts (0: none)"),
    output: Output = output_option(),
) -> None:
    """Serve N simulated host agents (Xen and KVM) from one process, each speaking the agent API.

    Host n (1..N) is the agent at http://HOST:PORT/hosts/<n>: add it to an engine with that URL and the token.
    Every host takes the same bearer token: --token, --token-file, or one derived from --seed (printed on
    start: one line, or {url, hosts, token} as json or yaml). Each host starts with --vms-per-host VMs (about
    85% running) whose CPU time grows and whose balloon moves; --event-rate times a second, somewhere, a
    running VM pauses (and resumes seconds later) or, one time in ten, crashes. VM create, plan, start,
    shutdown, destroy, reboot, pause, resume, delete, devices, memory and vCPUs answer and refuse as the agent
    does. The same --seed gives the same hosts, VMs and token.
    """
    import asyncio

    from corral.simulate.fleet import Simulator
    from corral.simulate.runner import base_url, bind, loop_factory, raise_fd_limit, serve
    from corral.simulate.simvm import SimulatorSettings

    address, port = listen_address(listen, any_port=True)
    if seed is None:
        seed = secrets.randbelow(2**31)
    shared = _sim_token(token, token_file, seed)
    sim = Simulator(SimulatorSettings(hosts=hosts, vms_per_host=vms_per_host, seed=seed, xen_ratio=xen_ratio,
                                      token=shared, event_rate=event_rate))
    raise_fd_limit()
    try:
        sock = bind(address, port)
    except OSError as exc:
        fail(f"--listen {listen}: {exc.strerror or exc}")
    url = base_url(sock)

    def announce() -> None:
        flavors = Counter(h.profile.flavor.name for h in sim.hosts)
        secret = f"token from {token_file}" if token_file is not None else f"token {shared}"
        show({"url": url, "hosts": list(sim.urls(url)), "token": shared}, output,
             Text(f"corral simulate: {hosts} agents ({flavors['xen']} xen, {flavors['kvm']} kvm), "
                  f"{sim.vm_count()} VMs at "
                  f"{url}/hosts/<n> for n = 1..{hosts}; {secret}; seed {seed}"), line=True)
        sys.stdout.flush()

    try:
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            runner.run(serve(sim, sock, announce))
    except KeyboardInterrupt:
        pass
    finally:
        sock.close()


# --- corral all-in-one -----------------------------------------------------------------------------------------

ADMIN_USER = "admin"


def _free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _secret_file(path: Path, make: Any) -> str:
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    value = str(make())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(value + "\n")
    return value


def _wait_http(url: str, proc: subprocess.Popen[bytes], what: str, timeout: float = 60.0,
               verify: ssl.SSLContext | bool = True) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            fail(f"{what} exited with status {proc.returncode}; see its log", code=1)
        try:
            if httpx.get(url, timeout=2, verify=verify).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    fail(f"{what} did not answer at {url} within {timeout:g} s", code=1)


def _wait_host_added(api: httpx.Client, name: str, task: dict[str, Any], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while task.get("state") not in ("succeeded", "failed"):
        if time.monotonic() > deadline:
            fail(f"adding host {name}: still {task.get('state')} after {timeout:g} s", code=1)
        time.sleep(0.1)
        task = api.get(f"/tasks/{task['id']}").json()
    if task["state"] == "failed":
        fail(f"adding host {name}: {(task.get('error') or {}).get('message', task)}", code=1)


DEFAULT_STORAGE = "local"


def _default_storage(api: httpx.Client, path: Path) -> str:
    """A ``dir`` storage domain for the hosts' cluster, made on the first start (a restart, or an engine whose
    operator made domains of their own, keeps what is there): volumes can be created at once. Its name."""
    found = api.get("/storage-domains", params={"limit": 1}).json().get("items") or []
    if found:
        return str(found[0]["name"])
    resp = api.post("/storage-domains", json={"name": DEFAULT_STORAGE, "type": "dir", "path": str(path)})
    if resp.status_code >= 400:
        fail(f"creating the storage domain {DEFAULT_STORAGE}: {resp.text}", code=1)
    return DEFAULT_STORAGE


def all_in_one(
    listen: str = typer.Option("127.0.0.1:8080", "--listen", help="engine HOST:PORT"),
    data_dir: Path = typer.Option(None, "--data-dir", help="state directory (default: user data dir)"),
    libvirt_uri: str = typer.Option("test:///default", "--libvirt", help="test:///default (two emulated "
                                    "hosts, Xen and KVM) or a real URI such as qemu:///system"),
    output: Output = output_option(),
) -> None:
    """Run the engine and local agents; print the URL and an admin token; Ctrl-C stops everything.

    The engine serves HTTPS with a certificate from its own CA (<data dir>/pki/ca.crt, printed for
    'corral login URL --ca FILE'); the agents listen on the loopback (plain HTTP with a token there)."""
    from corral.cli.trust import Trust
    from corral.engine.pki import EnginePki

    host, port = listen_address(listen)
    data = (data_dir or data_home()).resolve()
    data.mkdir(parents=True, exist_ok=True)
    logs = data / "logs"
    logs.mkdir(exist_ok=True)
    db = default_db(data)
    exe = [sys.executable, "-m", "corral"]
    procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def spawn(name: str, args: list[str]) -> subprocess.Popen[bytes]:
        log = open(logs / f"{name}.log", "ab")  # noqa: SIM115 - owned by the child for its lifetime
        proc = subprocess.Popen([*exe, *args], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        procs.append((name, proc))
        return proc

    def stop_all(*_: Any) -> None:
        for _name, proc in reversed(procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for _name, proc in reversed(procs):
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()

    pki = EnginePki(data / "pki")
    pki.ensure()  # the engine would make it too; made here so that the engine's certificate can be checked
    ca = pki.ca_cert_path
    verify = Trust(ca_pem=ca.read_text()).context()
    token = _secret_file(data / "admin-token", lambda: _create_token(db))
    password = _admin_password(db, data / "admin-password")
    agents: list[dict[str, Any]] = []
    if libvirt_uri.startswith("test:"):
        plan = [("xen-host", ["--emulate", "xen", "--bridge", "xenbr0"]),
                ("kvm-host", ["--emulate", "kvm", "--bridge", "br0"])]
    else:
        plan = [(socket.gethostname().split(".")[0] or "local", ["--allow-tcg"])]
    try:
        for name, extra in plan:
            adir = data / "agents" / name
            agent_token = _secret_file(adir / "token", lambda: secrets.token_urlsafe(32))
            port_file = adir / "port"
            aport = int(port_file.read_text()) if port_file.exists() else _free_port()
            port_file.write_text(str(aport))
            proc = spawn(f"agent-{name}", ["agent", "serve", "--libvirt", libvirt_uri, "--listen",
                                           f"127.0.0.1:{aport}", "--token-file", str(adir / "token"),
                                           "--state-dir", str(adir / "state"), *extra])
            agents.append({"name": name, "url": f"http://127.0.0.1:{aport}", "token": agent_token, "proc": proc})
        engine = spawn("engine", ["engine", "serve", "--db", db, "--listen", f"{host}:{port}",
                                  "--data-dir", str(data)])
        url = f"https://{host}:{port}"
        for a in agents:
            _wait_http(f"{a['url']}/v1/health", a["proc"], f"agent {a['name']}")
        _wait_http(f"{url}/api/v1/openapi.json", engine, "engine", verify=verify)
        api = httpx.Client(base_url=f"{url}/api/v1", headers={"Authorization": f"Bearer {token}"}, timeout=60,
                           verify=verify)
        known = {h["name"] for h in api.get("/hosts", params={"limit": 1000}).json().get("items", [])}
        adding = []
        for a in agents:
            if a["name"] not in known:
                resp = api.post("/hosts", json={"name": a["name"], "url": a["url"], "token": a["token"]})
                if resp.status_code >= 400:
                    fail(f"adding host {a['name']}: {resp.text}", code=1)
                adding.append((a["name"], resp.json()))
        for name, task in adding:  # ready means the hosts are there: a VM started right away finds them
            _wait_host_added(api, name, task)
        storage = _default_storage(api, data / "images")
        info = {"url": url, "token": token, "data_dir": str(data), "portal": f"{url}/portal/",
                "username": ADMIN_USER, "password": password, "hosts": [a["name"] for a in agents],
                "storage": storage, "ca": str(ca)}
        login = password if password is not None else "(set with corral engine create-admin)"
        text = Text(f"Corral is running.\n  API and portal: {url}\n  admin token:    {token}\n"
                    f"  portal login:   {ADMIN_USER} / {login}  ({url}/portal/)\n"
                    f"  hosts:          {', '.join(a['name'] for a in agents)} ({libvirt_uri})\n"
                    f"  storage:        {storage} (corral storage show {storage})\n"
                    f"  data:           {data}\n  CA:             {ca}\n"
                    f"  CLI:            corral login {url} --token {token} --ca {ca}\n"
                    "Press Ctrl-C to stop.")
        show(info, output, text if output is Output.TABLE else Record(info, "Corral is running"), line=True)
        sys.stdout.flush()
        signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
        while True:
            for name, proc in procs:
                if proc.poll() is not None:
                    fail(f"{name} exited with status {proc.returncode}; see {logs / (name + '.log')}", code=1)
            time.sleep(0.5)
    except KeyboardInterrupt:
        typer.echo("stopping...", err=True)
    finally:
        stop_all()


def _create_token(db: str) -> str:
    from corral.engine.auth import create_token

    return create_token(db, "all-in-one admin")


def _admin_password(db: str, path: Path) -> str | None:
    """The portal admin's password: generated and saved (0600) in the data dir on the first run. None when
    the user was made by ``corral engine create-admin`` instead (its password is not ours to print)."""
    from corral.engine.portal.users import create_admin, user_exists

    if path.exists():
        password = path.read_text().strip()
        if not user_exists(db, ADMIN_USER):
            create_admin(db, ADMIN_USER, password)
        return password
    if user_exists(db, ADMIN_USER):
        return None
    return _secret_file(path, lambda: create_admin(db, ADMIN_USER))
