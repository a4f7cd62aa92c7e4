"""Reports taken while a task worked on a VM are older than the task's answer (seen as a flaky
test_plan_placement_and_lifecycle): a poll read during a start, before the domain was (re)defined, was written
after the start had set the VM up and put it 'down, no longer on its host' with no host at all, so the
VM's delete undefined nothing on the host; a poll read during a pause, written after the resume, said
'paused'. The monitor's writer and a real database on SQLite and PostgreSQL, no agents needed."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from sqlalchemy import select

from corral.engine.agent_client import AgentClient
from corral.engine.api.clusters import default_cluster
from corral.engine.db.models import Host, Vm
from corral.engine.db.session import Database
from corral.engine.monitor import Monitor
from corral.engine.reconcile import HostReport, Row, compute
from corral.engine.tasks import TaskRunner
from tests.engine.conftest import Api


def _seed(db: Database, state: str, host: str | None) -> None:
    def seed(s: Any) -> None:
        c = default_cluster(s)
        s.add(Host(id="H", name="H", cluster_id=c.id, agent_url="http://H", state="up", cpu_flags=[], bridges=[],
                   info={}))
        s.flush()
        s.add(Vm(id="a", name="a", cluster_id=c.id, memory_mib=64, vcpus=1, state=state, host_id=host,
                 last_host_id=host))
    db.call(seed)


def _vm(db: Database) -> tuple[str, str | None, str | None]:
    return db.call(lambda s: tuple(s.execute(select(Vm.state, Vm.host_id, Vm.last_host_id)
                                             .where(Vm.id == "a")).one()))  # type: ignore[return-value]


async def _write(db: Database, runner: TaskRunner, reports: list[HostReport], release: list[str]) -> None:
    """Hand the monitor ``reports`` (taken now), then end the tasks on ``release``, then flush."""
    monitor = Monitor(db, AgentClient(), runner.busy_vms, released=runner.released)
    for r in reports:
        r.observed = time.monotonic()
        monitor.submit(r, wake=False)
    for vm_id in release:
        runner.released[vm_id] = time.monotonic()
        runner.busy_vms.discard(vm_id)
    await monitor.flush()


def test_a_poll_taken_during_a_start_does_not_undo_it(db_url: str) -> None:
    db = Database(db_url)
    db.migrate()
    try:
        _seed(db, "up", "H")  # as the start task's answer left it
        runner = TaskRunner(db, busy_vms={"a"})
        # read while the start redefined the domain: not in the list
        asyncio.run(_write(db, runner, [HostReport("H", [], True)], release=["a"]))
        assert _vm(db) == ("up", "H", "H")
        # a poll taken after the task ended says what is there
        asyncio.run(_write(db, runner, [HostReport("H", [], True)], release=[]))
        assert _vm(db) == ("down", None, None)
    finally:
        db.dispose()


def test_a_poll_taken_during_a_pause_does_not_undo_the_resume(db_url: str) -> None:
    db = Database(db_url)
    db.migrate()
    try:
        _seed(db, "up", "H")  # the resume's answer
        runner = TaskRunner(db, busy_vms={"a"})
        asyncio.run(_write(db, runner, [HostReport("H", [{"id": "a", "state": "paused"}], True)], release=["a"]))
        assert _vm(db) == ("up", "H", "H")
    finally:
        db.dispose()


def test_superseded_vms_are_neither_changed_nor_missing_others_are() -> None:
    rows = {"a": Row("a", "a", "up", "H", "H", False), "b": Row("b", "b", "up", "H", "H", False)}
    out = compute([HostReport("H", [], True, superseded=frozenset({"a"}))], rows, {"H": "c"}, set(), set())
    assert [(u["id"], u["state"]) for u in out.updates] == [("b", "down")]


def test_a_starting_vm_belongs_to_its_start_task() -> None:
    """The start is claimed (row 'starting') before its task holds the VM busy; a report written in between
    put it 'down' while the start went on (another start could then have been claimed)."""
    rows = {"a": Row("a", "a", "starting", None, "H", False)}
    out = compute([HostReport("H", [{"id": "a", "state": "down"}], True)], rows, {"H": "c"}, set(), set())
    assert out.updates == [] and rows["a"].state == "starting"


def test_monitor_forgets_task_ends_no_report_can_precede() -> None:
    runner = TaskRunner(Database("sqlite://"))
    monitor = Monitor(runner.db, AgentClient(), runner.busy_vms, released=runner.released)
    now = time.monotonic()
    runner.released.update(old=now - 3600, recent=now)
    report = HostReport("H", [], True, observed=now - 1)
    monitor._supersede([report])
    assert report.superseded == {"recent"} and set(runner.released) == {"recent"}
    runner.db.dispose()


def test_delete_refused_while_a_task_holds_the_vm(api: Api) -> None:
    """The delete used to skip the host and drop the row: the domain the task was defining stayed behind."""
    vm = api.post("/vms", {"name": "held", "memory_mib": 64}, status=201)
    tasks = api.client.app.state.corral.tasks  # type: ignore[attr-defined]
    tasks.busy_vms.add(vm["id"])  # as a running task does
    try:
        assert api.call("DELETE", f"/vms/{vm['id']}", 409)["code"] == "busy"  # type: ignore[index]
        assert api.get(f"/vms/{vm['id']}")["name"] == "held"
    finally:
        tasks.busy_vms.discard(vm["id"])
    api.call("DELETE", f"/vms/{vm['id']}", 204)
