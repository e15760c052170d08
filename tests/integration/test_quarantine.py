"""`pgvault quarantine`: list WAL kept out of the archive, take a file out as PostgreSQL wrote it,
resolve it once dealt with (kept, no longer CRITICAL). Real PostgreSQL, a local and an S3 site;
the quarantined file is a real conflict made by wal-push itself."""
from __future__ import annotations

import json

import pytest

from pgvault import sandbox
from pgvault.wal import names

from .test_wal import listed, switch
from tests.conftest import archiving_world

SEG = 16 << 20


@pytest.fixture
def qworld(workdir, moto):
    w = archiving_world(workdir, moto)
    w.policy(wal={"sites": ["a", "eu"], "retry_interval": "1s"}, state_dir=str(sandbox.owned_dir(workdir / "state")))
    w.pg.start()
    yield w
    w.pg.stop("immediate")


def test_list_extract_resolve(qworld):
    w = qworld
    switch(w.pg, 2)
    seg = names.segment_name(1, 1)
    sandbox.wait_until(lambda: seg in listed(w, "a") and seg in listed(w, "eu"), 60, "first segment archived")
    assert "no quarantined WAL at a, eu" in w.cli("quarantine").stdout
    # A second writer's copy of that segment (other bytes, same name): refused and kept at both sites.
    copy = w.workdir / "other" / seg
    copy.parent.mkdir()
    w.cli("wal-fetch", seg, str(copy))
    data = bytearray(copy.read_bytes())
    data[SEG // 2] ^= 0xFF
    copy.write_bytes(bytes(data))
    assert w.cli("wal-push", str(copy), check=False).returncode == 1
    docs = json.loads(w.cli("quarantine", "--json").stdout)
    assert sorted((d["site"], d["name"], d["reason"]) for d in docs) == [("a", seg, "conflict"), ("eu", seg, "conflict")]
    cp = w.cli("check", check=False)
    assert cp.returncode == 2 and "split brain" in cp.stdout and "quarantine resolve" in cp.stdout, cp.stdout

    # extract: the refused bytes exactly, checked against the evidence; never over an existing file.
    out = w.workdir / "taken"
    cp = w.cli("quarantine", "extract", seg, "--to", str(out), "--site", "eu")
    assert (out / seg).read_bytes() == bytes(data) and "from site eu" in cp.stdout
    assert (out / seg).stat().st_mode & 0o077 == 0
    cp = w.cli("quarantine", "extract", seg, "--to", str(out), check=False)
    assert cp.returncode == 2 and "exists" in cp.stderr and (out / seg).read_bytes() == bytes(data)

    # resolve: a note is required; then moved with its evidence, kept, and status is clean again.
    cp = w.cli("quarantine", "resolve", seg, check=False)
    assert cp.returncode == 2 and "--note" in cp.stderr
    cp = w.cli("quarantine", "resolve", "000000010000000000000077", "--note", "x", check=False)
    assert cp.returncode == 2 and "no unresolved" in cp.stderr
    cp = w.cli("quarantine", "resolve", seg, "--note", "second writer stopped; nothing to recover")
    assert cp.stdout.count(" resolved (kept") == 2, cp.stdout
    assert json.loads(w.cli("quarantine", "--json").stdout) == []
    done = json.loads(w.cli("quarantine", "--resolved", "--json").stdout)
    assert sorted(d["site"] for d in done) == ["a", "eu"]
    assert all(d["note_resolved"] == "second writer stopped; nothing to recover" and d["resolved_at"] for d in done)
    assert "split brain" not in w.cli("check", check=False).stdout
    # The archive's own copy was never touched, and the resolved bytes can still be taken out.
    again = w.workdir / "again"
    w.cli("wal-fetch", seg, str(w.workdir / "archived"))
    assert (w.workdir / "archived").read_bytes() != bytes(data)
    w.cli("quarantine", "extract", seg, "--to", str(again), "--site", "a")
    assert (again / seg).read_bytes() == bytes(data)
    # The same bytes sent again (the second writer still alive): quarantined anew, CRITICAL again.
    assert w.cli("wal-push", str(copy), check=False).returncode == 1
    assert len(json.loads(w.cli("quarantine", "--json").stdout)) == 2
