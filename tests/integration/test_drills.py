"""Restore drills over real backups on real PostgreSQL: passing drills, drills that must fail
(and do, with a useful JUnit message), evidence at the sites, and scratch instances that are
always gone afterwards — also after a failure or a SIGTERM."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

from pgvault import sandbox

from .test_logical import load_data

ROOT = Path(__file__).resolve().parents[2]


def write_drill(world, name: str, doc: dict) -> None:
    d = world.workdir / "drills"
    d.mkdir(exist_ok=True)
    (d / f"{name}.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))


def drill_world(world):
    load_data(world.pg, rows=2000)
    world.local_site("a")
    world.local_site("b")
    world.jobs["nightly"] = {"method": "logical", "sites": ["a", "b"]}
    world.extra["drills"] = ["drills/*.yaml"]
    world.policy()
    return world


def backup(world, job="nightly") -> str:
    return world.cli("backup", job).stdout.strip().splitlines()[-1]


def scratch_dir(world) -> Path:
    return world.workdir / "scratch"


def postmasters_under(path: Path) -> list[int]:
    """PIDs of processes whose command line mentions ``path`` (a postmaster left behind)."""
    found = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if str(path) in (p / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                    found.append(int(p.name))
            except OSError:
                continue
    return found


def assert_scratch_gone(world) -> None:
    root = scratch_dir(world)
    assert not root.exists() or list(root.iterdir()) == [], f"scratch left behind: {list(root.iterdir())}"
    assert postmasters_under(root) == []


def run_drills(world, *names, check=False):
    report = world.workdir / "report"
    cp = world.cli("drill", "run", *names, "--report-dir", str(report), "--scratch-dir", str(scratch_dir(world)),
                   check=check)
    cases = {}
    if (report / "junit.xml").exists():
        for case in ET.parse(report / "junit.xml").getroot().iter("testcase"):
            failure = case.find("failure")
            cases[case.get("name")] = None if failure is None else (failure.get("message"), failure.text)
    doc = json.loads((report / "report.json").read_text()) if (report / "report.json").exists() else None
    return cp, cases, doc


def test_logical_drill_passes_at_each_site_and_leaves_evidence(world):
    w = drill_world(world)
    bid = backup(w)
    write_drill(w, "nightly-logical", {
        "source": {"job": "nightly", "site": "each"}, "target": "latest", "rto": "10m",
        "checks": [{"amcheck": True}, {"read_all": True}, {"row_counts": True},
                   {"sql": "SELECT count(*) FROM orders", "database": "app", "expect": 2000, "name": "orders"},
                   {"sql": 'SELECT x FROM "Odd Name" ORDER BY x', "database": "app", "expect_rows": [[1], [2], [3]]}]})
    cp, cases, doc = run_drills(w)
    assert cp.returncode == 0, cp.stdout + cp.stderr
    assert cases == {"nightly-logical @ a": None, "nightly-logical @ b": None}
    for r in doc["results"]:
        assert r["outcome"] == "passed" and r["backup_id"] == bid
        assert {c["kind"]: c["status"] for c in r["checks"]} == {
            "amcheck": "passed", "read_all": "passed", "row_counts": "passed", "sql": "passed"}
        amcheck = next(c for c in r["checks"] if c["kind"] == "amcheck")
        assert "B-tree index(es)" in amcheck["detail"] and not amcheck["detail"].startswith("amcheck: 0 ")
        assert r["rto_seconds"] > 0 and r["rto_budget_seconds"] == 600
        assert r["teardown"]["ok"] is True
    assert "PASS" in (w.workdir / "report" / "report.md").read_text()
    page = (w.workdir / "report" / "report.html").read_text()     # beside junit.xml, with the new evidence
    assert page.count("<td>nightly-logical</td>") == 2 and "<svg" in page     # the drills table, one row per site
    assert_scratch_gone(w)

    # Evidence is kept at each site, and `list --drills` reads it back from the sites.
    for site in ("a", "b"):
        stored = list((w.workdir / f"site-{site}" / "clusters/main/drills").glob("*.json"))
        assert len(stored) == 1 and json.loads(stored[0].read_text())["site"] == site
    listed = json.loads(w.cli("list", "--drills", "--json").stdout)
    assert sorted((d["site"], d["drill"], d["outcome"]) for d in listed) == [
        ("a", "nightly-logical", "passed"), ("b", "nightly-logical", "passed")]
    assert "nightly-logical" in w.cli("list", "--drills").stdout


def test_drills_that_must_fail_do_with_useful_junit_messages(world):
    w = drill_world(world)
    bid = backup(w)
    # A flipped byte in site a's copy of the app dump.
    dump = w.workdir / "site-a" / "clusters/main/backups" / bid / "databases" / "app.dump.zst"
    data = bytearray(dump.read_bytes())
    data[len(data) // 2] ^= 0x40
    dump.write_bytes(bytes(data))
    write_drill(w, "corrupt", {"source": {"job": "nightly", "site": "each"}, "checks": [{"row_counts": True}]})
    write_drill(w, "wrong-count", {"source": {"job": "nightly", "site": "b"},
                                   "checks": [{"sql": "SELECT count(*) FROM orders", "database": "app", "expect": 1999}]})
    write_drill(w, "no-time", {"source": {"job": "nightly", "site": "b"}, "rto": "0s", "checks": [{"row_counts": True}]})
    cp, cases, doc = run_drills(w)
    assert cp.returncode == 1
    assert set(cases) == {"corrupt @ a", "corrupt @ b", "wrong-count @ b", "no-time @ b"}
    # Site a's copy is damaged: its drill fails (no silent fallback to site b); b's passes.
    msg, text = cases["corrupt @ a"]
    assert "restore failed" in msg and "damaged" in msg and "databases/app.dump.zst" in msg
    assert cases["corrupt @ b"] is None
    msg, text = cases["wrong-count @ b"]
    assert "expected 1999, got 2000" in msg and "[FAILED]" in text
    msg, _ = cases["no-time @ b"]
    assert "exceeds the budget of 0s" in msg
    assert [r["outcome"] for r in doc["results"]] == ["failed", "passed", "failed", "failed"]
    assert all(r["teardown"]["ok"] for r in doc["results"])
    assert_scratch_gone(w)
    assert "FAIL  corrupt @ a" in cp.stdout


def test_sigterm_mid_drill_tears_the_scratch_instance_down(world):
    w = drill_world(world)
    backup(w)
    # A check that keeps the restored instance busy, so the signal lands while it runs.
    write_drill(w, "slow", {"source": {"job": "nightly", "site": "a"},
                            "checks": [{"sql": "SELECT pg_sleep(120) IS NOT NULL", "database": "app"}]})
    report = w.workdir / "report"
    env = dict(os.environ, PGVAULT_POLICY=str(w.workdir / "policy.yaml"), PYTHONPATH=str(ROOT))
    p = subprocess.Popen([sys.executable, "-m", "pgvault", "drill", "run", "--report-dir", str(report),
                          "--scratch-dir", str(scratch_dir(w))], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        sandbox.wait_until(lambda: _scratch_query_running(w), 120, "the drill's slow check to start", interval=0.2)
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 130, out + err
    assert_scratch_gone(w)
    doc = json.loads((report / "report.json").read_text())
    assert doc["interrupted"] is True
    assert "interrupted" in doc["results"][0]["failure"] and doc["results"][0]["teardown"]["ok"]


def sandbox_instance_stub(workdir):
    """An Instance that is never started (for tests that must not need a server)."""
    from pgvault import pg

    return pg.Instance(workdir / "never-started", 1)


def _scratch_query_running(w) -> bool:
    """True while some scratch instance runs the pg_sleep check (seen through its socket dir)."""
    from pgvault import pg

    root = scratch_dir(w)
    if not root.exists():
        return False
    for sock in root.glob("*/sock/.s.PGSQL.*"):
        port = sock.name.rsplit(".", 1)[-1]
        try:
            with pg.connect(f"host={sock.parent} port={port} user=postgres dbname=postgres") as c:
                if pg.scalar(c, "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep%'"):
                    return True
        except Exception:
            continue
    return False


def test_invalid_drill_files_list_every_problem_and_exit_2(workdir):
    """Validation needs no server: the policy's cluster is never contacted."""
    from tests.conftest import World

    w = World(workdir, sandbox_instance_stub(workdir))
    w.local_site("a")
    w.local_site("b")
    w.jobs["nightly"] = {"method": "logical", "sites": ["a", "b"]}
    w.extra["drills"] = ["drills/*.yaml"]
    w.policy()
    write_drill(w, "bad", {"source": {"job": "nope", "site": "zz"}, "target": "yesterday", "rto": "soon",
                           "checks": [{"sql": "SELECT 1", "databse": "app"}, {"amcheck": True, "read_all": True}],
                           "colour": "blue"})
    write_drill(w, "bad2", {"source": {"job": "nightly"}, "target": "canary"})
    cp = w.cli("drill", "run", check=False)
    assert cp.returncode == 2, cp.stderr
    assert "Traceback" not in cp.stderr
    for fragment in ("drills/bad.yaml: source.job: job 'nope' does not exist",
                     "drills/bad.yaml: source.site: site 'zz' does not exist",
                     "drills/bad.yaml: target: unknown target 'yesterday'",
                     "drills/bad.yaml: rto: not a duration: 'soon'",
                     "drills/bad.yaml: checks[0].databse: unknown key",
                     "drills/bad.yaml: checks[1]: each check needs exactly one of",
                     "drills/bad.yaml: colour: unknown key",
                     "drills/bad2.yaml: target: target 'canary' needs point-in-time recovery"):
        assert fragment in cp.stderr, f"{fragment!r} not in:\n{cp.stderr}"
    assert "HINT" in cp.stderr


