"""pgvault status: is the promise holding? Backups per job and site, WAL per site, drills,
beside the objectives. A table, --json, or --prometheus FILE (node_exporter textfile).
Exits with the overall state like `check`: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN."""
from __future__ import annotations

import click

from . import load
from .output import emit_json, human_size, table

COLORS = {"OK": "green", "WARNING": "yellow", "CRITICAL": "red", "UNKNOWN": "magenta"}


def _styled(state: str, tty: bool) -> str:
    return click.style(f"{state:8}", fg=COLORS[state]) if tty else state


def _dur(seconds) -> str:
    from ..policy.durations import format_duration

    return "-" if seconds is None else format_duration(seconds)


def _when(iso: str | None) -> str:
    return iso[:19].replace("T", " ") + "Z" if iso else "-"


def render(doc: dict, tty: bool = False) -> str:
    """The human view: summary first, then one table per concern, problems spelled out."""
    out = [doc["summary"]]
    obj = doc["objectives"]
    if obj["rpo_seconds"] or obj["rto_seconds"]:
        parts = []
        for o in (o for o in doc["objective_checks"] if o["kind"] == "objective"):
            parts.append(f"{o['name'].upper()} {_dur(o['objective_seconds'])} (now {_dur(o['current_seconds'])}, {o['state']})")
        out.append("objectives: " + "   ".join(parts))
    if doc["jobs"]:
        rows = [[_styled(j["state"], tty), j["name"], j["site"] or "-", j.get("schedule") or "manual",
                 (j.get("last") or {}).get("backup_id", "-"), _dur(j.get("age_seconds")),
                 human_size((j.get("last") or {}).get("size")), str(j.get("count", "-")),
                 str(j.get("missed_runs") if j.get("missed_runs") is not None else "-")]
                for j in doc["jobs"]]
        out += ["", "BACKUPS", table(rows, ["STATE", "JOB", "SITE", "SCHEDULE", "LAST", "AGE", "SIZE", "KEPT", "MISSED"])]
    if doc.get("standbys"):
        rows = [[_styled(x["state"], tty), x["name"], _dur(x.get("delay_seconds")), _dur(x.get("promised_seconds")),
                 x.get("pause_state") or "-", human_size(x.get("lsn_lag_bytes")),
                 _when((x.get("window") or {}).get("from"))] for x in doc["standbys"]]
        out += ["", "DELAYED STANDBYS", table(rows, ["STATE", "STANDBY", "DELAY", "PROMISED", "REPLAY", "LSN LAG",
                                                     "UNDOES DAMAGE AFTER"])]
    if doc["wal"]:
        rows = [[_styled(w["state"], tty), w["site"], w.get("last_segment") or "-", _when(w.get("last_archived_at")),
                 str(w["lag_segments"]) if w.get("lag_segments") is not None else "-", _dur(w.get("lag_seconds")),
                 str(w.get("gap_count", "-"))] for w in doc["wal"]]
        out += ["", "WAL", table(rows, ["STATE", "SITE", "LAST SEGMENT", "ARCHIVED", "LAG SEG", "LAG (RPO NOW)", "GAPS"])]
    wins = [o for o in doc["objective_checks"] if o["kind"] == "window"]
    if wins:
        rows = [[_styled(o["state"], tty), o["site"], _when(o.get("start_time")), _when(o.get("end_time")),
                 _dur(o.get("current_seconds")), _dur(o.get("objective_seconds")), str(o.get("holes", "-"))] for o in wins]
        out += ["", "RECOVERY WINDOW", table(rows, ["STATE", "SITE", "FROM", "TO", "UNBROKEN", "PROMISED", "HOLES"])]
    if doc["drills"]:
        rows = [[_styled(d["state"], tty), d["name"], _when(d.get("finished_at") or d.get("started_at")),
                 d.get("outcome", "-"), _dur(d.get("rto_seconds")), _dur(d.get("rpo_seconds"))] for d in doc["drills"]]
        out += ["", "DRILLS", table(rows, ["STATE", "DRILL", "LAST RUN", "OUTCOME", "RTO", "RPO"])]
    problems = [i for group in ("infrastructure", "jobs", "standbys", "wal", "drills", "objective_checks")
                for i in doc.get(group, []) if i["state"] != "OK"]
    if problems:
        out += ["", "PROBLEMS"]
        for i in problems:
            out.append(f"{_styled(i['state'], tty)} {i['message']}")
            if i.get("hint"):
                out.append(f"         HINT: {i['hint']}")
    return "\n".join(out)


@click.command()
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@click.option("--prometheus", "prom_file", metavar="FILE", type=click.Path(dir_okay=False),
              help="also write node_exporter textfile metrics to FILE (atomically)")
@click.option("--notify", "send", is_flag=True, help="notify items that became CRITICAL or recovered since the last --notify")
@click.pass_context
def status(ctx, as_json, prom_file, send):
    """Show whether backups, WAL archiving and drills meet the policy's objectives."""
    from ..status import status as collect_status

    policy = load(ctx)
    doc = collect_status(policy)
    if prom_file:
        from ..status.prometheus import render as prom, write_textfile

        try:
            write_textfile(prom_file, prom(doc))
        except OSError as exc:
            from ..errors import UsageError

            raise UsageError(f"cannot write metrics to {prom_file}: {exc.strerror}",
                             "give a file in an existing, writable directory (node_exporter's textfile directory)") from None
    if send:
        from ..notify import notify_changes
        from ..status import all_items

        doc["notified"] = [e["event"] + ": " + e["message"] for e in notify_changes(policy, all_items(doc))]
    if as_json:
        emit_json(doc)
    else:
        from .output import is_tty

        click.echo(render(doc, tty=is_tty() and click.get_text_stream("stdout").isatty()))
    return doc["code"]
