"""The Method contract: everything pgvault needs to know about one backup method, in one object.

Each method module (logical.py, barman.py, zfs.py, btrfs.py) ends with ``METHOD = Method(...)``
and has one line in the registry (``pgvault.methods.METHODS``). Every other list of method
names in pgvault is derived from that registry: the scheduler, ``pgvault check``'s tools, the
drill model, expiry, and the restore and drill routes. tests/unit/test_methods_registry.py
checks every entry against this contract.

What a method provides:

- ``check(ctx) -> list[Problem]``: preflight problems, no side effects. Empty = ready.
- ``backup(ctx, session) -> BackupFacts``: writes its artifacts through the ``BackupSession``
  (to every site in one pass) and returns typed facts. It never writes the manifest:
  pgvault.backup does, from these facts, after the artifacts are committed.
- ``expire(manifest, site)``: remove what the method keeps outside pgvault's own
  artifacts (Barman's copy of a base backup), after pgvault's manifest and artifacts are gone;
  ``nothing_to_expire`` for a method that keeps nothing else.
- ``restore_route`` / ``drill_route``: *how* its backups are restored and drilled, named, not
  imported. Restore and drill code live above this layer (restore/, drills/) and may not be
  imported from here (tests/arch/test_layers.py), so each of them keeps ONE table keyed by
  route (restore/routes.py ``ROUTES``, drills/sources.py ``ADAPTERS``). A new method that
  restores like an existing one (a new physical engine: ``pitr``, with its ``lay_down_base``)
  needs no line there; a new way of restoring is one entry in each table. Routes are few and stable; methods are many: keying by route keeps
  the upper tables from growing a line per method.
- ``snapshot_driver``: for ``restore_route == "snapshot"``, the class of its snapshot Driver
  (pgvault.methods.snapshot.Driver), which covers taking, cloning, receiving and cleaning up,
  so restore/snapshot*.py never branch on the kind of file system.

The job's policy model (pydantic, the user-facing schema) stays in pgvault.policy.model: policy
sits below methods and must not import them (the policy loader runs in wal-push, which loads no
method). ``Method.job_model`` names it; the registry test asserts that the policy's method names
and the registry's are the same set, and that each model's ``method`` tag is its method's name.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable, Literal

# One line a user can act on, with the hint appended ("... (HINT: ...)"). A string, because
# backup and check print the problems as they are.
Problem = str

RestoreRoute = Literal["logical", "pitr", "snapshot", "standby"]
DrillRoute = Literal["logical", "pitr", "snapshot", "standby"]


@dataclass
class BackupFacts:
    """What ``backup()`` reports; pgvault.backup turns it into the manifest.

    Fields left None are unknown for this method (a logical dump has no LSN range). ``facts``
    holds the method-specific facts, stored as the manifest's ``facts`` as they are; each method
    documents its keys where it builds them (logical: databases, row_counts; barman: barman
    (per site: route, backup_id, begin/end LSN...), start_xmin; zfs/btrfs: mode, snapshots,
    placements, fence_lsn, backup_label ...). Sizes per site are the artifacts' (the session
    records them), so they are not repeated here."""

    restore: str                                   # how to restore it with stock tools (manifest.restore)
    tool_versions: dict[str, str] = field(default_factory=dict)
    timeline: int | None = None                    # None: the server's current timeline
    start_lsn: str | None = None
    stop_lsn: str | None = None
    start_wal: str | None = None
    stop_wal: str | None = None
    start_time: datetime | str | None = None
    stop_time: datetime | str | None = None
    facts: dict[str, Any] = field(default_factory=dict)

    def manifest_fields(self) -> dict[str, Any]:
        """The manifest fields these facts set (the ones the method knows).

        >>> BackupFacts("r", start_lsn="0/3000028", timeline=1).manifest_fields()
        {'timeline': 1, 'start_lsn': '0/3000028'}
        """
        names = ("timeline", "start_lsn", "stop_lsn", "start_wal", "stop_wal", "start_time", "stop_time")
        return {n: getattr(self, n) for n in names if getattr(self, n) is not None}


def nothing_to_expire(manifest, site) -> None:
    """The expiry adapter of a method that keeps nothing outside pgvault's own artifacts."""


@dataclass(frozen=True)
class Method:
    """One backup method. See the module docstring for the contract."""

    name: str
    job_model: str | type                           # class name in pgvault.policy.model (or the class)
    tools: tuple[str, ...]                          # programs `pgvault check` looks for on this host
    check: Callable[..., list[Problem]]
    backup: Callable[..., BackupFacts]
    restore_route: RestoreRoute
    drill_route: DrillRoute
    pitr_base: bool = False                         # its backups can be rolled forward with archived WAL
    per_site_bases: bool = False                    # each site holds its own base: facts[name][site] (barman)
    expire: Callable[[Any, Any], None] = nothing_to_expire
    # restore_route "pitr" without per_site_bases: lay_down_base(policy, site, ref, dest) puts
    # the base's files into the empty directory dest (ref: {"route", "manifest": the manifest
    # as JSON}); pgvault.restore.pitr then configures recovery. Barman's per-site bases are laid
    # down by restore/pitr.py itself (barman-cloud-restore / barman recover).
    lay_down_base: Callable[[Any, str, dict, Any], None] | None = None
    snapshot_driver: type | None = None
    description: str = ""

    @property
    def policy_model(self) -> type:
        """The pydantic job model (imported on use: pydantic is not free at start-up)."""
        if isinstance(self.job_model, type):
            return self.job_model
        from ..policy import model

        return getattr(model, self.job_model)

    @property
    def needs_sites(self) -> bool:
        """A job of this method must name sites (its job model says so: the policy loader,
        below this layer, checks it from there)."""
        return self.policy_model.sites_required
