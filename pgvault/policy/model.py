"""Policy models: frozen, unknown keys rejected, a description on every field.

Site options live with their drivers (pgvault.sites.*); job options per method are here so one
discriminated union can validate them all at once."""
from __future__ import annotations

from datetime import timedelta
from typing import Annotated, ClassVar, Literal, Union, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..sites.local import LocalSiteConfig
from ..sites.s3 import S3SiteConfig
from .durations import parse_duration

NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


Duration = Annotated[timedelta, Field(description="a duration such as 90s, 5m, 1h, 7d")]


def _duration(v):
    if isinstance(v, timedelta):
        return v
    return parse_duration(v)


class Patroni(Strict):
    url: str = Field(pattern=r"^https?://[^\s]+$",
                     description="this host's Patroni REST API (e.g. http://127.0.0.1:8008): GET /patroni names this node, "
                                 "/cluster lists the members and their roles; pgvault never decides the leader itself")
    timeout: timedelta = Field(timedelta(seconds=5), description="give up on the Patroni REST API after this long")

    _d = field_validator("timeout", mode="before")(classmethod(lambda cls, v: _duration(v)))


class Cluster(Strict):
    name: str = Field(pattern=NAME, description="the cluster's name at every site (bound to its system identifier)")
    conninfo: str = Field(description="libpq connection string to the cluster (no password: use ~/.pgpass or PGPASSWORD)")
    pgdata: str | None = Field(None, description="the data directory (needed by snapshot methods and checks)")
    bin_dir: str | None = Field(None, description="PostgreSQL bin directory; default /usr/lib/postgresql/<major>/bin")
    patroni: Patroni | None = Field(None, description="the cluster is run by Patroni: which node runs each job is decided "
                                    "from Patroni's view (see docs/ha.md)")

    @field_validator("conninfo")
    @classmethod
    def _no_password(cls, v: str) -> str:
        import re

        if re.search(r"password\s*=", v) or re.search(r"postgres(?:ql)?://[^:/@]+:[^@]+@", v):
            raise ValueError("a password must not be written in the policy; use ~/.pgpass or PGPASSWORD")
        return v


class Retain(Strict):
    count: int | None = Field(None, ge=0, description="keep the newest N backups")
    hourly: int | None = Field(None, ge=0, description="keep the newest backup of each of the last N hours")
    daily: int | None = Field(None, ge=0, description="keep the newest backup of each of the last N days")
    weekly: int | None = Field(None, ge=0, description="keep the newest backup of each of the last N ISO weeks")
    monthly: int | None = Field(None, ge=0, description="keep the newest backup of each of the last N months")
    yearly: int | None = Field(None, ge=0, description="keep the newest backup of each of the last N years")
    max_age: timedelta | None = Field(None, description="expire backups older than this (never the newest verified)")
    min_keep: int = Field(1, ge=1, description="never keep fewer verified backups than this at a site")

    _d = field_validator("max_age", mode="before")(classmethod(lambda cls, v: None if v is None else _duration(v)))


def cron(v: str) -> str:
    """``v`` if it is a valid 5-field cron expression; ValueError otherwise (used by drills too)."""
    from croniter import croniter

    if not isinstance(v, str) or not croniter.is_valid(v):
        raise ValueError(f"invalid cron expression {v!r}")
    if len(v.split()) not in (5, 6):
        raise ValueError(f"invalid cron expression {v!r}: expected 5 fields")
    return v


class JobBase(Strict):
    sites_required: ClassVar[bool] = False  # the policy refuses a job of this method with no sites

    schedule: str | None = Field(None, description="cron expression (UTC unless schedule_tz is set); none = manual only")
    schedule_tz: str = Field("UTC", description="time zone the schedule is read in (IANA name)")
    sites: list[str] = Field(default_factory=list, description="names of the sites that receive this job's backups")
    retain: Retain = Field(default_factory=Retain, description="retention at every site of the job")
    retain_at: dict[str, Retain] = Field(default_factory=dict, description="per-site retention overriding `retain`")
    timeout: timedelta | None = Field(None, description="abort the job when it runs longer than this")
    from_: Literal["primary", "standby", "prefer-standby"] = Field(
        "primary", alias="from", description="which node of an HA cluster the job runs on and connects to: the primary, a "
                                             "standby (fails when none is up), or a standby when one is up else the primary")

    _c = field_validator("schedule")(classmethod(lambda cls, v: None if v is None else cron(v)))
    _t = field_validator("timeout", mode="before")(classmethod(lambda cls, v: None if v is None else _duration(v)))

    @field_validator("schedule_tz")
    @classmethod
    def _tz(cls, v: str) -> str:
        from zoneinfo import ZoneInfo

        try:
            ZoneInfo(v)
        except Exception:
            raise ValueError(f"unknown time zone {v!r}") from None
        return v