# -- the canary, production side ------------------------------------------------------------

def relations_outside_canary(inst) -> set:
    rows = inst.psql("SELECT n.nspname || '.' || c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                     "WHERE n.nspname NOT IN ('pg_drill_none', 'pgvault_drill') AND n.nspname NOT LIKE 'pg_toast%' "
                     "AND n.nspname NOT LIKE 'pg_temp%'")
    return set(rows.split())


@pytest.fixture
def archiving_pg(workdir):
    archive = sandbox.owned_dir(workdir / "archive")
    inst = sandbox.new_instance(workdir, "prod", settings={
        "archive_mode": "on", "archive_command": f"cp %p {archive}/%f"})
    yield inst, archive
    inst.stop("immediate")


def test_canary_truncates_only_its_own_table_and_stock_pitr_brings_it_back(archiving_pg, workdir):
    """Plant the canary, then recover a base backup to its noted position with stock PostgreSQL
    recovery: all K rows are back. Only the pgvault_drill schema was ever written."""
    from pgvault import pg, proc
    from pgvault.drills import canary as canary_mod
    from pgvault.drills.checks import CheckContext, run_canary
    from pgvault.drills.scratch import Scratch, wait_promoted

    prod, archive = archiving_pg
    prod.psql("CREATE TABLE keep (x int); INSERT INTO keep VALUES (1)")
    before = relations_outside_canary(prod)
    scratch = Scratch("canary-test", root=workdir / "scratch")
    try:
        base = sandbox.owned_dir(scratch.dir / "pgdata")
        proc.run([pg.tool("pg_basebackup"), "-D", str(base), "-d", prod.conninfo(), "-X", "stream", "--no-sync"],
                 user="postgres")
        c = canary_mod.plant(prod.conninfo(), 500, archive_timeout=60)
        assert c.rows == 500 and c.truncate_xid > c.insert_xid
        assert (archive / c.wal_file).exists(), "the segment holding the TRUNCATE was not archived"
        assert prod.psql(f"SELECT count(*) FROM pgvault_drill.{c.table}").strip() == "0"
        assert relations_outside_canary(prod) == before

        inst = scratch.adopt_restored(base, restore_command=f"cp {archive}/%f %p",
                                      recovery_target_lsn=c.planted_lsn, recovery_target_action="promote",
                                      hot_standby="off")
        (base / "recovery.signal").touch()
        pg.chown_to_run_user(base / "recovery.signal")
        inst.start()
        wait_promoted(inst, 60)
        result = run_canary(CheckContext(inst, None, c.expected()))
        assert result.status == "passed", result.detail
        assert "all 500 rows" in result.detail

        canary_mod.remove(prod.conninfo(), c)
        assert prod.psql("SELECT count(*) FROM pg_namespace WHERE nspname = 'pgvault_drill'").strip() == "0"
        assert relations_outside_canary(prod) == before
    finally:
        assert scratch.destroy().ok
    assert not scratch.dir.exists()


