"""The fault behaviours of FaultySite, the retry rule of RetryingSite, the test-only wrapping
hook, and location_key overlaps. (The wrappers' conformance is in test_conformance.py.)"""
from __future__ import annotations

import hashlib
import threading

import pytest

from pgvault.catalog.streams import VerifyingReader
from pgvault.errors import IntegrityError, ObjectNotFound, SiteError, SiteUnreachable
from pgvault.proc import wait_until
from pgvault.sites import open_site, open_sites, wrapping
from pgvault.sites.base import get_bytes, overlaps, put_bytes
from pgvault.sites.local import LocalSiteConfig
from pgvault.sites.memory import MemorySite
from pgvault.sites.s3 import S3SiteConfig
from pgvault.sites.wrappers import FaultySite, RetryingSite, nth, on

DATA = b"0123456789" * 1000


def clean_put_calls() -> list[tuple[str, str]]:
    site = FaultySite(MemorySite())
    put_bytes(site, "k/obj", DATA)
    return site.calls


def test_calls_are_recorded_with_their_operation():
    assert clean_put_calls() == [("writer", "k/obj"), ("write", "k/obj"), ("commit", "k/obj")]


@pytest.mark.parametrize("n", range(1, len(clean_put_calls()) + 1))
def test_nth_call_fails_like_an_outage_and_leaves_nothing(n):
    mem = MemorySite()
    site = FaultySite(mem, fail_on=nth(n))
    with pytest.raises(SiteUnreachable) as info:
        put_bytes(site, "k/obj", DATA)
    assert "injected fault" in info.value.message
    assert [c.n for c in site.failures] == [n]
    assert list(mem.list("")) == [] and mem.list_temporaries("") == []
    site.fail_on = None  # a clean re-run converges
    put_bytes(site, "k/obj", DATA)
    assert get_bytes(mem, "k/obj") == DATA


def test_applied_commit_fails_but_the_whole_object_is_there():
    mem = MemorySite()
    site = FaultySite(mem, fail_on=on("commit"), applied=True)
    with pytest.raises(SiteUnreachable):
        put_bytes(site, "k/obj", DATA)
    assert get_bytes(mem, "k/obj") == DATA  # the answer was lost, not the object


def test_lost_abort_leaves_a_temporary_never_an_object():
    mem = MemorySite()
    site = FaultySite(mem, fail_on=lambda c: c.op in ("write", "abort"))
    with pytest.raises(SiteUnreachable):
        put_bytes(site, "k/obj", DATA)
    assert list(mem.list("")) == []
    assert mem.list_temporaries("k/") == ["k/obj"]


def test_flipped_byte_is_caught_by_the_readers_hash_check():
    mem = MemorySite()
    put_bytes(mem, "k/obj", DATA)
    site = FaultySite(mem, corrupt_reads=on("get"), flip_offset=4321)
    with site.get("k/obj") as fh:
        got = fh.read()
    assert len(got) == len(DATA) and got != DATA and got[4321] == DATA[4321] ^ 1
    reader = VerifyingReader(site.get("k/obj"), hashlib.sha256(DATA).hexdigest(), len(DATA), "k/obj")
    with pytest.raises(IntegrityError):
        while reader.read(1000):
            pass


def test_flip_offset_past_the_end_flips_the_last_byte():
    mem = MemorySite()
    put_bytes(mem, "short", b"abc")
    site = FaultySite(mem, corrupt_reads=lambda c: True, flip_offset=10_000)
    assert get_bytes(site, "short") == b"ab" + bytes([ord("c") ^ 1])


def test_failed_read_mid_stream_raises_site_error():
    mem = MemorySite()
    put_bytes(mem, "k/obj", DATA)
    site = FaultySite(mem, fail_on=on("read"))
    with pytest.raises(SiteError):
        get_bytes(site, "k/obj")


def test_hang_holds_the_call_until_released():
    mem = MemorySite()
    put_bytes(mem, "k/obj", DATA)
    release = threading.Event()
    site = FaultySite(mem, hang_on=on("head"), release=release)
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("info", site.head("k/obj")), daemon=True)
    t.start()
    wait_until(site.hanging.is_set, timeout=30, what="the head call to hang")
    assert t.is_alive() and "info" not in out
    release.set()
    t.join(30)
    assert not t.is_alive() and out["info"].size == len(DATA)


def test_retrying_site_retries_idempotent_calls():
    mem = MemorySite()
    put_bytes(mem, "k/obj", DATA)
    faulty = FaultySite(mem, fail_on=lambda c: c.n in (1, 3))
    waits = []
    site = RetryingSite(faulty, attempts=3, backoff=0.1, sleep=waits.append)
    assert site.head("k/obj").size == len(DATA)   # call 1 fails, call 2 answers
    assert [o.key for o in site.list("k/")] == ["k/obj"]  # call 3 fails, call 4 answers
    assert site.retries == 2 and waits == [0.1, 0.1]


