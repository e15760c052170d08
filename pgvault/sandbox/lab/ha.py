"""The lab's HA scenarios, on a real Patroni cluster (pgvault.sandbox.ha: etcd + 3 PostgreSQL 15
nodes) that archives to the lab's own three sites (the same proxies, so partitions apply) under
its own cluster name ``lab-ha``, each node with its own policy as each host of a real cluster
has. It is built by the first HA scenario and lives until the lab is torn down.

The load writes its ledger through a libpq multi-host conninfo with
``target_session_attrs=read-write``: after a failover it reconnects to whichever node accepts
writes, as an application would. Rows the old leader acknowledged that the new leader never
received (asynchronous replication: Patroni promotes within ``maximum_lag_on_failover``) are
the failover's loss: named, measured as its RPO, and taken out of the ledger's truth — a restore
cannot return what the cluster itself no longer has, and pgvault is not what lost it.

After each HA scenario the criterion is: every backup of ``lab-ha`` verifies, the eu window is
unbroken across the timelines, the leader's archived WAL is at every site, and a restore of the
newest point from eu returns exactly the ledger."""
from __future__ import annotations

import os
import time
from datetime import datetime, timedelta, timezone

import yaml

from ... import pg, proc, sandbox
from . import checks
from .checks import Check
from .ledger import Ledger
from .outcome import Outcome

CLUSTER = "lab-ha"