def test_canary_drill_without_archiving_fails_clearly_and_leaves_nothing(workdir, pg):
    from tests.conftest import World

    w = World(workdir, pg)
    w.local_site("a")
    w.local_site("b")
    w.extra["drills"] = ["drills/*.yaml"]
    w.policy()
    write_drill(w, "canary", {"source": {"method": "barman", "site": "each"}, "target": "canary"})
    before = relations_outside_canary(pg)
    cp, cases, doc = run_drills(w)
    assert cp.returncode == 1 and "Traceback" not in cp.stderr
    assert set(cases) == {"canary @ a", "canary @ b"}
    msg, _ = cases["canary @ a"]
    assert "the canary could not be planted" in msg and "archive_mode is off" in msg and "HINT" in msg
    assert pg.psql("SELECT count(*) FROM pg_namespace WHERE nspname = 'pgvault_drill'").strip() == "0"
    assert relations_outside_canary(pg) == before
    assert_scratch_gone(w)


def test_canary_check_fails_when_rows_are_missing(archiving_pg):
    """The canary assertion itself can fail: checked against production, where it was truncated."""
    from pgvault.drills import canary as canary_mod
    from pgvault.drills.checks import CheckContext, run_canary

    prod, _ = archiving_pg
    c = canary_mod.plant(prod.conninfo(), 50, archive_timeout=60)
    try:
        r = run_canary(CheckContext(prod, None, c.expected()))
        assert r.status == "failed" and "expected 50 rows" in r.detail and "found 0" in r.detail
    finally:
        canary_mod.remove(prod.conninfo(), c)


