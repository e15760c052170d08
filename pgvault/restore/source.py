"""Choosing where to read a backup from: the requested site first, then the policy's order;
a site whose copy fails its checksum is reported and skipped."""
from __future__ import annotations

import logging

from ..catalog.catalog import Catalog
from ..catalog.formats import Manifest
from ..catalog import layout
from ..catalog.streams import hash_stream
from ..errors import ObjectNotFound, PgvaultError, UsageError
from ..sites import open_sites

log = logging.getLogger("pgvault.restore")


def site_order(policy, from_site: str | None) -> list[str]:
    names = list(policy.sites)
    if from_site:
        if from_site not in policy.sites:
            raise UsageError(f"no site {from_site!r} in the policy", f"sites: {', '.join(names)}")
        names.remove(from_site)
        names.insert(0, from_site)
    return names


def find_backup(policy, backup_id: str, from_site: str | None, *, only: bool = False,
                warn=None) -> list[tuple[Catalog, Manifest]]:
    """The first site, in preference order, holding ``backup_id`` with intact artifacts (every
    artifact read and its sha256 checked); later sites are not read once one copy is sound —
    a damaged or missing copy sends it on to the next."""
    names = site_order(policy, from_site)
    if only and from_site:
        names = [from_site]
    out = []
    notes = []
    key_problems = []
    for n, site in open_sites(policy, names).items():
        cat = Catalog(site, policy.cluster.name)
        try:
            m = cat.manifest(backup_id)
        except ObjectNotFound:
            continue
        except PgvaultError as exc:
            notes.append(f"site {n!r}: {exc.message}")
            continue
        problem = cat.key_problem(m)
        if problem is not None:  # another site may hold a copy encrypted to a key we have
            key_problems.append(problem)
            notes.append(f"site {n!r}: {problem.message}")
            continue
        bad = damaged(cat, m)
        if bad:
            notes.append(f"site {n!r}: copy of {backup_id} is damaged ({bad}); trying the next site")
            continue
        out.append((cat, m))
        break
    for note in notes:
        (warn or log.warning)(note)
    if not out and key_problems:
        raise key_problems[0]
    if not out:
        detail = ("; ".join(notes)) if notes else "no site holds it"
        raise PgvaultError(f"backup {backup_id} is not available intact at any site ({detail})",
                           "list backups with pgvault list")
    return out


def damaged(cat: Catalog, m: Manifest) -> str | None:
    """Why this site's copy of a backup cannot be used (an artifact missing or failing its sha256), or None."""
    for a in m.artifacts:
        try:
            with cat.site.get(layout.artifact_key(cat.cluster, m.backup_id, a)) as fh:
                sha, size = hash_stream(fh)
        except ObjectNotFound:
            return f"{a.name} missing"
        except PgvaultError as exc:
            return f"{a.name}: {exc.message}"
        if sha != a.sha256 or size != a.size:
            return f"{a.name} fails its checksum"
    return None


def latest_backup_id(policy, method: str | None = None, job: str | None = None,
                     from_site: str | None = None) -> str:
    best = None
    for n, site in open_sites(policy, site_order(policy, from_site)).items():
        try:
            for m in Catalog(site, policy.cluster.name).manifests():
                if (method is None or m.method == method) and (job is None or m.job == job):
                    if best is None or m.backup_id > best:
                        best = m.backup_id
        except PgvaultError as exc:
            log.warning("site %s: %s", n, exc.message)
    if best is None:
        raise PgvaultError("no backup found" + (f" of method {method}" if method else "") + (f" of job {job}" if job else ""),
                           "take one with pgvault backup JOB")
    return best
