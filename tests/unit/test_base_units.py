"""The base backup engine's pure parts: page checksums (numpy) against a straight transcription
of PostgreSQL's pg_checksum_page, lz4 frames of independent blocks read by the stock lz4 CLI and
python-lz4's single-frame decompressor (what barman-cloud-restore uses), the tar stream read by
stock tar, backup.info, and their doctests."""
from __future__ import annotations

import doctest
import hashlib
import io
import os
import subprocess
import tarfile

import numpy as np
import pytest

from pgvault.catalog import layout, lz4frame
from pgvault.methods import barman_info, basebackup, pagecheck, tarstream


@pytest.mark.parametrize("module", [pagecheck, lz4frame, tarstream, barman_info, basebackup, layout],
                         ids=lambda m: m.__name__)
def test_doctests(module):
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0


def reference_checksum(page: bytes, blkno: int) -> int:
    """pg_checksum_page, loop for loop (src/include/storage/checksum_impl.h)."""
    words = list(np.frombuffer(page, dtype="<u4"))
    words[2] = int(words[2]) & 0xFFFF0000
    sums = [int(x) for x in pagecheck._BASE]
    comp = lambda c, v: ((((c ^ v) * 16777619) & 0xFFFFFFFF) ^ ((c ^ v) >> 17))  # noqa: E731
    for i in range(64):
        for j in range(32):
            sums[j] = comp(sums[j], int(words[i * 32 + j]))
    for _ in range(2):
        for j in range(32):
            sums[j] = comp(sums[j], 0)
    result = 0
    for s in sums:
        result ^= s
    return ((result ^ blkno) % 65535) + 1


def test_numpy_checksums_equal_the_reference_and_flag_the_bad_page():
    rng = np.random.default_rng(7)
    pages = rng.integers(0, 256, size=(4, 8192), dtype=np.uint8)
    pages[:, 14:16] = [0, 1]                     # pd_upper != 0: not a new page
    pages[:, 0:8] = 0                            # LSN 0: older than any backup start
    blocks = np.arange(4) + 131072
    want = [reference_checksum(p.tobytes(), int(b)) for p, b in zip(pages, blocks)]
    assert list(pagecheck.checksums(pages, blocks)) == want
    for p, c in zip(pages, want):
        p[8:10] = np.frombuffer(int(c).to_bytes(2, "little"), dtype=np.uint8)
    data = bytearray(pages.tobytes())
    assert pagecheck.bad_pages(bytes(data), 131072, 1 << 40) == []
    data[2 * 8192 + 5000] ^= 0xFF
    assert pagecheck.bad_pages(bytes(data), 131072, 1 << 40) == [131074]
    # the same page written after the backup began (LSN >= start) is exempt; a new page too
    data[2 * 8192 + 3] = 0xFF                    # pd_lsn.xlogid: far in the future
    assert pagecheck.bad_pages(bytes(data), 131072, 1 << 40) == []
    assert pagecheck.bad_pages(bytes(8192), 0, 1 << 40) == []


def test_lz4_frame_of_independent_blocks_reads_with_stock_tools():
    import lz4.frame

    raw = os.urandom(3 << 20).hex().encode() + b"z" * (5 << 20) + os.urandom(1 << 20)   # 15 MiB, 4 blocks
    frame = lz4frame.compress_all([raw[i:i + 999_983] for i in range(0, len(raw), 999_983)], threads=2)
    assert frame.count(b"\x04\x22\x4d\x18") >= 1 and frame[:4] == b"\x04\x22\x4d\x18"
    assert subprocess.run(["lz4", "-dc"], input=frame, capture_output=True, check=True).stdout == raw
    d = lz4.frame.LZ4FrameDecompressor()          # barman-cloud-restore's single decompressor
    out = b"".join(d.decompress(frame[i:i + 65536]) for i in range(0, len(frame), 65536))
    assert out == raw and d.eof
    assert lz4frame.compress_all([]) and lz4.frame.decompress(lz4frame.compress_all([])) == b""


def test_tree_tar_is_read_by_stock_tar_and_records_every_file(tmp_path):
    root = tmp_path / "pgdata"
    (root / "base/5").mkdir(parents=True)
    (root / "global").mkdir()
    (root / "pg_wal/archive_status").mkdir(parents=True)
    (root / "pg_wal/000000010000000000000001").write_bytes(b"w" * 100)
    (root / "pg_wal/archive_status/x.done").write_text("")
    (root / "global/pg_control").write_bytes(b"c" * 8192)
    (root / "base/5/16384").write_bytes(bytes(8192 * 3))
    (root / "postmaster.pid").write_text("1")
    (root / "PG_VERSION").write_text("15\n")
    t = tarstream.TreeTar(str(root), "data", check_from=1 << 40, last=("global/pg_control",),
                          tail=lambda: [("backup_label", b"START WAL LOCATION: 0/2000028\n")])
    blob = b"".join(iter(lambda: t.read(), b""))
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r|") as tf:
        names = [m.name for m in tf]
    assert names[-2:] == ["global/pg_control", "backup_label"]
    assert "pg_wal" in names and "pg_wal/archive_status" in names
    assert not any(n.startswith("pg_wal/0") or n == "postmaster.pid" or n.endswith(".done") for n in names)
    assert t.files["base/5/16384"] == {"size": 24576, "sha256": hashlib.sha256(bytes(24576)).hexdigest()}
    assert t.bytes_read == 8192 * 4 + 3 and t.pages_checked == 3 and t.bad_pages == []
    out = tmp_path / "out"
    out.mkdir()
    subprocess.run(["tar", "-x", "-C", str(out)], input=blob, check=True)
    assert (out / "backup_label").read_text().startswith("START WAL")
