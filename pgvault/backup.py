"""Run one backup job now: connect, bind the cluster at each site, let the method write its
artifacts to every site in one pass, then commit the manifest. Owns the sequence; methods
never write manifests."""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone

from . import pg
from .catalog import layout, running
from .catalog.catalog import Catalog, open_catalogs
from .catalog.formats import Manifest
from .catalog.session import BackupSession
from .errors import PgvaultError
from .methods import get_method
from .methods.base import BackupFacts
from .methods.context import BackupContext
from .policy.model import get_job

log = logging.getLogger("pgvault.backup")


@dataclass
class BackupResult:
    job: str
    backup_id: str
    manifest: Manifest
    sites: list[str]
    failed_sites: dict[str, str] = field(default_factory=dict)

    @property
    def partial(self) -> bool:
        return bool(self.failed_sites)


def bind_all(catalogs: dict[str, Catalog], server: pg.ServerInfo) -> tuple[dict[str, Catalog], dict[str, str]]:
    """Bind the cluster at each site; an unreachable site is dropped, a mismatch is fatal.
    The sites are asked at once: an unreachable one costs its timeout once, not once per site
    (the lab's partition of both remote regions took two read timeouts in a row)."""
    from concurrent.futures import ThreadPoolExecutor

    from .errors import ClusterMismatch

    def one(cat: Catalog):
        try:
            cat.bind(server.system_identifier, server.major, server.wal_segment_size)
            return None
        except ClusterMismatch as exc:
            return exc
        except PgvaultError as exc:
            return exc.message

    ok, failed = {}, {}
    with ThreadPoolExecutor(max_workers=max(1, len(catalogs)), thread_name_prefix="pgvault-bind") as pool:
        answers = dict(zip(catalogs, pool.map(one, catalogs.values())))
    for n, answer in answers.items():
        if isinstance(answer, ClusterMismatch):
            raise answer
        if answer is None:
            ok[n] = catalogs[n]
        else:
            # info, not warning: the caller reports every failed site once (BackupResult.failed_sites)
            log.info("site %s unavailable: %s", n, answer)
            failed[n] = answer
    return ok, failed


def run_backup(policy, job_name: str, *, progress=None, now: datetime | None = None) -> BackupResult:
    job = get_job(policy, job_name)
    method = get_method(job.method)
    from .patroni import job_conninfo

    # The node the job says (from: primary | standby | prefer-standby): Patroni's choice, or
    # libpq's by target_session_attrs over a multi-host conninfo.
    conninfo, chosen = job_conninfo(policy, job.from_)
    if chosen:
        log.info("job %s runs on %s (%s, chosen from Patroni's view for from: %s)", job_name, chosen.name,
                 chosen.role, job.from_)
    conn = pg.connect(conninfo)
    try:
        server = pg.server_info(conn)
        ctx = BackupContext(policy, job_name, job, conn, server, progress, node_conninfo=conninfo)
        problems = method.check(ctx)
        if problems:
            raise PgvaultError(f"job {job_name!r} cannot run:\n  " + "\n  ".join(problems))
        catalogs, failed = bind_all(open_catalogs(policy, job.sites), server)
        if job.sites and not catalogs:
            raise PgvaultError(f"job {job_name!r}: no site is reachable ({'; '.join(f'{k}: {v}' for k, v in failed.items())})",
                               "check the sites with pgvault check")
        taken = set()
        for cat in catalogs.values():
            taken.update(cat.backup_ids())
            taken.update(p.rstrip("/").rsplit("/", 1)[-1] for p in cat.debris() if p.endswith("/"))
        backup_id = layout.new_backup_id(now, taken)
        # Before the first artifact: from now on every node's expire leaves this backup's files
        # alone, and no other job takes the same id (same second, another node).
        node = chosen.name if chosen else None
        while not running.claim(catalogs, backup_id, job_name, timeout=job.timeout, node=node):
            taken.add(backup_id)
            backup_id = layout.new_backup_id(now, taken)
        started = datetime.now(timezone.utc)
        # The relation record (catalog reads and one small object per site) is taken while the
        # method's first stream flows (started then, so it does not hold the GIL while the dump
        # is being set up), off the critical path; it is complete before run_backup returns.
        # Sites that just failed to answer are not asked again for it (each would cost its timeout).
        relations = threading.Thread(target=_record_relations, args=(policy, conninfo, set(failed)),
                                     name="pgvault-relations", daemon=True)
        session = BackupSession(catalogs, backup_id, on_first_stream=relations.start,
                                recipients={n: policy.recipients(n) for n in catalogs})
        try:
            facts = method.backup(ctx, session)
            if not isinstance(facts, BackupFacts):  # the contract (methods/base.py), not a user error
                raise TypeError(f"method {job.method}: backup() returned {type(facts).__name__}, not BackupFacts")
            manifest_fields = facts.manifest_fields()
            manifest = Manifest(
                backup_id=backup_id, cluster=policy.cluster.name, job=job_name, method=job.method,
                started_at=started, finished_at=datetime.now(timezone.utc),
                system_identifier=server.system_identifier, pg_version=server.version,
                timeline=manifest_fields.pop("timeline", server.timeline),
                options=job.model_dump(mode="json", exclude={"schedule", "schedule_tz", "retain", "retain_at"}),
                tool_versions=facts.tool_versions, facts=facts.facts, restore=facts.restore, **manifest_fields)
            manifest = session.commit(manifest)
        except BaseException:
            session.abort()
            raise
        finally:
            running.end(catalogs, backup_id)  # after the manifest (or the abort): never a gap between them
            if relations.ident is not None:
                relations.join()
        if relations.ident is None:  # a method that streamed nothing
            _record_relations(policy, conninfo, set(failed))
        failed.update({n: getattr(e, "message", str(e)) for n, e in session.failed.items()})
        return BackupResult(job_name, backup_id, manifest, session.committed, failed)
    finally:
        conn.close()


def _record_relations(policy, conninfo: str | None = None, down: set | None = None) -> None:
    """Note which file each table lives in, so `pgvault find` can later recognise a TRUNCATE
    or DROP of it in the WAL (the file changes with the damage). Taken while the backup runs
    (a thread). Best effort: a backup is never failed by this."""
    from .catalog.relations import record_relations

    try:
        record_relations(policy, conninfo=conninfo, down=down)
    except Exception as exc:  # noqa: BLE001 - logged, never fatal
        log.warning("relation history not recorded: %s", getattr(exc, "message", exc))
