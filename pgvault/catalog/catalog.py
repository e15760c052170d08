"""Reading and writing pgvault's catalog at a site: the site marker, the cluster binding,
backups (artifacts first, manifest last), listing from the site alone, and verify."""
from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone

from ..errors import ClusterMismatch, ObjectNotFound, SiteError
from ..sites.base import Site, get_bytes, get_or_none, put_bytes
from . import layout
from .formats import ClusterBinding, Manifest, SiteMarker, load_doc
from .streams import VerifyingReader, decompressing, decrypting, hash_stream

log = logging.getLogger("pgvault.catalog")


def now() -> datetime:
    return datetime.now(timezone.utc)


class Catalog:
    """One cluster's catalog at one site."""

    def __init__(self, site: Site, cluster: str):
        self.site = site
        self.cluster = cluster

    @property
    def name(self) -> str:
        return self.site.name

    # -- site marker and cluster binding
    def ensure_site(self) -> SiteMarker:
        """Read the site marker, writing it on first use; refuse an unknown format version."""
        data = get_or_none(self.site, layout.SITE_MARKER)
        if data is None:
            marker = SiteMarker(site_id=str(uuid.uuid4()), created_at=now())
            put_bytes(self.site, layout.SITE_MARKER, marker.to_bytes())
            return marker
        return load_doc(SiteMarker, data, f"site {self.name!r}: {layout.SITE_MARKER}")

    def binding(self) -> ClusterBinding | None:
        data = get_or_none(self.site, layout.cluster_file(self.cluster))
        if data is None:
            return None
        return load_doc(ClusterBinding, data, f"site {self.name!r}: {layout.cluster_file(self.cluster)}")

    def bind(self, system_identifier: str, pg_major: int, wal_segment_size: int) -> ClusterBinding:
        """Bind the cluster name to its system identifier at this site (first use), or check it."""
        self.ensure_site()
        existing = self.binding()
        if existing is None:
            b = ClusterBinding(name=self.cluster, system_identifier=str(system_identifier), pg_major=pg_major,
                               wal_segment_size=wal_segment_size, created_at=now())
            put_bytes(self.site, layout.cluster_file(self.cluster), b.to_bytes())
            return b
        self.check_identity(existing, str(system_identifier))
        return existing

    def check_identity(self, binding: ClusterBinding, system_identifier: str) -> None:
        if binding.system_identifier != str(system_identifier):
            raise ClusterMismatch(
                f"site {self.name!r} holds cluster {self.cluster!r} with system identifier "
                f"{binding.system_identifier}, but this server's is {system_identifier}",
                "a different cluster already uses this name at this site: give this cluster its own "
                "cluster.name in the policy (or its own site)")

    # -- backups
    def backup_ids(self) -> list[str]:
        """Committed backups (those with a manifest), oldest first."""
        ids = []
        for obj in self.site.list(layout.backups_prefix(self.cluster)):
            parts = layout.split_backup_key(self.cluster, obj.key)
            if parts and parts[1] == layout.MANIFEST:
                ids.append(parts[0])
        return sorted(ids)

    def manifest(self, backup_id: str) -> Manifest:
        key = layout.manifest(self.cluster, backup_id)
        return load_doc(Manifest, get_bytes(self.site, key), f"site {self.name!r}: {key}")

    def manifests(self) -> list[Manifest]:
        out = []
        for bid in self.backup_ids():
            try:
                out.append(self.manifest(bid))
            except ObjectNotFound:  # expired between list and get
                continue
            except SiteError as exc:
                log.warning("%s", exc.message)
        return out

    def write_manifest(self, m: Manifest) -> None:
        put_bytes(self.site, layout.manifest(self.cluster, m.backup_id), m.to_bytes())

    def delete_backup(self, backup_id: str) -> None:
        """Manifest first (so a crash leaves debris, never a backup missing pieces), then artifacts
        (those kept outside the backup directory too: a base's tars in Barman's layout)."""
        try:
            outside = [a for a in self.manifest(backup_id).artifacts if a.key]
        except (ObjectNotFound, SiteError):
            outside = []
        self.site.delete(layout.manifest(self.cluster, backup_id))
        for a in outside:
            self.site.delete(layout.artifact_key(self.cluster, backup_id, a))
        for obj in list(self.site.list(layout.backup_prefix(self.cluster, backup_id))):
            self.site.delete(obj.key)

    def open_artifact(self, m: Manifest, name: str, *, decompress: bool = True):
        """A reader of one artifact that raises IntegrityError at EOF if the bytes are not the manifest's."""
        a = m.artifact(name)
        raw = self.site.get(layout.artifact_key(self.cluster, m.backup_id, a))
        what = f"site {self.name!r}: {m.backup_id}/{name}"
        v = VerifyingReader(raw, a.sha256, a.size, what)
        if a.encryption:
            from ..crypt import keys

            problem = keys.missing_key(a.recipients, f"backup {m.backup_id} ({name} at site {self.name!r})")
            if problem:
                raw.close()
                raise problem
            v = decrypting(v, keys.identities(), what)
        return decompressing(v, a.compression) if decompress else v

    def key_problem(self, m: Manifest):
        """Why the identities given cannot open this copy of backup ``m`` (None: they can, or it is clear)."""
        from ..crypt import keys

        for a in m.artifacts:
            problem = keys.missing_key(a.recipients, f"backup {m.backup_id} at site {self.name!r}")
            if problem:
                return problem
        return None

    def debris(self) -> list[str]:
        """Backup directories with no manifest, and unfinished writes."""
        committed = set(self.backup_ids())
        out = set()
        for obj in self.site.list(layout.backups_prefix(self.cluster)):
            parts = layout.split_backup_key(self.cluster, obj.key)
            if parts and parts[0] not in committed:
                out.add(layout.backup_prefix(self.cluster, parts[0]))
        out.update(self._base_debris(committed))
        if self.site.capabilities.lists_temporaries:
            out.update(self.site.list_temporaries(layout.cluster_prefix(self.cluster)))
        return sorted(out)

    def _base_debris(self, committed: set[str]) -> set[str]:
        """Base directories in Barman's layout that a killed pgvault backup left: tars with no
        backup.info and no manifest of that id. A directory with a backup.info is Barman's
        (or a committed base) and never pgvault's debris."""
        dirs: dict[str, set[str]] = {}
        prefix = layout.barman_base_prefix(self.cluster)
        for obj in self.site.list(prefix):
            rest = obj.key[len(prefix):]
            if "/" in rest:
                bid, name = rest.split("/", 1)
                dirs.setdefault(bid, set()).add(name)
        return {f"{prefix}{bid}/" for bid, names in dirs.items()
                if "backup.info" not in names and f"{bid}Z" not in committed and all(".tar" in n for n in names)}

    def verify(self, backup_ids: list[str] | None = None) -> "VerifyReport":
        report = VerifyReport(site=self.name)
        ids = backup_ids if backup_ids is not None else self.backup_ids()
        for bid in ids:
            try:
                m = self.manifest(bid)
            except ObjectNotFound:
                report.problems.append(Problem(bid, "-", "missing", "no manifest: no such backup at this site"))
                continue
            except SiteError as exc:
                report.problems.append(Problem(bid, layout.MANIFEST, "corrupt", exc.message))
                continue
            report.checked.append(bid)
            for a in m.artifacts:
                key = layout.artifact_key(self.cluster, bid, a)
                try:
                    with self.site.get(key) as fh:
                        sha, size = hash_stream(fh)
                except ObjectNotFound:
                    report.problems.append(Problem(bid, a.name, "missing", "artifact is missing"))
                    continue
                report.bytes_read += size
                if size != a.size or sha != a.sha256:
                    report.problems.append(Problem(bid, a.name, "corrupt",
                                                   f"size {size} (expected {a.size}), sha256 {sha[:12]}… (expected {a.sha256[:12]}…)"))
        if backup_ids is None:
            report.debris = self.debris()
        return report


@dataclass
class Problem:
    backup_id: str
    artifact: str
    kind: str  # missing | corrupt
    detail: str


@dataclass
class VerifyReport:
    site: str
    checked: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    debris: list[str] = field(default_factory=list)
    bytes_read: int = 0

    @property
    def ok(self) -> bool:
        """No damage. Debris (an interrupted backup's leftovers, never listed) is not damage:
        every listed backup is intact, and expire removes debris once it is old enough."""
        return not self.problems


def open_catalogs(policy, names: list[str]) -> dict[str, Catalog]:
    from ..sites import open_sites

    return {n: Catalog(s, policy.cluster.name) for n, s in open_sites(policy, names).items()}
