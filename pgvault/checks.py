"""Probes behind `pgvault check`: the cluster, each site, and the tools each job needs.
Returns results; the CLI prints them. Nagios-style states: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN."""
from __future__ import annotations

import uuid
from dataclasses import dataclass

from . import pg, proc
from .errors import PgvaultError
from .methods import get_method

OK, WARNING, CRITICAL, UNKNOWN = 0, 1, 2, 3
STATE_NAMES = {OK: "OK", WARNING: "WARNING", CRITICAL: "CRITICAL", UNKNOWN: "UNKNOWN"}

# The programs each method needs on this host are its Method.tools (pgvault.methods);
# these are resolved in the cluster's bin dir.
PG_TOOLS = {"pg_dump", "pg_dumpall", "pg_restore", "pg_basebackup", "pg_waldump"}


@dataclass
class CheckResult:
    name: str
    state: int
    message: str
    hint: str | None = None

    def as_dict(self) -> dict:
        return {"name": self.name, "state": STATE_NAMES[self.state], "message": self.message, "hint": self.hint}


def check_cluster(policy) -> tuple[list[CheckResult], pg.ServerInfo | None]:
    try:
        with pg.connect(policy.cluster.conninfo) as conn:
            info = pg.server_info(conn)
    except PgvaultError as exc:
        return [CheckResult("cluster", CRITICAL, exc.message, exc.hint)], None
    res = [CheckResult("cluster", OK, f"PostgreSQL {info.version}, system identifier {info.system_identifier}, "
                                      f"timeline {info.timeline}")]
    return res, info


def _probe_site(policy, name: str):
    """Write, read back and delete a probe object, make sure the site marker exists and read
    the cluster binding (run in the site's probe thread; judged by ``site_result``)."""
    from .catalog.catalog import Catalog
    from .sites.base import get_bytes, put_bytes
    from .sites.readonly import open_readonly

    site = open_readonly(policy, name)
    cat = Catalog(site, policy.cluster.name)
    from .sites.base import PROBE_MARK

    probe = f"clusters/{policy.cluster.name}{PROBE_MARK}{uuid.uuid4().hex[:12]}"
    try:
        if site.capabilities.object_lock is not None and not site.lock_enabled():
            # Before any write: the bucket refuses locked writes, and the site would not be immutable.
            raise PgvaultError(f"site {name!r} asks for object_lock but its bucket has no Object Lock enabled: "
                               "objects would be deletable by anyone holding the credentials",
                               "Object Lock can only be enabled when a bucket is created: create one with "
                               "--object-lock-enabled-for-bucket (aws s3api create-bucket) and point the site at it")
        put_bytes(site, probe, b"pgvault probe")
        if get_bytes(site, probe) != b"pgvault probe":
            raise PgvaultError(f"{site.describe()}: probe object read back differently")
        site.delete(probe)
        marker = cat.ensure_site()
        return cat, marker, cat.binding(), _keys_and_locks(policy, name, cat)
    except OSError as exc:
        raise PgvaultError(f"{site.describe()}: {exc}", "check the path and its permissions") from None


def _keys_and_locks(policy, name: str, cat) -> list[CheckResult]:
    """Object Lock on the bucket when the site asks for it; kept backups encrypted to
    recipients the policy no longer lists (their keys must be kept until they expire)."""
    out = []
    lock = cat.site.capabilities.object_lock
    if lock is not None:  # (a bucket without Object Lock failed the probe already)
        days = f"{lock.retain / 86400:g} day(s)" if lock.retain >= 86400 else f"{lock.retain:g}s"
        out.append(CheckResult(f"object lock {name}", OK, f"bucket has Object Lock enabled; objects are written "
                                                          f"{lock.mode}-locked for {days}"))
    current = set(policy.recipients(name))
    old: dict[str, set[str]] = {}
    for m in cat.manifests():
        for a in m.artifacts:
            gone = set(a.recipients or ()) - current
            if gone:
                old.setdefault(m.backup_id, set()).update(gone)
    if old:
        keys = sorted({r for g in old.values() for r in g})
        ids = sorted(old)
        shown = ", ".join(ids[:5]) + (f" and {len(ids) - 5} more" if len(ids) > 5 else "")
        out.append(CheckResult(f"keys {name}", WARNING,
                               f"{len(ids)} kept backup(s) at site {name!r} ({shown}) are encrypted to recipient(s) "
                               f"no longer in the policy: {', '.join(keys)}",
                               "keep those private keys until the backups expire (they open with them only), "
                               "or take new backups and expire the old ones"))
    return out


def site_probes(policy):
    """Start the write probe of every site, all at once (pgvault.sites.readonly.Probes)."""
    from .sites.readonly import Probes

    return Probes(policy.sites, lambda n: _probe_site(policy, n), what="check")


