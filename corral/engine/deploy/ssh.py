"""SSH to a host: the host key pinned on first use, commands with timeouts, files written atomically."""

from __future__ import annotations

import asyncio
import logging
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncssh

from corral.engine.db.models import HostState
from corral.engine.deploy.options import DeployFailed

log = logging.getLogger(__name__)


class _HostKeyCheck(asyncssh.SSHClient):
    """Pin on first use: accept any key when none is pinned (unless a fingerprint is expected), else only it."""

    def __init__(self, pinned: asyncssh.SSHKey | None, expected: str | None) -> None:
        self.pinned = pinned
        self.expected = expected
        self.seen: asyncssh.SSHKey | None = None

    def validate_host_public_key(self, host: str, addr: str, port: int, key: asyncssh.SSHKey) -> bool:
        self.seen = key
        if self.pinned is not None:
            return bool(key.public_data == self.pinned.public_data)
        if self.expected:
            return fingerprint(key) == normalize_fingerprint(self.expected)
        return True


def fingerprint(key: asyncssh.SSHKey) -> str:
    return str(key.get_fingerprint("sha256"))


def normalize_fingerprint(value: str) -> str:
    value = value.strip()
    return value if value.startswith("SHA256:") else f"SHA256:{value}"


def key_line(key: asyncssh.SSHKey) -> str:
    return bytes(key.export_public_key("openssh")).decode().strip()


@dataclass
class Credentials:
    address: str
    port: int = 22
    user: str = "root"
    password: str | None = None
    private_keys: list[bytes] = field(default_factory=list)
    passphrase: str | None = None
    expected_fingerprint: str | None = None
    connect_timeout: float = 15.0


class Remote:
    """One SSH connection to the host: run commands, write files (SFTP, else ``cat``)."""

    def __init__(self, conn: asyncssh.SSHClientConnection, timeout: float) -> None:
        self.conn = conn
        self.timeout = timeout
        self._sftp: asyncssh.SFTPClient | None = None
        self._no_sftp = False

    async def run(self, command: str, *, stdin: str | None = None, timeout: float | None = None,
                  step: str = "run") -> tuple[int, str, str]:
        try:
            res = await asyncio.wait_for(self.conn.run(command, input=stdin, check=False),
                                         timeout or self.timeout)
        except TimeoutError:
            raise DeployFailed(step, f"{command.split()[0]!r} did not finish within {timeout or self.timeout:g} s",
                               state=HostState.NON_OPERATIONAL) from None
        except (asyncssh.Error, OSError) as exc:
            raise DeployFailed(step, f"SSH connection lost: {exc}", code="unreachable",
                               state=HostState.UNREACHABLE) from None
        out = res.stdout if isinstance(res.stdout, str) else (res.stdout or b"").decode(errors="replace")
        err = res.stderr if isinstance(res.stderr, str) else (res.stderr or b"").decode(errors="replace")
        return int(res.exit_status if res.exit_status is not None else 255), out, err

    async def must(self, command: str, step: str, what: str, *, stdin: str | None = None,
                   timeout: float | None = None) -> str:
        rc, out, err = await self.run(command, stdin=stdin, timeout=timeout, step=step)
        if rc != 0:
            tail = " | ".join((err or out).strip().splitlines()[-6:])
            raise DeployFailed(step, f"{what} failed (exit {rc}): {tail}")
        return out

    async def sftp(self) -> asyncssh.SFTPClient | None:
        if self._sftp is None and not self._no_sftp:
            try:
                self._sftp = await self.conn.start_sftp_client()
            except (asyncssh.Error, OSError) as exc:
                log.info("no SFTP on the host (%s); writing files through the shell", exc)
                self._no_sftp = True
        return self._sftp

    async def write(self, path: str, data: bytes, mode: int, step: str) -> None:
        """Write ``path`` atomically (temp file + rename) with ``mode`` from the start."""
        tmp = f"{path}.corral-tmp"
        sftp = await self.sftp()
        try:
            if sftp is not None:
                async with sftp.open(tmp, "wb", asyncssh.SFTPAttrs(permissions=mode)) as fh:
                    await fh.write(data)
                await sftp.chmod(tmp, mode)
                await sftp.posix_rename(tmp, path)
                return
        except (asyncssh.SFTPError, OSError) as exc:
            raise DeployFailed(step, f"writing {path}: {exc}") from None
        q, qt = shlex.quote(path), shlex.quote(tmp)
        res = await asyncio.wait_for(
            self.conn.run(f"umask 077 && cat > {qt} && chmod {mode:o} {qt} && mv -f {qt} {q}", input=data,
                          encoding=None, check=False), self.timeout)
        if res.exit_status != 0:
            raise DeployFailed(step, f"writing {path} failed: {(res.stderr or b'')!r}")

    async def put(self, local: Path, path: str, step: str) -> None:
        sftp = await self.sftp()
        if sftp is None:
            await self.write(path, local.read_bytes(), 0o644, step)
            return
        tmp = f"{path}.corral-tmp"
        try:
            await sftp.put(str(local), tmp)
            await sftp.chmod(tmp, 0o644)
            await sftp.posix_rename(tmp, path)
        except (asyncssh.SFTPError, OSError) as exc:
            raise DeployFailed(step, f"sending {local.name} to {path}: {exc}") from None

    def close(self) -> None:
        if self._sftp is not None:
            self._sftp.exit()
        self.conn.close()


