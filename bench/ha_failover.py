"""Promotion -> first new-timeline segment at every WAL site, in a real Patroni cluster.

A 3-node Patroni + etcd cluster (pgvault.sandbox.ha), every node archiving through
`pgvault wal-push` to a local site and an S3 site (moto_server), archive_mode = always,
archive_timeout = 5 s, a light write load (a row every 50 ms). Rounds alternate a
`patronictl switchover` and a `kill -9` of the leader's postmaster. Per round:

- promoted: PostgreSQL's own instant of promotion — the modification time of
  ``pg_wal/<new tli>.history`` on the new leader, which the startup process writes when it
  selects the new timeline. Until 2026-12-04 it was the moment the bench's
  poll saw ``pg_is_in_recovery() = false``; but ``patronictl switchover`` returns only once the
  switchover is done, so on a switchover that poll began late — seconds late on a loaded machine
  — and the switchover's times looked shorter than the kill -9's (see results);
- seen: when the poll saw the new leader (reported as its lag behind ``promoted``);
- history: promoted -> <new tli>.history at every site;
- segment: promoted -> the first full segment of the new timeline at every site;
- one push: before every round, in steady state on the leader, ``pg_switch_wal()`` -> that
  segment at every site (PostgreSQL's archiver waking, wal-push starting, loading the policy and
  shipping to both sites: what one push costs an archiver), twice.

Goal (issue 14): segment within one archive_timeout plus the time of one push; printed as
``segment / (archive_timeout + median one push)`` per kind (goal <= 1.0).

    /opt/pgvault/venv/bin/python bench/ha_failover.py [ROUNDS] [--keep DIR] [--trace]
        (writes bench/results/ha_failover.txt)

``--trace``: wal-push runs with -v (each invocation logs its files and seconds to the server
log) and the server log lines carry millisecond times; ``--keep DIR``: every node's Patroni +
PostgreSQL log and the rounds' wall-clock times are copied to DIR (for finding where the time
goes).
"""
from __future__ import annotations

import statistics
import sys
import threading
import time
from pathlib import Path

from common import ROOT  # noqa: F401  (puts this checkout first on sys.path)

import yaml

from pgvault import pg, sandbox
from pgvault.sandbox.ha import HACluster
from pgvault.wal import names

ARCHIVE_TIMEOUT = 5


def wal_names(sites: dict, moto) -> dict[str, set[str]]:
    out = {}
    for s, cfg in sites.items():
        if cfg["type"] == "local":
            keys = [p.name for p in Path(cfg["path"], "clusters/main/wals").rglob("*") if p.is_file()]
        else:
            c = moto.client(cfg["region"])
            keys = [o["Key"].rsplit("/", 1)[1] for page in c.get_paginator("list_objects_v2").paginate(
                Bucket=cfg["bucket"], Prefix=f"{cfg['prefix']}/clusters/main/wals/") for o in page.get("Contents", [])]
        out[s] = {names.split_stored(k)[0] for k in keys}
    return out


def load(ha: HACluster, stop: threading.Event) -> None:
    conn = None
    while not stop.is_set():
        try:
            conn = conn or pg.connect(ha.conninfo(target_session_attrs="read-write"))
            pg.query(conn, "INSERT INTO t DEFAULT VALUES")
        except Exception:
            conn = None
        stop.wait(0.05)


class TracedCluster(HACluster):
    """The bench's cluster with wal-push at -v (its info lines reach the server log)."""

    def _archive_command(self, node):
        cmd = super()._archive_command(node)
        return cmd.replace(" wal-push ", " -v --log-format json wal-push ") if cmd else cmd


def pushes(log: Path) -> list[tuple[float, float, str]]:
    """(start, end, message) of every wal-push in a node's log (--trace: JSON lines, whose
    message ends its summary with the seconds it took)."""
    import json
    import re
    from datetime import datetime

    out = []
    for line in log.read_text(errors="replace").splitlines():
        if not line.startswith('{"time"'):
            continue
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        m = re.match(r"wal-push \S+: \d+ file\(s\) in ([\d.]+)s", doc.get("message", ""))
        if m:
            end = datetime.fromisoformat(doc["time"]).timestamp()
            out.append((end - float(m.group(1)), end, doc["message"]))
    return out


