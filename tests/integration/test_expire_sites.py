"""pgvault expire against real sites (a local directory and an S3 bucket on moto_server):
PITR bases as a physical method records them (start_wal), WAL in Barman's layout, pins and
debris. The manifests are written through the Catalog exactly as run_backup writes them."""
from __future__ import annotations

import json
import os
import time
from datetime import datetime, timedelta, timezone

from pgvault import sandbox
from pgvault.catalog import layout
from pgvault.catalog.catalog import Catalog
from pgvault.catalog.formats import Manifest
from pgvault.policy import load_policy
from pgvault.sites import open_sites
from pgvault.sites.base import get_bytes, put_bytes

from .test_tick import ROOT_ENV

UTC = timezone.utc


def seg(n: int, tl: int = 1) -> str:
    return f"{tl:08X}{n >> 8:08X}{n & 0xFF:08X}"


def base_manifest(bid: str, start: int) -> Manifest:
    t = layout.backup_time(bid)
    return Manifest(backup_id=bid, cluster="main", job="base", method="barman", started_at=t, finished_at=t,
                    system_identifier="1", pg_version="15", timeline=1, start_wal=seg(start), stop_wal=seg(start + 1),
                    facts={"barman_backup_id": bid})


def test_expire_bases_wal_pins_and_debris_at_local_and_s3(s3world):
    w = s3world
    w.local_site("a")
    w.s3_site("s", region="eu-west-1")
    w.jobs["base"] = {"method": "barman", "sites": ["a", "s"], "retain": {"count": 2}, "retain_at": {"s": {"count": 1}}}
    path = w.policy()
    policy = load_policy(path)
    ids = [f"2026111{d}T030000Z" for d in range(1, 6)]             # five bases, one a day
    cats = {n: Catalog(s, "main") for n, s in open_sites(policy).items()}
    for cat in cats.values():
        for i, bid in enumerate(ids):
            put_bytes(cat.site, layout.artifact("main", bid, "backup.info"), b"x")
            cat.write_manifest(base_manifest(bid, 0x10 * (i + 1)))
        for n in range(0x00, 0x58):
            put_bytes(cat.site, layout.wal_key("main", seg(n), ".gz"), b"w")
        put_bytes(cat.site, layout.wal_key("main", "00000002.history"), b"h")
    # Pin the oldest base at the local site only.
    env = dict(ROOT_ENV(w), PGVAULT_NOW="2026-11-20T00:00:00Z")
    w.cli("pin", ids[0], "--site", "a", env=env)
    # An interrupted backup, old enough to be debris, at the local site.
    old = w.workdir / "site-a" / "clusters/main/backups/20261101T000000Z"
    put_bytes(cats["a"].site, layout.artifact("main", "20261101T000000Z", "part.zst"), b"p")
    past = time.time() - 2 * 86400
    os.utime(old / "part.zst", (past, past))

    doc = {s["site"]: s for s in json.loads(w.cli("expire", "--dry-run", "--json", env=env).stdout)}
    a = {b["backup_id"]: (b["action"], b["reasons"]) for b in doc["a"]["backups"]}
    assert a == {ids[4]: ("KEEP", ["count 2"]), ids[3]: ("KEEP", ["count 2"]),
                 ids[2]: ("EXPIRE", ["beyond count 2"]), ids[1]: ("EXPIRE", ["beyond count 2"]),
                 ids[0]: ("KEEP", ["pinned"])}
    # WAL before the oldest kept base (the pinned one at a, the newest at s) goes; nothing else.
    assert doc["a"]["wal_cutoff"] == seg(0x10) and doc["a"]["wal_expire"] == 0x10
    assert doc["s"]["wal_cutoff"] == seg(0x50) and doc["s"]["wal_expire"] == 0x50
    assert doc["a"]["debris"] == [layout.artifact("main", "20261101T000000Z", "part.zst")]
    assert len(list(cats["a"].site.list(layout.wal_prefix("main")))) == 0x59   # dry run deleted nothing

    out = w.cli("expire", env=env).stdout
    assert "site a: kept 3, expired 2 backup(s), 16 WAL file(s), 1 debris object(s)" in out
    assert cats["a"].backup_ids() == [ids[0], ids[3], ids[4]]
    assert cats["s"].backup_ids() == [ids[4]]
    # Manifest and artifacts of expired backups are gone (no debris left behind by expiry).
    assert not list(cats["s"].site.list(layout.backup_prefix("main", ids[1])))
    assert cats["a"].debris() == [] and cats["s"].debris() == []
    for name, first in (("a", 0x10), ("s", 0x50)):
        left = sorted(o.key.rsplit("/", 1)[-1] for o in cats[name].site.list(layout.wal_prefix("main")))
        assert left == sorted([seg(n) + ".gz" for n in range(first, 0x58)] + ["00000002.history"])

    # Unpinned, the oldest goes too and the WAL it needed follows it.
    w.cli("unpin", ids[0], env=env)
    w.cli("expire", "--site", "a", env=env)
    assert cats["a"].backup_ids() == [ids[3], ids[4]]
    assert min(o.key.rsplit("/", 1)[-1] for o in cats["a"].site.list(layout.wal_prefix("main"))
               if o.key.endswith(".gz")) == seg(0x40) + ".gz"

    # A run of failed backups never deletes the last good ones.
    for d in range(21, 26):
        bid = f"202611{d}T030000Z"
        m = base_manifest(bid, 0x60).model_copy(update={"status": "failed"})
        cats["s"].write_manifest(m)
    out = json.loads(w.cli("expire", "--site", "s", "--json", env=dict(env, PGVAULT_NOW="2026-11-26T00:00:00Z")).stdout)
    kept = [b["backup_id"] for b in out[0]["backups"] if b["action"] == "KEEP"]
    assert kept == [ids[4]]
    assert cats["s"].backup_ids() == [ids[4]]
    # A bad site name is a usage error with a hint.
    cp = w.cli("expire", "--site", "nope", check=False, env=env)
    assert cp.returncode == 2 and "HINT:" in cp.stderr


