"""pgvault in a real Patroni cluster (etcd + 3 PostgreSQL 15 nodes, pgvault.sandbox.ha), every
node archiving through `pgvault wal-push` with its own policy, to a local site and an S3 site.

One module-scoped cluster, the scenarios in an order where each leaves a healthy cluster for the
next: switchover under load, kill -9 of the leader, tick on every node at once, backup from a
replica, expire on a replica during a backup on the leader, and the zombie primary last."""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from pgvault import pg
from pgvault.sandbox import wait_until
from tests.conftest import ROOT, ha_world


class Writer(threading.Thread):
    """Light load and a record of it: a row every ~50 ms through libpq multi-host
    (target_session_attrs=read-write), reconnecting across failovers; each committed row
    notes the port of the server that took it and its commit time."""

    def __init__(self, conninfo: str):
        super().__init__(daemon=True, name="ha-writer")
        self.conninfo = conninfo
        self.rows: list[tuple[int, int, str]] = []  # (id, server port, commit time UTC)
        self.stop = threading.Event()

    def run(self):
        i, conn = 0, None
        while not self.stop.is_set():
            try:
                if conn is None:
                    conn = pg.connect(self.conninfo)
                i += 1
                port, at = pg.query(conn, "INSERT INTO orders (id) VALUES (%s) RETURNING inet_server_port(), "
                                          "to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US')",
                                    (i,))[0]
                self.rows.append((i, port, at))
            except Exception:  # a failover: the row may or may not have committed; reconnect
                if conn is not None:
                    try:
                        conn.close()
                    except Exception:
                        pass
                conn = None
            self.stop.wait(0.05)  # the load's pace, not synchronisation
        if conn is not None:
            conn.close()

    def on(self, port: int) -> list[int]:
        return [r[0] for r in self.rows if r[1] == port]


def wal_names(hw, site: str) -> set[str]:
    """WAL file names (compression suffix dropped) at a site, read directly (no pgvault)."""
    from pgvault.wal import names

    cfg = hw.sites[site]
    if cfg["type"] == "local":
        keys = [str(p.relative_to(cfg["path"])) for p in Path(cfg["path"], "clusters/main/wals").rglob("*") if p.is_file()]
    else:
        c = hw.moto.client(cfg["region"])
        keys = [o["Key"] for page in c.get_paginator("list_objects_v2").paginate(
            Bucket=cfg["bucket"], Prefix=f"{cfg['prefix']}/clusters/main/wals/") for o in page.get("Contents", [])]
    return {names.split_stored(k.rsplit("/", 1)[1])[0] for k in keys}


def site_keys(hw, site: str, under: str) -> list[str]:
    cfg = hw.sites[site]
    if cfg["type"] == "local":
        return [str(p) for p in Path(cfg["path"], "clusters/main", under).rglob("*") if p.is_file()]
    c = hw.moto.client(cfg["region"])
    return [o["Key"] for o in c.list_objects_v2(Bucket=cfg["bucket"], Prefix=f"{cfg['prefix']}/clusters/main/{under}/")
            .get("Contents", [])]


def at_every_site(hw, *wanted: str, timeout: float = 120) -> None:
    def ok():
        return all(set(wanted) <= wal_names(hw, s) for s in ("a", "eu"))
    wait_until(ok, timeout, f"{', '.join(wanted)} at every WAL site", interval=0.3)


def no_gaps(hw) -> dict:
    doc = json.loads(hw.cli("wal-status", "--json").stdout)
    for s, st in doc["sites"].items():
        assert st["reachable"] and st["gap_count"] == 0, (s, json.dumps(st, indent=1)[:4000])
    return doc


