"""Pure parts of the snapshot methods (argv builders, layout rules, send planning, pruning)
and the per-site manifests a BackupSession writes when sites receive different streams."""
from __future__ import annotations

import doctest
import io
import json
from datetime import datetime, timezone

import pytest

from pgvault.catalog.catalog import Catalog
from pgvault.catalog.formats import Manifest
from pgvault.catalog.session import BackupSession
from pgvault.errors import UsageError
from pgvault.methods import btrfs, snapshot, snapshot_sites, zfs
from pgvault.methods.snapshot import Placement, Snap, Volume
from pgvault.restore import snapshot as restore_snapshot
from pgvault.restore import snapshot_prepare
from pgvault.sites.local import LocalSite, LocalSiteConfig


@pytest.mark.parametrize("module", [snapshot, snapshot_sites, zfs, btrfs, restore_snapshot, snapshot_prepare],
                         ids=lambda m: m.__name__)
def test_doctests(module):
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0


def test_tablespace_on_a_volume_outside_the_job_is_refused_with_a_hint():
    vols = [Volume("p/data", "/m/data", 10)]
    with pytest.raises(UsageError) as err:
        snapshot.place({"pgdata": ("/m/data/pg", 10), "tablespace:16384": ("/m/ts/x", 11)}, vols)
    assert "tablespace:16384" in err.value.message and "cannot restore" in err.value.hint


def test_a_path_on_the_same_device_but_outside_the_volume_root_is_refused():
    # st_dev alone is not enough for a bind mount: the path must be below the volume's root.
    with pytest.raises(UsageError):
        snapshot.place({"pgdata": ("/other/pg", 10)}, [Volume("p/data", "/m/data", 10)])


def test_modes_and_order_for_wal_on_its_own_volume():
    placements = [Placement("pgdata", "d", "pg"), Placement("pg_wal", "w", "pg_wal"), Placement("tablespace:1", "t", "")]
    assert snapshot.mode_for(placements) == snapshot.BACKUP_API
    during, after = snapshot.order([Volume("w", "/w", 1), Volume("d", "/d", 2), Volume("t", "/t", 3)], placements)
    assert [v.name for v in during] == ["d", "t"] and [v.name for v in after] == ["w"]


def test_prune_never_removes_what_a_site_depends_on():
    ids = [f"2026112{i}T000000Z" for i in range(6)]
    doomed = snapshot_sites.prune_plan(ids, 2, {ids[1], ids[5]})
    assert doomed == [ids[0], ids[2], ids[3]]


def _site(tmp_path, name):
    return Catalog(LocalSite(name, LocalSiteConfig(type="local", path=str(tmp_path / name))), "main")


def _manifest(bid):
    now = datetime.now(timezone.utc)
    return Manifest(backup_id=bid, cluster="main", job="snaps", method="zfs", started_at=now, finished_at=now,
                    system_identifier="1", pg_version="15.0")


def test_session_writes_per_site_artifacts_and_parent(tmp_path):
    a, b = _site(tmp_path, "a"), _site(tmp_path, "b")
    s = BackupSession({"a": a, "b": b}, "20261125T000000Z")
    s.add_stream("backup_label", io.BytesIO(b"label"), compression="none")
    s.add_stream("streams/x.from-1.zfs", io.BytesIO(b"incremental"), sites=["a"])
    s.add_stream("streams/x.full.zfs", io.BytesIO(b"full stream"), sites=["b"])
    s.set_site_fields("a", parent="1", facts={"incremental": True})
    s.set_site_fields("b", parent=None, facts={"incremental": False})
    s.commit(_manifest("20261125T000000Z").model_copy(update={"facts": {"mode": "atomic"}}))
    ma, mb = a.manifest("20261125T000000Z"), b.manifest("20261125T000000Z")
    assert [x.name for x in ma.artifacts] == ["backup_label", "streams/x.from-1.zfs.zst"]
    assert [x.name for x in mb.artifacts] == ["backup_label", "streams/x.full.zfs.zst"]
    assert (ma.parent, mb.parent) == ("1", None)
    assert ma.facts == {"mode": "atomic", "incremental": True} and mb.facts["incremental"] is False
    assert a.verify().ok and b.verify().ok  # the other group's stream is not at the site


def test_site_bases_pick_the_newest_snapshot_still_here(tmp_path):
    cat = _site(tmp_path, "a")
    cat.bind("1", 15, 16 << 20)
    for bid, ident in (("20261125T000001Z", "g1"), ("20261125T000002Z", "g2")):
        m = _manifest(bid).model_copy(update={"facts": {"snapshots": [{"volume": "p/d", "name": f"p/d@{bid}",
                                                                       "ident": ident}]}})
        cat.write_manifest(m)
    local = {"20261125T000001Z": {"p/d": Snap("p/d", "p/d@20261125T000001Z", "g1")},
             "20261125T000002Z": {"p/d": Snap("p/d", "p/d@20261125T000002Z", "recreated")}}
    # The newest name exists locally but is a different snapshot (guid changed): use the older one.
    assert snapshot_sites.site_bases({"a": cat}, "snaps", "zfs", local, ["p/d"]) == {"a": "20261125T000001Z"}
    # A new volume in the job means no common base: full send.
    assert snapshot_sites.site_bases({"a": cat}, "snaps", "zfs", local, ["p/d", "p/w"]) == {"a": None}


def test_tablespace_map_and_symlinks_are_remapped(tmp_path):
    pgdata = tmp_path / "clone" / "pg"
    (pgdata / "pg_tblspc").mkdir(parents=True)
    (pgdata / "pg_replslot" / "old_slot").mkdir(parents=True)
    (pgdata / "PG_VERSION").write_text("15\n")
    (pgdata / "postmaster.pid").write_text("12345\n")
    (pgdata / "pg_tblspc" / "16384").symlink_to("/production/ts")
    meta = {"mode": "backup-api", "backup_label": "START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\n",
            "tablespace_map": "16384 /production/ts\n",
            "placements": [{"role": "pgdata", "volume": "d", "rel": "pg"},
                           {"role": "tablespace:16384", "volume": "t", "rel": ""}]}
    out = snapshot_prepare.prepare(meta, {"d": str(tmp_path / "clone"), "t": str(tmp_path / "ts")}, 6543)
    assert out.pgdata == str(pgdata)
    assert not (pgdata / "postmaster.pid").exists() and not any((pgdata / "pg_replslot").iterdir())
    assert (pgdata / "tablespace_map").read_text() == f"16384 {tmp_path / 'ts'}\n"
    assert (pgdata / "backup_label").read_text() == meta["backup_label"]
    assert str((pgdata / "pg_tblspc" / "16384").readlink()) == str(tmp_path / "ts")
    conf = (pgdata / "postgresql.auto.conf").read_text()
    assert "archive_mode = 'off'" in conf and "port = '6543'" in conf


def test_argv_builders_never_use_a_shell():
    assert zfs.send_argv("t/p@2", "t/p@1") == ["zfs", "send", "-i", "t/p@1", "t/p@2"]
    assert btrfs.send_argv("/s/2/pg", "/s/1/pg") == ["btrfs", "send", "-p", "/s/1/pg", "/s/2/pg"]
    assert json.dumps(zfs.receive_argv("t/r", force=True)) == '["zfs", "receive", "-F", "t/r"]'
