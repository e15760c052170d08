"""wal-fetch: bring one WAL file back from the first site that holds a sound copy.

Sites are tried in ``wal.sites`` order (``--from-site`` first). A copy is sound when it
decompresses (gzip/bzip2/zstd checksums) and, for a segment, its page header names this
segment, carries the cluster's system identifier and the file has the segment size. A
damaged copy is reported loudly and the next site is tried. A file that no site holds is the
normal end of recovery: WalMissing, exit code 1, no message.

Prefetch: when PostgreSQL asks for a segment (``%p`` in pg_wal), the next ``wal.prefetch``
segments of the same timeline are downloaded in parallel from the same site, checked the same
way, and kept in ``pg_wal/.pgvault-prefetch/``; the next calls take them from there without
loading the policy (``take_prefetched``). The directory is removed when the archive ends.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

from ..errors import ObjectNotFound, PgvaultError, SiteError
from . import codec, names
from .item import stored_variants

log = logging.getLogger("pgvault.wal")


class WalMissing(PgvaultError):
    """No site holds the file (quiet: PostgreSQL asks for files past the archive's end)."""


class WalUnavailable(PgvaultError):
    """No sound copy could be read, but some site was unreachable or held a damaged copy."""


def site_order(policy, from_site: str | None) -> list[str]:
    order = list(policy.wal.sites) or list(policy.sites)
    if from_site:
        if from_site not in policy.sites:
            from ..errors import UsageError

            raise UsageError(f"unknown site {from_site!r}", f"defined sites: {', '.join(policy.sites)}")
        order = [from_site] + [s for s in order if s != from_site]
    return order


def verify(name: str, raw: bytes, sysid: str | None) -> str | None:
    """Why ``raw`` is not a sound copy of WAL file ``name`` (None when it is)."""
    if not names.has_header(name):
        return None
    try:
        hdr = names.parse_header(raw)
    except ValueError as exc:
        return str(exc)
    problem = names.check_header(name, hdr)
    if problem:
        return problem
    if names.kind(name) == "segment" and len(raw) != hdr.segment_size:
        return f"{len(raw)} bytes, expected a {hdr.segment_size}-byte segment"
    if sysid and str(hdr.system_identifier) != sysid:
        return f"system identifier {hdr.system_identifier}, expected {sysid}"
    return None


def write_file(dest: Path, data: bytes) -> None:
    """Write where PostgreSQL expects it, all at once (temp file + rename)."""
    tmp = dest.with_name(f".{dest.name}.pgvault-tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
    os.rename(tmp, dest)


PREFETCH_DIR = ".pgvault-prefetch"


def prefetch_dir(dest: str | os.PathLike) -> Path | None:
    parent = Path(os.path.abspath(dest)).parent
    return parent / PREFETCH_DIR if parent.name == "pg_wal" else None


def take_prefetched(name: str, dest: str | os.PathLike) -> bool:
    """Serve ``name`` from the prefetch directory (cheap: no policy, no site). The copy was
    verified when it was downloaded; its page header is checked again against this data
    directory's pg_control, so a stray file from another cluster is never served."""
    d = prefetch_dir(dest)
    if d is None or not names.SEGMENT_RE.match(name):
        return False
    src = d / name
    try:
        with open(src, "rb") as fh:
            head = fh.read(names.LONG_HEADER.size)
        with open(d.parent.parent / "global" / "pg_control", "rb") as fh:
            sysid = int.from_bytes(fh.read(8), "little")
        hdr = names.parse_header(head)
    except (OSError, ValueError):
        return False
    if hdr.system_identifier != sysid or names.check_header(name, hdr) or src.stat().st_size != hdr.segment_size:
        return False
    os.rename(src, dest)
    return True


def drop_prefetched(dest: str | os.PathLike) -> None:
    import shutil

    d = prefetch_dir(dest)
    if d is not None and d.is_dir():
        shutil.rmtree(d, ignore_errors=True)


def _prefetch(policy, site, name: str, dest, sysid: str | None, count: int) -> int:
    """Download the ``count`` segments after ``name`` from ``site`` into the prefetch dir."""
    from concurrent.futures import ThreadPoolExecutor

    d = prefetch_dir(dest)
    if d is None or count <= 0 or names.kind(name) != "segment":
        return 0
    hdr = names.parse_header(Path(dest).read_bytes()[: names.LONG_HEADER.size])
    tli, segno = names.parse_segment(name, hdr.segment_size)
    wanted = [names.segment_name(tli, segno + i, hdr.segment_size) for i in range(1, count + 1)]
    wanted = [w for w in wanted if not (d / w).exists()]
    d.mkdir(mode=0o700, exist_ok=True)

    def one(wname: str) -> bool:
        from ..sites.base import get_bytes

        try:
            for key in stored_variants(site, policy.cluster.name, wname):
                raw = codec.decompress(get_bytes(site, key), names.split_stored(key.rsplit("/", 1)[1])[1])
                if verify(wname, raw, sysid) is None:
                    write_file(d / wname, raw)
                    return True
        except (PgvaultError, codec.CorruptWal, OSError) as exc:
            log.debug("prefetch of %s failed: %s", wname, exc)  # fetched (and reported) when asked for
        return False

    with ThreadPoolExecutor(min(4, len(wanted) or 1), thread_name_prefix="wal-prefetch") as pool:
        return sum(pool.map(one, wanted))


def fetch(policy, name: str, dest: str | os.PathLike, *, from_site: str | None = None, sites: dict | None = None) -> str:
    """Fetch ``name`` into ``dest``; return the site it came from."""
    from ..catalog.catalog import Catalog
    from ..sites import open_site

    if not names.is_wal_name(name):
        from ..errors import UsageError

        raise UsageError(f"{name!r} is not a WAL file name", "restore_command must be 'pgvault wal-fetch %f %p'")
    from ..errors import KeyRequired

    cluster = policy.cluster.name
    troubles: list[str] = []
    key_problem: KeyRequired | None = None
    for sname in site_order(policy, from_site):
        site = (sites or {}).get(sname) or open_site(sname, policy.sites[sname])
        try:
            keys = stored_variants(site, cluster, name)
            if not keys:
                continue
            sysid = None
            if names.has_header(name):
                b = Catalog(site, cluster).binding()
                sysid = b.system_identifier if b else None
            for key in keys:
                from ..sites.base import get_bytes

                comp = names.split_stored(key.rsplit("/", 1)[1])[1]
                try:
                    raw = codec.decompress(get_bytes(site, key), comp)
                    problem = verify(name, raw, sysid)
                except ObjectNotFound:
                    continue
                except KeyRequired as exc:  # another site may hold a copy encrypted to a key we have
                    need = ", ".join(policy.recipients(sname)) or "the recipients of its time"
                    key_problem = key_problem or KeyRequired(f"site {sname!r}: {name}: {exc.message} (the site's recipients: {need})",
                                                             exc.hint)
                    troubles.append(f"site {sname!r}: {key_problem.message}")
                    continue
                except codec.CorruptWal as exc:
                    problem = str(exc)
                if problem:
                    msg = f"site {sname!r}: {key} is damaged: {problem}"
                    log.error("%s; trying the next site", msg)
                    troubles.append(msg)
                    continue
                write_file(Path(dest), raw)
                if site_prefetch := getattr(policy.wal, "prefetch", 0):
                    _prefetch(policy, site, name, dest, sysid, site_prefetch)
                return sname
        except (SiteError, OSError) as exc:
            msg = getattr(exc, "message", None) or str(exc)
            log.warning("site %r: %s; trying the next site", sname, msg)
            troubles.append(f"site {sname!r}: {msg}")
    if key_problem is not None:
        raise key_problem
    if troubles:
        raise WalUnavailable(f"no sound copy of {name} could be fetched:\n  " + "\n  ".join(troubles),
                             "recovery stops here unless another site holds the file; fix the site and retry")
    drop_prefetched(dest)  # the archive ends here: whatever was fetched ahead is not needed
    raise WalMissing(f"{name} is not in the archive at any site")
