"""Retiring an abandoned branch at a real local site (pgvault.wal.divergence.retire_branches):
the cluster's leader runs on timeline 1 again after timeline 2 had forked from it."""
from __future__ import annotations

import hashlib
import json

from pgvault.catalog import layout
from pgvault.sites.base import get_bytes, get_or_none, put_bytes
from pgvault.sites.local import LocalSite, LocalSiteConfig
from pgvault.wal import divergence

HISTORY2 = "1\t0/5000060\tno recovery target specified\n"


def _site(tmp_path):
    return LocalSite("here", LocalSiteConfig(type="local", path=str(tmp_path / "here")))


def _quarantined_divergent(site, name: str, raw: bytes, new_timeline: int) -> str:
    fork = divergence.Fork(1, 0x5000060, new_timeline)
    return divergence.quarantine(site, "main", name, ".gz", b"gz:" + raw, raw, reason="divergent", header=None,
                                 fork=fork, who={"host": "h", "node": "n1"}, segment_size=16 << 20)


def test_a_dead_branch_leaves_the_archive_and_the_live_timeline_is_put_back(tmp_path):
    site = _site(tmp_path)
    keep = layout.wal_key("main", "000000010000000000000004", ".gz")
    put_bytes(site, keep, b"tl1-4")
    dead = {layout.wal_key("main", "00000002.history"): HISTORY2.encode(),
            layout.wal_key("main", "000000020000000000000005", ".gz"): b"tl2-5",
            layout.wal_key("main", "000000020000000000000006", ".gz"): b"tl2-6"}
    for k, v in dead.items():
        put_bytes(site, k, v)
    evidence = _quarantined_divergent(site, "000000010000000000000005", b"tl1-5", 2)

    out = divergence.retire_branches(site, "main", 1, {2: HISTORY2}, leader="n1", who={"host": "h", "node": "n1"})

    assert sorted(out["retired"]) == ["00000002.history", "000000020000000000000005", "000000020000000000000006"]
    assert out["reinstated"] == ["000000010000000000000005"]
    for k in dead:
        assert get_or_none(site, k) is None, k
    assert get_bytes(site, keep) == b"tl1-4"
    assert get_bytes(site, layout.wal_key("main", "000000010000000000000005", ".gz")) == b"gz:tl1-5"
    assert get_or_none(site, evidence) is None  # the live segment's divergence evidence is gone with it
    docs = {d["name"]: d for d in divergence.read_evidence(site, "main")}
    assert set(docs) == set(out["retired"])
    seg = docs["000000020000000000000006"]
    assert seg["reason"] == "abandoned-timeline" and seg["timeline"] == 2
    assert seg["fork"] == {"history": "00000002.history", "switchpoint": "0/5000060", "timeline": 1, "new_timeline": 2}
    assert seg["sender"]["retired_by_leader"] == "n1"
    assert get_bytes(site, seg["stored"]) == b"tl2-6"  # the branch's bytes are kept, byte for byte
    assert seg["sha256"] == hashlib.sha256(b"tl2-6").hexdigest()
    assert "re-cloned" in divergence.remedy(seg) and "timeline 1" in divergence.remedy(seg)


def test_evidence_of_another_fork_and_of_conflicts_stays(tmp_path):
    site = _site(tmp_path)
    # Timeline 3 forked from timeline 2; the leader is back on timeline 2 (not 1).
    history3 = HISTORY2 + "2\t0/9000000\tno recovery target specified\n"
    put_bytes(site, layout.wal_key("main", "00000003.history"), history3.encode())
    put_bytes(site, layout.wal_key("main", "000000020000000000000009", ".gz"), b"tl2-9")
    tl1 = _quarantined_divergent(site, "000000010000000000000005", b"tl1-5", 2)  # timeline 1's: not reinstated
    conflict = divergence.quarantine(site, "main", "000000020000000000000008", ".gz", b"x", b"x", reason="conflict",
                                     header=None, fork=None, who={"host": "h"}, segment_size=16 << 20)

    out = divergence.retire_branches(site, "main", 2, {3: history3}, leader="n2", who={"host": "h"})

    assert out == {"retired": ["00000003.history"], "reinstated": []}
    assert get_bytes(site, layout.wal_key("main", "000000020000000000000009", ".gz")) == b"tl2-9"
    assert get_or_none(site, tl1) is not None and get_or_none(site, conflict) is not None
    doc = json.loads(get_bytes(site, layout.quarantine_key(
        "main", "00000003.history", hashlib.sha256(history3.encode()).hexdigest()[:8], ".json")))
    assert doc["fork"]["switchpoint"] == "0/9000000" and doc["fork"]["timeline"] == 2
