"""The engine's long-lived parts, built once by ``create_app`` and reached by handlers via ``app.state``."""

from __future__ import annotations

from dataclasses import dataclass, field

from corral.engine.agent_client import AgentClient
from corral.engine.auth import TokenChecker
from corral.engine.db.session import Database
from corral.engine.monitor import Monitor
from corral.engine.pki import EnginePki
from corral.engine.scheduler import Scheduler
from corral.engine.tasks import TaskRunner


@dataclass
class EngineContext:
    db: Database
    agents: AgentClient
    tasks: TaskRunner
    monitor: Monitor
    scheduler: Scheduler
    tokens: TokenChecker
    auth: bool = True
    # the engine's CA and keys (None without a data directory: no deploy over SSH) and the hosts being deployed
    pki: EnginePki | None = None
    deploying: set[str] = field(default_factory=set)
    # ``corral engine serve --insecure``: plain-HTTP agent URLs off the loopback are accepted (transport.py)
    insecure: bool = False
