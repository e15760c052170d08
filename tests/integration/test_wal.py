"""WAL archiving end to end: a real PostgreSQL 15 archiving through `pgvault wal-push %p` to a
local site and two S3 sites on moto_server; wal-fetch; barman-cloud-wal-restore reading what
pgvault stored; duplicates, foreign WAL, damaged copies and a dead site."""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pgvault import sandbox
from pgvault.wal import names
from tests.conftest import World, archiving_world

SEG = 16 << 20


@pytest.fixture
def walworld(workdir, moto):
    """An archiving instance; sites a (local), eu (S3), us (S3 on a second moto it may pause)."""
    w = archiving_world(workdir, moto)
    inst = w.pg
    w.us_moto = sandbox.Moto().start()
    w.moto = w.us_moto
    w.s3_site("us", "us-east-1")
    w.moto = moto
    # Short timeouts so a paused site fails fast (the outage test); one retry interval of 1s.
    w.sites["us"].update(connect_timeout=1, read_timeout=2, max_attempts=1)
    w.state = sandbox.owned_dir(workdir / "state")
    w.policy(wal={"sites": ["a", "eu", "us"], "retry_interval": "1s"}, state_dir=str(w.state))
    inst.start()
    yield w
    inst.stop("immediate")
    w.us_moto.stop()


def switch(inst, n=1):
    for _ in range(n):
        inst.psql("CREATE TABLE IF NOT EXISTS t (x int); INSERT INTO t VALUES (1); SELECT pg_switch_wal()")


def current_segment(inst) -> str:
    return inst.psql("SELECT pg_walfile_name(pg_current_wal_lsn())").strip()


def archived_expected(inst) -> set[str]:
    """Every segment before the open one: what the archive must hold once it has caught up."""
    last = current_segment(inst)
    return {names.segment_name(1, n) for n in range(1, names.parse_segment(last)[1])}


def no_ready(inst) -> bool:
    status = inst.pgdata / "pg_wal" / "archive_status"
    return not [f for f in os.listdir(status) if f.endswith(".ready")]


def listed(w: World, site: str) -> set[str]:
    from pgvault.catalog import layout
    from pgvault.policy import load_policy
    from pgvault.sites import open_site

    pol = load_policy(str(w.workdir / "policy.yaml"))
    s = open_site(site, pol.sites[site])
    return {names.split_stored(o.key.rsplit("/", 1)[1])[0] for o in s.list(layout.wal_prefix("main"))}


def sysid(inst) -> str:
    return inst.psql("SELECT system_identifier FROM pg_control_system()").strip()


def fetch(w, name, dest, *extra, check=True):
    return w.cli("wal-fetch", name, str(dest), *extra, check=check)


def test_every_site_receives_wal_and_barman_reads_it(walworld):
    w = walworld
    switch(w.pg, 4)
    expected = archived_expected(w.pg)
    for site in ("a", "eu", "us"):
        sandbox.wait_until(lambda: expected <= listed(w, site), 60, f"segments at site {site}")
    assert sandbox.wait_until(lambda: no_ready(w.pg), 30, "no .ready left")

    # Each site's copy comes back intact through wal-fetch, with this cluster's identity.
    seg = sorted(expected)[-1]
    copies = {}
    for site in ("a", "eu", "us"):
        dest = w.workdir / f"fetched-{site}"
        fetch(w, seg, dest, "--from-site", site)
        data = dest.read_bytes()
        hdr = names.parse_header(data)
        assert (len(data), str(hdr.system_identifier)) == (SEG, sysid(w.pg))
        copies[site] = hashlib.sha256(data).hexdigest()
    assert len(set(copies.values())) == 1

    # Stock barman-cloud-wal-restore fetches the same segment from the S3 site.
    eu = w.sites["eu"]
    dest = w.workdir / "barman-restored"
    subprocess.run([str(Path(sys.executable).parent / "barman-cloud-wal-restore"), "--endpoint-url", eu["endpoint_url"],
                    f"s3://{eu['bucket']}/{eu['prefix']}/clusters", "main", seg, str(dest)],
                   check=True, capture_output=True, env=dict(os.environ))
    assert hashlib.sha256(dest.read_bytes()).hexdigest() == copies["eu"]

    # The policy binding at every site names this cluster, and check reports no lag.
    cp = w.cli("check", "--json", check=False)
    wal_checks = {c["name"]: c["state"] for c in json.loads(cp.stdout)["checks"] if c["name"].startswith("wal ")}
    assert wal_checks == {"wal a": "OK", "wal eu": "OK", "wal us": "OK"}


