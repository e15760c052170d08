"""Drill sources: one small adapter per kind of backup. Each answers one request — "restore
this source into this scratch area and give me a running instance" — and returns a Restored.

Adapters restore from exactly one site: a per-site drill must fail when that site's copy is
damaged, even though an ordinary restore would quietly fall back to another site."""
from __future__ import annotations

import importlib
import logging
import random
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable

from .. import pg
from ..catalog.catalog import Catalog
from ..catalog.formats import Manifest
from ..errors import NotSupported, PgvaultError
from ..sites import open_site
from .model import EACH, Drill
from .scratch import Scratch

log = logging.getLogger("pgvault.drills")


@dataclass
class Restored:
    instance: pg.Instance
    backup_id: str | None = None
    manifest: Manifest | None = None
    target: str = ""                         # what was restored, in words
    target_time: datetime | None = None      # PITR: the recovery target
    replayed_until: datetime | None = None   # PITR: time of the last replayed transaction
    notes: list[str] = field(default_factory=list)


@dataclass
class DrillRun:
    """What an adapter is told: the drill, the one site, and (for canary drills) the plant."""
    policy: Any
    drill: Drill
    site: str
    method: str
    started_at: datetime
    canary: Any = None
    warn: Callable[[str], None] | None = None

    def note(self, msg: str) -> None:
        log.warning("%s", msg)
        if self.warn:
            self.warn(msg)


def source_method(policy, drill: Drill) -> str:
    src = drill.source
    return policy.jobs[src.job].method if src.job else src.method


def sites_for(policy, drill: Drill) -> list[str]:
    """The sites a drill runs at: the named one, or each site of the job (or of the policy)."""
    src = drill.source
    if src.site != EACH:
        return [src.site]
    if src.job and policy.jobs[src.job].sites:
        return list(policy.jobs[src.job].sites)
    # A method: the sites of every job of that method, in the policy's site order.
    used = {s for j in policy.jobs.values() if j.method == src.method for s in j.sites}
    return [s for s in policy.sites if s in used] or list(policy.sites)


def only_site(policy, site: str):
    """The policy seen through one site, so restores cannot fall back to another copy."""
    return policy.model_copy(update={"sites": {site: policy.sites[site]}})


def backups_at(policy, drill: Drill, site: str, method: str) -> list[Manifest]:
    cat = Catalog(open_site(site, policy.sites[site]), policy.cluster.name)
    return [m for m in cat.manifests()
            if m.method == method and (drill.source.job is None or m.job == drill.source.job)]


def choose_backup(policy, drill: Drill, site: str, method: str, rng: random.Random | None = None) -> Manifest:
    """latest: the newest; random: any older one still held (the newest when it is alone)."""
    found = backups_at(policy, drill, site, method)
    what = f"job {drill.source.job!r}" if drill.source.job else f"method {method}"
    if not found:
        raise PgvaultError(f"site {site!r} holds no backup of {what} to drill",
                           f"take one with pgvault backup {drill.source.job or 'JOB'}")
    if drill.target_kind == "random" and len(found) > 1:
        return (rng or random.SystemRandom()).choice(found[:-1])
    return found[-1]


def restore_logical(run: DrillRun, scratch: Scratch) -> Restored:
    """A fresh initdb'd instance, then the whole logical backup into it (globals first)."""
    from ..restore.logical import restore_cluster

    policy = only_site(run.policy, run.site)
    m = choose_backup(policy, run.drill, run.site, run.method)
    inst = scratch.fresh()
    restore_cluster(policy, m.backup_id, inst.conninfo(), from_site=run.site, warn=run.note)
    return Restored(inst, m.backup_id, m, target=f"logical backup {m.backup_id}")


# drill route (a method's ``Method.drill_route``) -> adapter. Keyed by route, not by method:
# a new method that drills like an existing one needs no line here; a new kind of drill is one.
ADAPTERS: dict[str, str] = {
    "logical": "pgvault.drills.sources:restore_logical",
    "pitr": "pgvault.drills.source_pitr:restore_pitr",
    "snapshot": "pgvault.drills.source_snapshot:restore_snapshot",
    "standby": "pgvault.drills.source_standby:restore_standby",
}


def adapter_for(method: str) -> Callable[[DrillRun, Scratch], Restored]:
    from ..methods import get_method

    mod, attr = ADAPTERS[get_method(method).drill_route].split(":")
    return getattr(importlib.import_module(mod), attr)


def requires(module: str, kind: str) -> None:
    """Fail clearly when this build lacks the restore code a kind of drill needs."""
    try:
        importlib.import_module(module)
    except ImportError:
        raise NotSupported(f"{kind} drills need {module}, which this build of pgvault does not have",
                           "drill a logical job, or update pgvault") from None
