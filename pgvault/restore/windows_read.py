"""Gathering what the recoverability windows (pgvault.restore.windows, pure) are computed from:
the sites' bases and WAL listings (pgvault.restore.gather, the same inputs a restore plan
uses), and the end *time* of each timeline's newest WAL — the last commit timestamp pg_waldump
finds in the newest segment. That segment is the only WAL body downloaded; the answer is cached
in the state directory by (site, key, mtime), so a repeated `pgvault windows` or `status` lists
only.

When the body cannot be read (no pg_waldump, a damaged or empty segment, no commit in it) the
window ends at the time the segment was stored: an upper bound, marked ``archived``."""
from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from .. import pg, proc
from ..catalog import layout
from ..errors import PgvaultError
from ..sites import open_sites
from ..sites.base import get_bytes
from ..statedir import state_dir
from . import gather, windows

log = logging.getLogger("pgvault.windows")

CACHE = "windows-end-times.json"


@dataclass
class Read:
    windows: list[windows.SiteWindow] = field(default_factory=list)
    archives: dict = field(default_factory=dict)          # site -> plan.Archive
    warnings: list[str] = field(default_factory=list)
    unreachable: list[str] = field(default_factory=list)  # sites that did not answer (or failed)


def _cache_path(policy) -> Path:
    return state_dir(policy.state_dir, policy.cluster.name) / CACHE


def _load(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _save(path: Path, data: dict) -> None:
    # An optimisation only: a state directory we cannot write costs a download next time.
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, sort_keys=True))
        os.replace(tmp, path)
    except OSError as exc:
        log.debug("cannot write %s: %s", path, exc)


def segment_commit_time(site, key: str, comp: str, name: str, bindir: str | None = None) -> datetime | None:
    """The last commit time recorded in one archived segment, or None."""
    # Imported here: status and a repeated `pgvault windows` find the end time in the cache.
    from ..wal import codec
    from .walscan import last_commit_time

    try:
        data = codec.decompress(get_bytes(site, key), comp)
        with tempfile.TemporaryDirectory(prefix="pgvault-windows-") as d:
            (Path(d) / name).write_bytes(data)
            cp = proc.run([pg.tool("pg_waldump", configured=bindir), "--rmgr=Transaction", "--path", d, name, name],
                          check=False, extra_env={"TZ": "UTC", "PGTZ": "UTC"}, timeout=60)
        # pg_waldump exits non-zero at the end of the only segment it was given; what it
        # printed before that is complete records.
        return last_commit_time(cp.stdout or b"")
    except (PgvaultError, OSError) as exc:
        log.info("cannot read the last commit time of %s at site %s: %s", name, site.name,
                 getattr(exc, "message", None) or exc)
        return None


_UNREAD = object()


def site_inputs(policy, name: str, site, cluster: str | None = None, wal_objects=None, *, manifests=None,
                binding=_UNREAD, listing=None) -> tuple[list, object]:
    """One site's bases and WAL archive (the same inputs gather.gather reads for a plan).
    ``manifests``/``binding``/``wal_objects``: what the caller has read from the site already
    (status has), so that nothing is read twice; ``listing``: that WAL listing parsed
    (pgvault.wal.listing), so that nothing is parsed twice either."""
    from ..catalog.catalog import Catalog

    cluster = cluster or policy.cluster.name
    cat = Catalog(site, cluster)
    if binding is _UNREAD:
        binding = cat.binding()
    seg = binding.wal_segment_size if binding else 16 << 20
    bases = [b for m in (cat.manifests() if manifests is None else manifests)
             for b in gather.bases_from_manifest(m, name)]
    return bases, gather.archive_of(site, cluster, seg, wal_objects, listing)


def end_times(policy, w: windows.SiteWindow, arch, site, cache: dict) -> tuple[dict, dict]:
    """{(timeline, segno): last commit time} of each timeline's newest restorable segment,
    from ``cache`` or read; and the entries that answered ({cache key: ISO time or None},
    those read included: what ``keep`` writes back). ``cache`` is not changed."""
    from ..wal.names import segment_name

    out, used = {}, {}
    bindir = getattr(policy.cluster, "bin_dir", None)
    for tw in w.timelines:
        if not tw.intervals or not tw.intervals[-1].last_segment:
            continue
        seg = tw.intervals[-1].last_segment
        if seg not in arch.keys:
            continue
        key, comp, mtime = arch.keys[seg]
        ck = f"{w.site}|{key}|{mtime}"          # the key names the cluster
        if ck in cache:
            used[ck] = cache[ck]
        else:
            t = segment_commit_time(site, key, comp, segment_name(*seg, arch.segment_size), bindir)
            used[ck] = t.isoformat() if t else None
        if used[ck]:
            out[seg] = datetime.fromisoformat(used[ck])
    return out, used


# The probe threads of one status or windows run (one per site) share the cache file.
_CACHE_LOCK = threading.Lock()


def keep(path: Path, cache: dict, used: dict, mine: str) -> bool:
    """Write the end times one site's window ``used`` into the cache file when they are news:
    merged with what another site's thread wrote since ``cache`` was loaded (each used to write
    back its own copy, dropping the other's entry: read again next run), and without this
    site's and cluster's older entries (key prefix ``mine``): their segment is no longer a
    timeline's newest, never asked for again — kept, the file grew with every segment that
    ever was the newest, and every status loads it. Whether the file was written."""
    if all(k in cache for k in used) and not _stale(cache, used, mine):
        return False
    with _CACHE_LOCK:
        current = _load(path)
        for k in _stale(current, used, mine):
            del current[k]
        current.update(used)
        _save(path, current)
    return True


