"""The only code that builds keys at a site. Format v1 — see docs/site-format.md.

    pgvault-site.json
    clusters/<cluster>/cluster.json
    clusters/<cluster>/backups/<backup-id>/<artifact>
    clusters/<cluster>/backups/<backup-id>/manifest.json     (written last: the commit marker)
    clusters/<cluster>/wals/<timeline+log>/<segment>[.gz]    (Barman's cloud layout)
    clusters/<cluster>/base/<barman-backup-id>/...            (Barman's cloud layout)
    clusters/<cluster>/drills/<drill-id>.json
    clusters/<cluster>/relations/<id>.json                    (relation history, see find)
    clusters/<cluster>/pins/<backup-id>.json                  (a pin: retention keeps the backup)
    clusters/<cluster>/running/<backup-id>.json               (a backup in progress, any node: expire keeps its files)
    clusters/<cluster>/quarantine/<name>-<sha8>[.gz] + .json  (WAL kept out of the archive: divergent or conflicting)
    clusters/<cluster>/quarantine/resolved/...                (the same, once an operator resolved it)
    clusters/<cluster>/wal-horizon.json                       (WAL before this segment was expired on purpose)

Barman's cloud layout is ``<url>/<server>/{base,wals}``; with url = ``<site>/clusters`` and
server = the cluster name it lands exactly under ``clusters/<cluster>/``, so stock
barman-cloud tools work on a pgvault site unchanged.
"""
from __future__ import annotations

import re
from datetime import datetime, timezone

FORMAT_VERSION = 1
SITE_MARKER = "pgvault-site.json"
MANIFEST = "manifest.json"

_ID = re.compile(r"^\d{8}T\d{6}Z(-[A-Za-z0-9_.-]+)?$")


def cluster_prefix(cluster: str) -> str:
    return f"clusters/{cluster}/"


def cluster_file(cluster: str) -> str:
    return f"clusters/{cluster}/cluster.json"


def backups_prefix(cluster: str) -> str:
    return f"clusters/{cluster}/backups/"


def backup_prefix(cluster: str, backup_id: str) -> str:
    return f"clusters/{cluster}/backups/{backup_id}/"


def artifact(cluster: str, backup_id: str, name: str) -> str:
    if "/" in name.strip("/") and ".." in name.split("/"):
        raise ValueError(f"bad artifact name {name!r}")
    return f"clusters/{cluster}/backups/{backup_id}/{name}"


def artifact_key(cluster: str, backup_id: str, art) -> str:
    """Where an artifact is stored: in the backup directory, or at its own ``key`` under the
    cluster directory (a base backup's tars live in Barman's layout, ``base/<barman id>/``).

    >>> from types import SimpleNamespace as A
    >>> artifact_key("main", "20261125T221530Z", A(name="files.json", key=None))
    'clusters/main/backups/20261125T221530Z/files.json'
    >>> artifact_key("main", "20261125T221530Z", A(name="data.tar.lz4", key="base/20261125T221530/data.tar.lz4"))
    'clusters/main/base/20261125T221530/data.tar.lz4'
    """
    if art.key:
        return cluster_key(cluster, art.key)
    return artifact(cluster, backup_id, art.name)


def cluster_key(cluster: str, rel: str) -> str:
    """A key under the cluster directory from a relative path (no ``..``, no leading ``/``)."""
    if rel.startswith("/") or ".." in rel.split("/"):
        raise ValueError(f"bad key {rel!r}")
    return f"clusters/{cluster}/{rel}"


def barman_base_dir(barman_id: str) -> str:
    """A Barman base backup's directory relative to the cluster directory.

    >>> barman_base_dir("20261125T221530")
    'base/20261125T221530/'
    """
    return f"base/{barman_id}/"


def manifest(cluster: str, backup_id: str) -> str:
    return artifact(cluster, backup_id, MANIFEST)


def wal_prefix(cluster: str) -> str:
    return f"clusters/{cluster}/wals/"


def wal_key(cluster: str, name: str, suffix: str = "") -> str:
    """Key of a WAL file in Barman's cloud layout.

    >>> wal_key("main", "000000010000000000000003", ".gz")
    'clusters/main/wals/0000000100000000/000000010000000000000003.gz'
    >>> wal_key("main", "00000002.history")
    'clusters/main/wals/00000002.history'
    """
    if re.fullmatch(r"[0-9A-F]{24}(\.[0-9A-F]{8}\.backup|\.partial)?", name):
        return f"clusters/{cluster}/wals/{name[:16]}/{name}{suffix}"
    return f"clusters/{cluster}/wals/{name}{suffix}"


def wal_horizon_key(cluster: str) -> str:
    """Where expire records the segment before which it removed the WAL on purpose. Outside
    ``wals/`` (stock barman-cloud tools list that prefix). A segment before it that a node sends
    again later (Patroni archives a rewound node's WAL, PostgreSQL re-archives files without an
    archive status) is not the start of the archive: no gap is counted before the horizon.

    >>> wal_horizon_key("main")
    'clusters/main/wal-horizon.json'
    """
    return f"clusters/{cluster}/wal-horizon.json"


