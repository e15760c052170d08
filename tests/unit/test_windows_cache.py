"""The windows' end-time cache (pgvault.restore.windows_read.keep): one file shared by the probe
threads of a run, one per site. No site loses its entry to another's write, and a site keeps
only the entries its window still asks for (the file is loaded by every status)."""
import json
import threading

from pgvault.restore.windows_read import keep


def _ck(site, seg, cluster="main"):
    return f"{site}|clusters/{cluster}/wals/0000000100000000/0000000100000000000000{seg:02X}.gz|1.0"


def test_a_write_keeps_what_another_site_wrote_since_the_load(tmp_path):
    path = tmp_path / "cache.json"
    loaded = {}                                   # both threads loaded the file while it was empty
    path.write_text(json.dumps({_ck("s3", 5): "2026-12-04T00:00:00+00:00"}))   # the other one wrote first
    assert keep(path, loaded, {_ck("local", 5): None}, "local|clusters/main/wals/")
    assert json.loads(path.read_text()) == {_ck("s3", 5): "2026-12-04T00:00:00+00:00", _ck("local", 5): None}


def test_only_this_sites_and_clusters_older_entries_go(tmp_path):
    path = tmp_path / "cache.json"
    old = {_ck("local", 4): None, _ck("local", 3): None, _ck("local2", 3): None, _ck("s3", 4): None,
           _ck("local", 3, cluster="other"): None}
    path.write_text(json.dumps(old))
    assert keep(path, old, {_ck("local", 5): None}, "local|clusters/main/wals/")
    assert set(json.loads(path.read_text())) == {_ck("local", 5), _ck("local2", 3), _ck("s3", 4),
                                                 _ck("local", 3, cluster="other")}


def test_nothing_new_writes_nothing(tmp_path):
    path = tmp_path / "cache.json"
    cache = {_ck("local", 5): None, _ck("s3", 5): None}
    path.write_text(json.dumps(cache))
    before = path.stat().st_mtime_ns
    assert not keep(path, cache, {_ck("local", 5): None}, "local|clusters/main/wals/")
    assert path.stat().st_mtime_ns == before


def test_threads_of_one_run_all_keep_their_entry(tmp_path):
    path = tmp_path / "cache.json"
    sites = [f"site{i}" for i in range(8)]
    start = threading.Barrier(len(sites))

    def one(site):
        start.wait()
        keep(path, {}, {_ck(site, 7): None}, f"{site}|clusters/main/wals/")

    threads = [threading.Thread(target=one, args=(s,)) for s in sites]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert set(json.loads(path.read_text())) == {_ck(s, 7) for s in sites}
