"""Base backups with the real Barman tools, at every site of the job, Barman's layout intact.

- S3 site: ``barman-cloud-backup s3://<bucket>/<prefix>/clusters <cluster>`` — Barman's cloud
  layout lands in ``clusters/<cluster>/base/<barman-id>/`` next to pgvault's catalog.
- local site: a Barman server whose home is ``clusters/<cluster>/barman/`` at the site, with a
  configuration pgvault generates there (backup_method = postgres, i.e. pg_basebackup; no SSH).
  Barman streams WAL only while its backup runs (it refuses to back up without WAL of its own);
  the slot is dropped afterwards so it never holds WAL on the server. See docs/barman.md.

Each site gets its own Barman backup (its own id and LSN range); pgvault's manifest records
them all under ``facts.barman`` and the widest range at the top level (start of the earliest,
end of the latest), which is what any site's copy needs at most."""
from __future__ import annotations

import getpass
import json
import logging
import os
import time
from datetime import datetime
from pathlib import Path

from .. import pg, proc
from ..catalog import layout
from ..errors import PgvaultError, SiteError
from . import barman_tools as bt
from .base import BackupFacts, Method
from .context import BackupContext
from ..lsn import parse_lsn

log = logging.getLogger("pgvault.barman")

INFO_ARTIFACT = "barman.json"
CHECK_TIMEOUT = 60
FIRST_WAL_TIMEOUT = 120


def _site_cfg(ctx: BackupContext, name: str):
    return ctx.policy.sites[name]


def route(caps) -> str | None:
    """How Barman reaches a site, from what the site declares: barman-cloud if its tools can
    reach it, else a Barman server in a local directory; None if neither."""
    if caps.barman_cloud is not None:
        return "barman-cloud"
    return "barman-server" if caps.local_root is not None else None


def _caps(ctx: BackupContext, name: str):
    from ..sites import open_site

    return open_site(name, _site_cfg(ctx, name)).capabilities


def check(ctx: BackupContext) -> list[str]:
    problems = []
    routes = {n: route(_caps(ctx, n)) for n in ctx.job.sites}
    kinds = set(routes.values())
    problems += [f"site {n!r} can hold no Barman backup: barman-cloud cannot reach it and it is not a local "
                 f"directory (HINT: use another method for this site)" for n, r in routes.items() if r is None]
    # Barman and barman-cloud write their own objects, in clear: never a silent clear copy at
    # a site the policy says is encrypted (docs/encryption.md, "Barman").
    problems += [f"site {n!r} is encrypted (encryption.recipients) but Barman writes its base backups there in "
                 f"clear (HINT: use a snapshot or logical job for encrypted sites, or give this job a site "
                 f"without encryption)" for n in ctx.job.sites if ctx.policy.recipients(n)]
    needed = (["barman-cloud-backup", "barman-cloud-backup-show"] if "barman-cloud" in kinds else []) + \
             (["barman"] if "barman-server" in kinds else [])
    for t in needed:
        try:
            bt.tool(t)
        except PgvaultError as exc:
            problems.append(f"{exc.message} (HINT: {exc.hint})")
    if "barman-cloud" in kinds and ctx.job.compression not in bt.CLOUD_COMPRESSION:
        problems.append(f"jobs.{ctx.job_name}.compression: barman-cloud-backup cannot compress with "
                        f"{ctx.job.compression} (HINT: use one of {', '.join(bt.CLOUD_COMPRESSION)})")
    settings = dict(pg.query(ctx.conn, "SELECT name, setting FROM pg_settings WHERE name IN "
                                       "('wal_level', 'max_wal_senders', 'max_replication_slots')"))
    if settings.get("wal_level") == "minimal":
        problems.append("wal_level is minimal: base backups need replica or logical (HINT: set wal_level = replica and restart)")
    if "barman-server" in kinds:
        if int(settings.get("max_wal_senders", 0)) < 2:
            problems.append("max_wal_senders < 2: Barman needs two (pg_basebackup + WAL streaming) "
                            "(HINT: set max_wal_senders = 10 and restart)")
        if int(settings.get("max_replication_slots", 0)) < 1:
            problems.append("max_replication_slots = 0: Barman streams through a slot during the backup "
                            "(HINT: set max_replication_slots = 10 and restart)")
    return problems


# -- sites barman-cloud reaches (S3): barman-cloud-backup


def _cloud(ctx: BackupContext, name: str):
    """(Barman's cloud URL at the site, the site's BarmanCloud capability, the tools' environment)."""
    cloud = _caps(ctx, name).barman_cloud
    return layout.barman_cloud_url(cloud.url), cloud, cloud.env


