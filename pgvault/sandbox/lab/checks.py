"""The lab's pass criterion, checked after every scenario (the same for `lab run` and `lab soak`):

1. every backup verifies (`pgvault verify` at every site);
2. every site's window is unbroken where it should be (`pgvault windows --json`: no hole at a
   site that the scenario did not mean to break);
3. nothing that PostgreSQL was told is archived is missing: every segment from the first one
   the lab archived to ``pg_stat_archiver.last_archived_wal`` is at every WAL site, once the
   spool has drained (a segment at no site at all is *lost*);
4. sampled restore points: `pgvault restore --to-time T --from-site S --start` into a scratch
   directory returns exactly the ledger rows committed by T — no row missing, none extra. A
   point that no site can restore to names the ledger rows it loses.

Each check is a ``Check`` with a name, a verdict, the evidence and its cost in seconds."""
from __future__ import annotations

import random
import shutil
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta

from ... import pg, proc
from ...wal import names


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    seconds: float = 0.0
    evidence: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["seconds"] = round(self.seconds, 2)
        return d


def _timed(fn):
    def wrapper(*a, **kw) -> Check:
        t0 = time.monotonic()
        c = fn(*a, **kw)
        c.seconds = time.monotonic() - t0
        return c
    wrapper.__name__ = fn.__name__
    return wrapper


@_timed
def verify(world) -> Check:
    ran = world.pgvault("verify")
    return Check("every backup verifies", ran.code == 0,
                 "pgvault verify: every artifact at every site re-hashed" if ran.code == 0
                 else f"pgvault verify exited {ran.code}: {ran.tail()}")


def windows_doc(world) -> dict:
    _ran, doc = world.json_of("windows")
    return doc or {"sites": []}


@_timed
def windows(world, broken_ok: set[str] = frozenset()) -> Check:
    doc = windows_doc(world)
    bad, seen = [], {}
    for s in doc.get("sites", []):
        u = s.get("unbroken")
        seen[s["site"]] = {"holes": s["holes"], "unbroken": u}
        if s["site"] in broken_ok or s["site"] not in world.base_sites:   # no base there: no window
            continue
        if u is None:
            bad.append(f"{s['site']}: nothing restorable")
        elif s["holes"]:
            holes = [h for t in s["timelines"] for h in t["holes"] if not _in_flight(world, h)]
            if not holes:
                continue   # only WAL newer than what archived() established, still on its way
            bad.append(f"{s['site']}: {s['holes']} hole(s): " + "; ".join(
                f"{h.get('start_time')} .. {h.get('end_time')} ({h.get('detail', h.get('cause', ''))})" for h in holes)[:400])
    missing = sorted(set(world.base_sites) - set(seen))
    bad += [f"{m}: could not be read" for m in missing]
    return Check("every base site's window is unbroken", not bad, "; ".join(bad) or ", ".join(
        f"{k}: unbroken {v['unbroken']['seconds']}s" for k, v in seen.items() if v["unbroken"]), evidence=seen)


def _in_flight(world, hole: dict) -> bool:
    """A hole that starts after the instant archived() proved complete: segments archived since
    then may still be owed to the site through the spool (delivered in any order)."""
    start = hole.get("start_time")
    return bool(world.switched_at and start and datetime.fromisoformat(start) > world.switched_at)


def stored_segments(world, site: str) -> set[str]:
    return stored_segments_of(world, world.policy_file, site)


def stored_segments_of(world, policy_file, site: str) -> set[str]:
    """The WAL segment names ``site`` holds for the cluster of ``policy_file``."""
    from ...catalog import layout
    from ...policy import load_policy
    from ...sites import open_site

    pol = load_policy(str(policy_file))
    s = open_site(site, pol.sites[site])
    out = set()
    for o in s.list(layout.wal_prefix(pol.cluster.name)):
        name = names.split_stored(o.key.rsplit("/", 1)[1])[0]
        if names.kind(name) == "segment":
            out.add(name)
    return out


