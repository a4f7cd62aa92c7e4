"""CORRAL_REQUIRE_LABS=1 turns a missing lab or PostgreSQL into a failure; without it, a skip with the reason.

And no test hides a lab, its agent or PostgreSQL behind a plain ``pytest.skip`` (issue 15).
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests import require

TESTS = Path(__file__).resolve().parents[1]
REPO = TESTS.parent


def test_unavailable_skips_with_the_reason_when_not_required(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(require.ENV, raising=False)
    with pytest.raises(pytest.skip.Exception, match="Xen lab unavailable: no root"):
        require.unavailable("Xen lab unavailable: no root")


def test_unavailable_fails_with_the_reason_when_required(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(require.ENV, "1")
    with pytest.raises(pytest.fail.Exception, match=r"PostgreSQL is not installed.*CORRAL_REQUIRE_LABS=1"):
        require.unavailable("PostgreSQL is not installed (no initdb)")


def test_degraded_fails_when_required_and_warns_otherwise(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(require.ENV, "1")
    with pytest.raises(pytest.fail.Exception, match="SQLite only"):
        require.degraded("SQLite only")
    monkeypatch.setenv(require.ENV, "0")
    with pytest.warns(UserWarning, match="SQLite only"):
        require.degraded("SQLite only")


def test_a_required_xen_lab_that_is_not_there_fails_the_test(tmp_path: Path) -> None:
    """End to end through pytest: a lab-using test with the lab disabled is failed, not skipped, in CI mode."""
    test = tmp_path / "test_needs_lab.py"
    test.write_text(textwrap.dedent("""
        from tests.require import unavailable
        from tests.xenlab import lab_unavailable_reason, xen_lab

        def test_lab():
            lab = xen_lab()
            if lab is None:
                unavailable(f"Xen lab unavailable: {lab_unavailable_reason()}")
    """))
    outcomes = {}
    for required in ("0", "1"):
        env = {"CORRAL_XENLAB": "0", require.ENV: required, "PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)}
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-o",
                               "addopts=", "--rootdir", str(tmp_path), str(test)],
                              capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300, check=False)
        outcomes[required] = proc
    assert outcomes["0"].returncode == 0, outcomes["0"].stdout
    assert "1 skipped" in outcomes["0"].stdout and "disabled by CORRAL_XENLAB=0" in outcomes["0"].stdout
    assert outcomes["1"].returncode == 1, outcomes["1"].stdout
    assert "1 failed" in outcomes["1"].stdout and "disabled by CORRAL_XENLAB=0" in outcomes["1"].stdout


# a pytest.skip(...) whose reason names a lab, its agent, a bridge for it or PostgreSQL
HIDING = re.compile(r"pytest\.skip\([^)]*(lab|PostgreSQL|initdb|SSH host|VNC server|bridge)", re.I | re.S)


def test_no_plain_skip_hides_a_lab_or_postgresql() -> None:
    offenders = []
    for path in sorted(TESTS.rglob("*.py")):
        if path.name == "test_require.py":
            continue
        text = path.read_text()
        for match in HIDING.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            offenders.append(f"{path.relative_to(REPO)}:{line}: {match.group(0)[:80]}")
    assert not offenders, "use tests.require.unavailable() instead:\n" + "\n".join(offenders)
