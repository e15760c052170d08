"""The load and its ledger: a writer that commits one numbered row at a time into
``lab_ledger`` and remembers, for every commit the server acknowledged, its commit timestamp
(``pg_xact_commit_timestamp``, track_commit_timestamp = on) — the exact instant a
recovery_target_time is compared with. A second writer adds bulk (pgbench-style updates on a
wider table) so that WAL segments fill and switch as a busy cluster's do.

``expected(t)`` is the truth a restore to ``t`` must match: every acknowledged id committed at
or before ``t`` and no other."""
from __future__ import annotations

import threading
from datetime import datetime

from ... import pg

SCHEMA = """
CREATE TABLE IF NOT EXISTS lab_ledger (id bigint PRIMARY KEY, at timestamptz NOT NULL DEFAULT clock_timestamp());
CREATE TABLE IF NOT EXISTS lab_bulk (k int PRIMARY KEY, v int NOT NULL, pad text NOT NULL);
INSERT INTO lab_bulk SELECT g, 0, repeat(md5(g::text), 8) FROM generate_series(1, 2000) g ON CONFLICT DO NOTHING;
"""


class Ledger:
    def __init__(self, conninfo: str, *, rate: float = 25.0):
        self.conninfo = conninfo
        self.interval = 1.0 / rate
        self.acked: dict[int, datetime] = {}
        # ids whose INSERT was sent but whose outcome the load never learnt (the connection died
        # in between, as in a switchover): a restore may or may not hold them, neither is wrong.
        self.uncertain: set[int] = set()
        self.errors: list[str] = []
        self.next_id = 1
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._paused = threading.Event()
        self._threads: list[threading.Thread] = []

    def create(self) -> None:
        with pg.connect(self.conninfo) as conn:
            conn.execute(SCHEMA)

    def start(self) -> "Ledger":
        for target in (self._write, self._bulk):
            t = threading.Thread(target=target, name=f"lab-{target.__name__}", daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(10)

    def count(self) -> int:
        with self._lock:
            return len(self.acked)

    def last(self) -> datetime | None:
        with self._lock:
            return max(self.acked.values()) if self.acked else None

    def expected(self, t: datetime) -> set[int]:
        with self._lock:
            return {i for i, at in self.acked.items() if at <= t}

    def times(self) -> list[datetime]:
        with self._lock:
            return sorted(self.acked.values())

    def describe(self, ids) -> str:
        """'N rows: ids a..b (committed t1 .. t2)' for a report, from the ledger's own record."""
        ids = sorted(ids)
        if not ids:
            return "no rows"
        with self._lock:
            ats = [self.acked[i] for i in ids if i in self.acked]
        span = f", committed {min(ats).isoformat()} .. {max(ats).isoformat()}" if ats else ""
        shown = ", ".join(str(i) for i in ids[:20]) + (" ..." if len(ids) > 20 else "")
        return f"{len(ids)} rows (ids {ids[0]}..{ids[-1]}: {shown}{span})"

    # -- writers: reconnect on any error (a failover, a restart, too many connections)
    def _write(self) -> None:
        conn = None
        while not self._stop.is_set():
            try:
                if conn is None:
                    conn = pg.connect(self.conninfo)
                with self._lock:
                    n = self.next_id
                    self.next_id += 1
                    self.uncertain.add(n)   # until its commit time is read back
                conn.execute("INSERT INTO lab_ledger (id) VALUES (%s)", (n,))
                # Autocommit: the INSERT has committed once execute returns; its commit time is
                # what recovery_target_time is compared with.
                at = conn.execute("SELECT pg_xact_commit_timestamp(xmin) FROM lab_ledger WHERE id = %s",
                                  (n,)).fetchone()[0]
                with self._lock:
                    self.acked[n] = at
                    self.uncertain.discard(n)
            except Exception as exc:  # noqa: BLE001 - a lab load keeps going and records why
                self.errors.append(f"{datetime.now().isoformat()}: {exc!r}"[:300])
                conn = _close(conn)
                self._stop.wait(0.5)
                continue
            self._stop.wait(self.interval)
        _close(conn)

    def _bulk(self) -> None:
        conn = None
        i = 0
        while not self._stop.is_set():
            try:
                if conn is None:
                    conn = pg.connect(self.conninfo)
                i += 1
                conn.execute("UPDATE lab_bulk SET v = v + 1, pad = md5(random()::text) || pad WHERE k %% 40 = %s",
                             (i % 40,))
                if i % 40 == 0:
                    conn.execute("UPDATE lab_bulk SET pad = repeat(md5(random()::text), 8)")
            except Exception:  # noqa: BLE001
                conn = _close(conn)
                self._stop.wait(0.5)
                continue
            self._stop.wait(0.05)
        _close(conn)


def _close(conn):
    if conn is not None:
        try:
            conn.close()
        except Exception:  # noqa: BLE001
            pass
    return None