def busy_at_promotion(ha: HACluster, rows: list) -> list[str]:
    """Per round: was the new leader's archiver inside a wal-push when it was promoted (PostgreSQL
    asks for the new .history only when that push returns), and for how long after."""
    out = []
    for i, r in enumerate(rows):
        new, t = r[2], r[5]
        inflight = [p for p in pushes(ha.nodes[new].log) if p[0] <= t < p[1]]
        first = next((p for p in pushes(ha.nodes[new].log) if p[0] >= t), None)
        what = (f"inside '{inflight[0][2]}' for {inflight[0][1] - t:.2f} s more" if inflight else "idle")
        nxt = f"; its next push began +{first[0] - t:.2f} s: '{first[2]}'" if first else ""
        out.append(f"#   round {i + 1} ({r[0]}, {new}): archiver at promotion {what}{nxt}")
    return out


def one_push(ha: HACluster, sites: dict, moto) -> float:
    """Steady state: seconds from ``pg_switch_wal()`` on the leader to that segment at every site."""
    leader = ha.leader()
    ha.psql("INSERT INTO t DEFAULT VALUES", leader)  # a switch needs WAL since the last one
    t0 = time.time()
    seg = ha.psql("SELECT pg_walfile_name(pg_switch_wal())", leader).strip()
    while not all(seg in g for g in wal_names(sites, moto).values()):
        if time.time() - t0 > 120:
            raise TimeoutError(f"{seg} not at every site after 120 s")
        time.sleep(0.05)  # the benchmark's sampling period
    return time.time() - t0


def promotion_time(ha: HACluster, node: str, history: str) -> float:
    """When ``node`` was promoted: its history file's modification time (written by the startup
    process as it selects the new timeline, before it ends recovery), read from the file system —
    pg_stat_file() would round it to the second. One host: the bench's clock is PostgreSQL's."""
    return (ha.nodes[node].pgdata / "pg_wal" / history).stat().st_mtime


