"""Deploy a host over SSH: detect the hypervisor, check what it needs, install the agent, trust it over mTLS.

Steps (each one an event and a task progress line; a failure names the step and why):

1. ``connect``  -- SSH (asyncssh) as root; the host key is shown and pinned on first use (``hosts.ssh_host_key``);
   later connections (a rerun, reinstall, certificate renewal) refuse any other key.
2. ``detect``   -- one shell probe reads the system and the hypervisor facts ``corral.domain.flavors.hostcheck``
   declares;
   they say Xen dom0 (``/proc/xen/capabilities`` holds ``control_d``), KVM (``/dev/kvm``, vmx/svm) or none (QEMU
   under TCG when the deploy allows it), i.e. a flavor, whose title, default URI and checks serve from here on.
3. ``packages`` -- what the agent needs from the host's package manager (python3 + venv, libvirt's Python
   binding, virsh), only where missing.
4. ``check``    -- Python for the agent, then the flavor's host checks (the same functions the agent runs for
   ``GET /v1/host``) on the probed facts and libvirt's answer on the URI. Xen: dom0, guest types (HVM or PV
   only), Xen and libxl versions, xenstored and xenconsoled running, libvirt's libxl driver, a bridge. KVM:
   ``/dev/kvm`` creating VMs, vmx/svm, libvirt's QEMU driver, a bridge. A failed item ends the deploy: the host
   is ``non_operational`` and the reason names every failed item.
5. ``install``  -- the wheel of the running Corral (and, for a host of the same Python and architecture, its
   dependencies) over SFTP into ``/opt/corral/wheels``, a virtualenv ``/opt/corral/venv``
   (``--system-site-packages``: the distribution's libvirt binding serves), the engine's SSH key authorized.
6. ``configure``-- ``/etc/corral/agent.toml`` and a systemd unit, or a start script with a pidfile where the host
   has no systemd.
7. ``certificate`` -- a server certificate from the engine's CA (``/etc/corral/pki``).
8. ``start``    -- (re)start the agent and wait for its health over TLS verified against the engine's CA.
9. ``activate`` -- ``GET /v1/host`` with the engine's client certificate (mutual TLS) and the agent's own
   hardware check decide ``up`` or ``non_operational``.

Every step is idempotent, so rerunning ``host add`` on a host whose deploy failed resumes safely: the pinned key
is enforced, unchanged wheels are not sent again and an installed wheel of the same hash is not reinstalled.
``install_root`` puts every file the deploy writes under a prefix (used by the tests, which deploy to this
machine inside a network namespace; a prefix always uses the start script, never systemd).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import posixpath
import shlex
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any, Literal
from urllib.parse import urlsplit

from sqlalchemy import select
from sqlalchemy.orm import Session

from corral.domain.flavors import get_flavor
from corral.engine import hostops
from corral.engine.agent_client import AgentError, AgentTarget
from corral.engine.context import EngineContext
from corral.engine.db.models import Host, HostState, Severity, utcnow
from corral.engine.deploy import certs, packages
from corral.engine.deploy.options import DeployFailed, DeployOptions, SshIn
from corral.engine.deploy.probe import Detected, Probe, ask_libvirt, check_items, detect, parse_probe, script
from corral.engine.deploy.ssh import Credentials, Remote, connect, fingerprint, key_line
from corral.engine.deploy.units import CTL_SCRIPT, SERVICE, UNIT, Layout, agent_toml
from corral.engine.errors import ApiError
from corral.engine.events import record
from corral.engine.pki import EnginePki
from corral.engine.tasks import TaskContext
from corral.engine.wheels import Wheel, WheelError, corral_wheel, dependency_wheels, engine_platform

log = logging.getLogger(__name__)

STEPS = ("connect", "detect", "packages", "check", "install", "configure", "certificate", "start", "activate")


Mode = Literal["add", "reinstall", "renew"]


class Deployer:
    """One run of the deploy (or reinstall, or certificate renewal) of one host."""

    def __init__(self, ctx: EngineContext, task: TaskContext, host_id: str, creds: Credentials,
                 options: DeployOptions, mode: Mode = "add") -> None:
        if ctx.pki is None:
            raise ApiError("this engine has no data directory, so no CA: deploy is unavailable",
                           code="unavailable", status=503)
        self.ctx, self.task, self.host_id, self.creds, self.opts, self.mode = ctx, task, host_id, creds, options, mode
        self.pki: EnginePki = ctx.pki
        self.layout = Layout(options.install_root)
        self.name = ""
        self.remote: Remote | None = None
        self.probe = Probe()
        self.detected: Detected | None = None
        self.timings: dict[str, float] = {}
        self.n = 0

    # bookkeeping
    @property
    def agent_url(self) -> str:
        if self.opts.agent_url:
            return self.opts.agent_url.rstrip("/")
        addr = self.creds.address
        host = f"[{addr}]" if ":" in addr and not addr.startswith("[") else addr
        return f"https://{host}:{self.opts.agent_port}"

    async def _event(self, kind: str, message: str, severity: Severity = Severity.INFO,
                     detail: dict[str, Any] | None = None, **host_values: Any) -> None:
        def write(s: Session) -> None:
            h = s.get(Host, self.host_id)
            if h is None:
                return
            for key, value in host_values.items():
                setattr(h, key, value)
            record(s, kind, f"host {h.name}: {message}", severity=severity, object_type="host", object_id=h.id,
                   detail=detail)
        await self.ctx.db.run(write)

    async def _progress(self, step: str, message: str, event: bool = True) -> None:
        self.n = STEPS.index(step) + 1
        await self.task.progress(f"[{self.n}/{len(STEPS)}] {step}: {message}")
        if event:
            await self._event("host_deploy_step", f"{step}: {message}", detail={"step": step})

    async def _step(self, step: str, fn: Callable[[], Awaitable[str]]) -> None:
        started = time.monotonic()
        await self._progress(step, "...", event=False)
        message = await fn()
        self.timings[step] = round(time.monotonic() - started, 2)
        await self._progress(step, message)
        await self._save_deploy(steps={step: {"done_at": utcnow().isoformat(), "seconds": self.timings[step]}})

    async def _save_deploy(self, **values: Any) -> None:
        def write(s: Session) -> None:
            h = s.get(Host, self.host_id)
            if h is None:
                return
            data = dict(h.deploy or {})
            for key, value in values.items():
                if isinstance(value, dict) and isinstance(data.get(key), dict):
                    data[key] = {**data[key], **value}
                else:
                    data[key] = value
            h.deploy = data
        await self.ctx.db.run(write)

    async def run(self) -> dict[str, Any]:
        monitor = self.ctx.monitor
        held = getattr(monitor, "held", None)
        if isinstance(held, set):
            held.add(self.host_id)
            await monitor.unwatch(self.host_id)
        started = time.monotonic()
        try:
            self.name = await self.ctx.db.run(lambda s: self._host(s).name)
            await self._save_deploy(options=self.opts.model_dump(), mode=self.mode, started_at=utcnow().isoformat(),
                                    error=None)
            await self._step("connect", self._connect)
            if self.mode == "renew":
                await self._step("certificate", self._certificate)
                await self._step("start", self._start)
                result = {"host_id": self.host_id, "name": self.name, "renewed": True}
            else:
                for step, fn in (("detect", self._detect), ("packages", self._packages), ("check", self._check),
                                 ("install", self._install), ("configure", self._configure),
                                 ("certificate", self._certificate), ("start", self._start)):
                    await self._step(step, fn)
                if isinstance(held, set):
                    held.discard(self.host_id)
                result = await self._activate()
            result["timings"] = {**self.timings, "total": round(time.monotonic() - started, 2)}
            await self._save_deploy(finished_at=utcnow().isoformat(), timings=result["timings"])
            return result
        except DeployFailed as exc:
            await self._failed(exc)
            raise
        except ApiError:
            raise
        except Exception as exc:
            if not isinstance(exc, WheelError | OSError):
                log.exception("deploy of host %s", self.host_id)
            failure = DeployFailed(STEPS[max(self.n - 1, 0)], f"{type(exc).__name__}: {exc}")
            await self._failed(failure)
            raise failure from None
        finally:
            if self.remote is not None:
                self.remote.close()
            if isinstance(held, set) and self.host_id in held:
                held.discard(self.host_id)
                if self.mode == "renew":
                    with contextlib.suppress(Exception):
                        await monitor.sync_hosts()

    def _host(self, s: Session) -> Host:
        h = s.get(Host, self.host_id)
        if h is None:
            raise ApiError("the host was removed meanwhile", code="not_found", status=404)
        return h

    async def _failed(self, exc: DeployFailed) -> None:
        renew = self.mode == "renew"
        await self._save_deploy(error={"step": exc.step, "message": exc.reason, "code": exc.code,
                                       "failed_items": exc.extra.get("failed_items", [])},
                                finished_at=utcnow().isoformat())
        values: dict[str, Any] = {}
        if not renew:
            values = {"state": exc.host_state.value, "state_reason": f"deploy failed at {exc.step}: {exc.reason}"}
        await self._event("host_deploy_failed" if not renew else "host_cert_renew_failed",
                          f"{'certificate renewal' if renew else 'deploy'} failed at {exc.step}: {exc.reason}",
                          Severity.ERROR, detail={"step": exc.step, "code": exc.code,
                                                  "failed_items": exc.extra.get("failed_items", [])},
                          **values)

    # steps
    async def _connect(self) -> str:
        pinned = await self.ctx.db.run(lambda s: self._host(s).ssh_host_key)
        creds = self.creds
        if pinned is None and self.mode != "add":
            raise DeployFailed("connect", "no host key is pinned for this host; add it over SSH first")
        remote, key, first_use = await connect(creds, pinned)
        remote.timeout = self.opts.command_timeout
        self.remote = remote
        fp = fingerprint(key)
        if first_use:
            await self._event("host_key_pinned", f"SSH host key {key.get_algorithm()} {fp} pinned on first use",
                              detail={"fingerprint": fp}, ssh_host_key=key_line(key))
        await self._save_deploy(host_key_fingerprint=fp)
        uid = (await remote.must("id -u", "connect", "id -u")).strip()
        if uid != "0":
            raise DeployFailed("connect", f"{creds.user} is not root on the host (uid {uid}); deploy needs root")
        how = "pinned on first use" if first_use else "matches the pinned key"
        return f"connected to {creds.user}@{creds.address}:{creds.port}; host key {key.get_algorithm()} {fp} ({how})"

    async def _probe(self) -> Probe:
        assert self.remote is not None
        out = await self.remote.must("sh -s", "detect", "probing the host", stdin=script(), timeout=120)
        self.probe = parse_probe(out)
        return self.probe

    async def _detect(self) -> str:
        probe = await self._probe()
        det = detect(probe, self.opts.allow_tcg)
        self.detected = det
        await self._save_deploy(hypervisor=det.kind, detection=det.evidence, os=probe.first("os"),
                                remote_python=probe.first("python"))
        await self._event("host_detected", f"hypervisor {det.kind}",
                          detail={"evidence": det.evidence}, hypervisor=det.kind if det.flavor else None)
        evidence = "; ".join(f"{e['source']}: {e['value']}" for e in det.evidence)
        return f"{det.label} [{evidence}] on {probe.first('os') or 'unknown OS'} {probe.first('arch')}"

    async def _packages(self) -> str:
        assert self.remote is not None
        plan = packages.plan(self.probe)
        pm, todo = plan.manager, ", ".join(plan.names)
        if not plan.names:
            return "nothing missing" if not plan.wanted else f"nothing to install with {pm or 'no package manager'}"
        if not self.opts.install_packages:
            return f"missing {todo}; not installed (install_packages is off)"
        await self._progress("packages", f"installing {todo} with {pm}", event=False)
        rc, out, err = await self.remote.run(plan.command, step="packages")
        if rc != 0:
            tail = " | ".join((err or out).strip().splitlines()[-4:])
            if not plan.optional_only:
                raise DeployFailed("packages", f"{pm} install {' '.join(plan.names)} failed (exit {rc}): {tail}")
            # the shipped libvirt-python wheel and a Python check of libvirt stand in for them
            await self._event("host_deploy_warning", f"{pm} could not install {todo}: {tail}",
                              Severity.WARNING, detail={"step": "packages"})
            return f"could not install {todo} with {pm} (continuing without): {tail}"
        await self._probe()
        return f"installed {todo} with {pm}"

    async def _check(self) -> str:
        assert self.remote is not None and self.detected is not None
        # the facts as they are now (python3 may have come with the packages: /dev/kvm is tried with it)
        self.detected = detect(self.probe, self.opts.allow_tcg)
        answer = await ask_libvirt(self.remote, self.probe, self.libvirt_uri())
        items = check_items(self.probe, self.detected, answer, self.opts.allow_tcg)
        failed = [i for i in items if not i["ok"]]
        await self._save_deploy(check={"ok": not failed, "items": items})
        if failed:
            text = "; ".join(f"{i['name']}: {i['detail']}" for i in failed)
            raise DeployFailed("check", f"hardware check failed: {text}", code="hardware_check_failed",
                               items=failed)
        await self._event("host_checked", "hardware check passed", detail={"items": items})
        return "passed: " + "; ".join(f"{i['name']}: {i['detail']}" for i in items)

    def libvirt_uri(self) -> str:
        """The operator's URI, else the detected flavor's (a host that is neither is checked as KVM)."""
        assert self.detected is not None
        if self.opts.libvirt_uri:
            return self.opts.libvirt_uri
        return (self.detected.flavor or get_flavor("kvm")).default_uri

    async def _wheels(self) -> tuple[Wheel, list[Wheel], bool]:
        assert self.ctx.pki is not None
        cache = self.ctx.pki.dir.parent / "wheels"
        same = self.probe.first("python") == f"{engine_platform()['python']} {engine_platform()['platform']}"

        def build() -> tuple[Wheel, list[Wheel]]:
            return corral_wheel(cache), (dependency_wheels(cache) if same else [])
        main, deps = await asyncio.to_thread(build)
        return main, deps, same

    async def _install(self) -> str:
        assert self.remote is not None
        r, lay = self.remote, self.layout
        t0 = time.monotonic()
        main, deps, same = await self._wheels()
        wheels = [main, *deps]
        split = {"wheels": time.monotonic() - t0}
        q = shlex.quote
        await r.must(f"mkdir -p {q(lay.wheels)} {q(lay.p('/etc/corral'))} {q(lay.state_dir)} "
                     f"{q(posixpath.dirname(lay.log))}", "install", "creating directories")
        _rc, out, _err = await r.run(f"cd {q(lay.wheels)} && sha256sum *.whl 2>/dev/null", step="install")
        remote_sha = {name: sha for sha, _, name in (line.partition("  ") for line in out.splitlines())}
        sent = 0
        for w in wheels:
            if remote_sha.get(w.path.name) != w.sha256:
                await r.put(w.path, f"{lay.wheels}/{w.path.name}", "install")
                sent += 1
        keep = {w.path.name for w in wheels}
        split["send"] = time.monotonic() - t0 - sum(split.values())
        stale = [n for n in remote_sha if n not in keep]
        if stale:
            await r.run(f"cd {q(lay.wheels)} && rm -f {' '.join(q(n) for n in stale)}", step="install")
        py = f"{lay.venv}/bin/python"
        rc, _out, _err = await r.run(f"test -x {q(py)}", step="install")
        if rc != 0:
            await r.must(f"python3 -m venv --system-site-packages {q(lay.venv)}", "install",
                         f"creating the virtualenv {lay.venv}")
        split["venv"] = time.monotonic() - t0 - sum(split.values())
        marker = f"{lay.venv}/.corral-wheel.sha256"
        _rc, installed, _err = await r.run(f"cat {q(marker)} 2>/dev/null", step="install")
        pip = f"{q(py)} -m pip install -q --disable-pip-version-check --no-compile"
        index = f"--no-index --find-links {q(lay.wheels)}" if same else ""
        whl = q(f"{lay.wheels}/{main.path.name}")
        if installed.strip() == main.sha256 and self.mode != "reinstall":
            pip_note = "the same wheel is installed already"
        else:
            await r.must(f"{pip} {index} {whl}", "install", "pip install (dependencies)")
            await r.must(f"{pip} --no-deps --force-reinstall {index} {whl}", "install", "pip install corral")
            await r.must(f"echo {main.sha256} > {q(marker)}", "install", "recording the installed wheel")
            pip_note = "installed with pip" + (" from the shipped wheels" if same else " (dependencies from the "
                                                                                      "host's package index)")
        split["pip"] = time.monotonic() - t0 - sum(split.values())
        version = (await r.must(f"{q(py)} -c 'import corral; print(corral.__version__)'", "install",
                                "importing corral in the virtualenv")).strip()
        await self._authorize_engine_key()
        await self._save_deploy(install_seconds={k: round(v, 2) for k, v in split.items()})
        took = ", ".join(f"{k} {v:.1f} s" for k, v in split.items())
        return (f"corral {version} (wheel sha256 {main.sha256[:12]}) in {lay.venv}: {pip_note}; "
                f"{sent} of {len(wheels)} wheel(s) sent ({took})")

    async def _authorize_engine_key(self) -> None:
        assert self.remote is not None
        line = self.pki.ssh_public_line
        home = self.probe.first("home") or "/root"
        path = self.layout.p(f"{home}/.ssh/authorized_keys")
        q = shlex.quote
        script = (f"mkdir -p {q(posixpath.dirname(path))} && chmod 700 {q(posixpath.dirname(path))} && "
                  f"touch {q(path)} && chmod 600 {q(path)} && "
                  f"(grep -qxF {q(line)} {q(path)} || echo {q(line)} >> {q(path)})")
        await self.remote.must(script, "install", "authorizing the engine's SSH key")

    async def _configure(self) -> str:
        assert self.remote is not None
        r, lay = self.remote, self.layout
        settings: dict[str, Any] = {
            "libvirt": self.libvirt_uri(), "listen": f"0.0.0.0:{self.opts.agent_port}",
            "tls_cert": f"{lay.pki}/agent.crt", "tls_key": f"{lay.pki}/agent.key", "tls_ca": f"{lay.pki}/ca.crt",
            "state_dir": lay.state_dir, "allow_tcg": self.opts.allow_tcg,
        }
        await r.must(f"mkdir -p {shlex.quote(lay.pki)} {shlex.quote(posixpath.dirname(lay.ctl))} && "
                     f"chmod 700 {shlex.quote(lay.pki)}", "configure", "creating directories")
        await r.write(lay.config, agent_toml(settings).encode(), 0o644, "configure")
        values = {"service": SERVICE, "venv": shlex.quote(lay.venv), "config": shlex.quote(lay.config),
                  "pidfile": shlex.quote(lay.pidfile), "log": shlex.quote(lay.log)}
        await r.write(lay.ctl, CTL_SCRIPT.format(**values).encode(), 0o755, "configure")
        if self._systemd:
            await r.must(f"mkdir -p {shlex.quote(posixpath.dirname(lay.unit))}", "configure", "mkdir")
            await r.write(lay.unit, UNIT.format(**values).encode(), 0o644, "configure")
            await r.must(f"systemctl daemon-reload && systemctl enable {SERVICE}.service", "configure",
                         "enabling the systemd unit")
            return f"{lay.config}; systemd unit {SERVICE}.service (enabled)"
        return f"{lay.config}; start script {lay.ctl} (no systemd: pidfile {lay.pidfile}, log {lay.log})"

    @property
    def _systemd(self) -> bool:
        return "systemd" in self.probe and self.layout.root == "/"

    async def _certificate(self) -> str:
        assert self.remote is not None
        r, lay = self.remote, self.layout
        if not self.probe:
            await self._probe()
        # names from the operator only, never the host's own hostname (corral.engine.deploy.certs)
        sans = certs.names(self.creds.address, urlsplit(self.agent_url).hostname or "")
        issued = await certs.install_certificate(r, lay, self.pki, sans[0], sans, self.opts.cert_days)
        await self._save_deploy(cert={"serial": format(issued.serial, "x"), "not_after": issued.not_after.isoformat(),
                                      "sha256": issued.fingerprint, "sans": sans})
        await self._event("host_cert_issued", f"agent certificate issued, valid until {issued.not_after:%Y-%m-%d}",
                          detail={"serial": format(issued.serial, "x")}, cert_expires_at=issued.not_after)
        return (f"server certificate for {', '.join(sans)} from the engine CA, "
                f"valid until {issued.not_after:%Y-%m-%d %H:%M} UTC")

    async def _start(self) -> str:
        assert self.remote is not None
        r, lay = self.remote, self.layout
        if not self.probe:
            await self._probe()
        if self._systemd:
            await r.must(f"systemctl restart {SERVICE}.service", "start", "systemctl restart")
        else:
            await r.must(f"{shlex.quote(lay.ctl)} restart", "start", f"{lay.ctl} restart")
        started = time.monotonic()
        target = AgentTarget(self.agent_url)
        last = ""
        while time.monotonic() - started < self.opts.health_timeout:
            try:
                health = await self.ctx.agents.health(target)
                if health.get("status") == "ok":
                    await self._check_pinned_certificate()
                    await self._set_url()
                    waited = time.monotonic() - started
                    return (f"agent {health.get('version')} answers at {self.agent_url} over TLS (certificate "
                            f"verified against the engine CA) after {waited:.1f} s; libvirt "
                            f"{'connected' if health.get('libvirt') else 'NOT connected'}")
                last = f"health: {health}"
            except AgentError as exc:
                last = exc.message
            await asyncio.sleep(0.5)
        _rc, tail, _err = await r.run(
            f"tail -n 15 {shlex.quote(lay.log)} 2>/dev/null" if not self._systemd
            else f"journalctl -u {SERVICE} -n 15 --no-pager 2>/dev/null", step="start")
        raise DeployFailed("start", f"the agent did not answer at {self.agent_url} within "
                           f"{self.opts.health_timeout:g} s ({last}); its log ends: "
                           + " | ".join(tail.strip().splitlines()[-8:]))

    async def _check_pinned_certificate(self) -> None:
        """The agent that answers must serve the certificate issued to this host (its SHA-256 was recorded), not
        another one the CA issued: the deploy pins it per host."""
        pinned = (await self.ctx.db.run(lambda s: ((self._host(s).deploy or {}).get("cert") or {}).get("sha256")))
        if not pinned:
            return
        parts = urlsplit(self.agent_url)
        ctx = ssl.create_default_context(cafile=str(self.pki.ca_cert_path))
        ctx.load_cert_chain(str(self.pki.client_cert_path), str(self.pki.client_key_path))
        served = await asyncio.to_thread(certs.served_fingerprint, parts.hostname or "", parts.port or 443, ctx)
        if served != pinned:
            raise DeployFailed("start", f"the agent at {self.agent_url} serves certificate SHA-256 {served}, not "
                               f"the one issued to this host ({pinned})", code="cert_mismatch")

    async def _set_url(self) -> None:
        url = self.agent_url

        def write(s: Session) -> None:
            h = self._host(s)
            other = s.scalar(select(Host.id).where(Host.agent_url == url, Host.id != h.id))
            if other is not None:
                raise DeployFailed("start", f"another host already uses the agent URL {url}", code="conflict")
            h.agent_url, h.agent_token = url, None
        await self.ctx.db.run(write)

    async def _activate(self) -> dict[str, Any]:
        await self._progress("activate", "reading the host over mutual TLS")
        started = time.monotonic()
        try:
            result = await hostops.activate(self.ctx, self.task, self.host_id, adding=False)
        except ApiError as exc:
            raise DeployFailed("activate", exc.message, code=exc.code) from None
        self.timings["activate"] = round(time.monotonic() - started, 2)
        await self._progress("activate", f"host {result['name']} is {result['state']}"
                             + (f": {result['reason']}" if result.get("reason") else ""))
        await self._save_deploy(steps={"activate": {"done_at": utcnow().isoformat(),
                                                    "seconds": self.timings["activate"]}})
        fp = (await self.ctx.db.run(lambda s: (self._host(s).deploy or {}).get("host_key_fingerprint")))
        return {**result, "hypervisor": self.detected.kind if self.detected else None,
                "host_key_fingerprint": fp, "agent_url": self.agent_url}



# ---------------------------------------------------------------------------------------------- entry points

def credentials(ssh: SshIn) -> Credentials:
    return Credentials(address=ssh.address.strip("[]"), port=ssh.port, user=ssh.user, password=ssh.password,
                       private_keys=[ssh.private_key.encode()] if ssh.private_key else [],
                       passphrase=ssh.passphrase, expected_fingerprint=ssh.host_key_fingerprint,
                       connect_timeout=ssh.connect_timeout)


def engine_credentials(ctx: EngineContext, h: Host, extra: SshIn | None = None) -> Credentials:
    """For reinstall and renewal: the stored address and the engine's own key (plus what the caller gave)."""
    assert ctx.pki is not None and h.ssh_address is not None
    creds = Credentials(address=h.ssh_address, port=h.ssh_port or 22, user=h.ssh_user or "root",
                        private_keys=[ctx.pki.ssh_private_key])
    if extra is not None:
        creds.password = extra.password
        if extra.private_key:
            creds.private_keys.insert(0, extra.private_key.encode())
        creds.passphrase = extra.passphrase
        creds.connect_timeout = extra.connect_timeout
    return creds


