"""The WAL horizon of a site: the segment before which expire removed the WAL on purpose.

Why it exists: expire cuts the archive before the oldest kept base, but a segment it removed
can come back. Patroni archives a node's WAL again after ``pg_rewind`` ("Trying to archive
...", patroni/postgresql/rewind.py), and PostgreSQL re-archives any file of pg_wal that has
neither ``.ready`` nor ``.done`` (a rewound or re-cloned node's copied files). wal-push stores
such a segment like any other (a file reported archived is never refused for being old), and
without the horizon the gap scan would start at that returned segment and count everything
expire removed after it as missing: a false CRITICAL on every pg_rewind. The next expire
removes the returned files again.

One small JSON document at ``layout.wal_horizon_key`` (docs/site-format.md):
``{"version": 1, "segment": "<24 hex>", "at": "<ISO time>"}``. It only moves forward.
"""
from __future__ import annotations

import json
from datetime import datetime, timezone

from ..catalog import layout
from ..errors import ObjectNotFound
from .names import SEGMENT_RE


def read(site, cluster: str) -> str | None:
    """The site's horizon segment name; None when expire never cut its WAL (or the document is
    unreadable: a damaged horizon only means returned segments count as gaps again)."""
    from ..sites.base import get_bytes

    try:
        doc = json.loads(get_bytes(site, layout.wal_horizon_key(cluster)))
    except (ObjectNotFound, ValueError):
        return None
    seg = doc.get("segment") if isinstance(doc, dict) else None
    return seg if isinstance(seg, str) and SEGMENT_RE.match(seg) else None


def advance(site, cluster: str, segment: str, now: datetime | None = None) -> bool:
    """Record ``segment`` (expire's cutoff) as the horizon unless the site's is already at or
    past it (by segment number: a new timeline continues the old one's numbering). True when
    written."""
    from ..sites.base import put_bytes

    if not SEGMENT_RE.match(segment[:24]):
        return False
    segment = segment[:24]
    old = read(site, cluster)
    if old is not None and old[8:] >= segment[8:]:  # log+segment hex: ordered whatever the segment size
        return False
    doc = {"version": 1, "segment": segment, "at": (now or datetime.now(timezone.utc)).isoformat()}
    put_bytes(site, layout.wal_horizon_key(cluster), (json.dumps(doc) + "\n").encode())
    return True
