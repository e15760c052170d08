"""Retention: which backups (and which WAL) at one site to keep, each decision with its reasons.

Pure: no I/O. The caller (pgvault.expire) reads manifests and pins from a site, calls
``decide`` and ``wal_to_expire``, and deletes. See docs/retention.md for the rules; in short,
per job at a site:

- ``count N`` keeps the N newest good backups; ``hourly/daily/weekly/monthly/yearly N`` keep
  the newest good backup of each of the last N hours/days/ISO weeks/months/years *that have a
  backup* (UTC), so a pause in backups never ages the survivors out;
- ``max_age`` caps those: a backup older than it is not kept by count or GFS;
- and whatever the rules say, these are kept: the newest good backup of every job and of the
  site (``newest verified``), the ``min_keep`` newest good ones, pinned backups, and every
  backup a kept backup depends on (``needed by <id>``, following ``parent`` chains).

A "good" backup is a committed manifest whose status is ``complete``. Failed or incomplete
backups never take a slot from a good one, so a run of failures cannot push the last good
backups out.

>>> from datetime import datetime, timedelta, timezone
>>> t0 = datetime(2026, 11, 20, 2, tzinfo=timezone.utc)
>>> bs = [Backup(f"b{i}", "nightly", t0 + timedelta(days=i)) for i in range(4)]
>>> for d in decide(bs, {"nightly": Rule(daily=2)}, t0 + timedelta(days=4)):
...     print(d.backup_id, d.action, ", ".join(d.reasons))
b3 KEEP daily 2026-11-23
b2 KEEP daily 2026-11-22
b1 EXPIRE beyond daily 2
b0 EXPIRE beyond daily 2
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Mapping

GFS = (("hourly", "%Y-%m-%d %H:00"), ("daily", "%Y-%m-%d"), ("weekly", "%G-W%V"),
       ("monthly", "%Y-%m"), ("yearly", "%Y"))


@dataclass(frozen=True)
class Backup:
    """What retention needs to know about one backup at one site."""

    backup_id: str
    job: str
    time: datetime
    good: bool = True                # committed and complete
    parent: str | None = None        # the backup this one needs (incremental chains)
    start_wal: str | None = None     # set for PITR bases: the first WAL segment they need
    pinned: bool = False
    status: str = "complete"


@dataclass(frozen=True)
class Rule:
    count: int | None = None
    hourly: int | None = None
    daily: int | None = None
    weekly: int | None = None
    monthly: int | None = None
    yearly: int | None = None
    max_age: timedelta | None = None
    min_keep: int = 1

    @classmethod
    def of(cls, retain) -> "Rule":
        """From a policy ``Retain`` (or anything with the same attributes)."""
        return cls(**{f: getattr(retain, f) for f in cls.__dataclass_fields__})

    @property
    def empty(self) -> bool:
        return all(getattr(self, f) is None for f in ("count", "hourly", "daily", "weekly", "monthly",
                                                       "yearly", "max_age"))


@dataclass
class Decision:
    backup_id: str
    job: str
    keep: bool = False
    reasons: list[str] = field(default_factory=list)

    @property
    def action(self) -> str:
        return "KEEP" if self.keep else "EXPIRE"

    def add(self, keep: bool, reason: str) -> None:
        if keep:
            if not self.keep:
                # The first reason to keep replaces the reasons it would have gone.
                self.reasons = []
            self.keep = True
            self.reasons.append(reason)
        elif not self.keep:
            self.reasons.append(reason)


def _fmt_age(td: timedelta) -> str:
    s = int(td.total_seconds())
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60)):
        if s % n == 0 and s >= n:
            return f"{s // n}{unit}"
    return f"{s}s"


def _job_decisions(backups: list[Backup], rule: Rule | None, now: datetime, out: dict[str, Decision]) -> None:
    newest_first = sorted(backups, key=lambda b: (b.time, b.backup_id), reverse=True)
    good = [b for b in newest_first if b.good]
    for b in newest_first:
        if not b.good:
            out[b.backup_id].add(False, f"incomplete (status {b.status})")
    if rule is None:
        for b in good:
            out[b.backup_id].add(True, "job not in the policy")
        return
    if rule.empty:
        for b in good:
            out[b.backup_id].add(True, "no retention rule")
        return
    young = good
    if rule.max_age is not None:
        cut = now - rule.max_age
        young = [b for b in good if b.time >= cut]
        for b in good:
            if b.time < cut:
                out[b.backup_id].add(False, f"older than max_age {_fmt_age(rule.max_age)}")
        if all(getattr(rule, f) is None for f in ("count", "hourly", "daily", "weekly", "monthly", "yearly")):
            for b in young:
                out[b.backup_id].add(True, f"within max_age {_fmt_age(rule.max_age)}")
    if rule.count is not None:
        for i, b in enumerate(young):
            out[b.backup_id].add(i < rule.count, f"count {rule.count}" if i < rule.count else f"beyond count {rule.count}")
    for name, fmt in GFS:
        n = getattr(rule, name)
        if n is None:
            continue
        seen: set[str] = set()
        for b in young:
            key = b.time.strftime(fmt)
            if key in seen:
                out[b.backup_id].add(False, f"not the newest of {name} {key}")
            elif len(seen) < n:
                seen.add(key)
                out[b.backup_id].add(True, f"{name} {key}")
            else:
                out[b.backup_id].add(False, f"beyond {name} {n}")
    for i, b in enumerate(good[:rule.min_keep]):
        d = out[b.backup_id]
        if not d.keep:
            d.add(True, "newest verified" if i == 0 else f"min_keep {rule.min_keep}")


def decide(backups: list[Backup], rules: Mapping[str, Rule | None], now: datetime) -> list[Decision]:
    """Keep or expire every backup at one site; ``rules`` maps job name -> Rule (None: unknown job).

    Returned newest first — also the order to delete in, so a crash mid-expiry never leaves a
    backup whose parent is already gone."""
    out = {b.backup_id: Decision(b.backup_id, b.job) for b in backups}
    by_job: dict[str, list[Backup]] = {}
    for b in backups:
        by_job.setdefault(b.job, []).append(b)
    for job, bs in by_job.items():
        _job_decisions(bs, rules.get(job), now, out)
    good = [b for b in backups if b.good]
    if good:
        newest = max(good, key=lambda b: (b.time, b.backup_id))
        if not out[newest.backup_id].keep:
            out[newest.backup_id].add(True, "newest verified")
    for b in backups:
        if b.pinned:
            out[b.backup_id].add(True, "pinned")
    # Dependencies last, to a fixed point: a kept backup keeps its whole parent chain.
    by_id = {b.backup_id: b for b in backups}
    stack = [b for b in backups if out[b.backup_id].keep]
    while stack:
        b = stack.pop()
        p = by_id.get(b.parent) if b.parent else None
        if p is not None:
            d = out[p.backup_id]
            was = d.keep
            if f"needed by {b.backup_id}" not in d.reasons:
                d.add(True, f"needed by {b.backup_id}")
            if not was:
                stack.append(p)
    order = sorted(backups, key=lambda b: (b.time, b.backup_id), reverse=True)
    return [out[b.backup_id] for b in order]


# -- WAL

_SEG = re.compile(r"^([0-9A-F]{8})([0-9A-F]{16})(\.partial|\.[0-9A-F]{8}\.backup)?(\.[a-z0-9]+)?$")


def wal_position(name: str) -> str | None:
    """The log+segment part of a WAL file name (timeline ignored), or None for other files.

    >>> wal_position("000000020000000100000003.gz")
    '0000000100000003'
    >>> wal_position("00000002.history") is None
    True
    """
    m = _SEG.match(name)
    return m.group(2) if m else None


def wal_cutoff(backups: list[Backup], decisions: list[Decision]) -> str | None:
    """The start WAL of the oldest kept good PITR base (None: no base kept, expire no WAL)."""
    kept = {d.backup_id for d in decisions if d.keep}
    bases = [b for b in backups if b.start_wal and b.backup_id in kept and wal_position(b.start_wal)]
    if not bases:
        return None
    return min((b.start_wal for b in bases), key=wal_position)


def wal_to_expire(names: list[str], cutoff: str | None) -> list[str]:
    """WAL files wholly before ``cutoff``'s position. Timeline history files are always kept
    (tiny, and needed to follow any timeline); with no cutoff nothing is expired.

    >>> wal_to_expire(["000000010000000000000001.gz", "000000010000000000000002.gz",
    ...                "000000010000000000000001.00000028.backup", "00000002.history"],
    ...               "000000010000000000000002")
    ['000000010000000000000001.gz', '000000010000000000000001.00000028.backup']
    """
    if cutoff is None:
        return []
    limit = wal_position(cutoff)
    return [n for n in names if (p := wal_position(n)) is not None and p < limit]