def test_example_drills_in_restore_drills_pass(world):
    """The shipped examples validate and pass against a policy with a logical job."""
    load_data(world.pg, rows=300)
    world.local_site("a")
    world.jobs["nightly"] = {"method": "logical", "sites": ["a"]}
    world.extra["drills"] = [str(ROOT / "restore_drills" / "*.yaml")]
    world.policy()
    backup(world)
    listed = json.loads(world.cli("drill", "list", "--json").stdout)
    assert {d["name"] for d in listed} == {"logical-latest", "logical-random"}
    cp, cases, doc = run_drills(world)
    assert cp.returncode == 0, cp.stdout + cp.stderr
    assert cases == {"logical-latest @ a": None, "logical-random @ a": None}
    assert_scratch_gone(world)


# -- snapshot drills ---------------------------------------------------------------------------

from tests.integration.snapshots.conftest import btrfs_fs, instances, zfs_daemon, zpool  # noqa: E402,F401 (fixtures)


def test_btrfs_snapshot_drills_latest_and_canary(btrfs_fs, workdir, instances, world):
    """A snapshot drill (received from the site into a fresh directory, removed afterwards)
    and a canary drill that uses the snapshot as its PITR base."""
    from pgvault.sandbox.fs import instance_on

    sv = btrfs_fs.subvolume("pg", owner_postgres=True)
    inst = instance_on(sv / "data", workdir / "sock", start=False, settings={
        "archive_mode": "on", "archive_command": sandbox.pgvault_command(workdir / "policy.yaml") + " wal-push %p"})
    instances.append(str(inst.pgdata))
    w = world
    w.pg = inst
    w.local_site("a")
    w.jobs["snaps"] = {"method": "btrfs", "subvolumes": [str(sv)], "sites": ["a"]}
    w.extra.update(drills=["drills/*.yaml"], wal={"sites": ["a"]},
                   state_dir=str(sandbox.owned_dir(workdir / "state")))
    w.policy()
    inst.start()
    load_data(inst, rows=500)
    bid = backup(w, "snaps")
    write_drill(w, "snap", {"source": {"job": "snaps", "site": "each"},
                            "checks": [{"amcheck": True}, {"read_all": True}, {"row_counts": True},
                                       {"sql": "SELECT count(*) FROM orders", "database": "app", "expect": 500},
                                       {"sql": "SHOW archive_mode", "expect": "off"}]})
    write_drill(w, "snap-canary", {"source": {"job": "snaps", "site": "a"}, "target": "canary", "canary_rows": 100,
                                   "checks": [{"sql": "SELECT count(*) FROM orders", "database": "app", "expect": 500}]})
    cp, cases, doc = run_drills(w)
    assert cp.returncode == 0, cp.stdout + cp.stderr
    assert cases == {"snap @ a": None, "snap-canary @ a": None}
    by = {r["drill"]: r for r in doc["results"]}
    r = by["snap"]
    assert r["backup_id"] == bid and "btrfs snapshot" in r["restored"]
    # Snapshots record no row counts: the check says so instead of failing or pretending.
    assert {c["kind"]: c["status"] for c in r["checks"]}["row_counts"] == "skipped"
    received = btrfs_fs.mountpoint / ".pgvault-drills"
    assert f"received into {received}/pgvault-drill-snap-" in r["restored"]
    assert list(received.iterdir()) == []
    canary = by["snap-canary"]
    assert canary["backup_id"] == bid and "+ WAL to" in canary["restored"]
    assert {c["kind"]: c["status"] for c in canary["checks"]}["canary"] == "passed"
    assert_scratch_gone(w)
    assert inst.psql("SELECT count(*) FROM orders", dbname="app").strip() == "500"
    assert inst.psql("SELECT count(*) FROM pg_namespace WHERE nspname = 'pgvault_drill'").strip() == "0"


