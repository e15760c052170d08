"""pgvault.wal.listing parses each listed name once, for status's scan and the window's archive:
it must read every kind of stored name as pgvault.wal.names does, one name at a time."""
from datetime import datetime, timezone

from pgvault.wal import listing, names
from pgvault.wal.status import scan_listing

SEG = 16 << 20

# Every kind of object found under wals/: segments (each compression, two timelines, one
# segment stored twice), history, backup label, partial, and foreign or almost-WAL names.
KEYS = [
    "c/wals/0000000100000000/000000010000000000000001.gz",
    "c/wals/0000000100000000/000000010000000000000002",
    "c/wals/0000000100000000/000000010000000000000003.bz2",
    "c/wals/0000000100000000/000000010000000000000003.zst",       # the same segment, twice
    "c/wals/0000000100000000/000000010000000000000004.gz.gz",     # not a WAL name once split
    "c/wals/0000000100000000/000000010000000000000005.lz4",       # an unknown suffix
    "c/wals/0000000100000000/00000001000000000000000a.gz",        # lower-case hex: foreign
    "c/wals/0000000100000000/000000010000000000000006.00000028.backup.gz",
    "c/wals/0000000100000000/000000010000000000000007.partial.zst",
    "c/wals/00000002.history.gz",
    "c/wals/00000002.history",
    "c/wals/0000000200000001/0000000200000001000000FF.gz",
    "c/wals/0000000200000002/000000020000000200000000",
    "c/wals/README",
    "c/wals/0000000100000000/",
]


def _reference(objects, size):
    """What scan and archive_of read from a listing, one name at a time with pgvault.wal.names
    (their code before the shared parse)."""
    files, segments, keys, tls, hist = 0, [], {}, {}, []
    for key, mtime in objects:
        name, comp = names.split_stored(key.rsplit("/", 1)[-1])
        if not names.is_wal_name(name):
            continue
        files += 1
        kind = names.kind(name)
        if kind == "segment":
            tli, segno = names.parse_segment(name, size)
            segments.append((tli, segno, mtime))
            keys[(tli, segno)] = (key, comp, mtime)
            tls.setdefault(tli, set()).add(segno)
        elif kind == "history":
            hist.append((name, key, comp))
    return files, segments, keys, tls, hist


def _objects(order):
    return [(KEYS[i], 1000.0 + i + (0.5 if i % 2 else 0.0)) for i in order]


def test_parse_reads_every_name_as_names_does():
    for size in (SEG, 64 << 20, 1 << 30):
        for order in (range(len(KEYS)), reversed(range(len(KEYS))), [11, 0, 12, 1, 3, 2, 9, 10, 4, 5, 6, 7, 8, 13, 14]):
            objs = _objects(list(order))
            lst = listing.parse(objs, size)
            assert (lst.files, lst.segments, lst.keys, lst.timelines, lst.histories) == _reference(objs, size)


def test_sized_reparses_for_another_segment_size():
    objs = _objects(range(len(KEYS)))
    lst = listing.parse(objs, SEG)
    assert lst.sized(SEG) is lst
    big = lst.sized(64 << 20)
    assert big.segment_size == 64 << 20 and big.keys == listing.parse(objs, 64 << 20).keys


def test_stored_times_round_whole_seconds_up():
    keys = {(1, 2): ("k", "none", 100.0), (1, 3): ("k", "gzip", 100.25)}
    st = listing.StoredTimes(keys)
    assert dict(st) == {(1, 2): datetime.fromtimestamp(101.0, timezone.utc),
                        (1, 3): datetime.fromtimestamp(100.25, timezone.utc)}
    assert (1, 4) not in st and st.get((1, 4)) is None


def test_scan_of_a_segment_listed_twice_takes_the_first_newest():
    objs = [("w/000000010000000000000003.gz", 5.0), ("w/000000010000000000000003.zst", 9.0),
            ("w/000000010000000000000001", 1.0)]
    s = scan_listing(listing.parse(objs))
    assert (s.count, s.files, s.newest, s.newest_mtime, s.gaps) == (3, 3, "000000010000000000000003", 5.0,
                                                                    ["000000010000000000000002"])