def explain_gaps(hw) -> str:
    """Where each missing segment is, for a failure message: every site's wals/ and quarantine/
    copies, every node's spool (files and the sites still owed them) and archive_status."""
    doc = json.loads(hw.cli("wal-status", "--json", check=False).stdout or "{}")
    out = []
    for s, st in doc.get("sites", {}).items():
        if not st.get("gap_count"):
            continue
        out.append(f"site {s}: {st['gap_count']} gap(s) {st['gaps']}, oldest {st['oldest']}")
        for site in ("a", "eu"):
            out.append(f"  {site} holds first: {sorted(wal_names(hw, site))[:8]}")
        for name in st["gaps"]:
            for site in ("a", "eu"):
                q = [k.rsplit("/", 1)[1] for k in site_keys(hw, site, "quarantine") if name in k]
                out.append(f"  {name} at {site}: wals {'yes' if name in wal_names(hw, site) else 'no'}, quarantine {q}")
                for k in site_keys(hw, site, "quarantine"):
                    if name in k and k.endswith(".json"):
                        out.append("    " + (Path(k).read_text() if hw.sites[site]["type"] == "local" else k)[:600])
            for node, n in hw.ha.nodes.items():
                spool = hw.workdir / f"state-{node}"
                held = sorted(str(p.relative_to(spool)) for p in spool.rglob(f"{name}*"))
                status = sorted(p.name for p in (n.pgdata / "pg_wal/archive_status").glob(f"{name}*"))
                out.append(f"  {name} on {node}: spool {held}, archive_status {status}")
    for node, n in hw.ha.nodes.items():
        sites = sorted((hw.workdir / f"state-{node}").rglob("sites/*.json"))
        out.append(f"{node}: down sites {[(p.name, p.read_text()[:200]) for p in sites]}")
        lines = [ln for ln in n.log.read_text(errors="replace").splitlines() if "wal-push" in ln or "WARNING" in ln
                 or "quarantine" in ln or "retired" in ln]
        out.append(f"{node} log (last pgvault lines):\n    " + "\n    ".join(lines[-25:]))
    return "\n".join(out)


def switch(hw) -> str:
    """Close the leader's current segment; its name."""
    return hw.ha.psql("SELECT pg_walfile_name(pg_switch_wal())").strip()


@pytest.fixture(scope="module")
def hw(moto):
    with ha_world(moto) as w:
        w.wal = {"sites": ["a", "eu"], "retry_interval": "1s"}
        w.jobs = {
            "base": {"method": "barman", "sites": ["eu"], "compression": "lz4"},
            "dump-standby": {"method": "logical", "from": "standby", "databases": ["app"], "sites": ["a", "eu"],
                             "schedule": "*/5 * * * *"},
            "dump-primary": {"method": "logical", "databases": ["app"], "sites": ["a"], "schedule": "*/5 * * * *"},
            "base-standby": {"method": "barman", "from": "standby", "sites": ["a", "eu"], "compression": "lz4"},
        }
        w.start()
        w.ha.psql("CREATE DATABASE app")
        w.ha.psql("CREATE TABLE orders (id int PRIMARY KEY, at timestamptz DEFAULT clock_timestamp())", dbname="app")
        w.writer = Writer(w.ha.conninfo(dbname="app", target_session_attrs="read-write"))
        w.writer.start()
        yield w
        w.writer.stop.set()
        w.writer.join(10)