def _cloud_ids(ctx, name: str) -> set[str]:
    url, cloud, env = _cloud(ctx, name)
    out = proc.output(bt.cloud_list_argv(url, ctx.policy.cluster.name, cloud), extra_env=env)
    return {b["backup_id"] for b in json.loads(out or "{}").get("backups_list", [])}


def cloud_backup(ctx: BackupContext, name: str, pgvault_id: str) -> dict:
    url, cloud, env = _cloud(ctx, name)
    server = ctx.policy.cluster.name
    before = _cloud_ids(ctx, name)
    argv = bt.cloud_backup_argv(url, server, ctx.conninfo(), cloud=cloud,
                                compression=ctx.job.compression, immediate=ctx.job.immediate_checkpoint,
                                name=pgvault_id)
    # Barman runs pg_backup_start/stop itself and reads PGDATA; it needs PostgreSQL's bin dir.
    path_env = {**env, "PATH": f"{ctx.tool('pg_basebackup').rsplit('/', 1)[0]}:{os.environ.get('PATH', '')}"}
    try:
        proc.run(argv, extra_env=path_env, hint=f"check site {name!r} ({cloud.url}) and the server log")
    except PgvaultError:
        # barman-cloud leaves a FAILED backup.info behind; nothing that looks like a backup stays.
        try:
            for bid in _cloud_ids(ctx, name) - before:
                cloud_delete(ctx, name, bid)
        except PgvaultError as exc:
            log.warning("site %s: could not remove the failed Barman backup: %s", name, exc.message)
        raise
    new = _cloud_ids(ctx, name) - before
    if len(new) != 1:
        raise PgvaultError(f"site {name!r}: could not find the backup barman-cloud-backup just took ({sorted(new)})")
    bid = new.pop()
    out = proc.output(bt.cloud_show_argv(url, server, bid, cloud), extra_env=env)
    info = next(iter(json.loads(out).values()))
    if info.get("status") != "DONE":
        raise PgvaultError(f"site {name!r}: Barman backup {bid} ended with status {info.get('status')}: {info.get('error')}")
    return {"route": "barman-cloud", "url": url, "server": server, "backup_id": bid,
            "begin_lsn": info["begin_xlog"], "end_lsn": info["end_xlog"],
            "begin_wal": info["begin_wal"], "end_wal": info["end_wal"],
            "begin_time": info["begin_time_iso"], "end_time": info["end_time_iso"],
            "timeline": int(info["timeline"]), "systemid": str(info.get("systemid")),
            "backup_label": info.get("backup_label")}


def cloud_delete(ctx: BackupContext, name: str, bid: str) -> None:
    url, cloud, env = _cloud(ctx, name)
    proc.run(bt.cloud_delete_argv(url, ctx.policy.cluster.name, bid, cloud),
             extra_env=env, check=False)


# -- local sites: a generated Barman server


def server_paths(site_root: str, cluster: str) -> tuple[Path, Path]:
    """(Barman home, configuration file) of a local site."""
    root = Path(site_root)
    return root / layout.barman_home(cluster), root / layout.barman_config(cluster)


def write_server_config(ctx: BackupContext, name: str) -> tuple[Path, Path]:
    home, conf = server_paths(str(_caps(ctx, name).local_root), ctx.policy.cluster.name)
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    bin_dir = ctx.tool("pg_basebackup").rsplit("/", 1)[0]
    text = bt.server_config(str(home), ctx.policy.cluster.name, ctx.conninfo(), bin_dir, getpass.getuser())
    fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    return home, conf


def _has_wal(home: Path, server: str) -> bool:
    wals = home / server / "wals"
    return wals.is_dir() and any(p.is_dir() and any(p.iterdir()) for p in wals.iterdir())


def _private(path: Path) -> None:
    """Barman writes with the process umask; a backup must be 0600 files / 0700 dirs."""
    for root, dirs, files in os.walk(path):
        for d in dirs:
            os.chmod(os.path.join(root, d), 0o700)
        for f in files:
            p = os.path.join(root, f)
            if not os.path.islink(p):
                os.chmod(p, 0o600)
    os.chmod(path, 0o700)