class HaPart:
    def __init__(self, lab):
        from ..ha import HACluster

        self.lab = lab
        w = lab.world
        self.base = sandbox.owned_dir(w.base / "ha", 0o755)
        self.policies = {f"n{i}": self.base / f"policy-n{i}.yaml" for i in range(1, 4)}
        self.cluster = HACluster(self.base / "cluster", 3, policies=self.policies, archive_mode="always",
                                 archive_timeout=10, parameters={"track_commit_timestamp": "on"})
        self.cluster.env = w.env()
        (self.base / "cluster").mkdir(exist_ok=True)
        os.chmod(self.base / "cluster", 0o755)
        self.ledger: Ledger | None = None
        self.lost: dict[int, datetime] = {}
        w.on_teardown.append(self.stop)

    def policy_doc(self, node: str) -> dict:
        doc = self.lab.world.policy_doc()
        n = self.cluster.nodes[node]
        doc["cluster"] = {"name": CLUSTER, "conninfo": self.cluster.conninfo(target_session_attrs="read-write"),
                          "pgdata": str(n.pgdata), "patroni": {"url": n.rest}}
        doc["jobs"] = {"base": {"method": "barman", "sites": ["eu"], "compression": "lz4", "retain": {"count": 50}}}
        doc["state_dir"] = str(sandbox.owned_dir(self.base / f"state-{node}", 0o755))
        return doc

    def start(self) -> "HaPart":
        for node, path in self.policies.items():
            path.write_text(yaml.safe_dump(self.policy_doc(node), sort_keys=False))
            os.chmod(path, 0o644)
        t0 = time.monotonic()
        self.cluster.start()
        self.cluster.psql("CREATE DATABASE lab")
        self.ledger = Ledger(self.cluster.conninfo(dbname="lab", target_session_attrs="read-write"), rate=20.0)
        self.ledger.create()
        self.ledger.start()
        proc.wait_until(lambda: self.ledger.count() >= 20, 60, "the HA ledger's first commits", interval=0.2)
        ran = self.pgvault("backup", "base")
        if ran.code != 0:
            raise RuntimeError(f"the HA cluster's first base backup failed: {ran.tail()}")
        self.first_base_time = datetime.now(timezone.utc)
        self.lab.say(f"  HA cluster {CLUSTER} up in {time.monotonic() - t0:.1f}s: leader {self.cluster.leader()}, "
                     f"replicas {self.cluster.replicas()}")
        return self

    def stop(self) -> None:
        if self.ledger:
            self.ledger.stop()
        self.cluster.stop()

    def pgvault(self, *args, node: str | None = None, **kw):
        node = node or self.cluster.leader() or "n1"
        return self.lab.world.pgvault(*args, policy_file=self.policies[node], **kw)

    def account_failover_loss(self, leader: str) -> list[int]:
        """Rows acknowledged but absent from the new leader: lost by the failover itself."""
        # Whoever leads now (the cluster may still be settling after the old leader came back).
        rw = self.cluster.conninfo(dbname="lab", target_session_attrs="read-write")

        def read():
            try:
                with pg.connect(rw) as conn:
                    return {r[0] for r in pg.query(conn, "SELECT id FROM lab_ledger")}
            except Exception:  # noqa: BLE001 - no leader accepting writes yet
                return None
        # Only rows acknowledged before the read began are judged: one acknowledged while the
        # read ran may be missing from its snapshot and still be on the leader (a soak found it).
        with self.ledger._lock:
            judged = set(self.ledger.acked)
        present = proc.wait_until(read, 120, "a leader that answers", interval=1)
        with self.ledger._lock:
            gone = {i: t for i, t in self.ledger.acked.items() if i in judged and i not in present}
            for i in gone:
                del self.ledger.acked[i]
        self.lost.update(gone)
        return sorted(gone)

    def criterion(self) -> list[Check]:
        out = []
        leader = self.cluster.wait_leader(120)
        seg = self.cluster.psql("SELECT pg_walfile_name(pg_switch_wal())", leader).strip()
        ok = True
        try:
            proc.wait_until(lambda: seg in checks.stored_segments_of(self.lab.world, self.policies[leader], "eu")
                            and seg in checks.stored_segments_of(self.lab.world, self.policies[leader], "local")
                            and seg in checks.stored_segments_of(self.lab.world, self.policies[leader], "us"),
                            150, f"{seg} at every site", interval=0.5)
        except Exception:  # noqa: BLE001
            ok = False
        out.append(Check("the leader's newest archived segment is at every site", ok, f"{seg} (leader {leader})"))
        ran = self.pgvault("verify", node=leader)
        out.append(Check("every backup verifies", ran.code == 0, f"exit {ran.code}: {ran.tail(300)}"))
        # Every node pushes (archive_mode = always) and a site owed a file through a spool gets
        # it within seconds, in any order: a hole may be WAL still on its way. The window must
        # be whole within a minute.
        s = {}

        def whole():
            nonlocal s
            _r, doc = self.lab.world.json_of("windows", "--site", "eu", policy_file=self.policies[leader])
            s = (doc or {}).get("sites", [{}])[0] if doc else {}
            return bool(s.get("unbroken")) and not s.get("holes")
        try:
            proc.wait_until(whole, 60, "the eu window to be whole", interval=2)
        except Exception:  # noqa: BLE001 - judged below on the last answer
            pass
        u = s.get("unbroken")
        holes = [dict(h, timeline=t["timeline"]) for t in s.get("timelines", []) for h in t["holes"]]
        out.append(Check("the eu window is unbroken across timelines", bool(u) and not s.get("holes"),
                         f"unbroken {u and u['seconds']}s on timeline {u and u['timeline']}, {s.get('holes')} hole(s)"
                         + "".join(f"; hole on timeline {h['timeline']}: {h.get('start_lsn')}..{h.get('end_lsn')} "
                                   f"{h.get('detail', '')}" for h in holes)[:1200],
                         evidence={"timelines": s.get("timelines")}))
        # The newest point: just before the newest commit the eu window reads from archived WAL
        # (without a window, 12 s ago). On a quiet machine the first HA base may have ended only
        # seconds before the switchover: "12 s ago" then lies before the window's start.
        hi = datetime.fromisoformat(self.cluster.psql("SELECT now()", leader).strip()) - timedelta(seconds=12)
        newest = [i for t in s.get("timelines", []) for i in t["intervals"]
                  if u and i["timeline"] == u["timeline"] and i["end_time"] == u["end_time"]]
        if newest and newest[0]["end_time_kind"] == "commit":  # a commit read from archived WAL: restorable
            hi = datetime.fromisoformat(u["end_time"]) - timedelta(seconds=0.5)
        lo = hi - timedelta(seconds=20)  # wide enough to hold commits when the leader was frozen for a while
        if u and u.get("start_time"):  # a point before the window's start has no base to restore from
            lo = max(lo, datetime.fromisoformat(u["start_time"]) + timedelta(seconds=0.5))
        pts = checks.sample_points(self.ledger, lo, hi, 1, self.lab.sample_rng) if lo < hi else []
        if not pts:
            out.append(Check("a restore point can be drawn in the eu window", False,
                             f"no ledger commit between {lo.isoformat()} and {hi.isoformat()}"))
        for t in pts:
            out.append(checks.restore_at(self.lab.world, self.ledger, "eu", t, policy_file=self.policies[leader],
                                         label="HA cluster, newest", dbname="lab"))
        return out


def _part(lab) -> HaPart:
    if getattr(lab, "ha", None) is None:
        lab.ha = HaPart(lab).start()
    return lab.ha


def _under_load(lab, seconds: float) -> None:
    ha = lab.ha
    n = ha.ledger.count() + int(seconds * 20 * 0.7)
    try:
        proc.wait_until(lambda: ha.ledger.count() >= n, seconds * 3, "the HA ledger load", interval=0.2)
    except Exception:  # noqa: BLE001
        pass


def _finish(lab, out, old: str, new: str, t0: float, what: str,
            why: str = "lost by the failover itself (async replication)") -> None:
    ha = lab.ha
    out.timings["failover_seconds"] = round(time.monotonic() - t0, 2)
    _under_load(lab, 4)
    gone = ha.account_failover_loss(new)
    out.timings["rpo_rows_lost_by_failover"] = len(gone)
    out.check(f"{what}: {old} -> {new}, the load goes on", ha.ledger.count() > 0 and old != new,
              f"leader {ha.cluster.leader()} on timeline {ha.cluster.timeline()}; {len(gone)} acknowledged row(s) "
              f"{why}: {ha.ledger.describe(gone) if gone else 'none'}")
    out.notes.append(f"ledger errors while it happened: {len(ha.ledger.errors)}")
    out.checks += ha.criterion()