def _stale(cache: dict, used: dict, mine: str) -> list[str]:
    return [k for k in cache if k.startswith(mine) and k not in used]


def drill_docs(site, cluster: str) -> list[dict]:
    """The drill evidence records kept at one site (pgvault.drills.reports.store_evidence),
    read defensively: a damaged or foreign object is skipped (status reports those)."""
    docs = []
    for obj in site.list(layout.drills_prefix(cluster)):
        if not obj.key.endswith(".json"):
            continue
        try:
            doc = json.loads(get_bytes(site, obj.key))
        except (PgvaultError, ValueError):
            continue
        if isinstance(doc, dict):
            docs.append({**doc, "drill_id": doc.get("drill_id") or obj.key.rsplit("/", 1)[-1][:-len(".json")]})
    return docs


def _instant(text: str) -> datetime:
    t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


def site_window(policy, name: str, site, *, with_end_times: bool = True, cluster: str | None = None,
                wal_objects=None, drills: list[dict] | None = None, manifests=None,
                binding=_UNREAD, listing=None) -> tuple[windows.SiteWindow, object]:
    """The window of one site (its listing, its manifests, at most one segment body per timeline),
    with the drills whose evidence is kept there (``drills``: those records when the caller has
    read them already, as status has; ``listing``, ``manifests``, ``binding``: see site_inputs)."""
    cluster = cluster or policy.cluster.name
    bases, arch = site_inputs(policy, name, site, cluster, wal_objects, manifests=manifests, binding=binding,
                              listing=listing)
    w = windows.compute(name, bases, arch)
    if with_end_times:
        cpath = _cache_path(policy)
        cache = _load(cpath)
        commit, used = end_times(policy, w, arch, site, cache)
        keep(cpath, cache, used, f"{name}|{layout.wal_prefix(cluster)}")
        if commit:
            w = windows.compute(name, bases, arch, commit)
    docs = drill_docs(site, cluster) if drills is None else drills
    proofs = [p for p in (windows.proof(d, _instant) for d in docs if d.get("site") in (None, name)) if p]
    return windows.relate_drills(w, proofs), arch


def read(policy, site: str | None = None, *, with_end_times: bool = True) -> Read:
    """Windows of every WAL site of the policy (or just ``site``); an unreadable site is a warning."""
    from ..errors import UsageError

    if site is not None and site not in policy.sites:
        raise UsageError(f"no site {site!r} in the policy", f"sites: {', '.join(policy.sites)}")
    from ..sites.readonly import Deadline, Probes, open_readonly, site_timeout

    names = [site] if site else (list(policy.wal.sites) or list(policy.sites))
    out = Read()
    # A read-only command: every site at once, within one monitoring.site_timeout (as status).
    probes = Probes(names, lambda n: site_window(policy, n, open_readonly(policy, n), with_end_times=with_end_times),
                    what="windows")
    for n, answer in probes.wait(Deadline(site_timeout(policy))).items():
        if not answer.ok:
            out.warnings.append(f"site {n!r} skipped: {answer.message}")
            out.unreachable.append(n)
            continue
        w, arch = answer.value
        out.windows.append(w)
        out.archives[n] = arch
    return out


@dataclass
class At:
    """Per site: is one instant restorable from there (pgvault.restore.windows.Answer)."""
    answers: list[windows.Answer] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    unreachable: list[str] = field(default_factory=list)

    def as_dict(self) -> list[dict]:
        return [a.as_dict() for a in self.answers]


def at(policy, t: datetime, site: str | None = None) -> At:
    """The one answer to "can I restore to ``t``, from where?": ``pgvault windows --at T`` and
    ``pgvault restore --to-time T --plan`` both print it. Reads the sites only (listings,
    manifests, at most each timeline's newest segment, cached): nothing is written."""
    r = read(policy, site)
    return At([windows.at_time(w, r.archives[w.site], t) for w in r.windows], r.warnings, r.unreachable)


def all_clusters(policy, site_name: str, *, with_end_times: bool = True) -> list[tuple[str, windows.SiteWindow]]:
    """(cluster, window) for every cluster stored at one site, read from the site alone: one
    listing of ``clusters/`` (split per cluster), each cluster's manifests and history files."""
    from ..errors import UsageError

    if site_name not in policy.sites:
        raise UsageError(f"no site {site_name!r} in the policy", f"sites: {', '.join(policy.sites)}")
    site = open_sites(policy, [site_name])[site_name]
    wal: dict[str, list] = {}
    clusters: set[str] = set()
    for obj in site.list("clusters/"):
        parts = obj.key.split("/")
        if len(parts) < 3:
            continue
        clusters.add(parts[1])
        if parts[2] == "wals":
            wal.setdefault(parts[1], []).append(obj)
    out = []
    for c in sorted(clusters):
        w, _ = site_window(policy, site_name, site, with_end_times=with_end_times, cluster=c,
                           wal_objects=wal.get(c, []))
        out.append((c, w))
    return out