def site_result(name: str, answer, info: pg.ServerInfo | None) -> CheckResult:
    """The check result of one site's probe answer (unreachable, failing, or bound to
    another cluster: CRITICAL)."""
    if not answer.ok:
        return CheckResult(f"site {name}", CRITICAL, answer.message, getattr(answer.error, "hint", None))
    cat, marker, binding, _extra = answer.value
    if binding and info:
        try:
            cat.check_identity(binding, info.system_identifier)
        except PgvaultError as exc:
            return CheckResult(f"site {name}", CRITICAL, exc.message, exc.hint)
    return CheckResult(f"site {name}", OK, f"{cat.site.describe()} reachable and writable (format v{marker.version})")


def check_tools(policy, info: pg.ServerInfo | None) -> list[CheckResult]:
    out = []
    needed: dict[str, list[str]] = {}
    for jname, job in policy.jobs.items():
        for t in get_method(job.method).tools:
            needed.setdefault(t, []).append(jname)
    if policy.wal.sites:
        needed.setdefault("pg_waldump", []).append("wal")
    for t, jobs in sorted(needed.items()):
        try:
            path = pg.tool(t, info.major if info else None, policy.cluster.bin_dir) if t in PG_TOOLS else proc.which(t)
        except PgvaultError as exc:
            out.append(CheckResult(f"tool {t}", CRITICAL, f"{exc.message} (needed by {', '.join(jobs)})", exc.hint))
            continue
        if t in ("pg_dump", "pg_dumpall", "pg_restore", "pg_basebackup") and info:
            ver = proc.output([path, "--version"]).split()[-1]
            major = int(ver.split(".")[0])
            if major < info.major:
                out.append(CheckResult(f"tool {t}", CRITICAL, f"{path} is version {ver}, older than the server ({info.version})",
                                       f"install postgresql-client-{info.major} or set cluster.bin_dir"))
                continue
        out.append(CheckResult(f"tool {t}", OK, path))
    return out


def check_standby_jobs(policy) -> list[CheckResult]:
    """Jobs that run ``from: standby | prefer-standby``: can the chosen node be reached, and can
    a long pg_dump there be cancelled by a recovery conflict (docs/ha.md)?"""
    from .patroni import job_conninfo

    out = []
    for jname, job in policy.jobs.items():
        if job.from_ == "primary":
            continue
        label = f"job {jname} from {job.from_}"
        try:
            conninfo, member = job_conninfo(policy, job.from_)
            with pg.connect(conninfo) as conn:
                standby, feedback, delay = pg.query(conn, "SELECT pg_is_in_recovery(), "
                                                          "current_setting('hot_standby_feedback'), "
                                                          "current_setting('max_standby_streaming_delay')")[0]
        except PgvaultError as exc:
            out.append(CheckResult(label, CRITICAL if job.from_ == "standby" else WARNING, exc.message, exc.hint))
            continue
        where = f"on {member.name}" if member else "on the standby libpq chose"
        if not standby:
            state = WARNING if job.from_ == "standby" else OK
            out.append(CheckResult(label, state, f"runs {where}, which is not in recovery (no standby is up)"))
        elif job.method == "logical" and feedback == "off" and delay != "-1":
            out.append(CheckResult(label, WARNING, f"runs {where}: hot_standby_feedback is off and "
                                                   f"max_standby_streaming_delay is {delay}: a dump running longer "
                                                   f"than that can be cancelled by a recovery conflict",
                                   "set hot_standby_feedback = on on the replicas that take dumps, or "
                                   "max_standby_streaming_delay = -1 on a dedicated backup replica (docs/ha.md)"))
        else:
            out.append(CheckResult(label, OK, f"runs {where} (hot_standby_feedback {feedback}, "
                                              f"max_standby_streaming_delay {delay})"))
    return out


def check_state_dirs(policy) -> list[CheckResult]:
    """Can the PostgreSQL user (archive_command's) write the state dir and the WAL spool?
    (see pgvault.statedir: they are postgres's whoever runs first; an older pgvault, or a
    manual mkdir, may have left them root's)."""
    from . import statedir

    if not policy.wal.sites:
        return []  # without WAL archiving nothing running as postgres writes them
    from .wal import spool_dir

    dirs = {"state dir": statedir.state_dir(policy.state_dir, policy.cluster.name), "WAL spool": spool_dir(policy)}
    out = []
    for what, path in dirs.items():
        problem = statedir.problem_for_owner(path)
        if problem is None:
            out.append(CheckResult(what, OK, f"{path} is usable by {statedir.OWNER}"))
            continue
        exists, why = problem
        # Missing is only a warning: the first root run of pgvault creates it for postgres.
        out.append(CheckResult(what, CRITICAL if exists else WARNING,
                               f"{path}: {why}; archive_command (run as {statedir.OWNER}) needs to write it",
                               f"as root: {statedir.fix_command(path)}"))
    return out


def status_results(doc: dict) -> list[CheckResult]:
    """The status items (backups, WAL, drills, objectives) as check results. The cluster and
    site items are left out: the probes above test the same things more strictly."""
    from .status import all_items

    out = []
    for i in all_items(doc):
        if i["kind"] in ("cluster", "site"):
            continue
        if i["kind"] == "wal":
            name = f"wal {i['site']}"
        elif i["kind"] == "job":
            name = f"job {i['name']}" + (f" at {i['site']}" if i["site"] else "")
        elif i["kind"] == "drill" and i["site"]:
            name = f"drill {i['name']} from {i['site']}"
        else:
            name = f"{i['kind']} {i['name']}"
        out.append(CheckResult(name, i["code"], i["message"], i.get("hint")))
    return out