def server_backup(ctx: BackupContext, name: str) -> dict:
    server = ctx.policy.cluster.name
    home, conf = write_server_config(ctx, name)
    # Barman's own errors say "run 'barman check <server>'", which finds no server without this
    # generated config: every failed step's hint gives the command that works.
    fix = f"see {home}/barman.log, or run: barman -c {conf} check {server}"
    run = lambda *a, hint=fix, **kw: proc.run(bt.server_argv(str(conf), *a), hint=hint, **kw)  # noqa: E731
    base = home / server / "base"
    before = set(os.listdir(base)) if base.is_dir() else set()
    run("receive-wal", "--create-slot", server, check=False)   # exists already after a crash: fine
    try:
        run("cron")                                              # starts receive-wal in the background
        if not _has_wal(home, server):
            # First backup at this site: Barman's check wants one archived segment of its own.
            # The background receiver may connect after a switch; switch again until one lands.
            deadline = time.monotonic() + FIRST_WAL_TIMEOUT
            tick = 0
            while not _has_wal(home, server):
                if time.monotonic() > deadline:
                    raise PgvaultError(f"site {name!r}: Barman received no WAL within {FIRST_WAL_TIMEOUT}s",
                                       f"see {home}/barman.log; the server needs max_wal_senders >= 2")
                if tick % 8 == 0:
                    run("switch-wal", "--force", server, check=False)
                tick += 1
                time.sleep(0.25)
                run("cron")
        # `barman backup` refuses to start while its checks fail, e.g. while the background
        # receive-wal that `cron` just launched has not connected yet (seen on a second backup
        # under load). Wait for `barman check` to pass, then back up (its error says why if not).
        deadline = time.monotonic() + CHECK_TIMEOUT
        while run("check", server, check=False).returncode != 0 and time.monotonic() < deadline:
            time.sleep(0.5)
            run("cron")
        run("backup", "--wait", "--wait-timeout", "300", server)
    finally:
        run("receive-wal", "--stop", server, check=False)
        run("receive-wal", "--drop-slot", server, check=False)
        if home.exists():
            _private(home)
    new = sorted(set(os.listdir(base)) - before)
    if len(new) != 1:
        raise PgvaultError(f"site {name!r}: could not find the backup Barman just took ({new})")
    bid = new[0]
    # Barman 3.13+ keeps backup.info in <server>/meta/; older versions in the backup directory.
    info_file = next((p for p in (home / server / "meta" / f"{bid}-backup.info", base / bid / "backup.info") if p.exists()),
                     None)
    if info_file is None:
        raise PgvaultError(f"site {name!r}: Barman backup {bid} has no backup.info", f"see {home}/barman.log")
    info = bt.parse_backup_info(info_file.read_text())
    if info.get("status") != "DONE":
        raise PgvaultError(f"site {name!r}: Barman backup {bid} ended with status {info.get('status')}")
    return {"route": "barman-server", "config": layout.barman_config(server), "server": server, "backup_id": bid,
            "begin_lsn": info["begin_xlog"], "end_lsn": info["end_xlog"],
            "begin_wal": info["begin_wal"], "end_wal": info["end_wal"],
            "begin_time": _iso(info["begin_time"]), "end_time": _iso(info["end_time"]),
            "timeline": int(info["timeline"]), "systemid": info.get("systemid"),
            "backup_label": info.get("backup_label")}


def _iso(text: str) -> str:
    """Barman's time text as ISO 8601.

    >>> _iso("2026-11-25 22:19:39.305838+00:00")
    '2026-11-25T22:19:39.305838+00:00'
    """
    return datetime.fromisoformat(text).isoformat()


def server_delete(ctx: BackupContext, name: str, bid: str) -> None:
    _, conf = server_paths(_site_cfg(ctx, name).path, ctx.policy.cluster.name)
    proc.run(bt.server_argv(str(conf), "delete", ctx.policy.cluster.name, bid), check=False)


# -- the method


def summarize(per_site: dict[str, dict]) -> dict:
    """Manifest-level facts: the widest range over every site's Barman backup.

    >>> s = summarize({"a": {"begin_lsn": "0/3000028", "end_lsn": "0/4000000", "begin_wal": "000000010000000000000003",
    ...   "end_wal": "000000010000000000000003", "begin_time": "2026-11-25T22:19:39+00:00",
    ...   "end_time": "2026-11-25T22:19:40+00:00", "timeline": 1},
    ...   "b": {"begin_lsn": "0/5000028", "end_lsn": "0/5000100", "begin_wal": "000000010000000000000005",
    ...   "end_wal": "000000010000000000000005", "begin_time": "2026-11-25T22:19:45+00:00",
    ...   "end_time": "2026-11-25T22:19:46+00:00", "timeline": 1}})
    >>> s["start_lsn"], s["stop_lsn"], s["start_wal"], s["stop_wal"]
    ('0/3000028', '0/5000100', '000000010000000000000003', '000000010000000000000005')
    """
    first = min(per_site.values(), key=lambda f: parse_lsn(f["begin_lsn"]))
    last = max(per_site.values(), key=lambda f: parse_lsn(f["end_lsn"]))
    return {"timeline": first["timeline"], "start_lsn": first["begin_lsn"], "stop_lsn": last["end_lsn"],
            "start_wal": first["begin_wal"], "stop_wal": last["end_wal"],
            "start_time": first["begin_time"], "stop_time": last["end_time"]}


