"""A stand-in KVM host for deploy tests: Debian's sshd in a network namespace of this machine.

``SshHost.start()`` (as root) makes a network namespace with a veth pair (engine side ``10.<a>.<b>.1``, host side
``.2``) and a bridge ``br0`` (the management network the check wants), and runs ``/usr/sbin/sshd`` in it with its
own host keys, an authorized key and a private mount namespace in which ``/dev`` is a fresh tmpfs without
``kvm``: the namespace shares this machine's filesystem, so this is what makes it a host *without* KVM. Every
process a deploy starts over SSH (the agent) lives in both namespaces; ``stop()`` ends the ones it knows (sshd,
and agents by their pidfiles) and deletes the namespace.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

SSHD = "/usr/sbin/sshd"

# Runs inside the new mount namespace before sshd: hide /dev/kvm (a tmpfs /dev with the usual nodes).
MASK_DEV = """set -e
real={real}
mkdir -p "$real"
mount --rbind /dev "$real"
mount --make-rprivate "$real"
mount -t tmpfs -o mode=755,size=1m corral-dev /dev
for n in null zero full random urandom tty ptmx; do touch /dev/$n; mount --bind "$real/$n" /dev/$n; done
mkdir /dev/pts /dev/shm
mount --rbind "$real/pts" /dev/pts
mount -t tmpfs -o mode=1777 corral-shm /dev/shm
ln -s /proc/self/fd /dev/fd; ln -s /proc/self/fd/0 /dev/stdin
ln -s /proc/self/fd/1 /dev/stdout; ln -s /proc/self/fd/2 /dev/stderr
mkdir -p /run/sshd
exec {sshd} -D -E {log} -f {config}
"""

SSHD_CONFIG = """Port 22
ListenAddress {address}
HostKey {dir}/ssh_host_ed25519_key
HostKey {dir}/ssh_host_ecdsa_key
PidFile {dir}/sshd.pid
AuthorizedKeysFile {dir}/authorized_keys {root}/root/.ssh/authorized_keys
PermitRootLogin yes
PasswordAuthentication yes
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
Subsystem sftp /usr/lib/openssh/sftp-server
LogLevel VERBOSE
"""


def unavailable_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces, sshd)"
    if not Path(SSHD).exists():
        return "openssh-server is not installed (scripts/install installs it)"
    for tool in ("ip", "unshare", "ssh-keygen", "mount"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    return None


@dataclass
class SshHost:
    dir: Path
    tag: str = field(default_factory=lambda: f"{os.getpid() % 100000}")
    proc: subprocess.Popen[bytes] | None = None
    pidfiles: list[Path] = field(default_factory=list)

    def __post_init__(self) -> None:
        n = os.getpid() % 250 + 1
        self.netns = f"corral-deploy-{self.tag}"
        self.veth_host, self.veth_ns = f"cdh{self.tag}", f"cdn{self.tag}"
        self.engine_address = f"10.213.{n}.1"
        self.address = f"10.213.{n}.2"
        self.unused_address = f"10.213.{n}.77"  # on the link, but nobody answers
        self.root = self.dir / "hostroot"  # install root for deploys (files the deploy writes)
        self.client_key = self.dir / "id_ed25519"

    def _ip(self, *args: str, ns: bool = False, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = ["ip", "netns", "exec", self.netns, "ip", *args] if ns else ["ip", *args]
        return subprocess.run(cmd, capture_output=True, text=True, check=check)

    def start(self, timeout: float = 15.0) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.root.mkdir(exist_ok=True)
        self.stop_network()
        for kind in ("ed25519", "ecdsa"):
            key = self.dir / f"ssh_host_{kind}_key"
            if not key.exists():
                subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-f", str(key)], check=True)
        if not self.client_key.exists():
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.client_key)], check=True)
        (self.dir / "authorized_keys").write_text((self.dir / "id_ed25519.pub").read_text())
        os.chmod(self.dir / "authorized_keys", 0o600)
        config = self.dir / "sshd_config"
        config.write_text(SSHD_CONFIG.format(address=self.address, dir=self.dir, root=self.root))
        subprocess.run(["ip", "netns", "add", self.netns], check=True)
        self._ip("link", "add", self.veth_host, "type", "veth", "peer", "name", self.veth_ns)
        self._ip("link", "set", self.veth_ns, "netns", self.netns)
        self._ip("addr", "add", f"{self.engine_address}/24", "dev", self.veth_host)
        self._ip("link", "set", self.veth_host, "up")
        self._ip("link", "set", "lo", "up", ns=True)
        self._ip("addr", "add", f"{self.address}/24", "dev", self.veth_ns, ns=True)
        self._ip("link", "set", self.veth_ns, "up", ns=True)
        self._ip("link", "add", "br0", "type", "bridge", ns=True)
        self._ip("link", "set", "br0", "up", ns=True)
        script = MASK_DEV.format(real=self.dir / "realdev", sshd=SSHD, log=self.dir / "sshd.log", config=config)
        self.proc = subprocess.Popen(["ip", "netns", "exec", self.netns, "unshare", "--mount",
                                      "--propagation", "private", "sh", "-c", script],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=open(self.dir / "start.log", "wb"))  # noqa: SIM115
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sshd exited: {(self.dir / 'start.log').read_text()} "
                                   f"{(self.dir / 'sshd.log').read_text() if (self.dir / 'sshd.log').exists() else ''}")
            try:
                with socket.create_connection((self.address, 22), timeout=1) as s:
                    if s.recv(64).startswith(b"SSH-"):
                        return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("sshd in the namespace did not answer")

    def host_key_fingerprint(self) -> str:
        out = subprocess.run(["ssh-keygen", "-l", "-E", "sha256", "-f", str(self.dir / "ssh_host_ed25519_key.pub")],
                             capture_output=True, text=True, check=True).stdout
        return out.split()[1]

    def agent_pidfile(self, root: Path) -> Path:
        return root / "var/lib/corral/agent.pid"

    def stop_agent(self, root: Path) -> None:
        pidfile = self.agent_pidfile(root)
        try:
            pid = int(pidfile.read_text().strip())
        except (OSError, ValueError):
            return
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        for _ in range(100):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def stop_network(self) -> None:
        subprocess.run(["ip", "netns", "del", self.netns], capture_output=True, check=False)
        subprocess.run(["ip", "link", "del", self.veth_host], capture_output=True, check=False)

    def stop(self, roots: list[Path]) -> None:
        for root in roots:
            self.stop_agent(root)
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.stop_network()