def test_zfs_snapshot_drill_receives_into_a_new_dataset_and_destroys_it(zpool, workdir, instances, world):
    from pgvault.methods import zfs
    from pgvault.sandbox.fs import instance_on

    ds, mnt = zpool.dataset("db/pg", owner_postgres=True)
    inst = instance_on(mnt / "data", workdir / "sock")
    instances.append(str(inst.pgdata))
    load_data(inst, rows=300)
    w = world
    w.pg = inst
    w.local_site("a")
    w.jobs["snaps"] = {"method": "zfs", "datasets": [ds], "sites": ["a"]}
    w.extra["drills"] = ["drills/*.yaml"]
    w.policy()
    bid = backup(w, "snaps")
    write_drill(w, "zsnap", {"source": {"job": "snaps", "site": "a"},
                             "checks": [{"sql": "SELECT count(*) FROM orders", "database": "app", "expect": 300}]})
    cp, cases, doc = run_drills(w)
    assert cp.returncode == 0, cp.stdout + cp.stderr
    r = doc["results"][0]
    assert r["backup_id"] == bid and f"received into {zpool.name}/db/pgvault-drill-zsnap-" in r["restored"]
    received = r["restored"].rsplit(" ", 1)[-1]
    assert not zfs.exists(received)
    assert_scratch_gone(w)


# -- point-in-time drills and the canary, from a local and an S3 site ---------------------------

@pytest.fixture
def pitr_world(workdir, moto):
    """A cluster archiving through `pgvault wal-push` to a local and an S3 site, with a Barman
    base backup at both and 30 committed rows after it."""
    from tests.conftest import archiving_world

    w = archiving_world(workdir, moto)
    inst = w.pg
    w.jobs["base"] = {"method": "barman", "sites": ["a", "eu"], "compression": "lz4"}
    w.extra.update(wal={"sites": ["a", "eu"], "retry_interval": "1s"},
                   state_dir=str(sandbox.owned_dir(workdir / "state")), drills=["drills/*.yaml"])
    w.policy()
    inst.start()
    try:
        inst.psql("CREATE TABLE orders (id int PRIMARY KEY)")
        backup(w, "base")
        inst.psql("INSERT INTO orders SELECT generate_series(1, 30)")
        yield w
    finally:
        inst.stop("immediate")


def test_pitr_and_canary_drills_pass_from_a_local_and_an_s3_site(pitr_world):
    w = pitr_world
    # The canary is itself a PITR drill at both sites; the end-of-archive drill runs at the local one.
    write_drill(w, "pitr-latest", {"source": {"job": "base", "site": "a"}, "target": "latest", "rto": "10m",
                                   "checks": [{"amcheck": True},
                                              {"sql": "SELECT count(*) FROM orders", "expect": 30}]})
    write_drill(w, "canary", {"source": {"job": "base", "site": "each"}, "target": "canary", "canary_rows": 250,
                              "checks": [{"sql": "SELECT count(*) FROM orders", "expect": 30}]})
    # An hour ago is before the only base backup: planning refuses, and the drill says why.
    write_drill(w, "too-old", {"source": {"job": "base", "site": "a"}, "target": "-1h", "checks": []})
    before = relations_outside_canary(w.pg)
    cp, cases, doc = run_drills(w)
    assert cp.returncode == 1, cp.stdout + cp.stderr
    too_old = cases.pop("too-old @ a")
    assert too_old and "restore failed" in too_old[0] and "before the oldest base backup" in too_old[0], too_old
    assert cases == {"pitr-latest @ a": None, "canary @ a": None, "canary @ eu": None}, cp.stdout
    by = {(r["drill"], r["site"]): r for r in doc["results"]}
    latest = by[("pitr-latest", "a")]
    assert latest["rpo_seconds"] is not None and latest["rpo_seconds"] >= 0
    assert latest["replayed_until"] and "+ WAL to" in latest["restored"]
    for site in ("a", "eu"):
        canary = by[("canary", site)]
        verdicts = {c["kind"]: c for c in canary["checks"]}
        assert verdicts["canary"]["status"] == "passed" and "all 250 rows" in verdicts["canary"]["detail"]
        # Recovery stopped before the TRUNCATE, and after the canary's INSERT.
        assert canary["target_time"] and canary["rpo_seconds"] is not None
    # Production: the canary cleaned up after itself and touched nothing else.
    assert w.pg.psql("SELECT count(*) FROM pg_namespace WHERE nspname = 'pgvault_drill'").strip() == "0"
    assert relations_outside_canary(w.pg) == before
    assert w.pg.psql("SELECT count(*) FROM orders").strip() == "30"
    assert_scratch_gone(w)
    listed = json.loads(w.cli("list", "--drills", "--site", "eu", "--json").stdout)
    assert [d["drill"] for d in listed] == ["canary"]
    drills_on_windows(w, by, doc)


