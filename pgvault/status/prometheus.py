"""The status document as node_exporter textfile metrics, written atomically (temp + rename)
so the collector never reads half a file. Metric names are documented in docs/monitoring.md."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .evaluate import parse_instant

# name -> (type, help)
METRICS = {
    "pgvault_status": ("gauge", "Overall state: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN"),
    "pgvault_status_collected_timestamp_seconds": ("gauge", "When these metrics were collected"),
    "pgvault_item_state": ("gauge", "State of one status item: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN"),
    "pgvault_cluster_up": ("gauge", "1 when the cluster answered over SQL"),
    "pgvault_site_up": ("gauge", "1 when the site could be read"),
    "pgvault_backup_last_success_timestamp_seconds": ("gauge", "Finish time of the newest backup of a job at a site"),
    "pgvault_backup_age_seconds": ("gauge", "Age of the newest backup of a job at a site"),
    "pgvault_backup_last_size_bytes": ("gauge", "Stored size of the newest backup of a job at a site"),
    "pgvault_backup_count": ("gauge", "Backups of a job kept at a site"),
    "pgvault_backup_missed_runs": ("gauge", "Scheduled runs missed since the newest backup"),
    "pgvault_backup_interval_seconds": ("gauge", "The job's current schedule period"),
    "pgvault_wal_last_archived_timestamp_seconds": ("gauge", "When the newest WAL segment arrived at a site"),
    "pgvault_wal_lag_segments": ("gauge", "WAL segments not yet at a site, including the one being written"),
    "pgvault_wal_lag_seconds": ("gauge", "Age of the oldest WAL not at a site: the RPO now at that site"),
    "pgvault_wal_gaps": ("gauge", "Missing WAL segments at a site between the oldest base and the newest segment"),
    "pgvault_drill_last_run_timestamp_seconds": ("gauge", "When the newest run of a drill finished"),
    "pgvault_drill_success": ("gauge", "1 when the newest run of a drill passed"),
    "pgvault_drill_rto_seconds": ("gauge", "RTO measured by the newest run of a drill"),
    "pgvault_drill_rpo_seconds": ("gauge", "RPO measured by the newest run of a drill"),
    "pgvault_objective_seconds": ("gauge", "An objective of the policy (rpo, rto)"),
    "pgvault_objective_current_seconds": ("gauge", "The objective's current value (best site RPO now; drills' RTO)"),
    "pgvault_recovery_window_start_seconds": ("gauge", "Start (a base's consistency point) of the newest unbroken "
                                              "recoverable interval of a timeline at a site"),
    "pgvault_recovery_window_end_seconds": ("gauge", "End (last commit in the archived WAL) of that interval"),
    "pgvault_recovery_window_holes": ("gauge", "Holes (missing WAL, bases whose WAL is gone) in a site's recoverability window"),
    "pgvault_standby_up": ("gauge", "1 when the delayed standby answered over SQL and is in recovery"),
    "pgvault_standby_delay_seconds": ("gauge", "now - the commit time of the last transaction the standby applied"),
    "pgvault_standby_promised_delay_seconds": ("gauge", "The delay the policy promises for the standby"),
    "pgvault_standby_paused": ("gauge", "1 when the standby's replay is paused (or a pause is requested)"),
    "pgvault_standby_lsn_lag_bytes": ("gauge", "The primary's current LSN minus the standby's replay LSN"),
}


def _esc(v) -> str:
    """Label value escaping of the text exposition format.

    >>> _esc('a"b\\\\c')
    'a\\\\"b\\\\\\\\c'
    """
    return str(v).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _value(v: float) -> str:
    """Exact integers stay integers (timestamps, bytes); other values keep full precision.

    >>> _value(1764109530.0), _value(2.5), _value(True)
    ('1764109530', '2.5', '1')
    """
    f = float(v)
    return str(int(f)) if f.is_integer() else repr(f)


def _ts(text) -> float | None:
    return parse_instant(text).timestamp() if text else None


def samples(doc: dict) -> list[tuple[str, dict, float]]:
    """(metric, labels, value) for every known value in a status document."""
    c = {"cluster": doc["cluster"]}
    out: list[tuple[str, dict, float]] = [
        ("pgvault_status", c, doc["code"]),
        ("pgvault_status_collected_timestamp_seconds", c, _ts(doc["collected_at"])),
        ("pgvault_cluster_up", c, 1 if doc["facts"]["cluster"]["reachable"] else 0),
    ]
    for name, s in doc["facts"]["sites"].items():
        out.append(("pgvault_site_up", {**c, "site": name}, 1 if s["reachable"] else 0))
    for group in ("infrastructure", "jobs", "standbys", "wal", "drills", "objective_checks"):
        for i in doc.get(group, []):
            out.append(("pgvault_item_state", {**c, "kind": i["kind"], "name": i["name"], "site": i["site"] or ""}, i["code"]))
    for j in doc["jobs"]:
        if not j["site"]:
            continue
        lab = {**c, "job": j["name"], "site": j["site"]}
        last = j.get("last")
        out += [("pgvault_backup_count", lab, j.get("count")), ("pgvault_backup_missed_runs", lab, j.get("missed_runs")),
                ("pgvault_backup_interval_seconds", lab, j.get("interval_seconds")),
                ("pgvault_backup_age_seconds", lab, j.get("age_seconds"))]
        if last:
            out += [("pgvault_backup_last_success_timestamp_seconds", lab, _ts(last["finished_at"])),
                    ("pgvault_backup_last_size_bytes", lab, last["size"])]
    for w in doc["wal"]:
        lab = {**c, "site": w["site"]}
        out += [("pgvault_wal_last_archived_timestamp_seconds", lab, _ts(w.get("last_archived_at"))),
                ("pgvault_wal_lag_segments", lab, w.get("lag_segments")),
                ("pgvault_wal_lag_seconds", lab, w.get("lag_seconds")),
                ("pgvault_wal_gaps", lab, w.get("gap_count"))]
    for d in doc["drills"]:
        if "outcome" not in d:
            continue
        lab = {**c, "drill": d["name"], "site": d["site"] or ""}
        out += [("pgvault_drill_last_run_timestamp_seconds", lab, _ts(d.get("finished_at") or d.get("started_at"))),
                ("pgvault_drill_success", lab, 1 if d["code"] != 2 and d["outcome"] in ("passed", "ok", "success", "succeeded") else 0),
                ("pgvault_drill_rto_seconds", lab, d.get("rto_seconds")),
                ("pgvault_drill_rpo_seconds", lab, d.get("rpo_seconds"))]
    out += window_samples(doc, c)
    for x in doc.get("standbys", []):
        lab = {**c, "standby": x["name"]}
        f = (doc["facts"].get("standbys") or {}).get(x["name"], {})
        out += [("pgvault_standby_up", lab, 1 if f.get("reachable") and f.get("in_recovery") else 0),
                ("pgvault_standby_promised_delay_seconds", lab, x.get("promised_seconds"))]
        if f.get("reachable"):
            out += [("pgvault_standby_delay_seconds", lab, x.get("delay_seconds")),
                    ("pgvault_standby_paused", lab, 1 if x.get("paused") else 0),
                    ("pgvault_standby_lsn_lag_bytes", lab, x.get("lsn_lag_bytes"))]
    for o in doc["objective_checks"]:
        if o["kind"] != "objective":
            continue
        lab = {**c, "objective": o["name"]}
        out += [("pgvault_objective_seconds", lab, o.get("objective_seconds")),
                ("pgvault_objective_current_seconds", lab, o.get("current_seconds"))]
    return [s for s in out if s[2] is not None]


def window_samples(doc: dict, c: dict) -> list[tuple[str, dict, float]]:
    """Per WAL site and timeline the newest interval (the site's unbroken window on the timeline
    it ends on), and the site's hole count (facts["windows"], pgvault.restore.windows)."""
    out = []
    for site, w in (doc["facts"].get("windows") or {}).items():
        if w.get("error"):
            continue
        out.append(("pgvault_recovery_window_holes", {**c, "site": site}, w.get("holes", 0)))
        u = w.get("unbroken") or {}
        for t in w["timelines"]:
            if not t["intervals"]:
                continue
            iv = t["intervals"][-1]
            start = u["start_time"] if u and u.get("timeline") == t["timeline"] else iv["start_time"]
            lab = {**c, "site": site, "timeline": str(t["timeline"])}
            out += [("pgvault_recovery_window_start_seconds", lab, _ts(start)),
                    ("pgvault_recovery_window_end_seconds", lab, _ts(iv["end_time"]))]
    return out


def render(doc: dict) -> str:
    """The text exposition format: HELP and TYPE once per metric, samples grouped by metric."""
    by_metric: dict[str, list] = {}
    for name, labels, value in samples(doc):
        by_metric.setdefault(name, []).append((labels, value))
    lines = []
    for name, rows in by_metric.items():
        kind, help_text = METRICS[name]
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
        for labels, value in rows:
            lab = ",".join(f'{k}="{_esc(v)}"' for k, v in labels.items())
            lines.append(f"{name}{{{lab}}} {_value(value)}")
    return "\n".join(lines) + "\n"


def write_textfile(path: str | os.PathLike, text: str) -> None:
    """Write atomically: a temp file in the same directory, fsync, rename over the target."""
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # node_exporter runs as its own user and must read it
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
