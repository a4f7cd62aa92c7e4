"""``corral all-in-one``: the engine and local agents on one machine, registered and ready.

On the embedded default (libvirt's test driver) it starts two agents, one presenting a Xen dom0 and one a
KVM host, so translations, plans and placement are visible without hardware. Every part runs as its own
process, as in production; this command supervises them and stops them all on Ctrl-C. State lives in the
data directory: the engine's SQLite file, the admin token, each agent's token and state.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import typer

from corral.cli.agent import _listen
from corral.cli.common import Output, fail
from corral.cli.engine import data_home, default_db


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


def _wait_http(url: str, proc: subprocess.Popen[bytes], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            fail(f"{what} exited with status {proc.returncode}; see its log", code=1)
        try:
            if httpx.get(url, timeout=2).status_code < 500:
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


def all_in_one(
    listen: str = typer.Option("127.0.0.1:8080", "--listen", help="engine HOST:PORT"),
    data_dir: Path = typer.Option(None, "--data-dir", help="state directory (default: user data dir)"),
    libvirt_uri: str = typer.Option("test:///default", "--libvirt", help="test:///default (two emulated "
                                    "hosts, Xen and KVM) or a real URI such as qemu:///system"),
    output: Output = typer.Option(Output.TABLE, "--output", "-o", help="table or json"),
) -> None:
    """Run the engine and local agents; print the URL and an admin token; Ctrl-C stops everything."""
    host, port = _listen(listen)
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
        url = f"http://{host}:{port}"
        for a in agents:
            _wait_http(f"{a['url']}/v1/health", a["proc"], f"agent {a['name']}")
        _wait_http(f"{url}/api/v1/openapi.json", engine, "engine")
        api = httpx.Client(base_url=f"{url}/api/v1", headers={"Authorization": f"Bearer {token}"}, timeout=60)
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
        if output is Output.JSON:
            typer.echo(json.dumps({"url": url, "token": token, "data_dir": str(data),
                                   "portal": f"{url}/portal/", "username": ADMIN_USER, "password": password,
                                   "hosts": [a["name"] for a in agents]}), nl=True)
        else:
            login = password if password is not None else "(set with corral engine create-admin)"
            typer.echo(f"Corral is running.\n  API and portal: {url}\n  admin token:    {token}\n"
                       f"  portal login:   {ADMIN_USER} / {login}  ({url}/portal/)\n"
                       f"  hosts:          {', '.join(a['name'] for a in agents)} ({libvirt_uri})\n"
                       f"  data:           {data}\n  CLI:            corral login {url} --token {token}\n"
                       "Press Ctrl-C to stop.")
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


ADMIN_USER = "admin"


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