IN_FLIGHT = 120.0  # seconds a spooled file may wait for the background shipper before it is lag


def check_wal(policy, reading=None, deadline=None) -> list[CheckResult]:
    """Per WAL site: gaps are CRITICAL (PITR cannot cross them); a backlog or lag is a WARNING.
    ``reading``: a pgvault.wal.status.ArchiveReading already started (default: one now)."""
    if not policy.wal.sites:
        return []
    from .sites.readonly import Deadline, site_timeout
    from .wal.status import ArchiveReading

    out = []
    reading = reading or ArchiveReading(policy)
    status = reading.result(deadline or Deadline(site_timeout(policy)))
    for name, st in status["sites"].items():
        label = f"wal {name}"
        if not st["reachable"]:
            out.append(CheckResult(label, CRITICAL, f"unreachable: {st['error']}; {st['spooled']} file(s) spooled for it",
                                   "WAL for this site waits in the spool; it is shipped when the site answers again"))
        elif st["gap_count"]:
            out.append(CheckResult(label, CRITICAL, f"{st['gap_count']} missing segment(s) in the archive from "
                                                    f"{st['gaps'][0]}",
                                   "point-in-time recovery cannot cross a gap: take a new base backup"))
        elif st["failing"]:
            out.append(CheckResult(label, WARNING, f"failing: {st['failing']}; {st['spooled']} file(s) spooled for it",
                                   "WAL for this site waits in the spool; it is shipped when the site works again"))
        elif st["spooled"] and policy.wal.sync_sites != "all" and (st.get("spooled_age") or 0) < IN_FLIGHT:
            # sync_sites < all: the background shipper delivers within seconds; a young backlog is normal
            out.append(CheckResult(label, OK, f"{st['files']} file(s), newest {st['newest'] or '-'}; "
                                              f"{st['spooled']} in flight (oldest {st.get('spooled_age') or 0:.0f}s)"))
        elif st["spooled"] or (st["lag_segments"] or 0) > 0:
            age = f", {st['lag_seconds']:.0f}s behind" if st["lag_seconds"] else ""
            out.append(CheckResult(label, WARNING, f"lagging: {st['lag_segments']} segment(s) behind, "
                                                   f"{st['spooled']} spooled{age}",
                                   "the backlog is shipped on the next wal-push after wal.retry_interval, "
                                   "or now with `pgvault wal-ship`"))
        else:
            out.append(CheckResult(label, OK, f"{st['files']} file(s), newest {st['newest'] or '-'}, no lag"))
        out += split_brain_results(name, st.get("quarantined", []))
    return out


def split_brain_results(site: str, evidence: list[dict]) -> list[CheckResult]:
    """CRITICAL per node that sent WAL kept out of the archive (pgvault.wal.divergence)."""
    from .wal.divergence import by_sender, remedy

    return [CheckResult(f"split_brain {who} at {site}", CRITICAL,
                        f"split brain: {len(docs)} WAL file(s) from {who} quarantined at {site} "
                        f"({docs[0]['name']}{'…' + docs[-1]['name'] if len(docs) > 1 else ''})", remedy(docs[-1]))
            for who, docs in by_sender(evidence).items()]


def run_checks(policy, *, status_doc: dict | None = None, probes=None, deadline=None) -> list[CheckResult]:
    """Probes of the cluster, every site and the tools; plus the status items when given.

    Bounded: the site probes (``probes``, started by the caller beside its own reads, or
    here) and the WAL listings run at once, one thread per site, and are waited for until
    ``deadline`` (default: monitoring.site_timeout from now); a site that has not answered by
    then is CRITICAL "no answer within N s"."""
    from .sites.readonly import Deadline, site_timeout

    deadline = deadline or Deadline(site_timeout(policy))
    probes = probes or site_probes(policy)
    reading = None
    if status_doc is None and policy.wal.sites:
        from .wal.status import ArchiveReading

        reading = ArchiveReading(policy)
    results, info = check_cluster(policy)
    answers = probes.wait(deadline)
    for name in policy.sites:
        results.append(site_result(name, answers[name], info))
        if answers[name].ok:
            results += answers[name].value[3]
    results += check_tools(policy, info)
    results += check_state_dirs(policy)
    results += check_standby_jobs(policy)
    if status_doc is not None:
        results += status_results(status_doc)  # WAL per site included, judged against the objectives
    else:
        try:
            results += check_wal(policy, reading, deadline)
        except PgvaultError as exc:
            results.append(CheckResult("wal", UNKNOWN, exc.message, exc.hint))
    return results


def overall(results: list[CheckResult]) -> int:
    states = [r.state for r in results]
    if CRITICAL in states:
        return CRITICAL
    if WARNING in states:
        return WARNING
    if UNKNOWN in states:
        return UNKNOWN
    return OK
