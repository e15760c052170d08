"""method: standby end to end, on one scene: a real PostgreSQL 15 primary archiving through
wal-push (site a, a Barman base for the PITR fallback) and a real delayed standby built by
`pgvault standby create` (recovery_min_apply_delay 15s, its own slot). Damage is undone through
the standby before it applies it (TRUNCATE, DROP TABLE; rows compared), the fallback to the PITR
route is taken once it has applied it, a canary drill runs through it, and status/check judge it
paused, and against a promise it does not keep. Every wait polls a condition."""
from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest
import yaml

from pgvault import pg, sandbox
from pgvault.lsn import parse_lsn
from tests.conftest import ROOT, World

DELAY = "15s"   # long enough for a find + pause (a second or two, more under load) to beat it


def archived_all(inst) -> bool:
    status = inst.pgdata / "pg_wal" / "archive_status"
    return not [f for f in os.listdir(status) if f.endswith(".ready")]


@pytest.fixture(scope="module")
def scene():
    d = sandbox.workdir("pgvault-standby-")
    policy = d / "policy.yaml"
    inst = sandbox.new_instance(d, "pg", start=False, settings={
        "archive_mode": "on", "archive_command": sandbox.pgvault_command(policy) + " wal-push %p"})
    w = World(d, inst)
    w.local_site("a")
    sock = sandbox.owned_dir(d / "sb-sock", 0o755)
    sb = f"host={sock} port={pg.free_port()} user=postgres"
    w.jobs["undo"] = {"method": "standby", "conninfo": sb, "delay": DELAY, "pgdata": str(d / "sb")}
    # The same standby against a promise it cannot keep: status must say so.
    w.jobs["undo_1h"] = {"method": "standby", "conninfo": sb, "delay": "1h"}
    (d / "drills").mkdir()
    (d / "drills" / "canary.yaml").write_text(yaml.safe_dump(
        {"source": {"job": "undo", "site": "a"}, "target": "canary", "canary_rows": 777,
         "checks": [{"sql": "SELECT true"}]}))
    w.policy(wal={"sites": ["a"]}, state_dir=str(sandbox.owned_dir(d / "state")), drills=["drills/*.yaml"])
    inst.start()
    inst.psql("CREATE DATABASE app")
    inst.psql("CREATE TABLE orders (id int PRIMARY KEY, note text); "
              "INSERT INTO orders SELECT g, md5(g::text) FROM generate_series(1, 1000) g; "
              "CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL); CREATE INDEX ON items (name); "
              "INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, 500) g; "
              "CREATE TABLE late (id int PRIMARY KEY); INSERT INTO late SELECT generate_series(1, 300); "
              "CREATE TABLE kept (id int PRIMARY KEY); INSERT INTO kept SELECT generate_series(1, 200)", dbname="app")
    out = w.cli("standby", "create", "undo").stdout
    assert "never promoted" in out and "slot pgvault_undo" in out
    w.cli("relations")
    # The fallback's damage is done first, so that its delay passes while the other tests run.
    inst.psql("TRUNCATE late", dbname="app")
    w.late_lsn = inst.psql("SELECT pg_current_wal_lsn()").strip()
    w.sb = pg.Instance(d / "sb", int(sb.rsplit("port=", 1)[1].split()[0]), socket_dir=sock)
    w.primary = inst.conninfo().replace(" dbname=postgres", "")
    yield w
    for pidfile in d.glob("*/postmaster.pid"):
        pg.Instance(pidfile.parent, 0).stop("immediate")
    shutil.rmtree(d, ignore_errors=True)


def standby_state(w) -> tuple:
    return tuple(w.sb.psql("SELECT pg_is_in_recovery(), pg_get_wal_replay_pause_state(), "
                           "current_setting('recovery_min_apply_delay'), current_setting('archive_mode')").strip().split("|"))


def rows(w, table: str) -> str:
    return w.pg.psql(f"SELECT count(*), md5(string_agg(t::text, ',' ORDER BY t)) FROM {table} t", dbname="app").strip()


def items(doc: dict) -> dict:
    return {i["name"]: i for i in doc["standbys"]}


