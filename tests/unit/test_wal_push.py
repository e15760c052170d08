"""wal-push and wal-fetch against local sites, without PostgreSQL: WAL files made here with a
real long page header (1 MiB segments keep them small)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from pgvault.errors import ClusterMismatch, PgvaultError, SiteError
from pgvault.policy.model import Policy
from pgvault.wal import WalConflict, codec, names, shipper
from pgvault.wal.fetch import WalMissing, WalUnavailable, fetch
from pgvault.wal.push import Archiver
from pgvault.wal.status import archive_status

SEG = 1 << 20
SYSID = 7312345678901234567


def segment(segno: int, sysid: int = SYSID, fill: bytes = b"w") -> bytes:
    hdr = names.LONG_HEADER.pack(0xD110, 2, 1, segno * SEG, 0, sysid, SEG, 8192)
    return hdr + (fill * SEG)[: SEG - len(hdr)]


def make_policy(tmp: Path, sites: dict, **wal) -> Policy:
    return Policy.model_validate({
        "version": 1, "cluster": {"name": "main", "conninfo": "host=/nonexistent"},
        "sites": {n: {"type": "local", "path": str(p)} for n, p in sites.items()},
        "wal": {"sites": list(sites), "retry_interval": "0s", **wal}, "state_dir": str(tmp / "state")})


@pytest.fixture
def pg_wal(tmp_path):
    d = tmp_path / "pgdata" / "pg_wal"
    (d / "archive_status").mkdir(parents=True)
    return d


def put_wal(pg_wal: Path, segno: int, data: bytes | None = None, ready: bool = True) -> Path:
    p = pg_wal / names.segment_name(1, segno, SEG)
    p.write_bytes(data if data is not None else segment(segno))
    if ready:
        (pg_wal / "archive_status" / f"{p.name}.ready").touch()
    return p


def stored(site: Path, segno: int, suffix: str = ".gz") -> Path:
    name = names.segment_name(1, segno, SEG)
    return site / "clusters/main/wals" / name[:16] / f"{name}{suffix}"


def test_push_reaches_every_site_and_batches_ready_files(tmp_path, pg_wal):
    a, b = tmp_path / "a", tmp_path / "b"
    pol = make_policy(tmp_path, {"a": a, "b": b}, batch=3, keep_going="0s")
    files = [put_wal(pg_wal, n) for n in (1, 2, 3, 4)]
    result = Archiver(pol).push(files[0])
    assert [i.name for i in result.items] == [f.name for f in files[:3]]
    for n in (1, 2, 3):
        assert codec.decompress(stored(a, n).read_bytes(), "gzip") == segment(n)
        assert stored(b, n).exists()
    assert not stored(a, 4).exists()  # beyond the batch
    status = sorted(os.listdir(pg_wal / "archive_status"))
    # The file asked for is left to PostgreSQL to mark; the other batch members are marked done.
    assert status == sorted([f"{files[0].name}.ready", f"{files[1].name}.done", f"{files[2].name}.done",
                             f"{files[3].name}.ready"])


def test_push_keeps_going_through_a_backlog_in_batches(tmp_path, pg_wal):
    """With time left (wal.keep_going), one wal-push ships every .ready file in batches of
    wal.batch; a file that fails is not retried by the same process and stays .ready."""
    a = tmp_path / "a"
    pol = make_policy(tmp_path, {"a": a}, batch=3)
    files = [put_wal(pg_wal, n) for n in range(1, 9)]
    files[5].write_bytes(segment(99))  # misnamed: refused, PostgreSQL will ask for it alone
    result = Archiver(pol).push(files[0])
    assert [i.name for i in result.items] == [f.name for f in files]
    bad = result.items[5]
    assert bad.error is not None and "does not match the segment name" in bad.error.message
    for n in (1, 2, 3, 4, 5, 7, 8):
        assert codec.decompress(stored(a, n).read_bytes(), "gzip") == segment(n)
    assert not stored(a, 6).exists()
    status = sorted(os.listdir(pg_wal / "archive_status"))
    assert status == sorted([f"{files[0].name}.ready", f"{files[5].name}.ready"] +
                            [f"{f.name}.done" for i, f in enumerate(files) if i not in (0, 5)])
    assert all(i.blob is None for i in result.items)  # each batch let go of its memory


def test_batch_one_ships_only_the_file_asked_for(tmp_path, pg_wal):
    # archive_command = 'cp %p DIR/%f && pgvault wal-push %p': a file wal-push marked done
    # would never reach DIR.
    a = tmp_path / "a"
    files = [put_wal(pg_wal, n) for n in (1, 2, 3)]
    result = Archiver(make_policy(tmp_path, {"a": a}, batch=1)).push(files[0])
    assert [i.name for i in result.items] == [files[0].name]
    assert stored(a, 1).exists() and not stored(a, 2).exists()
    assert sorted(os.listdir(pg_wal / "archive_status")) == sorted(f"{f.name}.ready" for f in files)


def test_duplicate_identical_ok_different_refused(tmp_path, pg_wal):
    a = tmp_path / "a"
    pol = make_policy(tmp_path, {"a": a})
    f = put_wal(pg_wal, 5, ready=False)
    Archiver(pol).push(f)
    before = stored(a, 5).read_bytes()
    assert Archiver(pol).push(f).requested.error is None
    f.write_bytes(segment(5, fill=b"x"))
    err = Archiver(pol).push(f).requested.error
    assert isinstance(err, WalConflict) and "different content" in err.message
    assert stored(a, 5).read_bytes() == before
    # Another compression of the same name counts as the same file.
    pol_z = make_policy(tmp_path, {"a": a}, compression="zstd")
    assert isinstance(Archiver(pol_z).push(f).requested.error, WalConflict)
    assert not stored(a, 5, ".zst").exists()


def test_foreign_system_identifier_refused(tmp_path, pg_wal):
    pol = make_policy(tmp_path, {"a": tmp_path / "a"})
    Archiver(pol).push(put_wal(pg_wal, 1, ready=False))
    with pytest.raises(ClusterMismatch, match="system identifier"):
        Archiver(pol).push(put_wal(pg_wal, 2, segment(2, sysid=SYSID + 1), ready=False))
    assert not stored(tmp_path / "a", 2).exists()
    # The site is the source of truth: without the local cache it is refused all the same.
    for f in (tmp_path / "state").rglob("identity.json"):
        f.unlink()
    with pytest.raises(ClusterMismatch):
        Archiver(pol).push(put_wal(pg_wal, 2, segment(2, sysid=SYSID + 1), ready=False))


def test_damaged_or_misnamed_file_refused(tmp_path, pg_wal):
    pol = make_policy(tmp_path, {"a": tmp_path / "a"})
    f = put_wal(pg_wal, 3, segment(4), ready=False)
    with pytest.raises(PgvaultError, match="does not match the segment name"):
        Archiver(pol).push(f)
    f.write_bytes(segment(3)[: SEG // 2])
    with pytest.raises(PgvaultError, match="bytes, but its header says segments are"):
        Archiver(pol).push(f)


def test_dead_site_spools_then_receives_backlog(tmp_path, pg_wal):
    a, b = tmp_path / "a", tmp_path / "gone" / "b"   # b's parent is missing: b is unreachable
    pol = make_policy(tmp_path, {"a": a, "b": b})
    r1 = Archiver(pol).push(put_wal(pg_wal, 1, ready=False))
    assert r1.requested.error is None and r1.requested.spool_for == {"b"}
    r2 = Archiver(pol).push(put_wal(pg_wal, 2, ready=False))
    assert r2.requested.error is None
    spool = tmp_path / "state" / "wal-spool"
    assert len(os.listdir(spool / "pending" / "b")) == 2 and len(os.listdir(spool / "files")) == 2
    st = archive_status(pol)["sites"]
    assert (st["a"]["spooled"], st["b"]["spooled"], st["a"]["failing"]) == (0, 2, None)
    assert "does not exist" in st["b"]["failing"]

    (tmp_path / "gone").mkdir()   # the site comes back
    r3 = Archiver(pol).push(put_wal(pg_wal, 3, ready=False))
    assert r3.drained == {"b": 2}
    for n in (1, 2, 3):
        assert stored(b, n).exists()
    assert os.listdir(spool / "files") == [] and os.listdir(spool / "pending" / "b") == []
    st = archive_status(pol)["sites"]["b"]
    assert (st["spooled"], st["gaps"], st["lag_segments"], st["failing"]) == (0, [], 0, None)


def test_sync_sites_one_spools_by_hard_link_and_the_shipper_delivers(tmp_path, pg_wal):
    a, b = tmp_path / "a", tmp_path / "b"
    pol = make_policy(tmp_path, {"a": a, "b": b}, sync_sites=1, batch=3)
    files = [put_wal(pg_wal, n) for n in (1, 2, 3)]
    r = Archiver(pol).push(files[0])
    assert all(i.error is None and i.stored_at == {"a"} and i.spool_for == {"b"} for i in r.items)
    assert not (b / "clusters").exists()                    # b was not written to by wal-push
    spool = tmp_path / "state" / "wal-spool"
    for n in (1, 2, 3):
        at_a, spooled = stored(a, n).stat(), (spool / "files" / stored(a, n).name).stat()
        assert (spooled.st_ino, spooled.st_nlink) == (at_a.st_ino, 2)   # the same bytes, not a copy
    assert sorted(os.listdir(spool / "pending" / "b")) == sorted(stored(a, n).name for n in (1, 2, 3))

    # The shipper (here in-process; wal-push starts it detached when the policy is a file).
    assert shipper.follow(Archiver(pol), idle=0.2) == {"b": 3}
    for n in (1, 2, 3):
        assert codec.decompress(stored(b, n).read_bytes(), "gzip") == segment(n)
        assert stored(a, n).stat().st_nlink == 1                       # the spool let go of it
    assert os.listdir(spool / "files") == [] and os.listdir(spool / "pending" / "b") == []


def test_sync_sites_one_dead_first_site_next_stands_in(tmp_path, pg_wal):
    a, b, c = tmp_path / "gone" / "a", tmp_path / "b", tmp_path / "c"
    pol = make_policy(tmp_path, {"a": a, "b": b, "c": c}, sync_sites=1)
    r = Archiver(pol).push(put_wal(pg_wal, 1, ready=False))
    it = r.requested
    assert (it.error, it.stored_at, it.spool_for) == (None, {"b"}, {"a", "c"})   # b stands in for a
    assert stored(b, 1).exists() and not stored(c, 1).exists()
    st = archive_status(pol)["sites"]
    assert st["a"]["spooled"] == 1 and "does not exist" in st["a"]["failing"]


def test_no_site_accepts_then_nothing_is_marked_or_spooled(tmp_path, pg_wal):
    pol = make_policy(tmp_path, {"a": tmp_path / "gone" / "a"}, batch=2)
    files = [put_wal(pg_wal, n) for n in (1, 2, 3, 4)]
    r = Archiver(pol).push(files[0])
    assert [i.name for i in r.items] == [f.name for f in files[:2]]  # no second batch after a failed one
    assert isinstance(r.requested.error, SiteError) and "no site accepted" in r.requested.error.message
    assert sorted(os.listdir(pg_wal / "archive_status")) == sorted(f"{f.name}.ready" for f in files)
    assert not (tmp_path / "state" / "wal-spool" / "files").exists() or \
        not os.listdir(tmp_path / "state" / "wal-spool" / "files")


def test_fetch_order_missing_and_damaged(tmp_path, pg_wal):
    a, b = tmp_path / "a", tmp_path / "b"
    pol = make_policy(tmp_path, {"a": a, "b": b})
    Archiver(pol).push(put_wal(pg_wal, 7, ready=False))
    name = names.segment_name(1, 7, SEG)
    dest = tmp_path / "out"
    assert fetch(pol, name, dest) == "a" and dest.read_bytes() == segment(7)
    assert fetch(pol, name, dest, from_site="b") == "b"
    with pytest.raises(WalMissing):
        fetch(pol, names.segment_name(1, 8, SEG), dest)
    stored(a, 7).write_bytes(codec.compress(segment(7, sysid=SYSID + 9), "gzip"))  # sound gzip, foreign WAL
    assert fetch(pol, name, dest) == "b"
    stored(b, 7).write_bytes(b"\x1f\x8b garbage")
    with pytest.raises(WalUnavailable, match="damaged"):
        fetch(pol, name, dest)


def test_history_and_backup_files_use_barmans_hash_dir_rule(tmp_path, pg_wal):
    a = tmp_path / "a"
    pol = make_policy(tmp_path, {"a": a})
    Archiver(pol).push(put_wal(pg_wal, 1, ready=False))  # binds the cluster
    hist = pg_wal / "00000002.history"
    hist.write_bytes(b"1\t0/3000000\tno recovery target specified\n")
    label = pg_wal / "000000010000000000000002.00000028.backup"
    label.write_bytes(b"START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\n")
    for f in (hist, label):
        assert Archiver(pol).push(f).requested.error is None
    assert (a / "clusters/main/wals/00000002.history.gz").exists()
    assert (a / "clusters/main/wals/0000000100000000/000000010000000000000002.00000028.backup.gz").exists()
    dest = tmp_path / "h"
    fetch(pol, "00000002.history", dest)
    assert dest.read_bytes() == hist.read_bytes()


def test_fetch_prefetches_next_segments_for_recovery(tmp_path, pg_wal):
    from pgvault.wal.fetch import take_prefetched

    (pg_wal.parent / "global").mkdir()
    (pg_wal.parent / "global" / "pg_control").write_bytes(SYSID.to_bytes(8, "little") + b"\0" * 100)
    pol = make_policy(tmp_path, {"a": tmp_path / "a"}, prefetch=8)
    src = tmp_path / "src"
    src.mkdir()
    for n in (1, 2, 3, 4):
        Archiver(pol).push(put_wal(src, n, ready=False))
    dest = pg_wal / "RECOVERYXLOG"
    fetch(pol, names.segment_name(1, 1, SEG), dest)
    pre = pg_wal / ".pgvault-prefetch"
    assert sorted(os.listdir(pre)) == [names.segment_name(1, n, SEG) for n in (2, 3, 4)]
    assert take_prefetched(names.segment_name(1, 2, SEG), dest) and dest.read_bytes() == segment(2)
    assert not take_prefetched(names.segment_name(1, 2, SEG), dest)  # taken once
    # A copy that is not this cluster's (pg_control says another system) is never served.
    (pg_wal.parent / "global" / "pg_control").write_bytes((SYSID + 1).to_bytes(8, "little"))
    assert not take_prefetched(names.segment_name(1, 3, SEG), dest)
    with pytest.raises(WalMissing):
        fetch(pol, names.segment_name(1, 5, SEG), dest)
    assert not pre.exists()  # the archive ended: prefetched files are dropped


def test_slow_site_is_left_behind_and_spooled(tmp_path, pg_wal):
    """A site that accepts connections but never answers (moto stopped with SIGSTOP, long
    read_timeout) gets the batch through the spool once the healthy site is done."""
    from pgvault import sandbox

    moto = sandbox.Moto().start()
    try:
        moto.create_bucket("slow-site")
        pol = Policy.model_validate({
            "version": 1, "cluster": {"name": "main", "conninfo": "host=/nonexistent"},
            "sites": {"a": {"type": "local", "path": str(tmp_path / "a")},
                      "slow": {"type": "s3", "bucket": "slow-site", "endpoint_url": moto.url, "region": "us-east-1",
                               "read_timeout": 600, "max_attempts": 1}},
            "wal": {"sites": ["a", "slow"], "slow_site_grace": "1s", "retry_interval": "1h"},
            "state_dir": str(tmp_path / "state")})
        assert Archiver(pol).push(put_wal(pg_wal, 1, ready=False)).requested.stored_at == {"a", "slow"}
        moto.pause()
        try:
            r = Archiver(pol).push(put_wal(pg_wal, 2, ready=False))
            assert (r.requested.error, r.requested.stored_at, r.requested.spool_for) == (None, {"a"}, {"slow"})
            # The slow site's request still runs on its daemon thread: its bytes were kept.
            assert r.requested.late and r.requested.blob is not None
            from pgvault.wal.spool import Spool

            assert "too slow" in Spool(tmp_path / "state" / "wal-spool").site_state("slow")["error"]
            # While it rests, the next push does not wait for it at all.
            r = Archiver(pol).push(put_wal(pg_wal, 3, ready=False))
            assert r.requested.spool_for == {"slow"} and r.requested.stored_at == {"a"}
        finally:
            moto.resume()
        assert Archiver(pol).drain() == {"slow": 2}
    finally:
        moto.stop()


def test_cli_bad_input_is_explained_without_traceback(tmp_path):
    import subprocess
    import sys

    import yaml

    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump({"version": 1, "cluster": {"name": "main", "conninfo": "host=/x"},
                                      "sites": {"a": {"type": "local", "path": str(tmp_path / "a")}},
                                      "wal": {"sites": ["a"]}, "state_dir": str(tmp_path / "state")}))
    root = Path(__file__).resolve().parents[2]

    def run(*args):
        return subprocess.run([sys.executable, "-m", "pgvault", "--policy", str(policy), *args], capture_output=True,
                              text=True, env=dict(os.environ, PYTHONPATH=str(root)))

    cp = run("wal-push", str(tmp_path / "pg_wal" / "000000010000000000000001"))
    assert cp.returncode == 2 and "does not exist" in cp.stderr and "HINT" in cp.stderr
    cp = run("wal-fetch", "not-a-wal-name", str(tmp_path / "x"))
    assert cp.returncode == 2 and "not a WAL file name" in cp.stderr
    for out in (cp.stderr,):
        assert "Traceback" not in out
    cp = run("wal-fetch", "000000010000000000000001", str(tmp_path / "x"))
    assert (cp.returncode, cp.stderr) == (1, "")


def test_shipper_sees_a_running_push_through_the_push_lock(tmp_path, pg_wal):
    import fcntl

    pol = make_policy(tmp_path, {"a": tmp_path / "a", "b": tmp_path / "b"}, sync_sites=1)
    arch = Archiver(pol)
    arch.push(put_wal(pg_wal, 1, ready=False))
    assert not shipper.archiver_busy(arch.spool)                      # the push let go of it when it returned
    fd = os.open(tmp_path / "state" / "wal-spool" / "push.lock", os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_SH)                       # as a running wal-push holds it
    try:
        assert shipper.archiver_busy(Archiver(pol).spool)
    finally:
        os.close(fd)
    assert not shipper.archiver_busy(Archiver(pol).spool)


def test_check_calls_a_young_backlog_in_flight_and_an_old_one_lag(tmp_path, pg_wal):
    """sync_sites < all: what the background shipper has not delivered yet is normal for
    IN_FLIGHT seconds, a WARNING after that (the spool marker's mtime is its age)."""
    import time

    from pgvault.checks import IN_FLIGHT, OK, WARNING, check_wal

    a, b = tmp_path / "a", tmp_path / "b"
    pol = make_policy(tmp_path, {"a": a, "b": b}, sync_sites=1)
    assert Archiver(pol).push(put_wal(pg_wal, 1, ready=False)).requested.spool_for == {"b"}
    by_site = {r.name: r for r in check_wal(pol)}
    assert by_site["wal a"].state == OK and "no lag" in by_site["wal a"].message
    assert by_site["wal b"].state == OK and "1 in flight" in by_site["wal b"].message
    marker = next((tmp_path / "state" / "wal-spool" / "pending" / "b").iterdir())
    old = time.time() - IN_FLIGHT - 60
    os.utime(marker, (old, old))
    b_line = {r.name: r for r in check_wal(pol)}["wal b"]
    assert b_line.state == WARNING and "lagging" in b_line.message and "1 spooled" in b_line.message


def test_a_standbys_copy_that_differs_only_past_the_fork_is_the_archives(tmp_path, pg_wal):
    """archive_mode = always: the old primary's segment (real WAL past the switchpoint, archived
    before the new timeline's history) is in the archive; the standby that was receiving it
    when it switched timelines sends its copy (the same WAL up to the switchpoint, then
    stale bytes). Not a conflict. A copy that differs before the switchpoint still is."""
    from pgvault.wal import divergence

    a = tmp_path / "a"
    pol = make_policy(tmp_path, {"a": a})
    switchpoint = 5 * SEG + 3 * 8192 + 100
    cut = switchpoint - 5 * SEG
    primary = bytearray(segment(5))
    divergence.SHORT_HEADER.pack_into(primary, 4 * 8192, 0xD110, 0, 1, 5 * SEG + 4 * 8192)
    f = put_wal(pg_wal, 5, bytes(primary), ready=False)
    assert Archiver(pol).push(f).requested.error is None
    before = stored(a, 5).read_bytes()
    (a / "clusters/main/wals/00000002.history").write_text(f"1\t0/{switchpoint:X}\tno recovery target specified\n")

    f.write_bytes(bytes(primary[:cut]) + bytes(SEG - cut))          # the standby's copy
    assert Archiver(pol).push(f).requested.error is None
    assert stored(a, 5).read_bytes() == before
    assert not (a / "clusters/main/quarantine").exists()

    f.write_bytes(bytes(primary[:cut - 50]) + b"z" * 50 + bytes(SEG - cut))   # differs before it
    assert isinstance(Archiver(pol).push(f).requested.error, WalConflict)
    assert stored(a, 5).read_bytes() == before
