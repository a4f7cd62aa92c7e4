"""``corral agent serve``: refuses to run unauthenticated or with a bad config; serves the API when it can."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from .conftest import TOKEN, free_port

REPO = Path(__file__).resolve().parents[2]
# ``corral`` is ``corral.cli:main``; calling it this way does not depend on how the package was installed
CORRAL = [sys.executable, "-c", "import sys; from corral.cli import main; sys.exit(main())"]


def serve(*args: str, tmp_path: Path) -> tuple[int, str]:
    from corral.cli import app

    result = CliRunner().invoke(app, ["agent", "serve", "--libvirt", "test:///default", "--listen",
                                      "127.0.0.1:1", "--state-dir", str(tmp_path / "state"), *args])
    return result.exit_code, result.output + (result.stderr if result.stderr_bytes is not None else "")


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    return path


def test_refuses_to_run_without_a_token_or_tls(tmp_path: Path) -> None:
    code, out = serve(tmp_path=tmp_path)
    assert code == 2 and "never runs unauthenticated" in out


def test_tls_options_go_together(tmp_path: Path) -> None:
    cert = tmp_path / "cert.pem"
    cert.write_text("x")
    code, out = serve("--tls-cert", str(cert), tmp_path=tmp_path)
    assert code == 2 and "go together" in out


def test_a_short_or_missing_token_file(tmp_path: Path) -> None:
    short = tmp_path / "short"
    short.write_text("abc")
    code, out = serve("--token-file", str(short), tmp_path=tmp_path)
    assert code == 2 and "at least 16 characters" in out
    code, out = serve("--token-file", str(tmp_path / "absent"), tmp_path=tmp_path)
    assert code == 2 and "absent" in out


@pytest.mark.parametrize(("text", "named"), [
    ("listn = '127.0.0.1:8470'\n", "'listn'"),
    ("listen = 8470\n", "'listen'"),
    ("allow_tcg = 'yes'\n", "'allow_tcg'"),
    ("hook_timeout = 'long'\n", "'hook_timeout'"),
    ("bridges = 'br0'\n", "'bridges'"),
    ("state_dir = 5\n", "'state_dir'"),
    ("listen = \n", "agent.toml"),
])
def test_a_bad_config_file_is_named(tmp_path: Path, token_file: Path, text: str, named: str) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(text)
    code, out = serve("--token-file", str(token_file), "--config", str(config), tmp_path=tmp_path)
    assert code == 2, out
    assert named in out and str(config) in out


def test_bad_listen_and_emulate(tmp_path: Path, token_file: Path) -> None:
    code, out = serve("--token-file", str(token_file), "--listen", "nowhere", tmp_path=tmp_path)
    assert code == 2 and "--listen" in out
    code, out = serve("--token-file", str(token_file), "--emulate", "vmware", tmp_path=tmp_path)
    assert code == 2 and "--emulate" in out


def test_serves_the_api_from_a_config_file(tmp_path: Path, token_file: Path) -> None:
    """The real command in a subprocess: health without a token, the rest with it, SIGTERM stops it."""
    port = free_port()
    config = tmp_path / "agent.toml"
    config.write_text(f"libvirt = 'test:///default'\nlisten = '127.0.0.1:{port}'\ntoken-file = '{token_file}'\n"
                      f"state_dir = '{tmp_path / 'state'}'\nemulate = 'xen'\nbridges = ['xenbr0']\n")
    proc = subprocess.Popen([*CORRAL, "agent", "serve", "--config", str(config)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                health = httpx.get(f"{url}/v1/health", timeout=2)
                break
            except httpx.TransportError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"agent did not come up: {proc.communicate()[0]}") from None
                time.sleep(0.1)
        assert health.status_code == 200 and health.json()["libvirt"] is True
        assert httpx.get(f"{url}/v1/host", timeout=5).status_code == 401
        host = httpx.get(f"{url}/v1/host", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5).json()
        assert host["hypervisor"] == "xen" and host["emulated"] is True and "xenbr0" in host["bridges"]
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    # uvicorn shuts down gracefully, then re-raises the signal it caught: -SIGTERM is a clean stop too
    assert proc.returncode in (0, -signal.SIGTERM), proc.stdout.read() if proc.stdout else ""