def drills_on_windows(w, by: dict, doc: dict) -> None:
    """`pgvault windows` shows each drill on the interval holding the point it restored (read
    from the evidence at the site). The drill run's report.html draws them on those bars (and
    too-old, which restored nothing, where it ran, tied to no bar)."""
    import re
    from datetime import datetime

    windows = {s["site"]: s for s in json.loads(w.cli("windows", "--json").stdout)["sites"]}
    expect = {"a": {by[("pitr-latest", "a")]["drill_id"], by[("canary", "a")]["drill_id"]},
              "eu": {by[("canary", "eu")]["drill_id"]}}
    for site, ids in expect.items():
        ivs = [iv for t in windows[site]["timelines"] for iv in t["intervals"]]
        placed = {d["id"]: (d, iv) for iv in ivs for d in iv["drills"]}
        assert set(placed) == ids, (site, placed)
        for d, iv in placed.values():
            run = next(r for r in doc["results"] if r["drill_id"] == d["id"])
            assert d["outcome"] == "passed" and d["at_kind"] == "replayed" and d["at"] == run["replayed_until"]
            t = datetime.fromisoformat
            assert t(iv["start_time"]) <= t(d["at"]) <= t(iv["end_time"]), (d, iv)
    # too-old failed while planning: its evidence names no point it restored, so no interval.
    assert windows["a"]["unplaced_drills"] == windows["eu"]["unplaced_drills"] == []
    text = w.cli("windows", "--site", "a").stdout
    assert "drill pitr-latest passed at" in text and "drill canary passed at" in text and "too-old" not in text
    page = (w.workdir / "report" / "report.html").read_text()
    marks = re.findall(r'class="mark drill (pass|fail)" data-site="(\w+)" data-interval="(\w+)"', page)
    assert sorted(marks) == [("fail", "a", "none"), ("pass", "a", "0"), ("pass", "a", "0"), ("pass", "eu", "0")], marks


def test_tick_runs_a_scheduled_drill_and_status_shows_its_evidence(world):
    w = drill_world(world)
    w.extra["state_dir"] = str(sandbox.owned_dir(w.workdir / "state"))
    w.policy()
    backup(w)
    write_drill(w, "weekly", {"source": {"job": "nightly", "site": "a"}, "schedule": "*/5 * * * *",
                              "checks": [{"row_counts": True}]})
    first = w.cli("tick", env={"PGVAULT_NOW": "2030-01-01T00:00:00Z", "PGVAULT_DRILL_DIR": str(scratch_dir(w))})
    assert "drill:weekly: ran" not in first.stdout
    assert not (w.workdir / "site-a" / "clusters/main/drills").exists()
    due = w.cli("tick", env={"PGVAULT_NOW": "2030-01-01T00:05:30Z", "PGVAULT_DRILL_DIR": str(scratch_dir(w))})
    assert "drill:weekly: ran" in due.stdout and "drill passed at a" in due.stdout, due.stdout + due.stderr
    evidence = json.loads(w.cli("list", "--drills", "--json").stdout)
    assert [(d["site"], d["drill"], d["outcome"]) for d in evidence] == [("a", "weekly", "passed")]
    status = json.loads(w.cli("status", "--json", check=False).stdout)
    assert "weekly" in json.dumps(status["drills"])
    assert_scratch_gone(w)