def main(rounds: int, keep: Path | None = None, trace: bool = False) -> None:
    sandbox.use_this_checkout()
    moto = sandbox.Moto().start()
    d = sandbox.workdir("pgvault-bench-ha-")
    local = sandbox.owned_dir(d / "site-a")
    bucket = "pgv-bench-ha"
    moto.create_bucket(bucket, "eu-west-1")
    sites = {"a": {"type": "local", "path": str(local)},
             "eu": {"type": "s3", "bucket": bucket, "region": "eu-west-1", "prefix": "pg", "endpoint_url": moto.url}}
    (d / "ha").mkdir()
    policies = {f"n{i}": d / f"policy-n{i}.yaml" for i in (1, 2, 3)}
    cls = TracedCluster if trace else HACluster
    params = {"log_line_prefix": "%m [%p] %b "} if trace else {}
    ha = cls(d / "ha", 3, policies=policies, archive_timeout=ARCHIVE_TIMEOUT, parameters=params)
    for n, p in policies.items():
        p.write_text(yaml.safe_dump({"version": 1, "cluster": {"name": "main", "conninfo": ha.conninfo(),
                                                               "patroni": {"url": ha.nodes[n].rest}},
                                     "sites": sites, "wal": {"sites": ["a", "eu"], "retry_interval": "1s"},
                                     "state_dir": str(sandbox.owned_dir(d / f"state-{n}", 0o755))}))
    stop = threading.Event()
    rows, pushes_s = [], []
    try:
        ha.start()
        ha.psql("CREATE TABLE t (id serial, at timestamptz DEFAULT now())")
        threading.Thread(target=load, args=(ha, stop), daemon=True).start()
        for r in range(rounds):
            ha.wait_streaming(timeout=300)
            for _ in range(2):
                pushes_s.append(one_push(ha, sites, moto))
            print(f"one push (steady state): {pushes_s[-2]:.2f} s, {pushes_s[-1]:.2f} s", flush=True)
            kind = "switchover" if r % 2 == 0 else "kill -9"
            old = ha.leader()
            tl_old = ha.timeline(old)
            if kind == "switchover":
                ha.patronictl("switchover", ha.scope, "--leader", old, "--candidate", ha.replicas()[0], "--force")
            else:
                import os
                import signal

                os.kill(ha.nodes[old].postmaster_pid(), signal.SIGKILL)

            def promoted():
                for n, node in ha.nodes.items():
                    if n == old:
                        continue
                    try:
                        with pg.connect(node.conninfo()) as c:
                            if not pg.scalar(c, "SELECT pg_is_in_recovery()"):
                                return n
                    except Exception:
                        pass
                return None
            new = sandbox.wait_until(promoted, 120, "a promotion", interval=0.02)
            seen = time.time()
            tl = tl_old + 1
            hist, seg_at = f"{tl:08X}.history", None
            wall0 = promotion_time(ha, new, hist)
            t_hist = None
            while seg_at is None:
                got = wal_names(sites, moto)
                now = time.time() - wall0  # (one host, one clock: PostgreSQL's and ours)
                if t_hist is None and all(hist in g for g in got.values()):
                    t_hist = now
                if all(any(names.kind(x) == "segment" and x.startswith(f"{tl:08X}") for x in g) for g in got.values()):
                    seg_at = now
                if now > 180:
                    raise TimeoutError(f"round {r}: no timeline {tl} segment at every site after 180 s")
                time.sleep(0.1)  # the benchmark's sampling period (not synchronisation of a test)
            rows.append((kind, old, new, t_hist, seg_at, wall0, seen - wall0))
            print(f"round {r + 1} ({kind} {old} -> {new}): history {t_hist:.2f} s, first segment {seg_at:.2f} s "
                  f"(the poll saw the promotion {seen - wall0:.2f} s after it)", flush=True)
    finally:
        stop.set()
        ha.stop()
        moto.stop()
        import shutil

        if keep is not None:
            from datetime import datetime, timezone

            keep.mkdir(parents=True, exist_ok=True)
            for n, node in ha.nodes.items():
                if node.log.exists():
                    shutil.copy(node.log, keep / f"{n}.log")
            (keep / "rounds.txt").write_text("".join(
                f"round {i + 1} {r[0]} {r[1]} -> {r[2]}: promoted at {datetime.fromtimestamp(r[5], timezone.utc):%H:%M:%S.%f} "
                f"history +{r[3]:.2f} s segment +{r[4]:.2f} s seen +{r[6]:.2f} s\n" for i, r in enumerate(rows)))
        busy = busy_at_promotion(ha, rows) if trace else []  # (the logs go with the directory)
        shutil.rmtree(d, ignore_errors=True)
    from datetime import datetime, timezone
    import os

    out = ["", f"## run of {datetime.now(timezone.utc):%Y-%m-%d %H:%M}Z: {rounds} rounds{' (--trace)' if trace else ''}, "
               f"load average {os.getloadavg()[0]:.1f} at the end",
           "# promotion (the new leader's history file's mtime) -> first new-timeline segment at every WAL site "
           "(local + S3/moto)",
           f"# 3 Patroni nodes, archive_mode=always, archive_timeout={ARCHIVE_TIMEOUT}s, a row every 50 ms; "
           f"rounds alternate switchover / kill -9"]
    push = statistics.median(pushes_s) if pushes_s else float("nan")
    out.append(f"one push (steady state, pg_switch_wal -> every site): median {push:.2f} s "
               f"(runs {', '.join(f'{x:.2f}' for x in pushes_s)}); goal per kind: archive_timeout + one push = "
               f"{ARCHIVE_TIMEOUT + push:.2f} s")
    for kind in ("switchover", "kill -9"):
        sel = [r for r in rows if r[0] == kind]
        if not sel:
            continue
        segs, hists, seens = [r[4] for r in sel], [r[3] for r in sel], [r[6] for r in sel]
        out.append(f"{kind:10}: first segment median {statistics.median(segs):.2f} s "
                   f"(runs {', '.join(f'{x:.2f}' for x in segs)}); history median {statistics.median(hists):.2f} s "
                   f"(runs {', '.join(f'{x:.2f}' for x in hists)}); ratio to archive_timeout "
                   f"{statistics.median(segs) / ARCHIVE_TIMEOUT:.2f}; to the goal "
                   f"{statistics.median(segs) / (ARCHIVE_TIMEOUT + push):.2f}; the poll saw the promotion after "
                   f"{', '.join(f'{x:.2f}' for x in seens)} s")
    out += busy
    text = "\n".join(out) + "\n"
    print(text)
    res = Path(__file__).resolve().parent / "results" / "ha_failover.txt"
    res.parent.mkdir(exist_ok=True)
    with open(res, "a") as fh:  # appended: earlier runs stay for comparison
        fh.write(text)


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("rounds", nargs="?", type=int, default=6)
    ap.add_argument("--keep", type=Path, help="copy the nodes' logs and the rounds' times here")
    ap.add_argument("--trace", action="store_true", help="wal-push -v, millisecond server log times")
    a = ap.parse_args()
    main(a.rounds, a.keep, a.trace)
