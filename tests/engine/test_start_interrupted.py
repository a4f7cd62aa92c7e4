"""An engine stopped during a start (issue 14): the VM it left ``starting`` becomes ``unknown`` on the host that
start chose, not ``down`` (the agent may have started it; a down VM could be started elsewhere on the same disks).
A placement older than the start (another start's) does not count. Rows written as a start leaves them, then the
engine's start-up recovery (``TaskRunner.fail_orphans``) on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

from corral.engine.db.models import Cluster, Host, Task, TaskState, Vm, VmState, utcnow
from corral.engine.db.session import Database
from corral.engine.ids import new_id
from corral.engine.tasks import TaskRunner


def test_interrupted_start_is_unknown_on_its_chosen_host(db_url: str) -> None:
    db = Database(db_url)
    db.migrate()
    claimed = utcnow()
    ids = {"cluster": new_id(), "host": new_id(), "this": new_id(), "stale": new_id()}

    def rows(s):  # type: ignore[no-untyped-def]
        s.add(Cluster(id=ids["cluster"], name="c"))
        s.flush()
        s.add(Host(id=ids["host"], name="h", cluster_id=ids["cluster"], agent_url="http://127.0.0.1:9", state="up"))
        s.flush()
        for key, placed in (("this", claimed + timedelta(seconds=1)), ("stale", claimed - timedelta(days=1))):
            s.add(Vm(id=ids[key], name=key, cluster_id=ids["cluster"], state=VmState.STARTING.value,
                     state_changed_at=claimed, placement={"time": placed.isoformat(), "host_id": ids["host"]}))
            s.add(Task(id=new_id(), kind="vm_start", state=TaskState.RUNNING.value, object_type="vm",
                       object_id=ids[key]))
    try:
        db.call(rows)
        assert TaskRunner(db).fail_orphans() == 2
        this = db.call(lambda s: s.get(Vm, ids["this"]))
        stale = db.call(lambda s: s.get(Vm, ids["stale"]))
        assert (this.state, this.host_id) == ("unknown", ids["host"])
        assert (stale.state, stale.host_id) == ("down", None)
    finally:
        db.dispose()
