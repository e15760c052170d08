"""Divergent WAL: segments on a timeline that was abandoned, past its fork point, and where
they go instead of the archive (see docs/ha.md, "The zombie primary").

When a replica is promoted, PostgreSQL writes ``<new tli>.history``: one line per ancestor
timeline, ``parent<TAB>switchpoint<TAB>reason``. Everything timeline T wrote at or after its
switchpoint is not part of the cluster's history any more: the new leader's copy of the
segment holding the switchpoint goes to the archive as ``.partial``, and from there on the new
timeline's segments are the archive. A segment of timeline T whose bytes reach past T's
switchpoint (an old primary that came back without being rewound, or kept running) therefore
holds WAL no recovery of the cluster may read. It is *quarantined*: stored at the site under
``quarantine/`` (outside ``wals/``, so neither wal-fetch nor barman-cloud-wal-restore sees it)
with evidence of who sent it, and never overwrites or joins the archive.

The pure part (``parse_history``, ``fork_of``, ``past_fork``) works on text and numbers; the
site reads (``Forks``) are a few heads and gets per push, cached for the pusher's lifetime.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
from dataclasses import dataclass
from datetime import datetime, timezone

from ..catalog import layout
from ..errors import ObjectNotFound, PgvaultError
from ..lsn import format_lsn, parse_lsn
from . import names

log = logging.getLogger("pgvault.wal")

MAX_PROBE = 64  # timelines probed above the pushed one (a cluster with more failovers is listed instead)


def parse_history(text: str) -> list[tuple[int, int, str]]:
    """(parent timeline, switchpoint LSN, reason) per line of a .history file.

    >>> parse_history("1\\t0/5000060\\tno recovery target specified\\n\\n2\\t0/7000000\\tx\\n")
    [(1, 83886176, 'no recovery target specified'), (2, 117440512, 'x')]
    """
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(None, 2)
        out.append((int(parts[0]), parse_lsn(parts[1]), parts[2] if len(parts) > 2 else ""))
    return out


@dataclass(frozen=True)
class Fork:
    """Timeline ``timeline`` was abandoned at ``switchpoint`` by ``new_timeline`` (its history)."""

    timeline: int
    switchpoint: int
    new_timeline: int

    @property
    def history(self) -> str:
        return f"{self.new_timeline:08X}.history"

    def describe(self) -> str:
        return f"timeline {self.timeline} ended at {format_lsn(self.switchpoint)} ({self.history})"


def fork_of(timeline: int, histories: dict[int, str]) -> Fork | None:
    """Where ``timeline`` ends according to the newest history above it that names it.

    >>> fork_of(1, {2: "1\\t0/5000060\\tx\\n", 3: "1\\t0/5000060\\tx\\n2\\t0/9000000\\ty\\n"})
    Fork(timeline=1, switchpoint=83886176, new_timeline=3)
    >>> fork_of(3, {2: "1\\t0/5000060\\tx\\n"}) is None
    True
    """
    for tli in sorted(histories, reverse=True):
        if tli <= timeline:
            continue
        for parent, switch, _reason in parse_history(histories[tli]):
            if parent == timeline:
                return Fork(timeline, switch, tli)
    return None


def past_fork(name: str, fork: Fork | None, segment_size: int = 16 << 20) -> bool:
    """Does segment ``name`` hold bytes of its timeline at or past the fork? (A segment that
    ends exactly at the switchpoint holds none.)

    >>> f = Fork(1, 0x5000060, 2)
    >>> [past_fork(n, f) for n in ("000000010000000000000004", "000000010000000000000005",
    ...                            "000000010000000000000006", "000000020000000000000006")]
    [False, True, True, False]
    """
    if fork is None or names.kind(name) != "segment":
        return False
    tli, segno = names.parse_segment(name, segment_size)
    return tli == fork.timeline and (segno + 1) * segment_size > fork.switchpoint


SHORT_HEADER = struct.Struct("<HHIQ")  # xlp_magic, xlp_info, xlp_tli, xlp_pageaddr


def written_past(raw: bytes, fork: Fork, segment_size: int, block_size: int, magic: int) -> bool:
    """Does this segment hold WAL its timeline wrote past the fork? The first page at or after
    the switchpoint must then carry a valid header for its own address on that timeline. A
    standby with archive_mode=always archives the segment it was receiving when it switched
    timelines under its full name: past the switchpoint that file holds zeros or the stale
    pages of a recycled segment (another address), never such a header — it is not divergent.
    (WAL a zombie wrote only within the switchpoint's own page is not seen: see docs/ha.md.)

    >>> seg, page = 16 << 20, 8192
    >>> raw = bytearray(seg); f = Fork(1, 5 * seg + 3 * page + 100, 2)
    >>> SHORT_HEADER.pack_into(raw, 0, 0xD110, 2, 1, 5 * seg)
    >>> written_past(bytes(raw), f, seg, page, 0xD110)
    False
    >>> SHORT_HEADER.pack_into(raw, 4 * page, 0xD110, 0, 1, 5 * seg + 4 * page)
    >>> written_past(bytes(raw), f, seg, page, 0xD110)
    True
    """
    base = (int.from_bytes(raw[8:16], "little") // segment_size) * segment_size  # this segment's address
    # The first page boundary at or after the switchpoint (0: the whole segment lies past it).
    page = 0 if fork.switchpoint <= base else -(-(fork.switchpoint - base) // block_size) * block_size
    if page + SHORT_HEADER.size > len(raw):
        return False
    m, _info, tli, addr = SHORT_HEADER.unpack_from(raw, page)
    return m == magic and tli == fork.timeline and addr == base + page


def same_before_fork(name: str, mine: bytes, theirs: bytes, fork: Fork) -> bool:
    """Is ``mine`` a standby's copy of the segment its timeline ended in, where the archive holds
    the old primary's (``theirs``)? A standby (archive_mode = always) receiving that segment when
    its timeline ended archives it under the full name: the WAL up to the switchpoint, then stale
    bytes; the old primary's copy holds real WAL past it (sent before the new timeline's history
    reached the site). Both are the cluster's history up to the switchpoint, and recovery of the
    new timeline reads neither past it, so the standby's copy is the archive's, not a conflict
    (refusing it named an innocent node in a split-brain alarm and wedged its archiver)."""
    try:
        hdr = names.parse_header(mine)
    except ValueError:
        return False
    if not past_fork(name, fork, hdr.segment_size):
        return False
    cut = fork.switchpoint - names.parse_segment(name, hdr.segment_size)[1] * hdr.segment_size
    return 0 < cut < hdr.segment_size and mine[:cut] == theirs[:cut] and \
        not written_past(mine, fork, hdr.segment_size, hdr.block_size, hdr.magic)


class Forks:
    """The history files above a timeline at one site, read once per pusher (a push, a drain)."""

    def __init__(self, site, cluster: str):
        self.site = site
        self.cluster = cluster
        self._histories: dict[int, str] = {}
        self._probed_from: int | None = None

    def _read(self, tli: int) -> str | None:
        """The history file of ``tli`` at the site, or None: one request where a head is not
        cheap (a LIST of its name, any compression suffix), a stat per suffix where it is."""
        from ..sites.base import get_bytes
        from . import codec

        name = f"{tli:08X}.history"
        variants = {layout.wal_key(self.cluster, name, x): x for x in names.SUFFIXES.values()}
        if self.site.capabilities.cheap_head:
            found = [k for k in variants if self.site.head(k) is not None]
        else:
            found = [o.key for o in self.site.list(layout.wal_key(self.cluster, name)) if o.key in variants]
        for key in found:
            try:
                data = get_bytes(self.site, key)
            except ObjectNotFound:
                continue
            return codec.decompress(data, names.BY_SUFFIX.get(variants[key], "none")).decode("ascii", "replace")
        return None

    def fork(self, timeline: int) -> Fork | None:
        """The fork that abandoned ``timeline``, if a newer timeline's history at the site has one.
        New timelines are numbered max+1, so the histories above are probed upward until one
        is missing."""
        if self._probed_from is None or timeline < self._probed_from:
            tli = timeline + 1
            while tli <= timeline + MAX_PROBE:
                text = self._histories.get(tli) or self._read(tli)
                if text is None:
                    break
                self._histories[tli] = text
                tli += 1
            self._probed_from = timeline
        return fork_of(timeline, self._histories)

    @property
    def histories(self) -> dict[int, str]:
        """The history files read so far, by timeline (what the last ``fork`` saw)."""
        return dict(self._histories)


def sender(pgdata, policy) -> dict:
    """Who is sending: host, data directory, port (postmaster.pid) and Patroni member name."""
    out = {"host": os.uname().nodename, "pgdata": str(pgdata) if pgdata else None, "port": None, "node": None}
    if pgdata:
        try:
            lines = (pgdata / "postmaster.pid").read_text().splitlines()
            out["port"] = int(lines[3])
        except (OSError, IndexError, ValueError):
            pass
    cfg = policy.cluster.patroni
    if cfg is not None:
        from ..patroni import view

        try:  # a zombie's own Patroni may be stopped: a short wait, then the evidence goes without it
            out["node"] = view(cfg.url, min(2.0, cfg.timeout.total_seconds())).me
        except PgvaultError:
            pass
    return out


def quarantine(site, cluster: str, name: str, stored_suffix: str, blob: bytes, raw: bytes, *, reason: str,
               header, fork: Fork | None, who: dict, segment_size: int, note: str = "") -> str:
    """Store ``blob`` (the compressed file) and its evidence under quarantine/; idempotent for
    the same bytes. Returns the key of the evidence document."""
    from ..sites.base import put_bytes

    sha = hashlib.sha256(raw).hexdigest()
    key = layout.quarantine_key(cluster, name, sha[:8], stored_suffix)
    evidence_key = layout.quarantine_key(cluster, name, sha[:8], ".json")
    if site.head(evidence_key) is not None:
        return evidence_key  # the same bytes were quarantined before (the archiver retries)
    start = end = None
    if names.kind(name) == "segment":
        _tli, segno = names.parse_segment(name, segment_size)
        start, end = segno * segment_size, (segno + 1) * segment_size
        if fork is not None:
            start = max(start, fork.switchpoint)  # what lies past the fork (the divergent part)
    doc = {"version": 1, "name": name, "reason": reason, "note": note, "sha256": sha, "stored": key,
           "system_identifier": str(header.system_identifier) if header else None,
           "timeline": header.timeline if header else None,
           "lsn_range": [format_lsn(start), format_lsn(end)] if start is not None else None,
           "fork": None if fork is None else {"history": fork.history, "switchpoint": format_lsn(fork.switchpoint),
                                             "timeline": fork.timeline, "new_timeline": fork.new_timeline},
           "sender": who, "received_at": datetime.now(timezone.utc).isoformat()}
    put_bytes(site, key, blob)  # bytes first, evidence last: evidence never points at nothing
    put_bytes(site, evidence_key, (json.dumps(doc, indent=2) + "\n").encode())
    return evidence_key


def read_evidence(site, cluster: str) -> list[dict]:
    """Every unresolved evidence document under quarantine/ at ``site`` (monitoring)."""
    from ..sites.base import get_bytes

    out = []
    prefix = layout.quarantine_prefix(cluster)
    for obj in site.list(prefix):
        # quarantine/resolved/ is what an operator dealt with (pgvault.wal.quarantine): not counted
        if obj.key.endswith(".json") and "/" not in obj.key[len(prefix):]:
            try:
                out.append(json.loads(get_bytes(site, obj.key)))
            except (PgvaultError, ValueError) as exc:
                log.warning("unreadable quarantine evidence %s: %s", obj.key, exc)
    return sorted(out, key=lambda d: (d.get("received_at") or "", d.get("name") or ""))


def sender_name(who: dict | None) -> str:
    """How status, check and the quarantine listing name the node that sent a file: its Patroni
    member name, else host:port (host alone when the port is unknown: a hand-run wal-push).

    >>> sender_name({"node": "n2", "host": "db1", "port": 5432}), sender_name({"host": "db1", "port": 5432})
    ('n2', 'db1:5432')
    >>> sender_name({"host": "db1", "port": None})
    'db1'
    """
    who = who or {}
    if who.get("node"):
        return who["node"]
    return f"{who.get('host')}:{who['port']}" if who.get("port") else str(who.get("host"))


def by_sender(evidence: list[dict]) -> dict[str, list[dict]]:
    """Evidence documents grouped by ``sender_name``, in their order."""
    out: dict[str, list[dict]] = {}
    for doc in evidence:
        out.setdefault(sender_name(doc.get("sender")), []).append(doc)
    return out


def remedy(doc: dict) -> str:
    """What the operator does about one piece of evidence (status/check name it)."""
    who = doc.get("sender") or {}
    node = who.get("node") or f"the PostgreSQL on {who.get('host')} (data directory {who.get('pgdata')}, port {who.get('port')})"
    if doc.get("reason") == "abandoned-timeline":
        fork = doc.get("fork") or {}
        return (f"the cluster went back to timeline {fork.get('timeline')} (leader "
                f"{who.get('retired_by_leader') or '?'}) after timeline {doc.get('timeline')} had forked from it: "
                f"{doc['name']} and the rest of that branch are kept in quarantine/, out of the archive; the node that "
                f"led timeline {doc.get('timeline')} must be re-cloned or rewound (`patronictl reinit`), and commits "
                f"clients saw on that branch recovered from quarantine/ (`pgvault quarantine extract`) before "
                f"`pgvault quarantine resolve`")
    if doc.get("reason") == "conflict":
        return (f"{node} archived {doc['name']} with content different from the archive's copy: two clusters or two "
                f"primaries share this archive; stop the wrong one, then rewind or re-clone it, and "
                f"`pgvault quarantine resolve {doc['name']} --note ...` (the refused bytes stay kept)")
    return (f"{node} is a zombie primary: it wrote WAL on abandoned timeline {doc.get('timeline')} past "
            f"{(doc.get('fork') or {}).get('switchpoint')} ({(doc.get('fork') or {}).get('history')}); stop it, then "
            f"pg_rewind it (or re-clone it) to follow the leader; its quarantined WAL may hold commits clients saw: "
            f"recover them from quarantine/ (`pgvault quarantine extract`) before `pgvault quarantine resolve`")


# -- when the cluster goes back to the timeline a history says was abandoned (docs/ha.md)

def live_timeline(policy, timeout: float = 3.0) -> tuple[int, str] | None:
    """(timeline, leader's member name): the timeline the cluster's leader writes on now, when
    the sources agree on it. Every member's Patroni is asked (``/cluster`` through each
    member's own REST API): a majority must answer and every answer must name the same
    running leader on the same timeline — one Patroni's view may be stale (a node resumed
    from SIGSTOP serves its cached view, in which it still leads, until its next loop). Then
    that leader, asked over SQL, must be out of recovery and inserting WAL on that timeline.
    None when any of it is missing or differs (then a segment past a fork is quarantined, the
    safe default)."""
    cfg = policy.cluster.patroni
    if cfg is None:
        return None
    from concurrent.futures import ThreadPoolExecutor

    from .. import pg
    from ..patroni import member_conninfo, view

    wait = min(timeout, cfg.timeout.total_seconds())

    def leader_of(url: str):
        try:
            m = view(url, wait).leader()
        except PgvaultError:
            return None
        return (m.name, m.timeline) if m is not None and m.timeline is not None else ("?", None)

    try:
        members = view(cfg.url, wait).members
        urls = sorted({m.api_url.rsplit("/patroni", 1)[0] for m in members if m.api_url})
        with ThreadPoolExecutor(max_workers=max(1, len(urls)), thread_name_prefix="pgvault-live") as pool:
            answers = [a for a in pool.map(leader_of, urls) if a is not None]
        if not members or len(answers) < len(members) // 2 + 1 or len(set(answers)) != 1 or answers[0][1] is None:
            log.info("live timeline not known: the members' Patroni answered %s", answers)
            return None
        name, tli_patroni = answers[0]
        leader = next(m for m in members if m.name == name)
        with pg.connect(member_conninfo(policy.cluster.conninfo, leader), connect_timeout=max(1, int(timeout))) as conn:
            row = pg.query(conn, "SELECT pg_is_in_recovery(), CASE WHEN pg_is_in_recovery() THEN NULL "
                                 "ELSE pg_walfile_name(pg_current_wal_lsn()) END")[0]
    except Exception as exc:  # noqa: BLE001 - any doubt means "not known": quarantine stays the answer
        log.info("live timeline not known (%s): a segment past a fork stays quarantined", exc)
        return None
    if row[0] or not row[1]:
        return None
    tli = int(str(row[1])[:8], 16)
    return (tli, name) if tli == tli_patroni else None


def _object_timeline(filename: str) -> int | None:
    """The timeline a stored WAL-archive file belongs to (segment, .partial, .backup, .history)."""
    name, _suffix = names.split_stored(filename)
    try:
        return int(name[:8], 16)
    except ValueError:
        return None


def _delete(site, key: str) -> None:
    """Delete, or say why not: an Object Lock site keeps a locked file (then recovery with
    ``latest`` at that site still sees the dead branch: docs/ha.md)."""
    try:
        site.delete(key)
    except ObjectNotFound:
        pass
    except PgvaultError as exc:
        log.warning("site %r: could not remove %s (%s): it stays beside its copy in quarantine/", site.name, key, exc)


def retire_branches(site, cluster: str, timeline: int, histories: dict[int, str], *, leader: str | None,
                    who: dict) -> dict:
    """The cluster's leader runs on ``timeline`` again (Patroni gave the old leader the key back
    after a replica had promoted): every timeline above it at this site is a dead branch. Its
    files leave wals/ for quarantine/ (reason ``abandoned-timeline``, with evidence) so that
    recovery with ``recovery_target_timeline = latest`` follows the live timeline, and the live
    timeline's own segments quarantined as divergent because of those forks go back to wals/.
    Bytes are copied before anything is deleted. Returns {"retired": [...], "reinstated": [...]}."""
    import hashlib as _h

    from ..sites.base import get_bytes, put_bytes

    out = {"retired": [], "reinstated": []}
    forks = {tli: next((Fork(p, sw, tli) for p, sw, _r in parse_history(text) if p == timeline), None)
             for tli, text in histories.items() if tli > timeline}
    for obj in list(site.list(layout.wal_prefix(cluster))):
        fname = obj.key.rsplit("/", 1)[1]
        tli = _object_timeline(fname)
        if tli is None or tli <= timeline:
            continue
        name, comp = names.split_stored(fname)
        suffix = names.SUFFIXES[comp]
        try:
            blob = get_bytes(site, obj.key)
        except ObjectNotFound:
            continue  # another node retired it meanwhile (every node pushes with archive_mode = always)
        sha = _h.sha256(blob).hexdigest()
        key = layout.quarantine_key(cluster, name, sha[:8], suffix)
        fork = forks.get(tli) or next((f for f in forks.values() if f is not None), None)
        doc = {"version": 1, "name": name, "reason": "abandoned-timeline", "sha256": sha, "stored": key,
               "note": f"timeline {tli} was abandoned: the cluster's leader runs on timeline {timeline} again",
               "system_identifier": None, "timeline": tli, "lsn_range": None,
               "fork": None if fork is None else {"history": fork.history, "switchpoint": format_lsn(fork.switchpoint),
                                                 "timeline": timeline, "new_timeline": fork.new_timeline},
               "sender": dict(who, retired_by_leader=leader), "received_at": datetime.now(timezone.utc).isoformat()}
        put_bytes(site, key, blob)
        put_bytes(site, layout.quarantine_key(cluster, name, sha[:8], ".json"), (json.dumps(doc, indent=2) + "\n").encode())
        _delete(site, obj.key)
        out["retired"].append(name)
    for doc in read_evidence(site, cluster):
        fork = doc.get("fork") or {}
        if doc.get("reason") != "divergent" or _object_timeline(doc.get("name") or "") != timeline or \
                (fork.get("new_timeline") or 0) <= timeline or not doc.get("stored"):
            continue
        stored = doc["stored"]
        suffix = names.SUFFIXES[names.split_stored(stored.rsplit("/", 1)[1])[1]]
        target = layout.wal_key(cluster, doc["name"], suffix)
        try:
            if site.head(target) is None:
                put_bytes(site, target, get_bytes(site, stored))
        except ObjectNotFound:
            continue  # another node put it back meanwhile
        _delete(site, layout.quarantine_key(cluster, doc["name"], doc["sha256"][:8], ".json"))  # evidence first
        _delete(site, stored)
        out["reinstated"].append(doc["name"])
    if out["retired"] or out["reinstated"]:
        log.warning("site %r: timeline %d is live again (leader %s): retired %d file(s) of abandoned timelines to "
                    "quarantine/, put back %d of timeline %d", site.name, timeline, leader or "?",
                    len(out["retired"]), len(out["reinstated"]), timeline)
    return out
