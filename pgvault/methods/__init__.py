"""Backup methods. One explicit registry: adding a method is one line.

A method module provides ``check(ctx) -> list[str]`` (preflight problems, no side effects)
and ``backup(ctx, session) -> dict`` (facts for the manifest; never writes the manifest)."""
from __future__ import annotations

import importlib

METHODS = {
    "logical": "pgvault.methods.logical",
    "barman": "pgvault.methods.barman",
    "zfs": "pgvault.methods.zfs",
    "btrfs": "pgvault.methods.btrfs",
}


def method_module(name: str):
    # Imported on use so `pgvault tick` and wal-push never pay for methods they do not run.
    return importlib.import_module(METHODS[name])
