"""The start-up budget of the two commands that run most often: `pgvault wal-push` (once per WAL
segment, PostgreSQL waits on it) and an idle `pgvault tick` (every minute). Each must import
only what its job needs; the heavy libraries are imported lazily by the code that uses them.
Measured with the interpreter's own ``-X importtime`` on the real commands."""
from __future__ import annotations

import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone

from pgvault import sandbox
from tests.conftest import ROOT, World

HEAVY = {"boto3", "botocore", "pydantic", "psycopg", "rich", "croniter", "zstandard", "lz4"}


def imported(importtime_stderr: str) -> set[str]:
    """Module names from `python -X importtime` output ('import time: self | cumulative | name')."""
    out = set()
    for line in importtime_stderr.splitlines():
        if line.startswith("import time:") and line.count("|") == 2:
            name = line.rsplit("|", 1)[1].strip()
            if name != "imported package":
                out.add(name)
    return out


def heavy(mods: set[str]) -> set[str]:
    return {m for m in mods if m.split(".")[0] in HEAVY}


def test_idle_tick_imports_no_heavy_library_and_not_the_engine(workdir, pg):
    w = World(workdir, pg)
    w.local_site("l")
    w.jobs["nightly"] = {"method": "logical", "schedule": "0 2 * * *", "sites": ["l"]}
    w.policy(state_dir=str(sandbox.owned_dir(workdir / "state")))
    now = datetime(2026, 11, 16, 3, 0, tzinfo=timezone.utc)
    env = {"PGVAULT_NOW": now.isoformat()}
    w.cli("tick", env=env)                            # a full tick: writes the note an idle one reads
    env["PGVAULT_NOW"] = (now + timedelta(minutes=1)).isoformat()
    cp = subprocess.run([sys.executable, "-X", "importtime", "-m", "pgvault", "tick"], capture_output=True,
                        text=True, timeout=300, env=dict(os.environ, PGVAULT_POLICY=str(w.workdir / "policy.yaml"),
                                                         PYTHONPATH=str(ROOT), **env))
    assert cp.returncode == 0, cp.stdout + cp.stderr
    mods = imported(cp.stderr)
    assert "pgvault.tick.note" in mods                 # the idle path was taken ...
    assert "pgvault.tick.engine" not in mods           # ... and the full tick was not
    assert heavy(mods) == set()


def test_wal_push_to_a_local_site_imports_no_heavy_library(workdir):
    policy = workdir / "policy.yaml"
    log = sandbox.owned_dir(workdir / "logs") / "importtime.log"  # written by postgres
    command = (f"{sandbox.pgvault_command(policy).replace(sys.executable, sys.executable + ' -X importtime')} "
               f"wal-push %p 2>>{log}")
    inst = sandbox.new_instance(workdir, "pg", start=False, settings={"archive_mode": "on",
                                                                      "archive_command": command})
    w = World(workdir, inst)
    w.local_site("a")
    w.policy(wal={"sites": ["a"]}, state_dir=str(sandbox.owned_dir(workdir / "state")))
    inst.start()
    try:
        inst.psql("CREATE TABLE t (x int); INSERT INTO t VALUES (1); SELECT pg_switch_wal()")
        status = inst.pgdata / "pg_wal" / "archive_status"
        sandbox.wait_until(lambda: any(f.endswith(".done") for f in os.listdir(status)), 120, "a segment archived")
    finally:
        inst.stop("fast")
    mods = imported(log.read_text())
    assert "pgvault.wal.push" in mods
    # The policy is validated on every push (pydantic): a mistyped policy is refused, never half
    # applied. Nothing else heavy: no S3 client for a local-only policy, no SQL, no scheduler.
    assert {m.split(".")[0] for m in heavy(mods)} == {"pydantic"}


def test_the_budget_check_sees_a_heavy_import():
    sample = ("import time: self [us] | cumulative | imported package\n"
              "import time:       120 |        120 |   botocore.compat\n"
              "import time:        80 |         80 | pgvault.wal.push\n")
    assert imported(sample) == {"botocore.compat", "pgvault.wal.push"}
    assert heavy(imported(sample)) == {"botocore.compat"}