def test_a_segment_sent_again_after_expire_is_no_gap_and_expires_again(s3world):
    """Expire records its WAL horizon at each site. A segment it removed that a node sends again
    later (Patroni archives a rewound node's WAL) is not the archive's start: wal-status and
    status count no gap between it and the kept WAL, and the next expire removes it again."""
    w = s3world
    w.local_site("a")
    w.s3_site("s", region="eu-west-1")
    w.jobs["base"] = {"method": "barman", "sites": ["a", "s"], "retain": {"count": 1}}
    policy = load_policy(w.policy(wal={"sites": ["a", "s"]}, state_dir=str(sandbox.owned_dir(w.workdir / "state"))))
    cats = {n: Catalog(s, "main") for n, s in open_sites(policy).items()}
    for cat in cats.values():
        for i, bid in enumerate(("20261111T030000Z", "20261112T030000Z")):
            put_bytes(cat.site, layout.artifact("main", bid, "backup.info"), b"x")
            cat.write_manifest(base_manifest(bid, 0x10 * (i + 1)))
        for n in range(0x08, 0x28):
            put_bytes(cat.site, layout.wal_key("main", seg(n), ".gz"), b"w")
    env = dict(ROOT_ENV(w), PGVAULT_NOW="2026-11-20T00:00:00Z")
    w.cli("expire", env=env)
    for name, cat in cats.items():
        doc = json.loads(get_bytes(cat.site, layout.wal_horizon_key("main")))
        assert doc["segment"] == seg(0x20), (name, doc)
        put_bytes(cat.site, layout.wal_key("main", seg(0x0A), ".gz"), b"w")  # sent again by a rewound node
    st = json.loads(w.cli("wal-status", "--json", env=env).stdout)["sites"]
    for name in ("a", "s"):
        assert st[name]["gap_count"] == 0 and st[name]["before_horizon"] == 1, st[name]
        assert st[name]["oldest"] == seg(0x20) and st[name]["horizon"] == seg(0x20), st[name]
    assert "1 segment(s) before the WAL horizon" in w.cli("wal-status", env=env).stdout
    # Without the horizon the same listing has 21 missing segments (0x0B..0x1F): what it prevents.
    cats["a"].site.delete(layout.wal_horizon_key("main"))
    assert json.loads(w.cli("wal-status", "--json", env=env).stdout)["sites"]["a"]["gap_count"] == 0x15
    w.cli("expire", env=env)
    for name, cat in cats.items():
        names = sorted(o.key.rsplit("/", 1)[-1] for o in cat.site.list(layout.wal_prefix("main")))
        assert names[0] == seg(0x20) + ".gz", (name, names[:3])
    # The horizon only moves forward: an expire with an older cutoff leaves it where it is.
    from pgvault.wal import horizon

    assert not horizon.advance(cats["s"].site, "main", seg(0x10))
    assert horizon.read(cats["s"].site, "main") == seg(0x20)
