"""One conformance suite, run against every site driver: local directories, S3 buckets
(moto_server on 127.0.0.1, buckets in different regions), the memory site, and the wrappers
(RetryingSite, FaultySite with no faults) around it — a wrapper must conform like a driver.
The fault behaviours of FaultySite are in tests/sites/test_wrappers.py."""
from __future__ import annotations

import hashlib
import os
import threading

import pytest

from pgvault.errors import ObjectNotFound, SiteError, SiteUnreachable
from pgvault.sites import open_site
from pgvault.sites.base import Capabilities, exists, get_bytes, put_bytes
from pgvault.sites.local import LocalSiteConfig
from pgvault.sites.memory import MemorySite
from pgvault.sites.wrappers import FaultySite, RetryingSite
from pgvault.sites.s3 import PART_SIZE, S3SiteConfig

from ..conftest import bucket_name


@pytest.fixture(params=["local", "s3-us-east-1", "s3-eu-west-1", "memory", "retrying-memory", "faulty-memory"])
def site(request, workdir):
    if request.param == "local":
        return open_site("loc", LocalSiteConfig(type="local", path=str(workdir / "site")))
    if request.param == "memory":
        return MemorySite("mem")
    if request.param == "retrying-memory":
        return RetryingSite(MemorySite("mem"), sleep=lambda s: None)
    if request.param == "faulty-memory":
        return FaultySite(MemorySite("mem"))
    moto = request.getfixturevalue("moto")
    region = request.param.removeprefix("s3-")
    bucket = bucket_name()
    moto.create_bucket(bucket, region)
    return open_site("s3", S3SiteConfig(type="s3", bucket=bucket, region=region, prefix="pfx/x",
                                        endpoint_url=moto.url))


def test_put_get_roundtrip(site):
    put_bytes(site, "a/b/c.bin", b"hello")
    assert get_bytes(site, "a/b/c.bin") == b"hello"
    info = site.head("a/b/c.bin")
    assert info.size == 5 and info.key == "a/b/c.bin"


def test_get_missing_raises_object_not_found(site):
    with pytest.raises(ObjectNotFound) as info:
        site.get("no/such/key")
    assert info.value.key == "no/such/key"
    assert site.head("no/such/key") is None


def test_delete_is_idempotent(site):
    put_bytes(site, "k", b"x")
    site.delete("k")
    site.delete("k")
    assert not exists(site, "k")


def test_list_is_by_prefix_and_sorted(site):
    for k in ("p/2", "p/1", "p/sub/3", "q/4", "pp/5"):
        put_bytes(site, k, k.encode())
    assert [o.key for o in site.list("p/")] == ["p/1", "p/2", "p/sub/3"]
    assert [o.key for o in site.list("p")] == ["p/1", "p/2", "p/sub/3", "pp/5"]
    assert {o.key for o in site.list("")} >= {"p/1", "q/4"}
    assert [o.size for o in site.list("q/")] == [3]


def test_aborted_write_leaves_nothing(site):
    w = site.writer("big/object")
    w.write(os.urandom(PART_SIZE + 1024))  # forces a multipart upload on S3
    w.write(b"more")
    assert not exists(site, "big/object")
    w.abort()
    assert not exists(site, "big/object")
    assert [o.key for o in site.list("big/")] == []


def test_object_invisible_until_commit(site):
    w = site.writer("obj")
    w.write(b"part one ")
    assert not exists(site, "obj")
    assert [o.key for o in site.list("")] == []
    w.write(b"part two")
    w.commit()
    assert get_bytes(site, "obj") == b"part one part two"


def test_large_multipart_object_is_intact(site):
    data = os.urandom(2 * PART_SIZE + 12345)
    w = site.writer("large")
    for i in range(0, len(data), 1 << 20):
        w.write(data[i:i + (1 << 20)])
    w.commit()
    with site.get("large") as fh:
        got = hashlib.sha256(fh.read()).hexdigest()
    assert got == hashlib.sha256(data).hexdigest()
    assert site.head("large").size == len(data)


def test_exception_inside_with_aborts(site):
    with pytest.raises(RuntimeError):
        with site.writer("ctx") as w:
            w.write(b"x")
            raise RuntimeError("boom")
    assert not exists(site, "ctx")


def test_commit_replaces_atomically(site):
    put_bytes(site, "r", b"old")
    put_bytes(site, "r", b"new")
    assert get_bytes(site, "r") == b"new"


def test_concurrent_writers_to_distinct_keys(site):
    def work(i):
        put_bytes(site, f"c/{i}", str(i).encode() * 1000)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [o.key for o in site.list("c/")] == sorted(f"c/{i}" for i in range(8))
    assert get_bytes(site, "c/5") == b"5" * 1000