def expected_segments(first: str, last: str) -> list[str]:
    """Every segment name from ``first`` to ``last`` on last's timeline (16 MiB segments).
    >>> expected_segments("000000010000000000000003", "000000010000000000000005")
    ['000000010000000000000003', '000000010000000000000004', '000000010000000000000005']
    """
    if not first or not last:
        return []
    t1, a = names.parse_segment(first)
    t2, b = names.parse_segment(last)
    return [names.segment_name(t2, n) for n in range(a, b + 1)]


def _switch_and_wait(world, timeout: float) -> str:
    seg = world.switch_wal()
    proc.wait_until(lambda: world.last_archived() >= seg, timeout, f"{seg} to be archived", interval=0.3)
    return seg


@_timed
def archived(world, *, drain_timeout: float = 120) -> Check:
    world.switched_at = datetime.fromisoformat(world.sql("SELECT now()"))
    try:
        _switch_and_wait(world, 60)
    except Exception:  # noqa: BLE001 - what is missing is reported below
        pass
    last = world.last_archived()
    want = expected_segments(world.first_segment, last)
    # What is still owed through the spool is not missing yet: the shipper delivers it within
    # seconds once the site answers again. Wait for that, bounded.
    if world.backlog():
        # With wal.sync_sites = all no background shipper runs: the backlog goes with the next
        # wal-push, or with `wal-ship`, which a deployment's tick runs every minute. Run it
        # now, as the tick would, rather than wait for the next segment.
        world.pgvault("wal-ship", timeout=drain_timeout)
    try:
        proc.wait_until(lambda: not world.backlog(), drain_timeout, "the WAL spool to drain", interval=0.5)
    except Exception:  # noqa: BLE001 - reported below with what is still owed
        pass
    have = {s: stored_segments(world, s) for s in world.wal_sites()}
    lost = [w for w in want if not any(w in h for h in have.values())]
    absent = {s: [w for w in want if w not in h] for s, h in have.items()}
    absent = {s: v for s, v in absent.items() if v}
    ok = not lost and not absent
    detail = (f"{len(want)} segments {world.first_segment}..{last} at every WAL site" if ok else
              "; ".join(([f"LOST (reported archived, at no site): {', '.join(lost[:10])}"] if lost else [])
                        + [f"{s} lacks {len(v)}: {', '.join(v[:5])}" for s, v in absent.items()])
              + (f"; spool still owes {world.backlog()}" if world.backlog() else ""))
    return Check("nothing reported archived is missing", ok, detail,
                 evidence={"last_archived": last, "segments": len(want), "lost": lost,
                           "absent": {s: len(v) for s, v in absent.items()}})


def settles(lab, sites: list[str] | None = None, timeout: float = 60) -> bool:
    """Close the current segment and wait until ``sites`` (default: every WAL site) hold it."""
    world = lab.world
    seg = world.switch_wal()
    try:
        proc.wait_until(lambda: all(seg in stored_segments(world, s) for s in (sites or world.wal_sites())),
                        timeout, f"{seg} at {sites or 'every site'}", interval=0.5)
        return True
    except Exception:  # noqa: BLE001 - False is the answer
        return False


def sample_points(ledger, lo: datetime, hi: datetime, n: int, rng: random.Random) -> list[datetime]:
    """``n`` instants between lo and hi, each half-way between two consecutive acknowledged
    commits (so a target never sits on a commit's own microsecond)."""
    ts = [t for t in ledger.times() if lo <= t <= hi]
    if len(ts) < 2:
        return []
    picks = sorted(rng.sample(range(len(ts) - 1), min(n, len(ts) - 1)))
    return [ts[i] + (ts[i + 1] - ts[i]) / 2 for i in picks]