def barman_base_prefix(cluster: str) -> str:
    return f"clusters/{cluster}/base/"


def drill_key(cluster: str, drill_id: str) -> str:
    return f"clusters/{cluster}/drills/{drill_id}.json"


def drills_prefix(cluster: str) -> str:
    return f"clusters/{cluster}/drills/"


def relations_prefix(cluster: str) -> str:
    return f"clusters/{cluster}/relations/"


def pins_prefix(cluster: str) -> str:
    return f"clusters/{cluster}/pins/"


def pin_key(cluster: str, backup_id: str) -> str:
    """Pins live beside the backups, not in their immutable manifests.

    >>> pin_key("main", "20261125T221530Z")
    'clusters/main/pins/20261125T221530Z.json'
    """
    return f"clusters/{cluster}/pins/{backup_id}.json"


def running_prefix(cluster: str) -> str:
    return f"clusters/{cluster}/running/"


def running_key(cluster: str, backup_id: str) -> str:
    """The in-progress marker of a backup, written before its first artifact, removed after
    its manifest (or its abort). Every node's expire honours it (see docs/ha.md).

    >>> running_key("main", "20261125T221530Z")
    'clusters/main/running/20261125T221530Z.json'
    """
    return f"clusters/{cluster}/running/{backup_id}.json"


def quarantine_prefix(cluster: str) -> str:
    return f"clusters/{cluster}/quarantine/"


def quarantine_key(cluster: str, name: str, sha8: str, suffix: str = "") -> str:
    """Where WAL kept out of the archive goes, by name and content (two zombies may send two
    different files of one name), beside its evidence (``.json``). Outside ``wals/``: neither
    recovery nor barman-cloud-wal-restore ever reads it.

    >>> quarantine_key("main", "000000010000000000000007", "0a1b2c3d", ".gz")
    'clusters/main/quarantine/000000010000000000000007-0a1b2c3d.gz'
    """
    return f"clusters/{cluster}/quarantine/{name}-{sha8}{suffix}"


def quarantine_resolved_prefix(cluster: str) -> str:
    """Quarantined WAL an operator resolved (``pgvault quarantine resolve``): kept, no longer
    counted by status.

    >>> quarantine_resolved_prefix("main")
    'clusters/main/quarantine/resolved/'
    """
    return f"clusters/{cluster}/quarantine/resolved/"


def relations_key(cluster: str, record_id: str) -> str:
    """One relation-history record (see pgvault.restore.relations).

    >>> relations_key("main", "20261125T221530Z-0000000001BC7990")
    'clusters/main/relations/20261125T221530Z-0000000001BC7990.json'
    """
    return f"clusters/{cluster}/relations/{record_id}.json"


def new_backup_id(now: datetime | None = None, taken: set[str] | frozenset[str] = frozenset()) -> str:
    """A sortable UTC id; one second later while the id is taken.

    >>> new_backup_id(datetime(2026, 11, 25, 22, 15, 30, tzinfo=timezone.utc))
    '20261125T221530Z'
    >>> new_backup_id(datetime(2026, 11, 25, 22, 15, 30, tzinfo=timezone.utc), {'20261125T221530Z'})
    '20261125T221531Z'
    """
    from datetime import timedelta

    t = (now or datetime.now(timezone.utc)).astimezone(timezone.utc).replace(microsecond=0)
    while True:
        bid = t.strftime("%Y%m%dT%H%M%SZ")
        if bid not in taken:
            return bid
        t += timedelta(seconds=1)


def is_backup_id(text: str) -> bool:
    return bool(_ID.match(text))


def backup_time(backup_id: str) -> datetime:
    """The UTC time a backup id names.

    >>> backup_time('20261125T221530Z').isoformat()
    '2026-11-25T22:15:30+00:00'
    """
    return datetime.strptime(backup_id[:16], "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc)


def split_backup_key(cluster: str, key: str) -> tuple[str, str] | None:
    """(backup id, artifact name) for a key under backups/, else None."""
    pre = backups_prefix(cluster)
    if not key.startswith(pre):
        return None
    rest = key[len(pre):]
    if "/" not in rest:
        return None
    bid, name = rest.split("/", 1)
    return bid, name


def barman_home(cluster: str) -> str:
    """A local site's Barman home (stock Barman server layout: <home>/<cluster>/base/<id>/...).

    >>> barman_home("main")
    'clusters/main/barman'
    """
    return f"clusters/{cluster}/barman"


def barman_config(cluster: str) -> str:
    """The generated Barman configuration kept at a local site, next to the Barman home."""
    return f"clusters/{cluster}/barman/barman.conf"


def barman_cloud_url(site_url: str) -> str:
    """barman-cloud's destination URL for an S3 site: server dirs then land in clusters/<cluster>/.

    >>> barman_cloud_url("s3://bucket/prod")
    's3://bucket/prod/clusters'
    >>> barman_cloud_url("s3://bucket")
    's3://bucket/clusters'
    """
    return site_url.rstrip("/") + "/clusters"