def _change_leader(lab, act, what: str, *, detect: bool = False) -> tuple[Outcome, HaPart]:
    """Under load, have the cluster change leaders by ``act(cluster) -> (old, new)`` and judge it."""
    out = Outcome(skip_criterion=True)
    ha = _part(lab)
    _under_load(lab, 3)
    t0 = time.monotonic()
    old, new = act(ha.cluster)
    if detect:
        out.timings["detect_seconds"] = round(time.monotonic() - t0, 2)
    _finish(lab, out, old, new, t0, what)
    return out, ha


def _rejoin(lab, out: Outcome) -> None:
    """Every node streams from the leader again before the next scenario. A node Patroni cannot
    bring back by itself (a demoted leader whose WAL went past the new timeline's switch point
    but which pg_rewind calls "same timeline") is re-cloned the way an operator would:
    ``patronictl reinit``."""
    c = lab.ha.cluster
    try:   # pg_rewind and a restart take seconds here (failover: ~10 s); a node not back in 30 s is stuck
        c.wait_streaming(timeout=30)
        return
    except Exception:  # noqa: BLE001 - judged below, after the re-clone
        pass
    leader = c.wait_leader(120)
    streaming = c.streaming() or set()
    stuck = [n for n in c.nodes if n != leader and (n not in streaming or n not in c.replicas())]
    for n in stuck:
        try:
            c.patronictl("reinit", c.scope, n, "--force", timeout=240)
        except Exception as exc:  # noqa: BLE001
            out.notes.append(f"patronictl reinit {n} failed: {str(exc)[:200]}")
    out.notes.append(f"re-cloned with patronictl reinit (Patroni did not bring them back): {', '.join(stuck) or 'none'}")
    ok, detail = True, f"replicas {c.replicas()}"
    try:
        c.wait_streaming(timeout=240)
    except Exception as exc:  # noqa: BLE001
        ok, detail = False, str(exc)[:300]
    out.check("every node streams from the leader again", ok, detail)


def switchover(lab):
    return _change_leader(lab, lambda c: c.switchover(), "switchover")[0]


def failover(lab):
    out, ha = _change_leader(lab, lambda c: c.kill9_leader(), "kill -9 of the leader", detect=True)
    _rejoin(lab, out)   # the old leader rejoins (pg_rewind, or a re-clone) before the next scenario
    return out


def paused_leader(lab):
    out = Outcome(skip_criterion=True)
    ha = _part(lab)
    _under_load(lab, 3)
    old = ha.cluster.wait_leader()
    t0 = time.monotonic()
    ha.cluster.pause(old)
    try:
        new = ha.cluster.wait_leader(120, other_than=old)
        out.timings["detect_seconds"] = round(time.monotonic() - t0, 2)
    finally:
        ha.cluster.resume(old)
    _finish(lab, out, old, new, t0, "SIGSTOP of the whole leader")
    _rejoin(lab, out)
    return out


def zombie_primary(lab):
    """Patroni of the leader frozen, its PostgreSQL serving on: another node is promoted while the
    old primary still accepts writes and archives on the old timeline. pgvault must keep the
    sites consistent (the zombie's diverging WAL refused where it conflicts) and the new
    timeline restorable."""
    out = Outcome(skip_criterion=True)
    ha = _part(lab)
    _under_load(lab, 3)
    old = ha.cluster.wait_leader()
    t0 = time.monotonic()
    ha.cluster.pause(old, patroni_only=True)
    try:
        new = ha.cluster.wait_leader(120, other_than=old)
        out.timings["detect_seconds"] = round(time.monotonic() - t0, 2)
        try:   # the zombie still takes writes for a moment, and archives them
            ha.cluster.psql("INSERT INTO lab_ledger (id) VALUES (-1); SELECT pg_switch_wal()", old, "lab")
            out.notes.append(f"the zombie {old} accepted a write after {new} was promoted (split brain, as expected)")
        except Exception as exc:  # noqa: BLE001
            out.notes.append(f"the zombie {old} refused a write: {str(exc)[:200]}")
        _under_load(lab, 3)
    finally:
        ha.cluster.resume(old)
    _finish(lab, out, old, new, t0, "zombie old primary",
            why=f"acknowledged by the zombie {old} after {new} was promoted (split brain), absent from the cluster "
                f"now: their WAL is what pgvault keeps out of the archive")
    # The zombie's WAL past the fork is kept out of the archive and named: quarantined as divergent,
    # or, when Patroni gave the zombie the key back, the promoted branch retired (docs/ha.md).
    ran = ha.pgvault("check", node=ha.cluster.leader())
    port = ha.cluster.nodes[old].pg_port   # a frozen Patroni cannot say its name: host:port then
    named = "split brain" in ran.out and (old in ran.out or f":{port}" in ran.out or "abandoned" in ran.out)
    out.check("the divergent WAL is kept out of the archive, the node named (check: CRITICAL split brain)",
              named and ran.code == 2, f"exit {ran.code}: " + " | ".join(
                  line.strip() for line in ran.out.splitlines() if "split brain" in line)[:600])
    _rejoin(lab, out)
    return out
