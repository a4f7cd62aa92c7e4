"""labs/xen/wait-ready: the Xen lab is ready only when its agent answers through the forwarded port.

Offline: a serial log written by the test stands for dom0's console, the test's own pid for QEMU, and a
local listener for the forwarded agent port -- first one that accepts and resets every connection, as
QEMU's user-mode network does while nothing listens in dom0 (issue 20, item 10), then a real HTTP server.
"""

from __future__ import annotations

import http.server
import os
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

WAIT_READY = Path(__file__).resolve().parents[2] / "labs" / "xen" / "wait-ready"


def run(serial: Path, port: int, timeout: float = 3.0, pid: int | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(WAIT_READY), "--serial", str(serial), "--pid", str(pid or os.getpid()),
         "--port", str(port), "--timeout", str(timeout)],
        capture_output=True, text=True, timeout=120, check=False,
    )


class _Resetter:
    """Accepts connections and resets them at once (SO_LINGER 0), like slirp with no listener behind it."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = int(self.sock.getsockname()[1])
        self.accepted = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()

    def close(self) -> None:
        self.sock.close()


class _Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b'{"status": "ok"}'
        self.send_response(200 if self.path == "/v1/health" else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def resetter() -> Iterator[_Resetter]:
    r = _Resetter()
    yield r
    r.close()


@pytest.fixture
def agent() -> Iterator[int]:
    server = http.server.HTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield int(server.server_address[1])
    server.shutdown()
    server.server_close()


def test_ready_line_alone_is_not_ready_while_the_port_resets(tmp_path: Path, resetter: _Resetter) -> None:
    serial = tmp_path / "serial.log"
    serial.write_text("CORRAL-LAB t=60.1 corral agent started (log /var/log/corral-agent.log)\n"
                      "CORRAL-LAB-READY t=60.2\n")
    proc = run(serial, resetter.port)
    assert proc.returncode == 1, proc.stdout
    assert "never answered" in proc.stderr and "reset" in proc.stderr.lower(), proc.stderr
    assert resetter.accepted >= 1  # it really asked the forwarded port


def test_ready_when_the_line_is_there_and_health_answers(tmp_path: Path, agent: int) -> None:
    serial = tmp_path / "serial.log"
    serial.write_text("CORRAL-LAB-READY t=60.2\n")
    proc = run(serial, agent, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ready_s=") and "agent_s=" in proc.stdout


def test_health_alone_is_not_ready_before_dom0_says_so(tmp_path: Path, agent: int) -> None:
    serial = tmp_path / "serial.log"
    serial.write_text("CORRAL-LAB t=30.0 xenstored up\n")
    proc = run(serial, agent)
    assert proc.returncode == 1
    assert "no CORRAL-LAB-READY" in proc.stderr


@pytest.mark.parametrize("line", ["CORRAL-LAB t=80.0 corral agent exited rc=1 (see /var/log/corral-agent.log)",
                                  "CORRAL-LAB t=70.0 corral agent not started: /opt/corral/venv/bin/corral missing",
                                  "CORRAL-LAB-FAILED t=200.0 libvirt did not come up"])
def test_a_lost_boot_is_reported_with_dom0s_reason(tmp_path: Path, resetter: _Resetter, line: str) -> None:
    serial = tmp_path / "serial.log"
    serial.write_text(f"CORRAL-LAB-READY t=60.2\n{line}\n")
    proc = run(serial, resetter.port, timeout=600)  # must not wait for the timeout
    assert proc.returncode == 1
    assert line.split(" ", 2)[-1].split(" (")[0] in proc.stderr, proc.stderr


def test_qemu_gone_is_reported(tmp_path: Path, resetter: _Resetter) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    proc = run(tmp_path / "serial.log", resetter.port, timeout=600, pid=dead.pid)
    assert proc.returncode == 1
    assert f"QEMU (pid {dead.pid}) exited" in proc.stderr
