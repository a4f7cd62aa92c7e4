"""What both fuzz suites share: the Hypothesis settings, a loopback server for an ASGI app, the checks.

Schemathesis (4.x) generates requests from an OpenAPI document and sends them over HTTP to a real uvicorn on
the loopback (not in-process: schemathesis keeps an in-process app's lifespan running for the rest of the
pytest process, and the engine's monitor would outlive its test). The examples are bounded and derandomized:
the same requests on every run, so a CI failure reproduces locally with the same command.

The operations are walked here, one pytest subtest each, with schemathesis' documented strategy API
(``APIOperation.as_strategy`` under Hypothesis' ``@given``) rather than its pytest plugin: the plugin's lazy
schema (``schemathesis.pytest.from_fixture``, needed for a schema served by a fixture) writes pytest's private
``Item._nodeid``, which pytest 9.2 no longer has.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import pytest
import uvicorn
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import Case, GenerationMode, Response
from schemathesis.checks import not_a_server_error

from tests.agent.conftest import free_port

# Examples per operation unless a suite says otherwise: enough to cross the refusal paths of a handler; the
# whole directory stays under ~3 minutes on 2 CPUs (each suite prints its time). CORRAL_FUZZ_EXAMPLES=N runs N
# per operation everywhere, for a longer hunt by hand.
MAX_EXAMPLES = 15
OVERRIDE = int(os.environ.get("CORRAL_FUZZ_EXAMPLES", "0"))

FUZZ = settings(
    max_examples=MAX_EXAMPLES,
    derandomize=True,  # the same examples on every run
    database=None,  # no .hypothesis directory, nothing carried from one run to the next
    deadline=None,  # a request that starts a VM through a real agent may take a while
    phases=[Phase.explicit, Phase.generate, Phase.shrink],
    suppress_health_check=list(HealthCheck),
    print_blob=True,
)


@contextmanager
def serve(app: Any) -> Iterator[str]:
    """``app`` under uvicorn on a free loopback port in a thread of this process; yields its base URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           access_log=False, timeout_graceful_shutdown=1))
    thread = threading.Thread(target=server.run, name="uvicorn-fuzz", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


def call(case: Case, base_url: str, token: str) -> Response:
    """Send the case with the bearer token; fail on a 5xx (schemathesis' ``not_a_server_error``) and on a
    refusal that is not the API's JSON error (``code`` and ``message``): never a bare text or HTML page."""
    __tracebackhide__ = True
    response = case.call_and_validate(base_url=base_url, headers={"Authorization": f"Bearer {token}"},
                                      checks=[not_a_server_error], timeout=60)
    if response.status_code >= 400:
        try:
            body = response.json()
        except ValueError:
            raise AssertionError(f"{case.method} {case.formatted_path}: {response.status_code} without JSON: "
                                 f"{response.text[:200]!r}") from None
        assert isinstance(body, dict) and body.get("code") and body.get("message"), (
            case.method, case.formatted_path, response.status_code, body)
    return response


@contextmanager
def timed(request: pytest.FixtureRequest, what: str) -> Iterator[list[str]]:
    """Print how long a suite took on the terminal (``-q`` too), with the lines the suite adds to the list
    it is given, so the CI log shows its cost and coverage."""
    start = time.monotonic()
    lines: list[str] = []
    yield lines
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is None or capture is None:
        return
    with capture.global_and_fixture_disabled():  # else pytest keeps it for a failure's report
        reporter.write_line("")
        reporter.write_line(f"{what}: {time.monotonic() - start:.1f} s")
        for line in lines:
            reporter.write_line(f"  {line}")


def strategy(operation: Any, known: Mapping[str, list[str]]) -> st.SearchStrategy[Case]:
    """Valid and invalid requests (schemathesis' positive and negative modes) for ``operation``; each path
    parameter is generated or, as often as Hypothesis picks it, the name of a real object from ``known`` (so
    the handler gets past its 404 and does real work). DELETE keeps generated names: the seeded objects stay
    for the operations that come after it."""
    names = [p.name for p in operation.path_parameters]
    choices: list[list[str | None]] = [[None, *known.get(name, [])] for name in names]
    if operation.method.upper() == "DELETE":
        choices = [[None] for _ in names]
    strategies = []
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
        fixed = [{n: v for n, v in zip(names, combo, strict=True) if v is not None}
                 for combo in itertools.product(*choices)]
        strategies.append(st.sampled_from(fixed).flatmap(
            lambda pp, mode=mode: operation.as_strategy(mode, path_parameters=pp or None)))
    return st.one_of(strategies)


def fuzz(schema: Any, subtests: Any, send: Callable[[Case], Response], known: Mapping[str, list[str]],
         excluded: Mapping[str, str], max_examples: int = MAX_EXAMPLES) -> dict[str, Counter[int]]:
    """Send ``max_examples`` generated requests per operation of ``schema`` (one subtest each) to ``send``,
    which checks the answers; operations named in ``excluded`` (``"METHOD /path"`` -> why) are left out.
    Returns the status codes answered, per operation."""
    seen: dict[str, Counter[int]] = {}
    for result in schema.get_all_operations():
        operation = result.ok()
        label = f"{operation.method.upper()} {operation.path}"
        if label in excluded:
            continue

        seen[label] = Counter()
        with subtests.test(msg=label):
            run_operation(operation, known, send, seen[label], max_examples)
    return seen


def run_operation(operation: Any, known: Mapping[str, list[str]], send: Callable[[Case], Response],
                  statuses: Counter[int], max_examples: int) -> None:
    """One operation's examples under Hypothesis (shrunk to the smallest failing request on a failure)."""
    @settings(FUZZ, max_examples=OVERRIDE or max_examples)
    @given(case=strategy(operation, known))
    def one(case: Case) -> None:
        statuses[send(case).status_code] += 1

    one()


def summary(seen: Mapping[str, Counter[int]]) -> str:
    """How many operations ran, and which never had a 2xx answer (they only tested refusals)."""
    refused = sorted(label for label, counts in seen.items() if not any(200 <= c < 300 for c in counts))
    total = sum(sum(c.values()) for c in seen.values())
    return f"{len(seen)} operations, {total} requests; never 2xx: {len(refused)} ({', '.join(refused)})"