class LogicalJob(JobBase):
    sites_required: ClassVar[bool] = True   # its backups exist only at sites (snapshots live locally too)
    method: Literal["logical"]
    databases: list[str] | None = Field(None, description="databases to dump; default every connectable non-template database")
    exclude_databases: list[str] = Field(default_factory=list, description="databases never dumped")
    globals: bool = Field(True, description="also dump roles and tablespaces with pg_dumpall --globals-only")
    compression_level: int = Field(1, ge=1, le=19, description="zstd level for the dump stream")
    compression_threads: int = Field(2, ge=1, le=64, description="zstd worker threads")
    lock_wait_timeout: timedelta | None = Field(None, description="fail instead of waiting longer than this for a table lock")
    row_counts: bool = Field(True, description="record exact row counts in the dump's snapshot (for drills)")

    _l = field_validator("lock_wait_timeout", mode="before")(classmethod(lambda cls, v: None if v is None else _duration(v)))


class BarmanJob(JobBase):
    sites_required: ClassVar[bool] = True
    method: Literal["barman"]
    compression: Literal["none", "gzip", "bzip2", "snappy", "lz4", "zstd"] = Field(
        "lz4", description="barman-cloud-backup compression (S3 sites)")
    immediate_checkpoint: bool = Field(True, description="start the backup with an immediate checkpoint")


class ZfsJob(JobBase):
    method: Literal["zfs"]
    datasets: list[str] = Field(min_length=1, description="datasets holding PGDATA, pg_wal and tablespaces")
    keep_local: Retain = Field(default_factory=lambda: Retain(count=8), description="retention of the local snapshots")


class BtrfsJob(JobBase):
    method: Literal["btrfs"]
    subvolumes: list[str] = Field(min_length=1, description="subvolumes holding PGDATA, pg_wal and tablespaces")
    snapshot_dir: str | None = Field(None, description="where read-only snapshots go; default <subvolume>/../.pgvault-snapshots")
    keep_local: Retain = Field(default_factory=lambda: Retain(count=8), description="retention of the local snapshots")


# The job models, one per backup method. pgvault.methods.METHODS is the registry of methods;
# this union is checked against it (tests/unit/test_methods_registry.py): policy sits below
# methods and does not import them (wal-push loads policies and no method).
JOB_MODELS = (LogicalJob, BarmanJob, ZfsJob, BtrfsJob)
Job = Annotated[Union[JOB_MODELS], Field(discriminator="method")]
# The method tags of the union (derived, not a second list).
METHODS = tuple(get_args(m.model_fields["method"].annotation)[0] for m in JOB_MODELS)
METHODS_NEEDING_SITES = tuple(n for n, m in zip(METHODS, JOB_MODELS) if m.sites_required)

Site = Annotated[Union[LocalSiteConfig, S3SiteConfig], Field(discriminator="type")]


class Wal(Strict):
    sites: list[str] = Field(default_factory=list, description="sites that receive every WAL segment")
    spool_dir: str | None = Field(None, description="local spool where wal-push makes a segment durable before shipping")
    compression: Literal["none", "gzip", "bzip2", "zstd"] = Field("gzip", description="WAL compression at the sites (Barman cloud layout)")
    sync_sites: Union[int, Literal["all"]] = Field("all", description="sites wal-push writes a file to before it reports it archived: "
                                             "'all', or N = the first N of wal.sites that are up; the others are owed it through the "
                                             "spool and a background shipper (`wal-ship --follow`) delivers it within seconds")
    batch: int = Field(64, ge=1, le=256, description="files one wal-push ships at most: the one asked for plus others already waiting in pg_wal/archive_status (1 = one at a time: only the file asked for, as when archive_command chains another tool after wal-push)")
    keep_going: timedelta = Field(timedelta(seconds=10), description="after its first batch, one wal-push ships further batches of files already "
                                  "marked .ready until none is left or this much time has passed (0 = one batch): a backlog drains "
                                  "without a process start per batch")
    retry_interval: timedelta = Field(timedelta(seconds=30), description="how long wal-push spools for a failed site before trying it again")
    slow_site_grace: timedelta = Field(timedelta(seconds=10), description="once one site has a wal-push batch, how long the others get before the rest is spooled for them")
    prefetch: int = Field(8, ge=0, le=64, description="segments wal-fetch downloads ahead, in parallel, during recovery (0 = none)")

    _r = field_validator("retry_interval", "slow_site_grace", "keep_going", mode="before")(classmethod(lambda cls, v: _duration(v)))

    @field_validator("sync_sites", mode="before")
    @classmethod
    def _sync_sites(cls, v):
        if v == "all" or (isinstance(v, int) and not isinstance(v, bool) and v >= 1):
            return v
        raise ValueError("must be 'all' or a number of sites (1 or more)")


class Objectives(Strict):
    rpo: timedelta | None = Field(None, description="recovery point objective")
    rto: timedelta | None = Field(None, description="recovery time objective")
    window: timedelta | None = Field(None, description="recoverability window: restorable to any instant of the last "
                                     "this long, at every WAL site (status is CRITICAL when a site's unbroken window is shorter)")

    _d = field_validator("rpo", "rto", "window", mode="before")(classmethod(lambda cls, v: None if v is None else _duration(v)))