def test_create_exclusive_creates_once_and_leaves_what_is_there(site):
    assert site.create_exclusive("x/one", b"first") is True
    assert site.create_exclusive("x/one", b"second") is False
    assert get_bytes(site, "x/one") == b"first"
    put_bytes(site, "x/two", b"written")          # a writer's object counts as there too
    assert site.create_exclusive("x/two", b"other") is False and get_bytes(site, "x/two") == b"written"
    assert [o.key for o in site.list("x/")] == ["x/one", "x/two"] and site.list_temporaries("x/") == []
    site.delete("x/one")
    assert site.create_exclusive("x/one", b"again") is True and get_bytes(site, "x/one") == b"again"


def test_create_exclusive_racing_threads_exactly_one_wins(site):
    """Eight threads released at once at each of several keys: one True per key, and the object
    is the winner's bytes (the test-and-set is the store's, not a check before a write)."""
    n, rounds = 8, 5
    for r in range(rounds):
        gate, won = threading.Barrier(n), []

        def race(i, key=f"race/{r}"):
            gate.wait()
            if site.create_exclusive(key, f"thread {i}".encode()):
                won.append(i)

        threads = [threading.Thread(target=race, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(won) == 1, (r, won)
        assert get_bytes(site, f"race/{r}") == f"thread {won[0]}".encode()
    assert site.list_temporaries("race/") == []


def test_describe_has_no_credentials(site):
    text = site.describe()
    assert "testing" not in text and "secret" not in text.lower()


def test_keys_that_would_escape_a_directory_are_refused_where_they_would(site):
    for key in ("/abs", "a/../b"):
        if site.capabilities.local_root is None and site.describe().startswith("s3://"):
            put_bytes(site, key, b"x")  # any key is a valid S3 key: it names one object, never a path
            assert get_bytes(site, key) == b"x"
            site.delete(key)
        else:
            with pytest.raises(SiteError):
                put_bytes(site, key, b"x")


def test_capabilities_are_declared_and_true(site):
    caps = site.capabilities
    assert isinstance(caps, Capabilities)
    assert not caps.server_side_copy and caps.object_lock is None  # (object_lock: only an S3 site configured with it)
    put_bytes(site, "cap/k", b"data")
    if caps.local_root is not None:  # the object is the plain file local_root/key
        assert (caps.local_root / "cap/k").read_bytes() == b"data"
    if caps.barman_cloud is not None:
        assert caps.barman_cloud.url.startswith("s3://") and caps.barman_cloud.provider == "aws-s3"
        assert "secret" not in repr(caps.barman_cloud).lower()


def test_open_writer_is_a_temporary_until_it_ends(site):
    if not site.capabilities.lists_temporaries:
        assert site.list_temporaries("tmp/") == []
        return
    w = site.writer("tmp/obj")
    w.write(os.urandom(PART_SIZE + 1024))  # S3 sees an upload only once it is multipart
    assert len(site.list_temporaries("tmp/")) == 1
    assert site.list_temporaries("other/") == []
    assert [o.key for o in site.list("tmp/")] == []
    w.abort()
    assert site.list_temporaries("tmp/") == []


def test_local_files_are_private(workdir):
    site = open_site("loc", LocalSiteConfig(type="local", path=str(workdir / "priv")))
    put_bytes(site, "d/e/f", b"x")
    assert (workdir / "priv" / "d" / "e" / "f").stat().st_mode & 0o777 == 0o600
    assert (workdir / "priv" / "d").stat().st_mode & 0o777 == 0o700


def test_local_missing_parent_is_unreachable(workdir):
    site = open_site("loc", LocalSiteConfig(type="local", path=str(workdir / "nope" / "deeper")))
    with pytest.raises(SiteUnreachable) as info:
        put_bytes(site, "k", b"x")
    assert "does not exist" in info.value.message and info.value.hint


def test_s3_missing_bucket_is_unreachable_with_hint(moto):
    site = open_site("s3", S3SiteConfig(type="s3", bucket="pgv-does-not-exist", endpoint_url=moto.url))
    with pytest.raises(SiteUnreachable) as info:
        put_bytes(site, "k", b"x")
    assert "does not exist" in info.value.message
    assert "sites.s3.bucket" in info.value.hint


def test_s3_dead_endpoint_is_unreachable(monkeypatch):
    from pgvault.pg import free_port
    from pgvault.sandbox import S3_ENV

    for k, v in S3_ENV.items():
        monkeypatch.setenv(k, v)

    site = open_site("s3", S3SiteConfig(type="s3", bucket="whatever", endpoint_url=f"http://127.0.0.1:{free_port()}",
                                        connect_timeout=1, max_attempts=1))
    with pytest.raises(SiteUnreachable) as info:
        put_bytes(site, "k", b"x")
    assert "unreachable" in info.value.message
