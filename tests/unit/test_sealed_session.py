"""The encryption stage of the shared write path, on memory sites: one stream to sites with
different recipient sets (and a clear one) in one pass, each site's manifest with its own
copy's hash and recipients, a failing site dropped while the others commit, and reading back
through Catalog.open_artifact (sha256 of the stored bytes, then age, then zstd)."""
from __future__ import annotations

import io
import os
from datetime import datetime, timezone

import pytest

from pgvault.catalog.catalog import Catalog
from pgvault.catalog.formats import Manifest
from pgvault.catalog.session import BackupSession
from pgvault.crypt import age, keys
from pgvault.errors import IntegrityError, KeyRequired
from pgvault.sites.memory import MemorySite
from pgvault.sites.wrappers import FaultySite, on


def _manifest() -> Manifest:
    now = datetime.now(timezone.utc)
    return Manifest(backup_id="x", cluster="main", job="j", method="logical", started_at=now, finished_at=now,
                    system_identifier="1", pg_version="15")


def test_one_pass_to_three_recipient_sets_and_a_failing_site(monkeypatch):
    i1, r1 = age.generate()
    i2, r2 = age.generate()
    sites = {n: MemorySite(n) for n in ("clear", "one", "two", "both")}
    dead = FaultySite(MemorySite("dead"), fail_on=on("write"))
    cats = {n: Catalog(s, "main") for n, s in {**sites, "dead": dead}.items()}
    rcpts = {"one": (r1,), "two": (r2,), "both": (r1, r2), "dead": (r1,)}
    s = BackupSession(cats, "20261203T000000Z", recipients=rcpts)
    data = os.urandom(300_000) + bytes(300_000)
    s.add_stream("db.dump", io.BytesIO(data))
    m = s.commit(_manifest())
    assert "dead" in s.failed and sorted(s.committed) == ["both", "clear", "one", "two"]
    per = {n: s._manifest_for(n, m).artifacts[0] for n in s.committed}
    assert per["clear"].encryption is None and per["clear"].recipients is None
    assert per["one"].recipients == [r1] and per["both"].recipients == [r1, r2]
    assert len({a.sha256 for a in per.values()}) == 4  # one ciphertext (and hash) per recipient set
    key = "clusters/main/backups/20261203T000000Z/db.dump.zst"
    assert not age.is_age(sites["clear"].get(key).read(30)) and age.is_age(sites["two"].get(key).read(30))

    monkeypatch.setenv(keys.ENV, i1)
    for n in ("clear", "one", "both"):
        assert cats[n].open_artifact(s._manifest_for(n, m), "db.dump.zst").read() == data
    with pytest.raises(KeyRequired) as exc:
        cats["two"].open_artifact(s._manifest_for("two", m), "db.dump.zst")
    assert r2 in exc.value.message and exc.value.exit_code == 2
    monkeypatch.setenv(keys.ENV, i2)
    assert cats["two"].open_artifact(s._manifest_for("two", m), "db.dump.zst").read() == data


def test_a_flipped_ciphertext_byte_is_an_integrity_error(monkeypatch):
    i1, r1 = age.generate()
    site = MemorySite("a")
    cat = Catalog(site, "main")
    s = BackupSession({"a": cat}, "20261203T000000Z", recipients={"a": (r1,)})
    s.add_stream("db.dump", io.BytesIO(os.urandom(200_000)))
    m = s._manifest_for("a", s.commit(_manifest()))
    key = "clusters/main/backups/20261203T000000Z/db.dump.zst"
    blob, mtime = site._objects[key]
    bad = bytearray(blob)
    bad[150_000] ^= 1
    site._objects[key] = (bytes(bad), mtime)
    monkeypatch.setenv(keys.ENV, i1)
    with pytest.raises(IntegrityError):
        r = cat.open_artifact(m, "db.dump.zst")
        while r.read(1 << 16):
            pass
