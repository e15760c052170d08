"""pgvault restore --before-truncate TABLE --via-standby NAME --copy-back-to CONNINFO: the undo
from a delayed standby (pgvault.restore.standby), and the fall back to the PITR route when the
standby has already replayed the damage."""
from __future__ import annotations

import click

from ..errors import PgvaultError, UsageError
from .output import emit_json, warn


def run_via_standby(ctx, policy, *, from_site=None, force=False, as_json=False, via_standby=None, before_truncate=None,
                    copy_back_to=None, around=None, window=None, find_database=None, target_dir=None, **rest) -> int:
    from ..restore import standby
    from .find import _duration

    if not before_truncate:
        raise UsageError("--via-standby undoes a TRUNCATE or DROP", "add --before-truncate SCHEMA.TABLE")
    if any(rest.get(k) for k in ("to_time", "to_lsn", "to_xid", "latest")):
        raise UsageError("--via-standby stops before the damaging transaction by itself", "drop --to-time/--to-lsn/--to-xid/--latest")
    if not copy_back_to:
        raise UsageError("--via-standby needs --copy-back-to CONNINFO", "the table is copied straight into that server")
    if window and not around:
        raise UsageError("--window needs --around", "give --around TIME, or drop --window")
    say = (lambda m: None) if as_json else (lambda m: click.echo(m, err=True))
    try:
        r = standby.undo(policy, via_standby, before_truncate, database=find_database, around=around,
                         window=_duration(window), copy_back_to=copy_back_to, from_site=from_site, say=say)
    except standby.Replayed as exc:
        warn(f"{exc.message}; falling back to the PITR route")
        if not target_dir:
            raise PgvaultError(f"{exc.message}, and the PITR route needs a directory to restore into",
                               "run again with --target-dir DIR (an empty directory): pgvault restores a side instance "
                               "there and copies the table back from it") from None
        from .restore_pitr import run_pitr

        return run_pitr(ctx, policy, from_site=from_site, force=force, as_json=as_json, before_truncate=before_truncate,
                        copy_back_to=copy_back_to, around=around, window=window, find_database=find_database,
                        target_dir=target_dir, start=True, **{k: v for k, v in rest.items() if k != "start"})
    if as_json:
        emit_json({"route": "standby", **r.__dict__})
    else:
        for n in r.notes:
            warn(n)
        t = r.timings
        click.echo(f"copied {r.table} back into the target database from standby {r.standby} (paused at "
                   f"{r.paused_at_lsn}, before xid {r.xid}'s first record {r.stop_lsn}; never promoted)")
        click.echo(f"RTO {r.rto_seconds:.2f}s: " + ", ".join(f"{k} {t[k]}s" for k in ("find", "pause", "to_target", "copy_back") if k in t))
        rv = r.reverted
        click.echo(f"standby {r.standby} back to its own configuration in {t.get('revert', '?')}s: "
                   + ("replaying, delayed again" if rv.get("ok") else f"NOT reverted cleanly: {rv}"))
    return 0 if r.reverted.get("ok") else 1
