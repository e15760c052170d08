"""Which user runs what (issue 12 item 2): the state dir and the WAL spool belong to the
PostgreSQL user, whoever runs first. Real PostgreSQL archiving as ``postgres`` through a real
archive_command, after root ran pgvault first; wal-push as ``postgres`` where it cannot create
its spool; `pgvault check` reporting a state dir postgres cannot write."""
from __future__ import annotations

import os
import pwd
import sys
from pathlib import Path


from pgvault import proc, sandbox
from tests.conftest import ROOT, World

PG_UID = pwd.getpwnam("postgres").pw_uid


def var_lib(workdir: Path) -> Path:
    """A stand-in for /var/lib: root's, 0755, so postgres can enter it but not create in it."""
    d = workdir / "varlib"
    d.mkdir(mode=0o755)
    os.chown(d, 0, 0)
    return d


def archiver_stats(inst) -> tuple[int, int]:
    out = inst.psql("SELECT archived_count, failed_count FROM pg_stat_archiver").split("|")
    return int(out[0]), int(out[1])


def push_as_postgres(policy: Path, inst) -> "proc.subprocess.CompletedProcess":
    """`pgvault wal-push` of a real segment, run as postgres exactly as archive_command runs it."""
    seg = sorted(p for p in (inst.pgdata / "pg_wal").iterdir() if len(p.name) == 24)[0]
    return proc.run([sys.executable, "-m", "pgvault", "--policy", str(policy), "wal-push", f"pg_wal/{seg.name}"],
                    user="postgres", cwd=inst.pgdata, extra_env={"PYTHONPATH": str(ROOT)}, check=False)


def test_root_runs_first_then_postgres_archives(workdir):
    """Before: root's tick created the state dir root-owned 0700; every archive_command failed
    with exit 70 (PermissionError) from then on and pg_wal filled."""
    policy = workdir / "policy.yaml"
    inst = sandbox.new_instance(workdir, "pg", start=False, settings={
        "archive_mode": "on", "archive_command": sandbox.pgvault_command(policy) + " wal-push %p"})
    w = World(workdir, inst)
    w.local_site("a")
    state = var_lib(workdir) / "pgvault" / "main"
    w.policy(wal={"sites": ["a"]}, state_dir=str(state))
    w.cli("tick")                                   # root, first: creates the state dir
    assert state.is_dir() and state.stat().st_uid == PG_UID
    assert state.parent.stat().st_uid == PG_UID     # what pgvault created, it gave to postgres
    inst.start()
    try:
        inst.psql("CREATE TABLE t (x int); INSERT INTO t VALUES (1); SELECT pg_switch_wal()")
        proc.wait_until(lambda: archiver_stats(inst)[0] >= 1 or archiver_stats(inst)[1] >= 1,
                        timeout=300, what="the archiver to try a segment")
        assert archiver_stats(inst)[1] == 0, inst.logfile.read_text()[-3000:]
        assert (state / "wal-spool").stat().st_uid == PG_UID
        w.cli("tick")                                 # root again: what it writes stays postgres's
        for p in state.rglob("*"):
            assert p.stat().st_uid == PG_UID, p
    finally:
        inst.stop("immediate")


def test_postgres_cannot_create_its_spool_gets_the_fix_not_a_bug(workdir):
    """Before: exit 70, PermissionError: '<...>/varlib/pgvault' (no state_dir: /var/lib/pgvault)."""
    inst = sandbox.new_instance(workdir, "pg")
    try:
        w = World(workdir, inst)
        w.local_site("a")
        state = var_lib(workdir) / "pgvault" / "main"
        policy = w.policy(wal={"sites": ["a"]}, state_dir=str(state))
        cp = push_as_postgres(policy, inst)
        err = cp.stderr.decode()
        assert cp.returncode == 3, err
        assert "internal error" not in err
        assert str(state / "wal-spool") in err and "postgres" in err
        fix = next(line for line in err.splitlines() if line.startswith("HINT: as root: "))
        proc.run(["sh", "-c", fix.removeprefix("HINT: as root: ")])    # the command it gives works
        cp = push_as_postgres(policy, inst)
        assert cp.returncode == 0, cp.stderr.decode()
    finally:
        inst.stop("immediate")


def test_check_reports_a_state_dir_postgres_cannot_write(workdir):
    """Before: `check` said nothing; wal-push as postgres then failed with exit 70."""
    inst = sandbox.new_instance(workdir, "pg")
    try:
        w = World(workdir, inst)
        w.local_site("a")
        state = workdir / "state"
        state.mkdir(mode=0o700)                       # root's, as an older pgvault left it
        policy = w.policy(wal={"sites": ["a"]}, state_dir=str(state))
        out = w.cli("check", check=False).stdout
        line = next((x for x in out.splitlines() if x.startswith("CRITICAL") and "state dir" in x), None)
        assert line and str(state) in line and "postgres" in line, out
        assert f"install -d -o postgres -g postgres -m 0700 {state}" in out
        cp = push_as_postgres(policy, inst)
        assert cp.returncode == 3, cp.stderr.decode()
        assert str(state) in cp.stderr.decode()
    finally:
        inst.stop("immediate")