def ssh_placeholder_url(user: str, address: str, port: int) -> str:
    """The agent URL of a host whose agent never answered yet (the monitor does not watch it)."""
    host = f"[{address}]" if ":" in address else address
    return f"ssh://{user}@{host}:{port}"


def stored_options(h: Host, override: DeployOptions | None = None) -> DeployOptions:
    """The last deploy's options, with what ``override`` sets on top (an option it leaves out -- the agent
    port, the agent URL behind NAT -- keeps its stored value instead of falling back to the default)."""
    raw = (h.deploy or {}).get("options") or {}
    changes = override.model_dump(exclude_unset=True) if override is not None else {}
    try:
        return DeployOptions.model_validate({**raw, **changes})
    except ValueError:
        return DeployOptions.model_validate(changes)


async def run_deploy(ctx: EngineContext, task: TaskContext, host_id: str, creds: Credentials,
                     options: DeployOptions, mode: Mode = "add") -> dict[str, Any]:
    running: set[str] = ctx.deploying
    if host_id in running:
        raise ApiError("a deploy of this host is running already", code="conflict", status=409)
    running.add(host_id)
    try:
        return await Deployer(ctx, task, host_id, creds, options, mode).run()
    finally:
        running.discard(host_id)


def interrupted_deploys(s: Session) -> int:
    """At engine start: hosts left ``installing`` by a deploy the previous run could not finish."""
    rows = s.scalars(select(Host).where(Host.state == HostState.INSTALLING.value, Host.deploy.is_not(None))).all()
    for h in rows:
        h.state = HostState.NON_OPERATIONAL.value
        h.state_reason = "the deploy was interrupted by an engine restart; run host add (or reinstall) again"
        record(s, "host_deploy_failed", f"host {h.name}: {h.state_reason}", severity=Severity.ERROR,
               object_type="host", object_id=h.id)
    return len(rows)