def test_retrying_site_gives_up_after_its_attempts_with_growing_waits():
    faulty = FaultySite(MemorySite(), fail_on=on("head"))
    waits = []
    site = RetryingSite(faulty, attempts=4, backoff=0.1, max_backoff=0.3, sleep=waits.append)
    with pytest.raises(SiteUnreachable):
        site.head("x")
    assert len(faulty.calls) == 4 and waits == [0.1, 0.2, 0.3]


def test_retrying_site_never_retries_a_commit_or_a_missing_key():
    faulty = FaultySite(MemorySite(), fail_on=on("commit"))
    site = RetryingSite(faulty, sleep=lambda s: None)
    with pytest.raises(SiteUnreachable):
        put_bytes(site, "k/obj", DATA)
    with pytest.raises(ObjectNotFound):
        site.get("missing")
    assert [op for op, _ in faulty.calls] == ["writer", "write", "commit", "get"]
    assert site.retries == 0


def test_wrapping_hook_wraps_the_sites_a_command_opens(workdir):
    class P:
        sites = {"a": LocalSiteConfig(type="local", path=str(workdir / "a")),
                 "b": LocalSiteConfig(type="local", path=str(workdir / "b"))}

    with wrapping("a", lambda driver: FaultySite(driver)):
        opened = open_sites(P)
        assert isinstance(opened["a"], FaultySite) and not isinstance(opened["b"], FaultySite)
        put_bytes(opened["a"], "k", b"x")
        assert opened["a"].calls[-1] == ("commit", "k")
        assert opened["a"].capabilities.local_root == workdir / "a"  # capabilities pass through
        with pytest.raises(RuntimeError):
            with wrapping("a", lambda driver: driver):
                pass
    assert not isinstance(open_site("a", P.sites["a"]), FaultySite)


@pytest.mark.parametrize("a, b, overlap", [
    (LocalSiteConfig(type="local", path="/srv/a"), LocalSiteConfig(type="local", path="/srv/a/b"), True),
    (LocalSiteConfig(type="local", path="/srv/a/"), LocalSiteConfig(type="local", path="/srv//a"), True),
    (LocalSiteConfig(type="local", path="/srv/a"), LocalSiteConfig(type="local", path="/srv/ab"), False),
    (S3SiteConfig(type="s3", bucket="bkt", prefix="p"), S3SiteConfig(type="s3", bucket="bkt", prefix="p/q"), True),
    (S3SiteConfig(type="s3", bucket="bkt"), S3SiteConfig(type="s3", bucket="bkt", prefix="p"), True),
    (S3SiteConfig(type="s3", bucket="bkt", prefix="p"), S3SiteConfig(type="s3", bucket="bkt", prefix="pq"), False),
    (S3SiteConfig(type="s3", bucket="bkt", region="eu-west-1"), S3SiteConfig(type="s3", bucket="bkt"), True),
    (S3SiteConfig(type="s3", bucket="bkt"), S3SiteConfig(type="s3", bucket="bkt", endpoint_url="http://127.0.0.1:9"), False),
    (LocalSiteConfig(type="local", path="/bkt"), S3SiteConfig(type="s3", bucket="bkt"), False),
])
def test_location_keys_tell_overlapping_sites(a, b, overlap):
    assert overlaps(a.location_key(), b.location_key()) is overlap
    assert overlaps(b.location_key(), a.location_key()) is overlap


def test_the_policy_refuses_sites_that_overlap():
    from pgvault.errors import PolicyError
    from pgvault.policy.load import parse_policy

    text = """
version: 1
cluster: {name: main, conninfo: "host=/tmp port=5432 user=postgres"}
sites:
  a: {type: local, path: /var/backups/pgvault}
  b: {type: local, path: /var/backups/pgvault/inner}
  c: {type: local, path: /var/backups/pgvault2}
  eu: {type: s3, bucket: acme, prefix: prod}
  eu2: {type: s3, bucket: acme, prefix: prod/x, region: eu-west-1}
  us: {type: s3, bucket: acme, prefix: production}
  bad: {type: s3}
"""
    with pytest.raises(PolicyError) as info:
        parse_policy(text, "p.yaml")
    overlapping = [(p, m) for p, m, _h in info.value.problems if "overlaps" in m]
    assert [p for p, _m in overlapping] == ["sites.b.path", "sites.eu2.prefix"]
    assert "'a'" in overlapping[0][1] and "'eu'" in overlapping[1][1]


def test_slow_site_waits_before_the_matching_calls_only():
    waits = []
    site = FaultySite(MemorySite(), delay=0.5, slow_on=on("commit"), sleep=waits.append)
    put_bytes(site, "a", b"x")
    put_bytes(site, "b", b"y")
    assert waits == [0.5, 0.5] and get_bytes(site, "b") == b"y"