def test_switchover_under_load_leaves_no_gap_and_pitr_follows_the_new_timeline(hw):
    ha = hw.ha
    at_every_site(hw, switch(hw))
    base = hw.cli("backup", "base").stdout.strip().splitlines()[-1]  # from: primary, barman-cloud to eu
    assert base
    wait_until(lambda: len(hw.writer.rows) >= 10, 60, "rows before the switchover")
    old, new = ha.switchover()
    tl = ha.timeline()
    assert tl >= 2 and new != old
    new_port = ha.nodes[new].pg_port
    wait_until(lambda: len(hw.writer.on(new_port)) >= 10, 60, "rows on the new leader")
    after = hw.writer.rows[-1][2]
    # Committed before the target: every row before the last one read (a row's clock_timestamp()
    # precedes its own commit; the writer goes on meanwhile).
    expected = [r[0] for r in hw.writer.rows if r[2] < after]
    seg = switch(hw)
    history = f"{tl:08X}.history"
    at_every_site(hw, history, seg)
    # The old timeline's last segment, as the new leader had it (its archiver sends it after the
    # history file; with archive_mode=always another node's copy of a new segment may come first).
    wait_until(lambda: all(any(n.endswith(".partial") and n.startswith(f"{tl - 1:08X}") for n in wal_names(hw, s))
                           for s in ("a", "eu")), 120, "the old timeline's .partial at every site", interval=0.3)
    doc = no_gaps(hw)
    for st in doc["sites"].values():
        assert [x["next"] for x in st["switches"]][-1] == tl and not st["quarantined"]
    text = hw.cli("wal-status").stdout
    assert f"-> {tl} at" in text, text
    # PITR from the S3 site alone to a moment after the switch: the new leader's rows are there.
    dest, port = hw.workdir / "r-switch", pg.free_port()
    cp = hw.cli("restore", "--to-time", after, "--from-site", "eu", "--target-dir", str(dest), "--port", str(port),
                "--start")
    assert "recovery promoted" in cp.stdout, cp.stdout
    inst = pg.Instance(dest, port, socket_dir=dest)
    try:
        got = [int(x) for x in inst.psql("SELECT id FROM orders ORDER BY id", dbname="app").split()]
        assert set(expected) <= set(got) and set(hw.writer.on(new_port)[:10]) <= set(got)
    finally:
        inst.stop("immediate")
    hw.base_backup = base


def test_kill9_of_the_leader_leaves_no_gap(hw):
    ha = hw.ha
    ha.wait_streaming()
    tl0 = ha.timeline()
    old, new = ha.kill9_leader()
    tl = ha.timeline()
    assert tl > tl0
    new_port = ha.nodes[new].pg_port
    wait_until(lambda: len(hw.writer.on(new_port)) >= 5, 60, "rows on the new leader")
    at_every_site(hw, f"{tl:08X}.history", switch(hw))
    no_gaps(hw)
    ha.wait_streaming(timeout=180)  # the old leader rejoined (pg_rewind) as a replica