def backup(ctx: BackupContext, session) -> BackupFacts:
    from io import BytesIO

    # Any transaction id below this had finished before the backup began: a --to-xid target
    # older than it cannot be reached from this base (used by the planner).
    start_xmin = int(pg.scalar(ctx.conn, "SELECT pg_snapshot_xmin(pg_current_snapshot())::text"))
    per_site: dict[str, dict] = {}
    try:
        for name in list(session.catalogs):
            way = route(session.catalogs[name].site.capabilities)
            log.info("barman base backup to site %s (%s)", name, way)
            try:
                if way is None:
                    raise PgvaultError(f"site {name!r} can hold no Barman backup (see pgvault check)")
                per_site[name] = cloud_backup(ctx, name, session.backup_id) if way == "barman-cloud" else server_backup(ctx, name)
            except PgvaultError as exc:
                if len(session.catalogs) == 1:
                    raise
                # One failed site must not fail the others: it is dropped from this backup.
                session._drop(name, SiteError(f"barman backup failed: {exc.message}"))
        if not per_site:
            raise PgvaultError("the Barman base backup failed at every site")
        doc = {"sites": per_site, "start_xmin": start_xmin}
        session.add_stream(INFO_ARTIFACT, BytesIO(json.dumps(doc, indent=2).encode()), compression="none",
                           kind="barman backup facts per site")
    except BaseException:
        for name, f in per_site.items():
            (cloud_delete if f["route"] == "barman-cloud" else server_delete)(ctx, name, f["backup_id"])
        raise
    version = proc.output([bt.tool("barman-cloud-backup" if any(f["route"] == "barman-cloud" for f in per_site.values())
                                   else "barman"), "--version"]).strip()
    # facts: barman (site -> that site's Barman backup: route, backup_id, begin/end LSN, WAL,
    # time, timeline), start_xmin (see above).
    return BackupFacts(
        **summarize(per_site), facts={"barman": per_site, "start_xmin": start_xmin},
        tool_versions={"barman": version.split()[-1] if version else "?"},
        restore=("S3 site: barman-cloud-restore [--endpoint-url URL] s3://<bucket>/<prefix>/clusters <cluster> "
                 "<barman id> DEST; local site: barman -c <site>/clusters/<cluster>/barman/barman.conf recover "
                 "<cluster> <barman id> DEST; then restore_command = 'pgvault wal-fetch %f %p' "
                 "(or barman-cloud-wal-restore URL <cluster> %f %p) and recovery.signal"))


def expire(manifest, site) -> None:
    """Delete Barman's own copy of an expired base backup at ``site`` (called by expiry after
    pgvault's manifest and artifacts are gone).

    Local sites: `barman delete` on the generated server (its WAL is its own). S3 sites: the
    backup's prefix in Barman's cloud layout is removed directly, not with
    barman-cloud-backup-delete, because that tool also deletes the archive's WAL older than the
    next Barman backup — WAL that a snapshot base or a pinned backup (which Barman does not
    know about) may still need. pgvault's own WAL expiry decides that (docs/retention.md)."""
    facts = (manifest.facts.get("barman") or {}).get(site.name)
    if not facts:
        return
    if facts.get("route") == "barman-server":
        conf = site.capabilities.local_root / facts["config"]
        proc.run(bt.server_argv(str(conf), "delete", facts["server"], facts["backup_id"]))
        return
    prefix = f"{layout.barman_base_prefix(manifest.cluster)}{facts['backup_id']}/"
    for obj in list(site.list(prefix)):
        site.delete(obj.key)


METHOD = Method(
    name="barman", job_model="BarmanJob",
    tools=("barman-cloud-backup", "barman-cloud-restore", "barman-cloud-wal-restore", "pg_basebackup"),
    check=check, backup=backup, expire=expire, restore_route="pitr", drill_route="pitr",
    pitr_base=True, per_site_bases=True,
    description="a Barman base backup per site (barman-cloud for S3 sites, a generated Barman server for local ones)")
