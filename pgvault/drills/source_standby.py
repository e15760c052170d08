"""The drill adapter of delayed standbys (``method: standby``): a canary undone through the
standby. The canary (pgvault.drills.canary) is planted and truncated in production; the
standby, which has not applied the TRUNCATE yet, is brought to just before it and the canary
table is copied into an empty scratch instance, where the canary check counts its K rows. The
standby is then given its own delayed configuration back (pgvault.restore.standby).

Only ``target: canary`` means something here: "latest" on a standby would prove nothing that
status does not show already."""
from __future__ import annotations

from ..errors import UsageError
from .scratch import Scratch
from .sources import DrillRun, Restored


def restore_standby(run: DrillRun, scratch: Scratch) -> Restored:
    from ..restore import standby
    from ..restore.walscan import TRUNCATE

    name = run.drill.source.job
    if run.canary is None or not name:
        raise UsageError(f"drill {run.drill.name}: a standby is drilled with a canary",
                         "set target: canary and source.job: <the standby job>")
    c = run.canary
    from ..lsn import format_lsn, parse_lsn

    # The LSN right after the TRUNCATE's commit, less one: replayed past it means replayed it.
    damage = standby.Damage(TRUNCATE, f"pgvault_drill.{c.table}", c.database, c.truncate_xid,
                            format_lsn(parse_lsn(c.truncate_lsn) - 1))
    made = []

    def scratch_instance() -> str:
        # Made once the standby holds still at the target: the delay is not spent on initdb.
        inst = scratch.fresh()
        made.append(inst)
        if c.database != "postgres":
            inst.psql(f'CREATE DATABASE "{c.database}"')
        inst.psql("CREATE SCHEMA pgvault_drill", dbname=c.database)
        return inst.conninfo().rsplit(" dbname=", 1)[0]

    r = standby.undo_damage(run.policy, name, damage, scratch_instance, whole_table=True)
    inst = made[0]
    restored = Restored(inst, None, None, target=f"standby {name} paused at {r.paused_at_lsn}, before xid {c.truncate_xid}",
                        target_time=c.planted_at)
    restored.notes.append(f"standby undo RTO {r.rto_seconds}s; timings " + ", ".join(f"{k} {v}s" for k, v in r.timings.items()))
    if not r.reverted.get("ok"):
        raise UsageError(f"standby {name} was not given its delayed configuration back: {r.reverted}",
                         f"see its server log next to its pgdata; pgvault standby show {name}")
    return restored
