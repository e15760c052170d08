"""Judge the collected facts against the policy: schedules, objectives and the `monitoring:`
thresholds. Pure: facts + policy + now in, items with Nagios-style states out."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

from ..policy.durations import format_duration
from . import cron
from ..wal.status import current_segno, lag

OK, WARNING, CRITICAL, UNKNOWN = 0, 1, 2, 3
STATE_NAMES = {OK: "OK", WARNING: "WARNING", CRITICAL: "CRITICAL", UNKNOWN: "UNKNOWN"}
PASSED = ("passed", "ok", "success", "succeeded")
# Without an RPO objective, WAL lag is still watched: an archive silently stuck for hours is
# always worth a page.
DEFAULT_WAL_WARN = timedelta(minutes=15)
DEFAULT_WAL_CRIT = timedelta(hours=1)


def parse_instant(text: str) -> datetime:
    """An ISO 8601 instant as stored in manifests and drill evidence; no offset means UTC.

    >>> parse_instant("2026-11-27T04:00:00+01:00").isoformat()
    '2026-11-27T03:00:00+00:00'
    >>> parse_instant("2026-11-27T03:00:00Z").isoformat()
    '2026-11-27T03:00:00+00:00'
    """
    t = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    return (t if t.tzinfo else t.replace(tzinfo=timezone.utc)).astimezone(timezone.utc)


def worst(states: list[int]) -> int:
    """CRITICAL beats WARNING beats UNKNOWN beats OK (the Nagios convention for aggregates).

    >>> worst([OK, UNKNOWN, WARNING]), worst([]), worst([OK, UNKNOWN])
    (1, 0, 3)
    """
    for s in (CRITICAL, WARNING, UNKNOWN):
        if s in states:
            return s
    return OK


def _item(kind: str, name: str, state: int, message: str, site: str | None = None, **facts) -> dict:
    return {"kind": kind, "name": name, "site": site, "state": STATE_NAMES[state], "code": state,
            "message": message, **facts}


def _t(text: str | None) -> datetime | None:
    return parse_instant(text) if text else None


def _age(text: str | None, now: datetime) -> float | None:
    t = _t(text)
    return None if t is None else max((now - t).total_seconds(), 0.0)


def _fmt(seconds: float | None) -> str:
    return "-" if seconds is None else format_duration(seconds)


def job_items(policy, facts: dict, now: datetime) -> list[dict]:
    mon = policy.monitoring
    out = []
    for jname, job in policy.jobs.items():
        if job.method == "standby":
            continue  # watched by standby_items: it keeps no backups
        limits = mon.jobs.get(jname)
        period = cron.interval(job.schedule, job.schedule_tz, now) if job.schedule else None
        grace = mon.grace or (cron.default_grace(period) if period else None)
        if not job.sites:
            out.append(_item("job", jname, OK, f"job {jname}: keeps no copy at a site (not watched by status)"))
        for sname in job.sites:
            site = facts["sites"][sname]
            base = {"method": job.method, "schedule": job.schedule,
                    "interval_seconds": period.total_seconds() if period else None}
            if not site["reachable"]:
                out.append(_item("job", jname, UNKNOWN, f"job {jname} at {sname}: site unreachable", sname, **base))
                continue
            b = site["backups"].get(jname, {"count": 0, "last": None, "total_size": 0})
            last = b["last"]
            age = _age(last["finished_at"], now) if last else None
            base.update(count=b["count"], total_size=b["total_size"], last=last, age_seconds=age)
            state, why, missed = OK, "", None
            if job.schedule:
                since = _t(last["started_at"]) if last else _t(site.get("bound_at"))
                missed = cron.missed_runs(job.schedule, job.schedule_tz, since, now, grace, mon.missed_crit + 1) if since else 0
                if missed >= mon.missed_crit:
                    state, why = CRITICAL, f"{missed} scheduled runs missed"
                elif missed >= mon.missed_warn:
                    state, why = WARNING, f"{missed} scheduled run{'s' if missed > 1 else ''} missed"
            if limits and age is not None:
                if limits.crit_age and age > limits.crit_age.total_seconds():
                    state, why = CRITICAL, f"older than {format_duration(limits.crit_age)}"
                elif limits.warn_age and age > limits.warn_age.total_seconds():
                    state, why = max(state, WARNING), why or f"older than {format_duration(limits.warn_age)}"
            run = facts.get("runs", {}).get(jname)
            if run and run["outcome"] == "failed" and (last is None or _t(run["started_at"]) > _t(last["started_at"])):
                state = max(state, WARNING)
                why = (why + "; " if why else "") + f"last run failed at {run['started_at'][:19]}Z: {run['message'][:200]}"
            base["missed_runs"] = missed
            if last is None:
                if job.schedule and state == OK:
                    state = WARNING
                msg = f"job {jname} at {sname}: no backup yet" + (f" ({why})" if why else "")
            else:
                msg = (f"job {jname} at {sname}: last {last['backup_id']} {_fmt(age)} ago, "
                       f"{b['count']} kept" + (f" ({why})" if why else ""))
            out.append(_item("job", jname, state, msg, sname, **base))
    return out


def wal_thresholds(policy) -> tuple[timedelta, timedelta]:
    mon, rpo = policy.monitoring, policy.objectives.rpo
    warn = mon.wal_warn_lag or (rpo / 2 if rpo else DEFAULT_WAL_WARN)
    crit = mon.wal_crit_lag or (rpo if rpo else DEFAULT_WAL_CRIT)
    return warn, crit


def wal_items(policy, facts: dict, now: datetime) -> list[dict]:
    cluster = facts["cluster"]
    seg = facts["wal_segment_size"]
    warn, crit = wal_thresholds(policy)
    mon = policy.monitoring
    out = []
    for sname in policy.wal.sites:
        site = facts["sites"][sname]
        spool = site.get("spool") or {"spooled": 0, "spooled_age": None, "down_since": None, "failing": None}
        if not site["reachable"]:
            # WAL piling up in the spool for it is an outage of archiving, not just of reading.
            state = CRITICAL if spool["spooled"] else UNKNOWN
            out.append(_item("wal", "wal", state, f"wal at {sname}: site unreachable, {spool['spooled']} file(s) "
                             "spooled for it", sname, spooled=spool["spooled"], spooled_age_seconds=spool["spooled_age"],
                             hint="WAL for this site waits in the spool; it is shipped when the site answers again"))
            continue
        w = site["wal"]
        info = {"last_segment": w["newest"], "last_archived_at": w["newest_time"], "oldest_segment": w["oldest"],
                "segments": w["count"], "gaps": w["gaps"], "gap_count": w["gap_count"],
                "lag_segments": None, "lag_seconds": None, "spooled": spool["spooled"],
                "spooled_age_seconds": spool["spooled_age"], "failing": spool.get("failing")}
        if w["newest"] is None:
            state = CRITICAL if cluster.get("archive_mode") == "off" else WARNING
            out.append(_item("wal", "wal", state, f"wal at {sname}: nothing archived yet", sname, **info))
            continue
        # Lag behind the segment the cluster writes now (unknown while it is unreachable), at
        # least the age of the oldest file spooled for this site: the one computation
        # wal-status uses too (pgvault.wal.status.lag).
        ref = current_segno(cluster["current_lsn"], seg) if cluster.get("reachable") else None
        newest_at = _t(w["newest_time"])
        info["lag_segments"], info["lag_seconds"] = lag(
            w["newest"], newest_at.timestamp() if newest_at else None, ref, now.timestamp(), spool["spooled_age"], seg)
        state, why = OK, []
        if w["gap_count"]:
            state = CRITICAL
            why.append(f"{w['gap_count']} missing segment(s) from {w['gaps'][0]}")
        ls, lg = info["lag_seconds"], info["lag_segments"]
        if ls is not None:
            if ls > crit.total_seconds() or (mon.wal_crit_segments and lg >= mon.wal_crit_segments):
                state = CRITICAL
                why.append("lag beyond " + (f"RPO {format_duration(crit)}" if ls > crit.total_seconds() else f"{mon.wal_crit_segments} segments"))
            elif ls > warn.total_seconds() or (mon.wal_warn_segments and lg >= mon.wal_warn_segments):
                state = max(state, WARNING)
                why.append("lag beyond " + (format_duration(warn) if ls > warn.total_seconds() else f"{mon.wal_warn_segments} segments"))
        elif not cluster.get("reachable"):
            state = max(state, UNKNOWN)
            why.append("cluster unreachable: lag unknown")
        if spool.get("failing"):
            # wal-push cannot write there (full disk, permissions) although the site reads fine.
            state = max(state, WARNING)
            why.append(f"wal-push failing since {str(spool.get('down_since'))[:19]}: {spool['failing'][:200]}")
        if spool["spooled"]:
            why.append(f"{spool['spooled']} file(s) spooled for it")
        msg = (f"wal at {sname}: last {w['newest']}, lag {lg if lg is not None else '?'} segment(s) / {_fmt(ls)}"
               + (f" ({'; '.join(why)})" if why else ""))
        out.append(_item("wal", "wal", state, msg, sname, **info))
    return out


def drill_items(policy, facts: dict, now: datetime) -> list[dict]:
    obj, mon = policy.objectives, policy.monitoring
    out = []
    for _key, d in sorted(facts["drills"].items()):
        name = d["drill"]
        age = _age(d["when"], now)
        info = {k: d.get(k) for k in ("id", "started_at", "finished_at", "outcome", "rto_seconds", "rpo_seconds")}
        info["age_seconds"] = age
        state, why = OK, []
        if d["outcome"] not in PASSED:
            state = CRITICAL
            why.append(f"outcome {d['outcome']}" + (f": {d['message']}" if d.get("message") else ""))
        if obj.rto and d["rto_seconds"] is not None and d["rto_seconds"] > obj.rto.total_seconds():
            state = CRITICAL
            why.append(f"RTO {_fmt(d['rto_seconds'])} beyond objective {format_duration(obj.rto)}")
        if obj.rpo and d["rpo_seconds"] is not None and d["rpo_seconds"] > obj.rpo.total_seconds():
            state = max(state, WARNING)
            why.append(f"RPO {_fmt(d['rpo_seconds'])} beyond objective {format_duration(obj.rpo)}")
        if age is not None and age > mon.drill_max_age.total_seconds():
            state = max(state, WARNING)
            why.append(f"older than {format_duration(mon.drill_max_age)}")
        msg = (f"drill {name} from {d.get('site')}: {d['outcome']} {_fmt(age)} ago, RTO {_fmt(d['rto_seconds'])}, RPO {_fmt(d['rpo_seconds'])}"
               + (f" ({'; '.join(why)})" if why else ""))
        out.append(_item("drill", name, state, msg, d.get("site"), **info))
    if policy.drills and not out:
        out.append(_item("drill", "drills", WARNING, "no drill evidence at any site yet: the backups are not proven to restore"))
    return out


def objective_items(policy, facts: dict, jobs: list[dict], wal: list[dict], drills: list[dict]) -> list[dict]:
    obj = policy.objectives
    out = []
    if obj.rpo:
        # A recovery point is a backup, or archived WAL replayable from a base at the same site
        # (a logical dump is no base for WAL): the best one of them is the RPO now.
        points = [j["age_seconds"] for j in jobs if j.get("age_seconds") is not None]
        points += [w["lag_seconds"] for w in wal if w.get("lag_seconds") is not None
                   and facts["sites"][w["site"]].get("wal", {}).get("required_from")]
        now_rpo = min(points) if points else None
        limit = obj.rpo.total_seconds()
        if now_rpo is None:
            state, msg = WARNING, f"objective RPO {format_duration(obj.rpo)}: no recovery point at any site yet"
        else:
            state = CRITICAL if now_rpo > limit else OK
            msg = f"objective RPO {format_duration(obj.rpo)}: {_fmt(now_rpo)} now (best site)"
        out.append(_item("objective", "rpo", state, msg, objective_seconds=limit, current_seconds=now_rpo))
    if obj.rto:
        measured = [d["rto_seconds"] for d in drills if d.get("rto_seconds") is not None]
        rto = max(measured) if measured else None
        limit = obj.rto.total_seconds()
        if rto is None:
            state, msg = OK, f"objective RTO {format_duration(obj.rto)}: not measured yet (no drill evidence)"
        else:
            state = CRITICAL if rto > limit else OK
            msg = f"objective RTO {format_duration(obj.rto)}: {_fmt(rto)} measured by the newest drills"
        out.append(_item("objective", "rto", state, msg, objective_seconds=limit, current_seconds=rto))
    return out


def window_items(policy, facts: dict, now: datetime) -> list[dict]:
    """Each WAL site's unbroken recoverability window (pgvault.restore.windows) against the
    promise ``objectives.window``: CRITICAL when shorter. Without the objective it is shown, not judged."""
    promise = policy.objectives.window
    limit = promise.total_seconds() if promise else None
    out = []
    for sname, w in (facts.get("windows") or {}).items():
        if w.get("error"):
            out.append(_item("window", sname, UNKNOWN, f"window at {sname}: cannot be read: {w['error']}", sname,
                             objective_seconds=limit, current_seconds=None))
            continue
        u = w.get("unbroken")
        secs = u["seconds"] if u else None
        span = f"{_fmt(secs)} ({u['start_time'][:19]}Z .. {(u['end_time'] or '?')[:19]}Z)" if u else "nothing restorable"
        holes = f", {w['holes']} hole(s)" if w.get("holes") else ""
        if limit is None:
            state, msg = OK, f"window at {sname}: {span}{holes}"
        elif secs is None or secs < limit:
            state, msg = CRITICAL, f"window at {sname}: unbroken {span}, shorter than the promised {format_duration(promise)}{holes}"
        else:
            state, msg = OK, f"window at {sname}: unbroken {span} (promised {format_duration(promise)}){holes}"
        out.append(_item("window", sname, state, msg, sname, objective_seconds=limit, current_seconds=secs,
                         holes=w.get("holes", 0), start_time=u["start_time"] if u else None,
                         end_time=u["end_time"] if u else None,
                         hint="see pgvault windows --site " + sname if state != OK else None))
    return out


# An applied commit is at least `delay` old by construction; a second of slack for the
# granularity of the two clocks read (commit time on the primary, now() on the standby).
STANDBY_SLACK = 1.0


def standby_items(policy, facts: dict) -> list[dict]:
    """Each delayed standby against its promise: CRITICAL when it is unreachable, promoted,
    paused, configured with less delay than promised, applying commits sooner than promised,
    or archiving (archive_mode = always would write into production's archive)."""
    out = []
    for name, f in (facts.get("standbys") or {}).items():
        promised = f["promised_seconds"]
        base = {"promised_seconds": promised}
        if not f["reachable"]:
            out.append(_item("standby", name, CRITICAL, f"standby {name}: unreachable: {f['error']}",
                             hint=f.get("hint") or f"pgvault standby create {name}", **base))
            continue
        info = {**base, **{k: f.get(k) for k in ("delay_seconds", "apply_delay_seconds", "pause_state", "paused",
                                                  "replay_lsn", "receive_lsn", "lsn_lag_bytes", "last_replayed_commit",
                                                  "receiver", "window")}}
        state, why = OK, []
        d = f["delay_seconds"]
        if not f["in_recovery"]:
            state = CRITICAL
            why.append("not in recovery (promoted): no delayed copy any more")
        if f["paused"]:
            state = CRITICAL
            why.append(f"replay {f['pause_state']}: it no longer follows the primary")
        if f["apply_delay_seconds"] < promised:
            state = CRITICAL
            why.append(f"recovery_min_apply_delay {_fmt(f['apply_delay_seconds'])} is below the promised {_fmt(promised)}")
        if d is not None and d < promised - STANDBY_SLACK:
            state = CRITICAL
            why.append(f"it applied a commit {_fmt(d)} after it was made, sooner than the promised {_fmt(promised)}")
        if f.get("archive_mode") == "always":
            state = CRITICAL
            why.append("archive_mode = always: a standby of pgvault must never archive")
        # No WAL receiver is not judged: after a restart a standby replays the WAL it already
        # holds before it streams again, which with a long delay can take that long.
        lag = f.get("lsn_lag_bytes")
        msg = (f"standby {name}: delay {_fmt(d)} (promised {_fmt(promised)}), "
               + (f"{lag} bytes behind the primary" if lag is not None else "LSN lag unknown")
               + f", replay {f['pause_state'] or 'ended'}, WAL receiver {f.get('receiver') or 'not running'}"
               + (f" ({'; '.join(why)})" if why else ""))
        out.append(_item("standby", name, state, msg, **info))
    return out


def infra_items(policy, facts: dict) -> list[dict]:
    c = facts["cluster"]
    out = []
    if not c["reachable"]:
        out.append(_item("cluster", policy.cluster.name, CRITICAL, f"cluster unreachable: {c['error']}", hint=c.get("hint")))
    elif policy.wal.sites and c["archive_mode"] == "off":
        out.append(_item("cluster", policy.cluster.name, CRITICAL, "archive_mode is off: no WAL reaches the sites",
                         hint="set archive_mode = on and archive_command to pgvault wal-push %p, then restart"))
    else:
        a = c["archiver"]
        if policy.wal.sites and a["last_failed_time"] and (a["last_archived_time"] or "") < a["last_failed_time"]:
            out.append(_item("cluster", policy.cluster.name, WARNING,
                             f"archive_command is failing (last failure {a['last_failed_wal']} at {a['last_failed_time']})",
                             hint="see the PostgreSQL server log"))
        else:
            out.append(_item("cluster", policy.cluster.name, OK, f"cluster reachable, timeline {c['timeline']}, at {c['current_lsn']}"))
    for sname, s in facts["sites"].items():
        if s["reachable"]:
            out.append(_item("site", sname, OK, f"site {sname}: readable ({s['describe']})", sname))
        else:
            out.append(_item("site", sname, CRITICAL, f"site {sname}: {s['error']}", sname, hint=s.get("hint")))
    return out


def split_brain_items(facts: dict) -> list[dict]:
    """CRITICAL per node and site whose WAL was quarantined (divergent or conflicting): the
    node is named with the remedy; ``pgvault check --notify`` sends ``split_brain`` for it."""
    from ..wal.divergence import by_sender, remedy

    out = []
    for sname, site in facts["sites"].items():
        for who, docs in by_sender(site.get("quarantine") or []).items():
            out.append(_item("split_brain", who, CRITICAL,
                             f"split brain: {len(docs)} WAL file(s) from {who} quarantined at {sname}, first "
                             f"{docs[0]['name']} ({docs[0]['reason']})", sname, hint=remedy(docs[-1]),
                             files=[d["name"] for d in docs]))
    return out


def evaluate(policy, facts: dict, now: datetime | None = None) -> dict:
    """The status document: every item judged, the overall state and a one-line summary."""
    now = now or datetime.now(timezone.utc)
    infra = infra_items(policy, facts)
    jobs = job_items(policy, facts, now)
    wal = wal_items(policy, facts, now)
    infra += split_brain_items(facts)
    drills = drill_items(policy, facts, now)
    objectives = objective_items(policy, facts, jobs, wal, drills) + window_items(policy, facts, now)
    standbys = standby_items(policy, facts)
    items = infra + jobs + standbys + wal + drills + objectives
    state = worst([i["code"] for i in items])
    rank = {CRITICAL: 0, WARNING: 1, UNKNOWN: 2}
    bad = sorted((i for i in items if i["code"] != OK), key=lambda i: rank[i["code"]])
    summary = f"PGVAULT {STATE_NAMES[state]} - cluster {policy.cluster.name}: "
    if bad:
        summary += "; ".join(i["message"] for i in bad[:3]) + (f" (+{len(bad) - 3} more)" if len(bad) > 3 else "")
    else:
        summary += f"{len(items)} items OK"
    return {"cluster": policy.cluster.name, "collected_at": facts["collected_at"], "state": STATE_NAMES[state],
            "code": state, "summary": summary,
            "objectives": {"rpo_seconds": policy.objectives.rpo.total_seconds() if policy.objectives.rpo else None,
                           "rto_seconds": policy.objectives.rto.total_seconds() if policy.objectives.rto else None,
                           "window_seconds": policy.objectives.window.total_seconds() if policy.objectives.window else None},
            "infrastructure": infra, "jobs": jobs, "standbys": standbys, "wal": wal, "drills": drills,
            "objective_checks": objectives}


def all_items(status: dict) -> list[dict]:
    return (status["infrastructure"] + status["jobs"] + status.get("standbys", []) + status["wal"] + status["drills"]
            + status["objective_checks"])
