"""Secrets on disk are their owner's only (issue 14): a real ``corral engine serve`` and ``corral agent serve``
started under umask 022 on paths an older version left open, then ``stat``."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from corral.private import NotPrivate, private_dir
from tests.engine.agents import REPO, AgentProc, free_port


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _umask_022() -> None:
    os.umask(0o022)


def test_engine_data_dir_database_and_keys_are_private(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    os.chmod(data, 0o755)
    (data / "engine.db").touch()
    os.chmod(data / "engine.db", 0o644)  # as an older version left it
    port = free_port()
    log = open(tmp_path / "engine.log", "wb")  # noqa: SIM115 - the child's
    proc = subprocess.Popen([sys.executable, "-m", "corral", "engine", "serve", "--data-dir", str(data),
                             "--listen", f"127.0.0.1:{port}", "--no-tls"], stdout=log, stderr=subprocess.STDOUT,
                            cwd=REPO, preexec_fn=_umask_022)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, (tmp_path / "engine.log").read_text()[-2000:]
            try:
                if httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the engine did not answer"
            time.sleep(0.1)
        assert mode(data) == 0o700
        for name in ("engine.db", "engine.db-wal", "engine.db-shm"):
            if (data / name).exists():
                assert mode(data / name) == 0o600, name
        keys = sorted((data / "pki").glob("*.key"))
        assert keys, list((data / "pki").iterdir())
        for key in keys:
            assert mode(key) == 0o600, key
        assert mode(data / "pki") == 0o700
    finally:
        proc.terminate()
        proc.wait(timeout=15)
        log.close()


def test_new_sqlite_database_is_made_0600(tmp_path: Path) -> None:
    from corral.engine.db.session import Database

    old = os.umask(0o022)
    try:
        db = Database(f"sqlite:///{tmp_path / 'new.db'}")
        db.migrate()
        db.dispose()
    finally:
        os.umask(old)
    for p in tmp_path.iterdir():
        assert mode(p) == 0o600, p


def test_agent_token_file_and_state_dir(tmp_path: Path) -> None:
    agent = AgentProc("modes", "kvm", ["br0"], tmp_path / "agent")
    (tmp_path / "agent" / "state").mkdir(parents=True)
    os.chmod(tmp_path / "agent" / "state", 0o755)
    agent.root.mkdir(parents=True, exist_ok=True)
    (agent.root / "token").write_text(agent.token + "\n")
    os.chmod(agent.root / "token", 0o644)
    agent.start()
    try:
        assert mode(agent.root / "token") == 0o600
        assert mode(agent.root / "state") == 0o711  # QEMU reaches the seeds inside by name, lists nothing
    finally:
        agent.stop()


def test_a_shared_directory_is_refused(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)
    with pytest.raises(NotPrivate, match="shared"):
        private_dir(shared)
