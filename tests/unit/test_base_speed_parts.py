"""The parts the base backup's speed work changed (issue 13): small files' pages checked in
batches report the same file and block as one file at a time; each site of a Tee writes on its
own thread behind a bounded queue — a hung site holds the others back only once its queue is
full, a failing one is dropped while the others commit the same bytes; the stop segment's
archive status read as PostgreSQL reads it."""
from __future__ import annotations

import hashlib
import threading

import numpy as np
import pytest

from pgvault.catalog.streams import Tee
from pgvault.methods import basebackup, pagecheck, tarstream
from pgvault.sites.memory import MemorySite
from pgvault.sites.wrappers import FaultySite, on

BLCKSZ = pagecheck.BLCKSZ


def pages(n: int, first_block: int, seed: int) -> bytearray:
    """``n`` valid pages (random body, LSN 0, pd_upper set, right checksum) at ``first_block``."""
    rng = np.random.default_rng(seed)
    p = rng.integers(0, 256, size=(n, BLCKSZ), dtype=np.uint8)
    p[:, 0:8] = 0
    p[:, 14:16] = [0, 1]
    sums = pagecheck.checksums(p, np.arange(first_block, first_block + n))
    p[:, 8:10] = sums.astype("<u2").view(np.uint8).reshape(n, 2)
    return bytearray(p.tobytes())


def test_batched_small_files_and_large_files_report_the_same_file_and_block(tmp_path):
    root = tmp_path / "pgdata"
    (root / "base/5").mkdir(parents=True)
    want = set()
    # 600 one-page relations (more than one 4 MiB batch), two with a flipped byte
    for i in range(600):
        data = pages(1, 0, i)
        if i in (7, 555):
            data[3000] ^= 0xFF
            want.add(f"base/5/{20000 + i} block 0")
        (root / f"base/5/{20000 + i}").write_bytes(bytes(data))
    small = pages(3, 131072, 1)                     # segment 1 of a relation: blocks from 131072
    small[BLCKSZ + 100] ^= 0xFF
    (root / "base/5/16384.1").write_bytes(bytes(small))
    want.add("base/5/16384.1 block 131073")
    big = pages(200, 0, 2)                          # 1.6 MiB: checked as read, not batched
    big[150 * BLCKSZ + 9] ^= 0xFF
    (root / "base/5/16385").write_bytes(bytes(big))
    want.add("base/5/16385 block 150")
    t = tarstream.TreeTar(str(root), "data", check_from=1 << 40)
    blob = b"".join(iter(lambda: t.read(), b""))
    assert len(blob) > 600 * BLCKSZ
    assert {str(b) for b in t.bad_pages} == want
    assert t.pages_checked == 600 + 3 + 200
    assert t.files["base/5/16385"]["sha256"] == hashlib.sha256(bytes(big)).hexdigest()


def test_a_page_torn_while_read_is_read_again_and_not_reported(tmp_path, monkeypatch):
    root = tmp_path / "pgdata"
    (root / "base/5").mkdir(parents=True)
    good = pages(2, 0, 3)
    (root / "base/5/16390").write_bytes(bytes(good))
    torn = bytearray(good)
    torn[BLCKSZ + 7] ^= 0xFF
    real_open = open

    def first_read_torn(path, *a, **kw):            # the first read sees a torn page, the re-read not
        fh = real_open(path, *a, **kw)
        if str(path).endswith("16390") and not first_read_torn.done:
            first_read_torn.done = True
            fh.close()
            import io
            return io.BytesIO(bytes(torn))
        return fh
    first_read_torn.done = False
    monkeypatch.setattr(tarstream, "open", first_read_torn, raising=False)
    t = tarstream.TreeTar(str(root), "data", check_from=1 << 40)
    b"".join(iter(lambda: t.read(), b""))
    assert t.bad_pages == [] and t.pages_checked == 2


def chunks(n: int, size: int) -> list[bytes]:
    return [bytes([i % 251]) * size for i in range(n)]


def test_a_hung_site_holds_the_others_back_only_once_its_queue_is_full():
    fast, slow_inner = MemorySite("fast"), MemorySite("slow")
    release = threading.Event()
    slow = FaultySite(slow_inner, hang_on=on("write"), release=release)
    tee = Tee({"fast": (fast, "k"), "slow": (slow, "k")}, queue_bytes=1 << 20)
    data = chunks(8, 256 << 10)                      # 2 MiB in all, the slow queue holds 1 MiB
    wrote = []

    def produce():
        for c in data:
            tee.write(c)
            wrote.append(len(c))

    producer = threading.Thread(target=produce)
    producer.start()
    assert slow.hanging.wait(30)
    # the fast site is not held back by the slow one until the slow one's queue is full
    lane = tee.lanes["slow"]
    with lane.cond:
        assert lane.cond.wait_for(lambda: lane.queued + (256 << 10) > lane.limit, 30)
        assert lane.queued <= lane.limit
    assert producer.is_alive() and len(wrote) < len(data)
    release.set()
    producer.join(30)
    assert not producer.is_alive() and len(wrote) == len(data)
    assert sorted(tee.commit()) == ["fast", "slow"]
    whole = b"".join(data)
    assert tee.size == len(whole) and tee.sha.hexdigest() == hashlib.sha256(whole).hexdigest()
    for site in (fast, slow_inner):
        with site.get("k") as fh:
            assert fh.read() == whole


@pytest.mark.parametrize("op", ["write", "commit"])
def test_a_site_failing_mid_stream_is_dropped_and_the_other_commits(op):
    good, bad_inner = MemorySite("good"), MemorySite("bad")
    bad = FaultySite(bad_inner, fail_on=on(op))
    tee = Tee({"good": (good, "k"), "bad": (bad, "k")})
    data = chunks(20, 100_000)
    for c in data:
        tee.write(c)
    assert tee.commit() == ["good"]
    assert "bad" in tee.failed and bad.failures
    with good.get("k") as fh:
        assert fh.read() == b"".join(data)
    assert list(bad_inner.list("")) == [] and tee.sha.hexdigest() == hashlib.sha256(b"".join(data)).hexdigest()


def test_archive_busy_reads_the_status_files_as_postgresql_does(tmp_path):
    wal = "000000010000000000000003"
    status = tmp_path / "pg_wal/archive_status"
    status.mkdir(parents=True)
    (tmp_path / "pg_wal" / wal).write_bytes(b"")
    assert basebackup.archive_busy(str(tmp_path), wal)          # neither status yet: busy
    (status / f"{wal}.ready").write_text("")
    assert basebackup.archive_busy(str(tmp_path), wal)
    (status / f"{wal}.ready").rename(status / f"{wal}.done")
    assert not basebackup.archive_busy(str(tmp_path), wal)
    (status / f"{wal}.done").unlink()
    (tmp_path / "pg_wal" / wal).unlink()                         # archived, then recycled
    assert not basebackup.archive_busy(str(tmp_path), wal)
    assert basebackup.archive_waits_here(str(tmp_path), "on", False)
    assert not basebackup.archive_waits_here(str(tmp_path), "off", False)
    assert not basebackup.archive_waits_here(str(tmp_path), "on", True)
