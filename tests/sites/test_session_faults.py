"""One injected storage failure at every call position of a backup session writing to two
sites (memory sites, one behind FaultySite): the faulty site either holds a backup that
verifies or holds nothing that looks like one; the other site always commits; a clean re-run
converges. (The command-level sweeps — backup, wal-push, expire, restore — build on this.)"""
from __future__ import annotations

import io
import os
from datetime import datetime, timezone

import pytest

from pgvault.catalog import layout
from pgvault.catalog.catalog import Catalog
from pgvault.catalog.formats import Manifest
from pgvault.catalog.session import BackupSession
from pgvault.sites.memory import MemorySite
from pgvault.sites.wrappers import FaultySite, nth

BID = "20261125T000000Z"
DUMP = os.urandom(3 << 20)  # several writes per artifact


def manifest() -> Manifest:
    now = datetime.now(timezone.utc)
    return Manifest(backup_id=BID, cluster="main", job="j", method="logical", started_at=now, finished_at=now,
                    system_identifier="1", pg_version="15.0")


def run(good: Catalog, bad: Catalog) -> BackupSession:
    s = BackupSession({"good": good, "bad": bad}, BID)
    s.add_stream("dump", io.BytesIO(DUMP), compression="none")
    s.add_stream("globals.sql", io.BytesIO(b"CREATE ROLE x;"))
    s.commit(manifest())
    return s


def positions() -> int:
    faulty = FaultySite(MemorySite("bad"))
    run(Catalog(MemorySite("good"), "main"), Catalog(faulty, "main"))
    return len(faulty.calls)


@pytest.mark.parametrize("applied", [False, True], ids=["lost-request", "lost-answer"])
def test_one_failure_at_every_call_position(applied):
    n_calls = positions()
    assert n_calls >= 6
    for n in range(1, n_calls + 1):
        inner = MemorySite("bad")
        faulty = FaultySite(inner, fail_on=nth(n), applied=applied)
        good, bad = Catalog(MemorySite("good"), "main"), Catalog(faulty, "main")
        s = run(good, bad)
        assert faulty.failures, f"call {n} was not made"
        assert s.committed == ["good"] and "bad" in s.failed, n
        assert good.verify().ok
        plain = Catalog(inner, "main")
        assert plain.backup_ids() == [] and list(inner.list(layout.backup_prefix("main", BID))) == [], n
        # A clean re-run converges.
        faulty.fail_on = None
        s = run(Catalog(MemorySite("good"), "main"), bad)
        assert s.committed == ["good", "bad"] and plain.verify().ok, n