async def connect(creds: Credentials, pinned_line: str | None) -> tuple[Remote, asyncssh.SSHKey, bool]:
    """Connect and authenticate; returns the connection, the host key and whether it was first seen now."""
    step = "connect"
    pinned = asyncssh.import_public_key(pinned_line) if pinned_line else None
    checker = _HostKeyCheck(pinned, creds.expected_fingerprint)
    keys = []
    for data in creds.private_keys:
        try:
            keys.append(asyncssh.import_private_key(data, creds.passphrase))
        except (asyncssh.KeyImportError, ValueError) as exc:
            raise DeployFailed(step, f"the private key cannot be read: {exc}", code="invalid") from None
    where = f"{creds.user}@{creds.address}:{creds.port}"
    host_key_algs: Any = [a.decode() for a in pinned.sig_algorithms] if pinned is not None else ()
    try:
        conn = await asyncio.wait_for(asyncssh.connect(
            creds.address, creds.port, username=creds.user, password=creds.password,
            client_keys=keys or None, passphrase=creds.passphrase, agent_path=None, config=None,
            known_hosts=([], [], []), client_factory=lambda: checker, server_host_key_algs=host_key_algs,
            connect_timeout=creds.connect_timeout, login_timeout=creds.connect_timeout * 2,
            keepalive_interval=30), creds.connect_timeout * 3)
    except asyncssh.HostKeyNotVerifiable:
        seen = fingerprint(checker.seen) if checker.seen is not None else "none"
        if pinned is not None:
            msg = (f"the host key of {creds.address}:{creds.port} changed: pinned {fingerprint(pinned)}, "
                   f"offered {seen}; if the host was reinstalled, remove it from Corral and add it again")
        else:
            msg = (f"the host key of {creds.address}:{creds.port} is {seen}, not the expected "
                   f"{normalize_fingerprint(creds.expected_fingerprint or '')}")
        raise DeployFailed(step, msg, code="host_key_mismatch") from None
    except asyncssh.PermissionDenied as exc:
        how = ", ".join(m for m, v in (("password", creds.password), ("key", keys)) if v) or "no credential"
        raise DeployFailed(step, f"SSH authentication as {where} failed ({how}): {exc.reason}",
                           code="ssh_auth_failed") from None
    except TimeoutError:
        raise DeployFailed(step, f"cannot reach {creds.address}:{creds.port}: no answer within "
                           f"{creds.connect_timeout:g} s", code="unreachable", state=HostState.UNREACHABLE) from None
    except OSError as exc:
        raise DeployFailed(step, f"cannot reach {creds.address}:{creds.port}: {exc.strerror or exc}",
                           code="unreachable", state=HostState.UNREACHABLE) from None
    except asyncssh.Error as exc:
        raise DeployFailed(step, f"SSH to {where} failed: {exc.reason}", code="ssh_error",
                           state=HostState.UNREACHABLE) from None
    key = conn.get_server_host_key() or checker.seen
    assert key is not None
    return Remote(conn, 900.0), key, pinned is None