def restore_at(world, ledger, site: str, t: datetime, *, policy_file=None, label: str = "", dbname: str = "lab") -> Check:
    """Restore to ``t`` from ``site`` into a scratch directory, compare with the ledger."""
    t0 = time.monotonic()
    dest = world.base / "restores" / f"{site}-{t.strftime('%H%M%S%f')}"
    dest.parent.mkdir(exist_ok=True)
    port = pg.free_port()
    iso = t.isoformat()
    name = f"restore to {iso} from {site}" + (f" ({label})" if label else "")
    want = ledger.expected(t)
    ran = world.pgvault("restore", "--to-time", iso, "--from-site", site, "--target-dir", str(dest),
                        "--port", str(port), "--start", policy_file=policy_file, timeout=240)
    rto = time.monotonic() - t0
    ev = {"site": site, "target": iso, "expected_rows": len(want), "rto_seconds": round(rto, 2),
          "command": ran.shown(), "exit": ran.code}
    try:
        if ran.code != 0 or "recovery promoted" not in ran.out:
            why = ran.tail(400)
            lost = want - restorable_before(world, site, t, ledger)
            ev["lost"] = sorted(lost)
            return Check(name, False, f"restore failed (exit {ran.code}): {why}; the ledger rows committed by "
                         f"then that no restore returns: {ledger.describe(lost)}", rto, ev)
        inst = pg.Instance(dest, port, socket_dir=dest)
        got = {int(x) for x in inst.psql("SELECT id FROM lab_ledger WHERE id > 0", dbname=dbname).split()}
        with ledger._lock:
            unsure = set(ledger.uncertain)
        missing, extra = want - got, got - want - unsure
        ev.update(restored_rows=len(got), missing=sorted(missing), extra=sorted(extra))
        if missing or extra:
            return Check(name, False, f"ledger mismatch: missing {ledger.describe(missing)}; "
                         f"extra {ledger.describe(extra)}", rto, ev)
        return Check(name, True, f"exactly the {len(want)} ledger rows committed by then (RTO {rto:.1f}s)", rto, ev)
    finally:
        pg.Instance(dest, 0).stop("immediate")
        shutil.rmtree(dest, ignore_errors=True)


def restorable_before(world, site: str, t: datetime, ledger) -> set[int]:
    """The ledger rows a restore from ``site`` could return at best for a target ``t``: those
    committed by the latest restorable instant at or before ``t`` (from the site's windows)."""
    best = None
    for s in windows_doc(world).get("sites", []):
        if s["site"] != site:
            continue
        for tl in s["timelines"]:
            for iv in tl["intervals"]:
                lo, hi = (datetime.fromisoformat(iv[k]) if iv[k] else None for k in ("start_time", "end_time"))
                if lo and hi and lo <= t:
                    cand = min(hi, t)
                    best = cand if best is None or cand > best else best
    return ledger.expected(best) if best else set()


def window_bounds(wdoc: dict, site: str) -> tuple[datetime, datetime] | None:
    for s in wdoc.get("sites", []):
        u = s.get("unbroken")
        if s["site"] == site and u and u["start_time"] and u["end_time"]:
            return datetime.fromisoformat(u["start_time"]), datetime.fromisoformat(u["end_time"])
    return None


def sampled_restores(world, ledger, sites: list[str], n: int, rng: random.Random, newest: bool = False) -> list[Check]:
    """``n`` restore points per site, drawn from the lab's whole history after the first base
    (not from the site's window: a hole the lab did not expect must show up as lost rows)."""
    checks = []
    lo = world.first_base_time
    hi = datetime.fromisoformat(world.sql("SELECT now()")) - timedelta(seconds=1)
    if world.switched_at is not None:   # set by archived(): WAL up to then is archived
        hi = min(hi, world.switched_at)
    for site in sites:
        points = sample_points(ledger, lo, hi, n - 1 if newest else n, rng)
        if newest:
            points += sample_points(ledger, hi - timedelta(seconds=2), hi, 1, rng)
        for t in points:
            checks.append(restore_at(world, ledger, site, t, label="newest" if newest and t == points[-1] else ""))
    return checks


def criterion(world, ledger, rng: random.Random, *, sites: list[str], samples: int, newest: bool = False,
              broken_ok: set[str] = frozenset()) -> list[Check]:
    """The whole pass criterion after one scenario."""
    out = [archived(world), verify(world), windows(world, broken_ok)]
    out += sampled_restores(world, ledger, sites, samples, rng, newest)
    return out
