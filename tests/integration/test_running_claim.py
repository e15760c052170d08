"""Claiming a backup id (pgvault.catalog.running.claim) when two jobs race for it — two nodes'
jobs starting in the same second: exactly one wins, at a local site, at an S3 site (moto_server)
and at both, and the loser leaves no marker anywhere. Threads stand in for the two nodes; each
claims with its own job name, which makes its marker's bytes its own as host and pid do."""
from __future__ import annotations

import json
import threading
from datetime import datetime, timedelta, timezone

import pytest

from pgvault.catalog import layout, running
from pgvault.catalog.catalog import Catalog
from pgvault.sites import open_site
from pgvault.sites.local import LocalSiteConfig
from pgvault.sites.s3 import S3SiteConfig
from tests.conftest import bucket_name

NOW = datetime(2026, 12, 4, 1, 0, tzinfo=timezone.utc)


def local(workdir) -> Catalog:
    return Catalog(open_site("a", LocalSiteConfig(type="local", path=str(workdir / "site-a"))), "main")


def s3(moto) -> Catalog:
    bucket = bucket_name()
    moto.create_bucket(bucket, "eu-west-1")
    return Catalog(open_site("eu", S3SiteConfig(type="s3", bucket=bucket, region="eu-west-1", prefix="pg",
                                                endpoint_url=moto.url)), "main")


@pytest.fixture(params=["local", "s3", "local+s3"])
def catalogs(request, workdir):
    out = {}
    if "local" in request.param:
        out["a"] = local(workdir)
    if "s3" in request.param:
        out["eu"] = s3(request.getfixturevalue("moto"))
    return out


def race(catalogs: dict, backup_id: str, jobs: list[str]) -> list[str]:
    """Every job claims ``backup_id`` at once (released by one barrier); the jobs that won."""
    gate, won = threading.Barrier(len(jobs)), []

    def claim(job):
        gate.wait()
        if running.claim(catalogs, backup_id, job, timeout=timedelta(hours=1), node=job, now=NOW):
            won.append(job)

    threads = [threading.Thread(target=claim, args=(j,)) for j in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return won


def marker_jobs(catalogs: dict, backup_id: str) -> dict[str, str | None]:
    """The job named by the marker of ``backup_id`` at each site (None: no marker)."""
    out = {}
    for name, cat in catalogs.items():
        ms = [m for m in running.markers(cat.site, cat.cluster) if m.backup_id == backup_id]
        out[name] = ms[0].job if ms else None
    return out


def test_two_jobs_racing_for_one_id_exactly_one_wins(catalogs):
    for r in range(8):
        bid = f"20261204T0100{r:02d}Z"
        won = race(catalogs, bid, ["job-n1", "job-n2"])
        assert len(won) == 1, (r, won)
        # The winner's marker at every site; nothing of the loser's anywhere.
        assert set(marker_jobs(catalogs, bid).values()) == {won[0]}, marker_jobs(catalogs, bid)


def test_many_claimants_one_winner_and_the_id_is_free_again_after_end(catalogs):
    bid = "20261204T010100Z"
    won = race(catalogs, bid, [f"job-{i}" for i in range(6)])
    assert len(won) == 1
    assert not running.claim(catalogs, bid, "late", timeout=None, now=NOW)   # held
    assert set(marker_jobs(catalogs, bid).values()) == {won[0]}
    running.end(catalogs, bid)
    assert running.claim(catalogs, bid, "late", timeout=None, now=NOW)
    doc = json.loads(catalogs[next(iter(catalogs))].site.get(layout.running_key("main", bid)).read())
    assert doc["job"] == "late" and doc["backup_id"] == bid


def test_a_claim_repeated_after_a_lost_answer_is_still_ours(workdir):
    """The create's answer does not decide (a retried PutObject finds its own object: 412); the
    bytes read back do."""
    cats = {"a": local(workdir)}
    bid = "20261204T010200Z"
    assert running.claim(cats, bid, "job", timeout=None, now=NOW)
    assert running.claim(cats, bid, "job", timeout=None, now=NOW)       # same process, same bytes
    assert not running.claim(cats, bid, "other", timeout=None, now=NOW)
    assert marker_jobs(cats, bid) == {"a": "job"}
