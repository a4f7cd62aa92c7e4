"""``corral simulate``: many simulated host agents in one process, for load tests of an engine.

Register with ``app.command("simulate")(simulate.simulate)``.
"""

from __future__ import annotations

import json
import secrets
from enum import StrEnum
from pathlib import Path

import typer

from corral.cli.common import fail


class SimOutput(StrEnum):
    TEXT = "text"
    JSON = "json"


def _listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        fail(f"--listen: expected HOST:PORT (PORT 0 picks a free port), got {value!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def _token(token: str | None, token_file: Path | None, seed: int) -> str:
    if token and token_file:
        fail("give --token or --token-file, not both")
    if token_file is not None:
        try:
            token = token_file.read_text().strip()
        except OSError as exc:
            fail(f"token file {token_file}: {exc.strerror}")
    if token is None:
        from corral.simulate.sim import derive_token

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
    output: SimOutput = typer.Option(SimOutput.TEXT, "--output", help="text: one line; json: {url, hosts, token}"),
) -> None:
    """Serve N simulated host agents (Xen and KVM) from one process, each speaking the agent API.

    Host n (1..N) is the agent at http://HOST:PORT/hosts/<n>: add it to an engine with that URL and the token.
    Every host takes the same bearer token: --token, --token-file, or one derived from --seed (printed on
    start). Each host starts with --vms-per-host VMs (about 85% running) whose CPU time grows and whose balloon
    moves; --event-rate times a second, somewhere, a running VM pauses (and resumes seconds later) or, one time
    in ten, crashes. VM create, plan, start, shutdown, destroy, reboot, pause, resume, delete, devices, memory
    and vCPUs answer and refuse as the agent does. The same --seed gives the same hosts, VMs and token.
    """
    import asyncio

    from corral.simulate.runner import base_url, bind, loop_factory, raise_fd_limit, serve
    from corral.simulate.sim import Simulator, SimulatorSettings

    address, port = _listen(listen)
    if seed is None:
        seed = secrets.randbelow(2**31)
    shared = _token(token, token_file, seed)
    sim = Simulator(SimulatorSettings(hosts=hosts, vms_per_host=vms_per_host, seed=seed, xen_ratio=xen_ratio,
                                      token=shared, event_rate=event_rate))
    raise_fd_limit()
    try:
        sock = bind(address, port)
    except OSError as exc:
        fail(f"--listen {listen}: {exc.strerror or exc}")
    url = base_url(sock)

    def announce() -> None:
        if output is SimOutput.JSON:
            typer.echo(json.dumps({"url": url, "hosts": list(sim.urls(url)), "token": shared}))
        else:
            xen = sum(1 for h in sim.hosts if h.profile.xen)
            secret = f"token from {token_file}" if token_file is not None else f"token {shared}"
            typer.echo(f"corral simulate: {hosts} agents ({xen} xen, {hosts - xen} kvm), {sim.vm_count()} VMs at "
                       f"{url}/hosts/<n> for n = 1..{hosts}; {secret}; seed {seed}")
        import sys

        sys.stdout.flush()

    try:
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            runner.run(serve(sim, sock, announce))
    except KeyboardInterrupt:
        pass
    finally:
        sock.close()
