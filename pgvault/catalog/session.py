"""One backup being written to several sites at once: artifacts first, manifest last.

A site that fails during the backup is dropped (its partial artifacts deleted); the backup
commits at the sites that received every artifact. If the backup fails as a whole, every
artifact written so far is deleted, so nothing that looks like a backup remains."""
from __future__ import annotations

import logging
from typing import BinaryIO, Callable

from ..errors import SiteError
from . import layout
from .catalog import Catalog
from .formats import Artifact, Manifest
from .streams import SUFFIX, SealedTee, Tee, pump

log = logging.getLogger("pgvault.session")


class BackupSession:
    def __init__(self, catalogs: dict[str, Catalog], backup_id: str,
                 on_first_stream: Callable[[], None] | None = None,
                 recipients: dict[str, tuple[str, ...]] | None = None):
        self.catalogs = dict(catalogs)
        # Per site, the age recipients its artifacts are encrypted to (absent or () = clear).
        self.recipients = {n: tuple(r) for n, r in (recipients or {}).items() if r}
        self.backup_id = backup_id
        self._on_first_stream = on_first_stream  # called once, when the first stream is flowing
        self.artifacts: list[Artifact] = []
        # Which sites hold each artifact (a stream may go to a subset of sites, e.g. an
        # incremental snapshot send whose base differs per site), and per-site manifest fields.
        self.holders: dict[int, set[str]] = {}  # index in artifacts -> sites
        # An encrypted artifact's stored bytes differ per recipient set: index -> site -> Artifact.
        self.per_site: dict[int, dict[str, Artifact]] = {}
        self.site_fields: dict[str, dict] = {}
        self.failed: dict[str, Exception] = {}
        self.committed: list[str] = []
        self.outside: list[str] = []             # cluster-relative prefixes of artifacts with a key

    @property
    def cluster(self) -> str:
        return next(iter(self.catalogs.values())).cluster

    def _drop(self, name: str, exc: Exception) -> None:
        # info: the caller reports each dropped site once, in its own words (failed_sites)
        log.info("site %s dropped from backup %s: %s", name, self.backup_id, getattr(exc, "message", exc))
        self.failed[name] = exc
        cat = self.catalogs.pop(name, None)
        if cat is not None:
            self._cleanup(cat)

    def _cleanup(self, cat: Catalog) -> None:
        try:
            for obj in list(cat.site.list(layout.backup_prefix(cat.cluster, self.backup_id))):
                cat.site.delete(obj.key)
            # artifacts kept outside the backup directory (a base's tars in Barman's layout)
            for rel in self.outside:
                for obj in list(cat.site.list(layout.cluster_key(cat.cluster, rel))):
                    cat.site.delete(obj.key)
        except Exception as exc:  # leave debris for verify to report
            log.warning("could not clean up %s at %s: %s", self.backup_id, cat.name, exc)

    def add_stream(self, name: str, source: BinaryIO, *, compression: str = "zstd", level: int = 1,
                   threads: int = 2, kind: str = "data", database: str | None = None,
                   progress: Callable[[int], None] | None = None, sites: list[str] | None = None,
                   at: str | None = None) -> Artifact:
        """Stream ``source`` (compressed on the way) to every remaining site as one artifact;
        ``sites`` limits it to those sites (the others' manifests will not list it). ``at``: a
        directory relative to the cluster directory to store it in instead of the backup
        directory (Barman's ``base/<barman id>/``); the manifest records the key, and a failed
        backup removes it like the others."""
        name = name + SUFFIX[compression]
        key = None
        if at is not None:
            key = at.rstrip("/") + "/" + name
            if at not in self.outside:
                self.outside.append(at)
        if not self.catalogs:
            raise self._none_left()
        targets = {n: c for n, c in self.catalogs.items() if sites is None or n in sites}
        if not targets:
            raise self._none_left()
        where = (lambda c: layout.cluster_key(c.cluster, key)) if key else \
            (lambda c: layout.artifact(c.cluster, self.backup_id, name))
        groups: dict[tuple, dict] = {}
        for n, c in targets.items():
            groups.setdefault(self.recipients.get(n, ()), {})[n] = (c.site, where(c))
        tee = Tee(groups[()]) if list(groups) == [()] else SealedTee(groups)
        if self._on_first_stream is not None:
            hook, self._on_first_stream = self._on_first_stream, None
            hook()
        try:
            raw = pump(source, tee, compression, level, threads, progress)
            survivors = tee.commit()
        except BaseException:
            tee.abort()
            raise
        finally:
            for n, exc in tee.failed.items():
                if n in self.catalogs:
                    self._drop(n, exc)
        for n in list(targets):
            if n not in survivors and n in self.catalogs:
                self._drop(n, SiteError("write failed"))
        tees = {(): tee} if isinstance(tee, Tee) else tee.tees
        arts = {}
        for rcpts, t in tees.items():
            extra = {"encryption": "age", "recipients": list(rcpts)} if rcpts else {}  # (clear: no fields)
            a = Artifact(name=name, size=t.size, sha256=t.sha.hexdigest(), raw_size=raw,
                         compression=compression, kind=kind, database=database, key=key, **extra)
            arts.update({n: a for n in t.writers})
        art = arts[survivors[0]]
        if len(tees) > 1 or next(iter(tees)):
            self.per_site[len(self.artifacts)] = arts
        self.holders[len(self.artifacts)] = set(survivors)
        self.artifacts.append(art)
        return art

    def set_site_fields(self, site: str, **fields) -> None:
        """Manifest fields that differ at one site (``parent``; ``facts`` is merged)."""
        self.site_fields.setdefault(site, {}).update(fields)

    def _manifest_for(self, site: str, manifest: Manifest) -> Manifest:
        arts = [self.per_site.get(i, {}).get(site, a) for i, a in enumerate(self.artifacts)
                if site in self.holders.get(i, ())]
        update = {"artifacts": arts, "backup_id": self.backup_id, **self.site_fields.get(site, {})}
        if "facts" in update:
            update["facts"] = {**manifest.facts, **update["facts"]}
        return manifest.model_copy(update=update)

    def _none_left(self) -> SiteError:
        detail = "; ".join(f"{n}: {getattr(e, 'message', e)}" for n, e in self.failed.items())
        return SiteError(f"backup {self.backup_id} failed at every site: {detail}",
                         "check the sites with pgvault check")

    def commit(self, manifest: Manifest) -> Manifest:
        """Write the manifest (the commit marker) at every site that holds every artifact."""
        manifest = manifest.model_copy(update={"artifacts": list(self.artifacts), "backup_id": self.backup_id})
        for n, cat in list(self.catalogs.items()):
            try:
                cat.write_manifest(self._manifest_for(n, manifest))
                self.committed.append(n)
            except Exception as exc:
                self._drop(n, exc)
        if not self.committed:
            raise self._none_left()
        return manifest

    def abort(self) -> None:
        for cat in self.catalogs.values():
            self._cleanup(cat)