def test_status_and_check_watch_the_standby(scene):
    w = scene
    assert standby_state(w) == ("t", "not paused", "15s", "off")
    doc = json.loads(w.cli("status", "--json", check=False).stdout)
    s = items(doc)
    assert s["undo"]["state"] == "OK", s["undo"]["message"]
    assert s["undo_1h"]["state"] == "CRITICAL"
    assert "recovery_min_apply_delay 15s is below the promised 1h" in s["undo_1h"]["message"]
    # No backup-age item for a standby (it keeps no copy at a site).
    assert doc["jobs"] == []
    # Paused replay is CRITICAL: the standby no longer follows the primary.
    w.sb.psql("SELECT pg_wal_replay_pause()")
    try:
        cp = w.cli("check", check=False)
        assert cp.returncode == 2
        line = next(x for x in cp.stdout.splitlines() if x.startswith("CRITICAL standby undo:"))
        # "pause requested" while it waits out the delay of a commit (the TRUNCATE of set-up), else "paused"
        assert "replay pause" in line and "it no longer follows the primary" in line
        # Its undo window shows in pgvault windows, paused too.
        win = json.loads(w.cli("windows", "--json", check=False).stdout)["standbys"]
        assert win["undo"]["paused"] is True and win["undo"]["to_lsn"]
    finally:
        # What an operator runs after an undo that could not revert (pgvault killed, say).
        assert "replaying again, delayed 15s, not paused" in w.cli("standby", "resume", "undo").stdout


def undo(w, table: str, *extra) -> dict:
    cp = w.cli("restore", "--before-truncate", table, "--database-name", "app", "--via-standby", "undo",
               "--copy-back-to", w.primary, "--json", *extra)
    return json.loads(cp.stdout)


def test_truncate_is_undone_through_the_standby(scene):
    w = scene
    expected = rows(w, "orders")
    xid = int(w.pg.psql("BEGIN; SELECT txid_current(); TRUNCATE orders; COMMIT;", dbname="app").split()[0])
    w.pg.psql("INSERT INTO orders VALUES (5000, 'after the accident')", dbname="app")
    doc = undo(w, "public.orders")
    assert (doc["route"], doc["kind"], doc["xid"], doc["copied_back"]) == ("standby", "TRUNCATE", xid, True)
    # It stopped before the transaction's first record (its lock), before the commit.
    assert parse_lsn(doc["paused_at_lsn"]) <= parse_lsn(doc["stop_lsn"]) < parse_lsn(doc["commit_lsn"])
    assert doc["rto_seconds"] > 0 and set(doc["timings"]) >= {"find", "pause", "to_target", "copy_back", "revert"}
    assert doc["reverted"]["ok"] is True and doc["reverted"]["restarted"] is True
    assert w.pg.psql("SELECT count(*), md5(string_agg(t::text, ',' ORDER BY t)) FROM orders t WHERE id <> 5000",
                     dbname="app").strip() == expected
    assert w.pg.psql("SELECT note FROM orders WHERE id = 5000", dbname="app").strip() == "after the accident"
    # Never promoted, delayed again, not archiving, still on timeline 1.
    assert standby_state(w) == ("t", "not paused", "15s", "off")
    assert w.sb.psql("SELECT timeline_id FROM pg_control_checkpoint()").strip() == "1"


def test_drop_table_is_undone_through_the_standby(scene):
    w = scene
    expected = rows(w, "items")
    w.pg.psql("DROP TABLE items", dbname="app")
    doc = undo(w, "public.items")
    assert (doc["kind"], doc["copied_back"], doc["reverted"]["ok"]) == ("DROP TABLE", True, True)
    assert rows(w, "items") == expected
    # The whole table came back: definition and index too.
    assert w.pg.psql("SELECT count(*) FROM pg_indexes WHERE tablename = 'items'", dbname="app").strip() == "2"
    assert standby_state(w)[:2] == ("t", "not paused")


