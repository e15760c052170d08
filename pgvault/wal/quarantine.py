"""What an operator does with WAL kept out of the archive (``quarantine/``, pgvault.wal.divergence):
list it, take a file out to read or replay it, and resolve it once dealt with.

Why a command and not "delete the objects by hand": the quarantined bytes may be the only copy
of commits clients saw on a zombie primary or an abandoned branch. ``extract`` gives them back
as the WAL file PostgreSQL wrote (decompressed, decrypted, checked against the evidence's
sha256) for ``pg_waldump`` or a scratch replay; ``resolve`` moves the bytes and the evidence to
``quarantine/resolved/`` with who resolved it, when and why. Nothing is deleted: a resolved file
stays at the site, and only unresolved evidence keeps ``status``/``check`` CRITICAL.
"""
from __future__ import annotations

import getpass
import hashlib
import json
import os
from datetime import datetime, timezone
from pathlib import Path

from ..catalog import layout
from ..errors import ObjectNotFound, PgvaultError, UsageError
from . import codec, names
from .divergence import read_evidence


def listing(policy, sites: dict) -> list[dict]:
    """Every unresolved evidence document at the given open sites, each with its ``site``."""
    out = []
    for sname, site in sites.items():
        out += [dict(doc, site=sname) for doc in read_evidence(site, policy.cluster.name)]
    return out


def _matching(docs: list[dict], name: str) -> list[dict]:
    """Evidence for ``name``: a WAL file name, or ``<name>-<sha8>`` for one of several copies."""
    return [d for d in docs if d.get("name") == name or f"{d.get('name')}-{(d.get('sha256') or '')[:8]}" == name]


def extract(policy, sites: dict, name: str, dest: Path) -> tuple[Path, str]:
    """Write the quarantined file ``name`` (as PostgreSQL wrote it) into directory ``dest``;
    (path, site). Every site holding it is tried until a copy matches its evidence's sha256."""
    from ..sites.base import get_bytes

    docs = _matching(listing(policy, sites), name) + _matching(resolved(policy, sites), name)
    if not docs:
        raise UsageError(f"no quarantined WAL file {name!r} at {', '.join(sites)}",
                         "list them with `pgvault quarantine`")
    if len({d["sha256"] for d in docs}) > 1:
        raise UsageError(f"{name} was quarantined with {len({d['sha256'] for d in docs})} different contents",
                         "name one copy as NAME-SHA8: " + ", ".join(sorted({f"{d['name']}-{d['sha256'][:8]}" for d in docs})))
    troubles = []
    for doc in docs:
        site, key = sites[doc["site"]], doc["stored"]
        try:
            blob = get_bytes(site, key)
        except ObjectNotFound:
            key = _resolved_key(policy.cluster.name, key)
            try:
                blob = get_bytes(site, key)
            except ObjectNotFound:
                troubles.append(f"site {doc['site']!r}: {doc['stored']} is gone")
                continue
        try:
            raw = codec.decompress(blob, names.split_stored(key.rsplit("/", 1)[1])[1])
        except codec.CorruptWal as exc:
            troubles.append(f"site {doc['site']!r}: {exc}")
            continue
        if hashlib.sha256(raw).hexdigest() != doc["sha256"]:
            troubles.append(f"site {doc['site']!r}: {key} does not match its evidence's sha256")
            continue
        dest.mkdir(parents=True, exist_ok=True)
        path = dest / doc["name"]
        if path.exists():
            raise UsageError(f"{path} exists", "extract into an empty directory; nothing was overwritten")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # WAL holds table data
        with os.fdopen(fd, "wb") as fh:
            fh.write(raw)
        return path, doc["site"]
    raise PgvaultError(f"no readable copy of {name}: " + "; ".join(troubles),
                       "check the sites with `pgvault verify` and `pgvault wal-status`")


def resolve(policy, sites: dict, names_: list[str], *, note: str, everything: bool = False,
            now: datetime | None = None) -> list[tuple[str, str]]:
    """Move the evidence (and its bytes) of ``names_`` (or of every file with ``everything``)
    to quarantine/resolved/ with {resolved_at, resolved_by, note}; [(site, name)] moved.
    The bytes first, then the evidence: a crash between leaves the evidence unresolved."""
    from ..sites.base import get_bytes, put_bytes

    if not note.strip():
        raise UsageError("a resolution needs --note", "say what was done, e.g. --note 'n1 re-cloned; rows checked'")
    docs = listing(policy, sites)
    chosen = docs if everything else [d for n in names_ for d in _matching(docs, n)]
    missing = [n for n in names_ if not _matching(docs, n)]
    if missing:
        raise UsageError(f"no unresolved quarantined WAL named {', '.join(missing)}", "list them with `pgvault quarantine`")
    when = (now or datetime.now(timezone.utc)).isoformat()
    done = []
    for doc in chosen:
        site, cluster = sites[doc["site"]], policy.cluster.name
        evidence = layout.quarantine_key(cluster, doc["name"], doc["sha256"][:8], ".json")
        try:
            blob = get_bytes(site, doc["stored"])
        except ObjectNotFound:
            blob = None  # already moved by an interrupted resolve
        if blob is not None:
            put_bytes(site, _resolved_key(cluster, doc["stored"]), blob)
        record = {k: v for k, v in doc.items() if k != "site"}
        record.update(resolved_at=when, resolved_by=_who(), note_resolved=note)
        put_bytes(site, _resolved_key(cluster, evidence), (json.dumps(record, indent=2) + "\n").encode())
        site.delete(evidence)  # evidence first: from here on status no longer counts it
        if blob is not None:
            site.delete(doc["stored"])
        done.append((doc["site"], doc["name"]))
    return done


def resolved(policy, sites: dict) -> list[dict]:
    """The resolved evidence at the given sites, each with its ``site``."""
    from ..sites.base import get_bytes

    out = []
    prefix = layout.quarantine_resolved_prefix(policy.cluster.name)
    for sname, site in sites.items():
        for obj in site.list(prefix):
            if obj.key.endswith(".json"):
                try:
                    out.append(dict(json.loads(get_bytes(site, obj.key)), site=sname))
                except (PgvaultError, ValueError):
                    continue
    return sorted(out, key=lambda d: (d.get("resolved_at") or "", d.get("name") or ""))


def _resolved_key(cluster: str, key: str) -> str:
    """quarantine/<file> -> quarantine/resolved/<file>."""
    return layout.quarantine_resolved_prefix(cluster) + key.rsplit("/", 1)[1]


def _who() -> str:
    try:
        return f"{getpass.getuser()}@{os.uname().nodename}"
    except (KeyError, OSError):
        return os.uname().nodename
