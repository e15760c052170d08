"""Drill definitions (``restore_drills/*.yaml``): strict, frozen models; unknown keys rejected.

A drill says where to restore from (a job or a method, at one site or ``each`` site), what to
restore (``latest``, ``random``, a time offset such as ``-1h`` for PITR, or ``canary``), which
checks must hold on the restored instance, and how long the whole thing may take (RTO budget).
Loading and cross-checking against the policy is in pgvault.drills.load."""
from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, field_validator, model_validator

from ..policy.durations import parse_duration
from ..methods import all_methods, method_names
from ..policy.model import NAME, cron

EACH = "each"


def pitr_methods() -> tuple[str, ...]:
    """Methods whose backups can be rolled forward with archived WAL to a chosen time (the
    registry's ``pitr_base``; snapshots are PITR bases too: pgvault.restore.snapshot_base)."""
    return tuple(m.name for m in all_methods() if m.pitr_base)


_OFFSET = re.compile(r"^-\s*\S+$")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def parse_target(text: str) -> tuple[str, timedelta | None]:
    """Split a drill target into its kind and, for an offset, how far back.

    >>> parse_target("latest")
    ('latest', None)
    >>> parse_target("-1h")
    ('offset', datetime.timedelta(seconds=3600))
    >>> parse_target("yesterday")
    Traceback (most recent call last):
    ...
    ValueError: unknown target 'yesterday': use latest, random, canary or a time offset such as -1h
    """
    t = str(text).strip()
    if t in ("latest", "random", "canary"):
        return t, None
    if _OFFSET.match(t):
        return "offset", parse_duration(t[1:])
    raise ValueError(f"unknown target {text!r}: use latest, random, canary or a time offset such as -1h")


class Source(Strict):
    job: str | None = Field(None, description="the job whose backups are drilled (its method and sites)")
    method: Literal[method_names()] | None = Field(  # type: ignore[valid-type]  (the registry's names)
        None, description="drill backups of this method (any job) when no job is named")
    site: str = Field(EACH, description=f"the site to restore from, or '{EACH}' for one drill per site")

    @model_validator(mode="after")
    def _one_of(self):
        if self.job is None and self.method is None:
            raise ValueError("name a job or a method to restore from")
        return self


class SqlCheck(Strict):
    sql: str = Field(description="a query run on the restored instance")
    database: str = Field("postgres", description="the database it runs in")
    expect: Any = Field(None, description="the single value it must return (default true)")
    expect_rows: list[list[Any]] | None = Field(None, description="the exact rows it must return, in order")
    name: str | None = Field(None, description="a label for reports")

    @model_validator(mode="after")
    def _one_expectation(self):
        if self.expect is not None and self.expect_rows is not None:
            raise ValueError("give expect or expect_rows, not both")
        return self


class AmcheckCheck(Strict):
    amcheck: Literal[True] = Field(description="run amcheck's bt_index_check on every B-tree index")
    databases: list[str] | None = Field(None, description="only these databases (default: all)")
    heapallindexed: bool = Field(False, description="also check that every heap tuple is indexed (slower)")


class ReadAllCheck(Strict):
    read_all: Literal[True] = Field(description="read every table (pg_dump to /dev/null) so every heap block is read")
    databases: list[str] | None = Field(None, description="only these databases (default: all)")


class RowCountsCheck(Strict):
    row_counts: Literal[True] = Field(description="compare row counts with those recorded at backup time")


CHECK_KINDS = ("sql", "amcheck", "read_all", "row_counts")


def _check_kind(v) -> str | None:
    if isinstance(v, dict):
        present = [k for k in CHECK_KINDS if k in v]
        return present[0] if len(present) == 1 else None
    for k in CHECK_KINDS:
        if hasattr(v, k):
            return k
    return None


Check = Annotated[
    Union[Annotated[SqlCheck, Tag("sql")], Annotated[AmcheckCheck, Tag("amcheck")],
          Annotated[ReadAllCheck, Tag("read_all")], Annotated[RowCountsCheck, Tag("row_counts")]],
    Discriminator(_check_kind, custom_error_type="check_kind",
                  custom_error_message="each check needs exactly one of: sql, amcheck, read_all, row_counts"),
]


def default_checks() -> list:
    return [AmcheckCheck(amcheck=True), ReadAllCheck(read_all=True), RowCountsCheck(row_counts=True)]


class Drill(Strict):
    name: str = Field(pattern=NAME, description="the drill's name (default: the file name without .yaml)")
    description: str = Field("", description="what this drill proves, for reports")
    source: Source = Field(description="where the backup to restore comes from")
    target: str = Field("latest", description="latest | random | canary | -<duration> (PITR: that long ago)")
    checks: list[Check] = Field(default_factory=default_checks,
                                description="checks on the restored instance (default: amcheck, read_all, row_counts)")
    rto: timedelta | None = Field(None, description="RTO budget: restore + checks must finish within it "
                                                    "(default: the policy's objectives.rto)")
    schedule: str | None = Field(None, description="cron expression (UTC) for `pgvault tick`; none = on demand only")
    canary_rows: int = Field(1000, ge=1, le=1_000_000, description="rows the canary target plants and expects back")
    canary_database: str | None = Field(None, description="database for the canary schema (default: the policy conninfo's)")
    receive_into: str | None = Field(None, description="snapshot drills: the zfs parent dataset or btrfs directory that "
                                                      "receives the scratch copy (default: next to the job's first volume)")

    @field_validator("target")
    @classmethod
    def _target(cls, v: str) -> str:
        parse_target(v)
        return v.strip()

    @field_validator("rto", mode="before")
    @classmethod
    def _rto(cls, v):
        return None if v is None or isinstance(v, timedelta) else parse_duration(v)

    @field_validator("schedule")
    @classmethod
    def _schedule(cls, v):
        return None if v is None else cron(v)

    @property
    def target_kind(self) -> str:
        return parse_target(self.target)[0]

    @property
    def target_offset(self) -> timedelta | None:
        return parse_target(self.target)[1]
