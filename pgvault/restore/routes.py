"""Restore routes: how the backups of a method are restored, keyed by ``Method.restore_route``
(pgvault.methods.base). The one table of restore/ that knows about kinds of backup: it is keyed
by route, not by method, so a new method that restores like an existing one (a new physical
engine restores by ``pitr``) adds no line here; a new way of restoring adds one.

Entries are named ("module:function"), not imported: routes are looked up by commands that
need only one of them."""
from __future__ import annotations

import importlib
from dataclasses import dataclass

from ..errors import UsageError


@dataclass(frozen=True)
class Route:
    entry: str      # module:function that restores a backup of this route
    command: str    # the pgvault command a user runs


ROUTES: dict[str, Route] = {
    "logical": Route("pgvault.restore.logical:restore_cluster", "pgvault restore BACKUP_ID [--db DB ...]"),
    "pitr": Route("pgvault.restore.pitr:run", "pgvault restore --to-time/--to-lsn/--to-xid/--latest"),
    "snapshot": Route("pgvault.restore.snapshot:receive_from_site", "pgvault snapshot restore/clone"),
    "standby": Route("pgvault.restore.standby:undo",
                     "pgvault restore --before-truncate TABLE --via-standby NAME --copy-back-to CONNINFO"),
}


def route_of(method: str) -> tuple[str, Route]:
    """The restore route of ``method`` and its entry.

    >>> route_of("zfs")[0], route_of("barman")[0]
    ('snapshot', 'pitr')
    >>> route_of("tape")
    Traceback (most recent call last):
    ...
    pgvault.errors.UsageError: backups of method 'tape' cannot be restored by this pgvault
    """
    from ..methods import METHODS, get_method

    if method not in METHODS:
        raise UsageError(f"backups of method {method!r} cannot be restored by this pgvault",
                         f"methods it knows: {', '.join(METHODS)}")
    name = get_method(method).restore_route
    return name, ROUTES[name]


def entry(route: Route):
    mod, attr = route.entry.split(":")
    return getattr(importlib.import_module(mod), attr)
