"""Running the simulator: one listening socket, one uvicorn server, the random disturbances beside it."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable

from corral.simulate.app import create_simulator_app
from corral.simulate.fleet import Simulator

BACKLOG = 4096
KEEP_ALIVE = 75


def raise_fd_limit() -> tuple[int, int]:
    """Every engine connection (a poll and an event stream per host) is a descriptor: allow as many as we may."""
    try:
        import resource
    except ImportError:  # not on this platform
        return (0, 0)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = 1 << 20 if hard == resource.RLIM_INFINITY else hard
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
    return soft, hard


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop when it is installed (as uvicorn picks it for the engine): a cheaper simulator
    leaves more of a shared machine to the engine under test."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def bind(host: str, port: int) -> socket.socket:
    """A listening socket (port 0: any free port), ready before the line that announces it is printed."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(BACKLOG)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


def base_url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    if host in ("0.0.0.0", "::"):
        shown = socket.gethostname()
    return f"http://{shown}:{port}"


async def serve(sim: Simulator, sock: socket.socket, on_ready: Callable[[], None] | None = None) -> None:
    """Serve until the server is told to stop (SIGINT/SIGTERM)."""
    import uvicorn

    # event streams never end by themselves: on SIGINT/SIGTERM, give open requests a moment, then close
    # keep idle connections longer than an engine does (60 s), so a poll never meets a connection being closed
    config = uvicorn.Config(create_simulator_app(sim), log_level="warning", access_log=False, lifespan="off",
                            backlog=BACKLOG, timeout_graceful_shutdown=2, timeout_keep_alive=KEEP_ALIVE)
    server = uvicorn.Server(config)
    disturbances = asyncio.create_task(sim.run_disturbances(), name="simulate-disturbances")
    if on_ready is not None:
        on_ready()
    try:
        await server.serve(sockets=[sock])
    finally:
        disturbances.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await disturbances