class JobThresholds(Strict):
    warn_age: timedelta | None = Field(None, description="WARNING when the job's newest backup at a site is older than this (overrides the schedule)")
    crit_age: timedelta | None = Field(None, description="CRITICAL when the job's newest backup at a site is older than this (overrides the schedule)")

    _d = field_validator("warn_age", "crit_age", mode="before")(classmethod(lambda cls, v: None if v is None else _duration(v)))


class Monitoring(Strict):
    grace: timedelta | None = Field(None, description="how long a scheduled run may take before it counts as missed; "
                                                      "default: half the schedule's interval, at most 1h")
    missed_warn: int = Field(1, ge=1, description="WARNING after this many missed scheduled runs")
    missed_crit: int = Field(2, ge=1, description="CRITICAL after this many missed scheduled runs")
    jobs: dict[str, JobThresholds] = Field(default_factory=dict, description="absolute age thresholds per job")
    wal_warn_lag: timedelta | None = Field(None, description="WARNING when a site's WAL lags more than this; default half objectives.rpo (15m without one)")
    wal_crit_lag: timedelta | None = Field(None, description="CRITICAL when a site's WAL lags more than this; default objectives.rpo (1h without one)")
    wal_warn_segments: int | None = Field(None, ge=1, description="WARNING when a site lacks this many segments of WAL")
    wal_crit_segments: int | None = Field(None, ge=1, description="CRITICAL when a site lacks this many segments of WAL")
    drill_max_age: timedelta = Field(timedelta(days=8), description="WARNING when a drill's newest evidence is older than this")
    site_timeout: timedelta = Field(timedelta(seconds=10), description="read-only commands (check, status, wal-status, list) give up on a site that has not answered after this (all sites read at once; S3 requests capped to it, one retry)")

    _d = field_validator("grace", "wal_warn_lag", "wal_crit_lag", "drill_max_age", "site_timeout", mode="before")(
        classmethod(lambda cls, v: None if v is None else _duration(v)))


NOTIFY_EVENTS = ("job_failed", "drill_failed", "objective_broken", "objective_restored")
_SECRET_HEADER = ("authorization", "token", "secret", "key", "password", "cookie", "signature")


class Webhook(Strict):
    url: str = Field(description="URL to POST the JSON payload to; ${VAR} is replaced from the environment")
    headers: dict[str, str] = Field(default_factory=dict, description="extra headers; credentials as ${VAR} from the environment")
    timeout: timedelta = Field(timedelta(seconds=10), description="give up on the webhook after this long")

    _d = field_validator("timeout", mode="before")(classmethod(lambda cls, v: _duration(v)))

    @field_validator("headers")
    @classmethod
    def _no_literal_secrets(cls, v: dict[str, str]) -> dict[str, str]:
        for name, value in v.items():
            if any(s in name.lower() for s in _SECRET_HEADER) and "${" not in value:
                raise ValueError(f"header {name!r} must take its value from the environment, e.g. "
                                 f"'Bearer ${{PGVAULT_WEBHOOK_TOKEN}}': credentials never go in a policy")
        return v


class Notify(Strict):
    events: list[Literal["job_failed", "drill_failed", "objective_broken", "objective_restored"]] = Field(
        default_factory=lambda: list(NOTIFY_EVENTS), description="which events are sent")
    command: list[str] | None = Field(None, min_length=1, description="argv of a program run with the JSON payload on stdin")
    command_timeout: timedelta = Field(timedelta(seconds=30), description="kill the notify command after this long")
    webhook: Webhook | None = Field(None, description="POST the JSON payload to this URL")

    _d = field_validator("command_timeout", mode="before")(classmethod(lambda cls, v: _duration(v)))


class Policy(Strict):
    version: Literal[1] = Field(description="policy format version")
    cluster: Cluster = Field(description="the PostgreSQL cluster this policy protects")
    sites: dict[str, Site] = Field(min_length=1, description="where backups are kept, by name")
    wal: Wal = Field(default_factory=Wal, description="continuous WAL archiving")
    jobs: dict[str, Job] = Field(default_factory=dict, description="backup jobs, by name")
    objectives: Objectives = Field(default_factory=Objectives, description="RPO/RTO the policy promises")
    drills: list[str] = Field(default_factory=list, description="glob patterns of drill files, relative to the policy")
    state_dir: str | None = Field(None, description="local cache and lock directory; default /var/lib/pgvault/<cluster>")
    monitoring: Monitoring = Field(default_factory=Monitoring, description="thresholds of pgvault status/check")
    notify: Notify = Field(default_factory=Notify, description="where failures and broken objectives are reported")

    def site_names(self) -> list[str]:
        return list(self.sites)


def get_job(policy, job_name: str):
    try:
        return policy.jobs[job_name]
    except KeyError:
        from ..errors import UsageError

        raise UsageError(f"no job {job_name!r} in the policy",
                         f"jobs defined: {', '.join(policy.jobs) or 'none'}") from None