def _tick_all(hw, now: str) -> dict[str, str]:
    """`pgvault tick` started on all three nodes at once (each with its own policy)."""
    env = dict(__import__("os").environ, PYTHONPATH=str(ROOT), PGVAULT_NOW=now)
    procs = {n: subprocess.Popen([sys.executable, "-m", "pgvault", "--policy", str(hw.workdir / f"policy-{n}.yaml"),
                                  "tick"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for n in hw.ha.nodes}
    return {n: p.communicate(timeout=600)[0] for n, p in procs.items()}


def manifests(hw, site: str, job: str) -> list[dict]:
    out = []
    for k in site_keys(hw, site, "backups"):
        if k.endswith("manifest.json"):
            m = json.loads(Path(k).read_text())
            if m["job"] == job:
                out.append(m)
    return out


def test_tick_on_every_node_runs_each_job_once(hw):
    hw.ha.wait_streaming()
    _tick_all(hw, "2026-12-03T00:01:00Z")  # first sight of the jobs on every node: nothing due yet
    outs = _tick_all(hw, "2026-12-03T00:06:00Z")
    replicas, leader = hw.ha.replicas(), hw.ha.leader()
    for job, where in (("dump-standby", min(replicas)), ("dump-primary", leader)):
        ran = [n for n, o in outs.items() if f"{job}: ran" in o]
        assert ran == [where], (job, outs)
        # The others said "elsewhere" (or, reading the sites after the runner committed, idle).
        assert all("elsewhere" in outs[n] or f"{job}:" not in outs[n] for n in outs if n != where), outs
        assert len(manifests(hw, "a", job)) == 1
    # A tick later on every node: the job ran on one node and is not due on any (the sites say so).
    again = _tick_all(hw, "2026-12-03T00:07:00Z")
    assert not any(": ran" in o for o in again.values()), again
    hw.standby_dump = manifests(hw, "a", "dump-standby")[0]["backup_id"]


def test_backup_from_a_replica_restores(hw):
    bid = hw.standby_dump
    leader = hw.ha.leader()
    hw.cli("restore", bid, "--database", "app", "--as", "app_copy", "--target", hw.ha.conninfo(leader))
    n = int(hw.ha.psql("SELECT count(*) FROM orders", dbname="app_copy").strip())
    assert n > 0
    hw.cli("verify")


def test_expire_on_a_replica_leaves_the_leaders_running_backup_alone(hw):
    leader = hw.ha.leader()
    replica = hw.ha.replicas()[0]
    hold = pg.connect(hw.ha.conninfo(leader, "app"), autocommit=False)
    try:
        pg.query(hold, "LOCK TABLE orders IN ACCESS EXCLUSIVE MODE")  # pg_dump waits behind it
        env = dict(__import__("os").environ, PYTHONPATH=str(ROOT))
        backup = subprocess.Popen([sys.executable, "-m", "pgvault", "--policy", str(hw.workdir / f"policy-{leader}.yaml"),
                                   "backup", "dump-primary"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True)
        wait_until(lambda: site_keys(hw, "a", "running") and any("globals" in k for k in site_keys(hw, "a", "backups")
                                                                 if not k.endswith("manifest.json")),
                   120, "the leader's backup to be under way (marker + first artifact)")
        cp = hw.cli("expire", "--debris-grace", "0s", node=replica)
        assert "in progress" in cp.stdout and f"on node {leader}" in cp.stdout, cp.stdout
    finally:
        hold.rollback()
        hold.close()
    out = backup.communicate(timeout=300)[0]
    assert backup.returncode == 0, out
    bid = __import__("re").search(r"\d{8}T\d{6}Z", out.strip().splitlines()[-1]).group(0)
    assert bid in [m["backup_id"] for m in manifests(hw, "a", "dump-primary")]
    assert not site_keys(hw, "a", "running")
    hw.cli("verify")


def test_zombie_primary_is_quarantined_and_named(hw):
    ha = hw.ha
    ha.wait_streaming()
    zombie = ha.leader()
    ha.kill_patroni(zombie)  # its PostgreSQL runs on as a primary, unmanaged
    new = ha.wait_leader(120, other_than=zombie)
    tl = ha.timeline(new)
    at_every_site(hw, f"{tl:08X}.history")
    # The zombie takes writes (a client that still points at it) and archives on its old timeline.
    z = ha.nodes[zombie]
    ha.psql("INSERT INTO orders (id) SELECT g FROM generate_series(1000000, 1000100) g", zombie, "app")
    seg = ha.psql("SELECT pg_walfile_name(pg_switch_wal())", zombie).strip()
    wait_until(lambda: all(site_keys(hw, s, "quarantine") for s in ("a", "eu")), 120, "the zombie's WAL quarantined")
    for s in ("a", "eu"):
        assert seg not in wal_names(hw, s)
    doc = json.loads(Path(next(k for k in site_keys(hw, "a", "quarantine") if k.endswith(".json"))).read_text())
    assert doc["reason"] == "divergent" and doc["timeline"] == tl - 1 and doc["fork"]["new_timeline"] == tl
    assert doc["sender"]["port"] == z.pg_port and doc["sender"]["pgdata"] == str(z.pgdata)
    assert doc["system_identifier"] and doc["lsn_range"]
    cp = hw.cli("check", node=new, check=False)
    assert cp.returncode == 2 and "split brain" in cp.stdout and "pg_rewind" in cp.stdout, cp.stdout
    assert "QUARANTINED" in hw.cli("wal-status", node=new).stdout
    # The split_brain notification, through a notify command (its payload on stdin), sent once.
    sent = hw.workdir / "notified.jsonl"
    hw.extra["notify"] = {"command": ["sh", "-c", f"cat >> {sent}; echo >> {sent}"], "events": ["split_brain"]}
    hw.write_policies()
    try:
        hw.cli("check", "--notify", node=new, check=False)
        events = [json.loads(x) for x in sent.read_text().splitlines() if x.strip()]
        assert events and {e["event"] for e in events} == {"split_brain"}, events
        # (the zombie's Patroni is down: it is named by host and port)
        assert any(e["item"]["name"] in (zombie, f"{__import__('os').uname().nodename}:{z.pg_port}")
                   and "pg_rewind" in (e.get("hint") or "") for e in events), events
        hw.cli("check", "--notify", node=new, check=False)  # unchanged: not sent again
        assert len([x for x in sent.read_text().splitlines() if x.strip()]) == len(events)
    finally:
        hw.extra.pop("notify")
        hw.write_policies()
    # The archive recovery reads is the new leader's: latest is unaffected.
    no_gaps(hw)
    # Put the zombie down and let Patroni bring it back as a replica (rewound).
    subprocess.run(["/usr/lib/postgresql/15/bin/pg_ctl", "stop", "-D", str(z.pgdata), "-m", "immediate"],
                   user="postgres", capture_output=True)
    ha.restart_patroni(zombie)
    ha.wait_streaming(timeout=180)


def _plant(hw, site: str, name: str, data: bytes) -> None:
    """Put a file at a site's WAL archive directly (the fixture's own site description)."""
    cfg = hw.sites[site]
    if cfg["type"] == "local":
        p = Path(cfg["path"], "clusters/main/wals", name)
        p.write_bytes(data)
        p.chmod(0o640)
        pg.chown_to_run_user(p)  # wal-push runs as postgres: as if its own archiver had put it there
    else:
        hw.moto.client(cfg["region"]).put_object(Bucket=cfg["bucket"], Key=f"{cfg['prefix']}/clusters/main/wals/{name}",
                                                 Body=data)


def test_a_branch_the_cluster_abandoned_is_retired_not_its_live_timeline(hw):
    """Patroni gave the old leader the key back after a replica had promoted (seen in `pgvault lab`
    with Patroni 3.0.2): the archive holds a history naming the live timeline as abandoned. The
    leader's next segments are the cluster; the history's branch is the dead one."""
    ha = hw.ha
    ha.wait_streaming()
    leader = ha.wait_leader()
    tl = ha.timeline(leader)
    lsn = ha.psql("SELECT pg_current_wal_lsn()", leader).strip()
    dead = f"{tl + 1:08X}.history"
    history = "".join(f"{t}\t0/1000000\tno recovery target specified\n" for t in range(1, tl)) + \
        f"{tl}\t{lsn}\tno recovery target specified\n"
    for s in ("a", "eu"):
        _plant(hw, s, dead, history.encode())
    ha.psql("INSERT INTO orders (id) SELECT g FROM generate_series(2000000, 2000100) g", leader, "app")
    seg = switch(hw)
    at_every_site(hw, seg)  # stored, not quarantined as past the planted fork
    for s in ("a", "eu"):
        assert dead not in wal_names(hw, s)
    assert any(dead in k for k in site_keys(hw, "eu", "quarantine"))
    docs = [json.loads(Path(k).read_text()) for k in site_keys(hw, "a", "quarantine") if k.endswith(".json")]
    retired = [d for d in docs if d["reason"] == "abandoned-timeline"]
    assert [d["name"] for d in retired] == [dead], docs
    assert retired[0]["fork"]["timeline"] == tl and retired[0]["sender"]["retired_by_leader"] == leader
    assert not [d for d in docs if d["reason"] == "divergent" and d["name"] == seg]
    cp = hw.cli("check", node=leader, check=False)
    assert "abandoned" in cp.stdout and "re-cloned" in cp.stdout, cp.stdout
    # Archiving goes on past the retirement: the leader's next segment reaches every site, and
    # what the retiring pushes held back reaches every site too (through the spool of the node
    # that held it, not the spool of the node asked): no gap anywhere.
    at_every_site(hw, switch(hw))
    try:
        wait_until(lambda: all(st["gap_count"] == 0 for st in json.loads(hw.cli("wal-status", "--json").stdout)
                               ["sites"].values()), 120, "no gap at any site", interval=1)
    except TimeoutError as exc:
        raise AssertionError(f"{exc}\n{explain_gaps(hw)}") from None


def test_physical_base_from_a_standby_restores_to_a_time_from_s3(hw):
    """PostgreSQL 15's non-exclusive backup on a replica (`from: standby`, pgvault's base engine):
    run from the leader's host, the job goes to the replica Patroni names; the stop segment (which
    a standby cannot switch out of) is completed on the leader and waited for at the WAL sites
    before the backup exists. Then PITR from the S3 site alone, rows compared with the Writer's."""
    import re

    ha = hw.ha
    ha.wait_streaming()
    leader, replica = ha.wait_leader(), min(ha.replicas())
    n0 = len(hw.writer.rows)
    wait_until(lambda: len(hw.writer.rows) >= n0 + 10, 60, "rows before the base")
    cp = hw.cli("backup", "base-standby", node=leader)
    bid = re.search(r"\d{8}T\d{6}Z", cp.stdout.strip().splitlines()[-1]).group(0)
    m = next(m for m in manifests(hw, "a", "base-standby") if m["backup_id"] == bid)
    base = m["facts"]["base"]
    assert base["from_standby"] is True and "BACKUP FROM: standby" in base["backup_label"], base
    assert base["standby"]["archive_mode"] == "always" and base["standby"]["stop_wal_at"] == ["a", "eu"], base
    assert m["timeline"] == ha.timeline(leader) and base["end_wal"] in wal_names(hw, "eu")
    # It ran on the replica: Barman's backup.info at the S3 site names the replica's data directory.
    info = next(k for k in site_keys(hw, "eu", f"base/{base['barman_id']}") if k.endswith("backup.info"))
    cfg = hw.sites["eu"]
    text = hw.moto.client(cfg["region"]).get_object(Bucket=cfg["bucket"], Key=info)["Body"].read().decode()
    assert f"pgdata={ha.nodes[replica].pgdata}" in text, text
    # Rows after the base; the target is a moment after it ended: the Writer's last row read (its
    # commit follows its clock_timestamp(), so it is after the target, and every row before it is
    # before the target).
    n1 = len(hw.writer.rows)
    wait_until(lambda: len(hw.writer.rows) >= n1 + 10, 60, "rows after the base")
    last, _port, after = hw.writer.rows[-1]
    since_base = {r[0] for r in hw.writer.rows[n0:] if r[2] < after}
    # What the cluster holds from before the target (not what the Writer saw: rows it committed on
    # an earlier test's zombie are on a branch the cluster abandoned).
    cut = f"'{after}'::timestamp AT TIME ZONE 'UTC'"
    live = {int(x) for x in ha.psql(f"SELECT id FROM orders WHERE at < {cut} AND id <> {last}", leader, "app").split()}
    at_every_site(hw, switch(hw))
    dest, port = hw.workdir / "r-standby-base", pg.free_port()
    cp = hw.cli("restore", bid, "--to-time", after, "--from-site", "eu", "--target-dir", str(dest), "--port", str(port),
                "--start", node=leader)
    assert "recovery promoted" in cp.stdout, cp.stdout
    inst = pg.Instance(dest, port, socket_dir=dest)
    try:
        got = {int(x) for x in inst.psql("SELECT id FROM orders", dbname="app").split()}
        assert since_base and since_base <= got, sorted(since_base - got)[:5]
        assert got == live, (sorted(live - got)[:5], sorted(got - live)[:5])
        assert inst.psql("SELECT pg_is_in_recovery()").strip() == "f"
    finally:
        inst.stop("immediate")
