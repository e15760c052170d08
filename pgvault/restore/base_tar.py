"""Lay down a base taken by pgvault's engine (methods/basebackup.py): every tar downloaded,
checked, decompressed and untarred at the same time, from the chosen site first.

Each tar (``data`` and one per tablespace) is its own pipeline: a thread reads the object from
the site through ``VerifyingReader`` (sha256 of the stored bytes) and lz4, and feeds stock
``tar -x`` (its own process, so extraction runs on another core). All tars run at once.
A copy that fails its checksum (or a site that fails mid-read) is reported, the target is
emptied, and the next site holding the same backup is used.

Tablespaces are laid down inside the target, in ``tablespaces/<oid>``, with the usual
``pg_tblspc/<oid>`` symlink to it: a restore on the backed-up host must not touch the live
tablespace directories, and a drill's scratch directory then holds everything. (A directory
in pg_tblspc itself — an "in-place" tablespace — is refused by PostgreSQL 15's recovery.) To
place them elsewhere, move the directory and re-point the link (or restore with
barman-cloud-restore --tablespace NAME:DIR)."""
from __future__ import annotations

import logging
import shutil
import threading
from pathlib import Path

from .. import proc
from ..catalog.catalog import Catalog
from ..catalog.formats import Manifest
from ..catalog.streams import decompressing
from ..errors import IntegrityError, ObjectNotFound, PgvaultError, SiteError
from ..sites import open_sites
from .source import site_order

log = logging.getLogger("pgvault.restore.base")

TABLESPACES = "tablespaces"


def tar_targets(m: Manifest, dest: Path) -> list[tuple[object, Path]]:
    """(artifact, directory to extract into) for each tar of the base."""
    out = []
    for a in m.artifacts:
        if not a.key or ".tar" not in a.name:
            continue
        stem = a.name.split(".tar", 1)[0]
        out.append((a, dest if stem == "data" else dest / TABLESPACES / stem))
    return out


def _extract(cat: Catalog, m: Manifest, art, where: Path) -> None:
    where.mkdir(parents=True, exist_ok=True, mode=0o700)
    # Through the catalog's one reader: sha256 of the stored bytes, and age decryption when the
    # site seals its artifacts (issue 15) — the stored bytes are then not lz4 but an age file.
    stored = cat.open_artifact(m, art.name, decompress=False)
    try:
        try:
            proc.feed([["tar", "-x", "-C", str(where)]], decompressing(stored, art.compression),
                      hint="the base's tar could not be extracted; see the message above")
        except (IntegrityError, SiteError, ObjectNotFound):
            raise
        except Exception:
            # Damaged bytes show first as lz4's or tar's error; the stored object's sha256 says
            # whether the copy is to blame (IntegrityError: the caller takes the next site) or
            # something here is (a full disk: that error stands, no other site would help).
            _drain(stored)
            raise
        # tar and lz4 may stop before the object's last byte: the hash covers all of it
        _drain(stored)
    finally:
        try:
            stored.close()
        except Exception:
            pass


def _drain(stored) -> None:
    """Read the stored object to its end: VerifyingReader raises IntegrityError there if the
    bytes are not the ones the manifest recorded."""
    while stored.read(1 << 20):
        pass


def _from_site(cat: Catalog, m: Manifest, dest: Path) -> None:
    jobs = tar_targets(m, dest)
    if not any(where == dest for _a, where in jobs):
        raise PgvaultError(f"backup {m.backup_id} at site {cat.name!r} has no data.tar")
    # data.tar first lays down pg_tblspc/; the tablespaces' directories are made under it.
    (dest / "pg_tblspc").mkdir(parents=True, exist_ok=True, mode=0o700)
    errors: list[BaseException] = []

    def one(a, where):
        try:
            _extract(cat, m, a, where)
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            errors.append(exc)

    threads = [threading.Thread(target=one, args=j, name=f"pgvault-untar-{j[0].name}") for j in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    for a, where in jobs:
        if where != dest:
            link = dest / "pg_tblspc" / where.name
            link.unlink(missing_ok=True)
            link.symlink_to(where)


def _empty(dest: Path) -> None:
    for child in dest.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def lay_down(policy, first_site: str, manifest: dict, dest: Path) -> str:
    """Lay the base down in the empty ``dest``; returns the site it came from."""
    backup_id = manifest["backup_id"]
    notes = []
    for name, site in open_sites(policy, site_order(policy, first_site)).items():
        cat = Catalog(site, policy.cluster.name)
        try:
            m = Manifest.model_validate(manifest) if name == first_site else cat.manifest(backup_id)
        except ObjectNotFound:
            continue
        except PgvaultError as exc:
            notes.append(f"site {name!r}: {exc.message}")
            continue
        try:
            _from_site(cat, m, dest)
            if notes:
                log.warning("base %s laid down from site %s after: %s", backup_id, name, "; ".join(notes))
            return name
        except (IntegrityError, SiteError, ObjectNotFound) as exc:
            msg = getattr(exc, "message", str(exc))
            if not msg.startswith(f"site {name!r}"):
                msg = f"site {name!r}: {msg}"
            log.warning("base %s unusable: %s; trying the next site", backup_id, msg)
            notes.append(msg)
            _empty(dest)
    raise IntegrityError(f"base backup {backup_id} could not be laid down from any site: {'; '.join(notes) or 'no site holds it'}",
                         "run pgvault verify to see which copies are damaged")