def test_duplicate_identical_ok_different_refused_foreign_refused(walworld):
    w = walworld
    switch(w.pg, 2)
    seg = names.segment_name(1, 1)
    sandbox.wait_until(lambda: seg in listed(w, "a"), 60, "first segment archived")
    copy = w.workdir / seg
    fetch(w, seg, copy)
    stored = w.workdir / "site-a/clusters/main/wals/0000000100000000" / f"{seg}.gz"
    before = stored.read_bytes()

    assert w.cli("wal-push", str(copy)).returncode == 0  # identical: success, nothing rewritten
    assert stored.read_bytes() == before

    data = bytearray(copy.read_bytes())
    data[SEG // 2] ^= 0xFF
    copy.write_bytes(bytes(data))
    cp = w.cli("wal-push", str(copy), check=False)
    assert cp.returncode == 1
    assert "different content" in cp.stderr and "Traceback" not in cp.stderr
    assert stored.read_bytes() == before
    assert gzip.decompress(before) != bytes(data)

    # The same segment number from another cluster (another system identifier) is refused.
    foreign = bytearray(data)
    foreign[24:32] = (int(sysid(w.pg)) ^ 0x5A5A).to_bytes(8, "little")
    other = w.workdir / "other" / names.segment_name(1, 99)
    other.parent.mkdir()
    foreign[8:16] = (99 * SEG).to_bytes(8, "little")  # page address of segment 99
    other.write_bytes(bytes(foreign))
    cp = w.cli("wal-push", str(other), check=False)
    assert cp.returncode == 2
    assert "system identifier" in cp.stderr and "HINT" in cp.stderr
    assert names.segment_name(1, 99) not in listed(w, "a") | listed(w, "eu")


def test_fetch_missing_is_quiet_and_damaged_copy_falls_back(walworld):
    w = walworld
    cp = fetch(w, names.segment_name(1, 0x7777), w.workdir / "nothing", check=False)
    assert (cp.returncode, cp.stderr.strip()) == (1, "")
    cp = fetch(w, "00000009.history", w.workdir / "nothing", check=False)
    assert (cp.returncode, cp.stderr.strip()) == (1, "")
    assert not (w.workdir / "nothing").exists()

    switch(w.pg, 2)
    seg = names.segment_name(1, 1)
    sandbox.wait_until(lambda: all(seg in listed(w, s) for s in ("a", "eu", "us")), 60, "segment everywhere")
    stored = w.workdir / "site-a/clusters/main/wals/0000000100000000" / f"{seg}.gz"
    good = stored.read_bytes()
    stored.write_bytes(good[: len(good) // 2])  # truncated: the gzip check fails
    dest = w.workdir / "fetched"
    cp = fetch(w, seg, dest)
    assert "damaged" in cp.stderr and "'a'" in cp.stderr
    assert dest.read_bytes() == gzip.decompress(good)


def switch_during_outage(w, n: int) -> set:
    """With site us paused: write ``n`` segments, wait until sites a and eu hold them and
    pg_wal has drained; return the segments the archive must hold."""
    switch(w.pg, n)
    expected = archived_expected(w.pg)
    for site in ("a", "eu"):
        sandbox.wait_until(lambda: expected <= listed(w, site), 120, f"segments at {site} during the outage")
    sandbox.wait_until(lambda: no_ready(w.pg), 60, "pg_wal drained during the outage")
    return expected


def test_dead_site_does_not_stall_others_and_gets_its_backlog(walworld):
    w = walworld
    switch(w.pg, 1)
    sandbox.wait_until(lambda: names.segment_name(1, 1) in listed(w, "us"), 60, "us receives WAL")
    w.us_moto.pause()
    try:
        # The local and the healthy S3 site keep receiving; PostgreSQL's queue drains.
        expected = switch_during_outage(w, 3)
        ws = w.cli("wal-status", "--json", check=False)
        assert ws.returncode == 3          # README: 3 = a site is unreachable
        status = json.loads(ws.stdout)
        assert status["sites"]["us"]["spooled"] >= 1
        assert not status["sites"]["us"]["reachable"]
        cp = w.cli("check", check=False)
        assert cp.returncode == 2 and "wal us" in cp.stdout
    finally:
        w.us_moto.resume()
    # Back: the backlog is shipped (here by wal-ship; wal-push does it too after retry_interval).
    sandbox.wait_until(lambda: w.cli("wal-ship", check=False).returncode == 0, 60, "backlog delivered")
    assert expected <= listed(w, "us")
    status = json.loads(w.cli("wal-status", "--json").stdout)["sites"]["us"]
    assert (status["spooled"], status["gaps"], status["lag_segments"]) == (0, [], 0)
    assert not list((w.state / "wal-spool" / "files").iterdir())


def test_sync_sites_one_background_shipper_delivers_and_a_dead_first_site_is_stood_in_for(walworld):
    """wal.sync_sites: 1 — wal-push writes to the first site that is up and returns; a detached
    `wal-ship --follow` delivers to the others. With the first site dead, the next stands in."""
    w = walworld
    w.policy(wal={"sites": ["us", "a", "eu"], "sync_sites": 1, "retry_interval": "1s"}, state_dir=str(w.state))
    spool = w.state / "wal-spool"
    switch(w.pg, 3)
    expected = archived_expected(w.pg)
    for site in ("us", "a", "eu"):
        sandbox.wait_until(lambda: expected <= listed(w, site), 90, f"segments at {site}")
    sandbox.wait_until(lambda: not list((spool / "files").iterdir()), 60, "the shipper emptied the spool")
    log = spool / "shipper.log"
    assert log.exists() and log.stat().st_mode & 0o077 == 0
    sandbox.wait_until(lambda: any(json.loads(line).get("message", "").startswith("shipped ")
                                   for line in log.read_text().splitlines() if line.startswith("{")), 30, "shipper log")

    w.us_moto.pause()   # the first sync site dies: site a stands in, eu and us are owed it
    try:
        expected = switch_during_outage(w, 3)
        ws = w.cli("wal-status", "--json", check=False)
        assert ws.returncode == 3
        status = json.loads(ws.stdout)["sites"]
        assert status["us"]["spooled"] >= 1 and status["eu"]["spooled"] == 0
    finally:
        w.us_moto.resume()
    # WAL keeps flowing; the shipper the next push starts (or the one still running, after
    # retry_interval) delivers the backlog to the returning site with nothing run by hand.
    switch(w.pg, 1)
    expected = archived_expected(w.pg)
    sandbox.wait_until(lambda: expected <= listed(w, "us"), 120, "backlog delivered to us")
    sandbox.wait_until(lambda: not list((spool / "files").iterdir()), 60, "spool empty")
    status = json.loads(w.cli("wal-status", "--json").stdout)["sites"]["us"]
    assert (status["spooled"], status["gaps"]) == (0, [])