def test_ctrl_c_during_the_copy_still_gives_the_standby_its_delay_back(scene):
    import signal
    import sys

    w = scene
    w.pg.psql("TRUNCATE kept", dbname="app")
    # Production's table is locked by someone else: the copy back waits on it, deterministically.
    blocker = pg.connect(w.pg.conninfo("app"), autocommit=False)
    try:
        pg.query(blocker, "LOCK TABLE kept IN ACCESS EXCLUSIVE MODE")
        env = dict(os.environ, PGVAULT_POLICY=str(w.workdir / "policy.yaml"), PYTHONPATH=str(ROOT))
        run = subprocess.Popen([sys.executable, "-m", "pgvault", "restore", "--before-truncate", "public.kept",
                                "--database-name", "app", "--via-standby", "undo", "--copy-back-to", w.primary],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        try:
            sandbox.wait_until(lambda: w.pg.psql("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                                                 "AND query LIKE 'COPY%kept%'").strip() == "1", 60,
                               "the copy back to wait on the lock", interval=0.1)
            assert standby_state(w)[1] == "paused"          # at the target, before the TRUNCATE
            run.send_signal(signal.SIGINT)
            _, err = run.communicate(timeout=120)
        finally:
            if run.poll() is None:
                run.kill()
        assert run.returncode == 130, err   # the CLI root: "aborted" / "interrupted"
    finally:
        blocker.rollback()
        blocker.close()
    # Its own configuration is back: replaying, unpaused, delayed; nothing was copied.
    assert standby_state(w) == ("t", "not paused", "15s", "off")
    assert w.pg.psql("SELECT count(*) FROM kept", dbname="app").strip() == "0"


def test_canary_drill_through_the_standby(scene):
    w = scene
    cp = w.cli("drill", "run", "canary", "--json", check=False)
    assert cp.returncode == 0, cp.stdout + cp.stderr
    evidence = list((w.workdir / "site-a").rglob("drills/*.json"))
    assert evidence
    doc = json.loads(sorted(evidence)[-1].read_text())
    assert doc["outcome"] in ("passed", "ok", "success", "succeeded"), doc
    assert "777" in json.dumps(doc)
    assert standby_state(w)[:2] == ("t", "not paused")
    # The canary is gone from production.
    assert w.pg.psql("SELECT count(*) FROM pg_namespace WHERE nspname = 'pgvault_drill'").strip() == "0"


def test_fallback_to_pitr_once_the_standby_applied_the_damage(scene):
    w = scene
    # The delay has passed: the standby has applied the TRUNCATE done at set-up (polled, not slept).
    sandbox.wait_until(lambda: parse_lsn(w.sb.psql("SELECT pg_last_wal_replay_lsn()").strip()) >= parse_lsn(w.late_lsn),
                       60, "the standby to apply the TRUNCATE", interval=0.2)
    w.pg.psql("SELECT pg_switch_wal()")
    sandbox.wait_until(lambda: archived_all(w.pg), 60, "WAL to reach the site")
    # Without a directory for the PITR route it says what it needs (exit 1), and changes nothing.
    cp = w.cli("restore", "--before-truncate", "public.late", "--database-name", "app", "--via-standby", "undo",
               "--copy-back-to", w.primary, check=False)
    assert "has already replayed the damage" in cp.stderr and "falling back to the PITR route" in cp.stderr
    assert cp.returncode == 1 and "--target-dir" in cp.stderr
    # With one, the PITR route is taken: here it has no base backup to restore from (the scene
    # keeps none: a base costs this suite 20 s; test_find_restore.py runs that route whole).
    side = w.workdir / "side"
    cp = w.cli("restore", "--before-truncate", "public.late", "--database-name", "app", "--via-standby", "undo",
               "--copy-back-to", w.primary, "--target-dir", str(side), check=False)
    assert "falling back to the PITR route" in cp.stderr
    assert "damaging transaction: TRUNCATE of public.late" in cp.stderr      # the PITR route's finder
    assert "base" in cp.stderr.lower() and cp.returncode != 0
    # The standby was only paused and resumed, never restarted.
    assert standby_state(w)[:2] == ("t", "not paused")


def test_a_standby_job_is_refused_by_backup_and_strictly_checked(scene):
    w = scene
    cp = w.cli("backup", "undo", check=False)
    assert cp.returncode == 2 and "there is no backup to take" in cp.stderr
    bad = yaml.safe_load((w.workdir / "policy.yaml").read_text())
    bad["jobs"]["undo"].update(schedule="* * * * *", delay="0s", sites=["a"], slot="Bad-Name")
    path = w.workdir / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    cp = w.cli("--policy", str(path), "check", check=False)
    assert cp.returncode == 2 and "Traceback" not in cp.stderr
    for where in ("jobs.undo.schedule", "jobs.undo.delay", "jobs.undo.sites", "jobs.undo.slot"):
        assert where in cp.stderr, cp.stderr
