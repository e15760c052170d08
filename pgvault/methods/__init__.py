"""Backup methods. The one registry of methods: adding a method is its module plus one line here.

Each module named here defines ``METHOD``, a :class:`pgvault.methods.base.Method` (the contract:
check, backup -> BackupFacts, tools, routes, expiry). Every other list of method names in
pgvault is derived from this table (docs/architecture.md, "How to add a method")."""
from __future__ import annotations

import importlib

METHODS = {
    "logical": "pgvault.methods.logical",
    "barman": "pgvault.methods.barman",
    "zfs": "pgvault.methods.zfs",
    "btrfs": "pgvault.methods.btrfs",
    "standby": "pgvault.methods.standby",
}


def method_names() -> tuple[str, ...]:
    """The registered methods, in registry order (no method module is imported)."""
    return tuple(METHODS)


def get_method(name: str):
    """The Method object of ``name``; KeyError names the registered ones."""
    if name not in METHODS:
        raise KeyError(f"no backup method {name!r} (registered: {', '.join(METHODS)})")
    # Imported on use so `pgvault tick` and wal-push never pay for methods they do not run.
    return importlib.import_module(METHODS[name]).METHOD


def all_methods() -> list:
    return [get_method(n) for n in METHODS]
