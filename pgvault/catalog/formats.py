"""Versioned JSON documents stored at sites. Readers refuse a format they do not know."""
from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ..errors import SiteError
from .layout import FORMAT_VERSION


class Doc(BaseModel):
    # Unknown keys are kept (extra="allow") so an older pgvault can read a newer minor revision.
    model_config = ConfigDict(extra="allow")

    def to_bytes(self) -> bytes:
        return (self.model_dump_json(indent=2, exclude_none=True) + "\n").encode()


class SiteMarker(Doc):
    format: str = "pgvault-site"
    version: int = FORMAT_VERSION
    site_id: str
    created_at: datetime


class ClusterBinding(Doc):
    version: int = FORMAT_VERSION
    name: str
    system_identifier: str
    pg_major: int
    wal_segment_size: int = 16 * 1024 * 1024
    created_at: datetime


class Artifact(Doc):
    name: str = Field(description="key relative to the backup directory")
    size: int = Field(description="bytes stored at the site")
    sha256: str = Field(description="sha256 of the stored bytes")
    raw_size: int | None = Field(None, description="bytes before compression")
    compression: str = Field("none", description="none | zstd | gzip | lz4 ...")
    kind: str = Field("data", description="what the artifact holds (database dump, globals, stream ...)")
    database: str | None = None
    key: str | None = Field(None, description="key relative to clusters/<cluster>/ when the artifact lives "
                                              "outside the backup directory (a base backup's tars in Barman's "
                                              "base/<barman id>/)")
    encryption: str | None = Field(None, description="age when the stored bytes are encrypted (after compression)")
    recipients: list[str] | None = Field(None, description="the age recipients (public keys) that open it; "
                                  "an identity whose `age-keygen -y` is one of them decrypts it")


class Manifest(Doc):
    version: int = FORMAT_VERSION
    backup_id: str
    cluster: str
    job: str
    method: str
    status: str = "complete"
    started_at: datetime
    finished_at: datetime
    system_identifier: str
    pg_version: str
    timeline: int | None = None
    start_lsn: str | None = None
    stop_lsn: str | None = None
    start_wal: str | None = None
    stop_wal: str | None = None
    start_time: datetime | None = None
    stop_time: datetime | None = None
    parent: str | None = Field(None, description="backup this one depends on (incremental chains)")
    options: dict[str, Any] = Field(default_factory=dict)
    tool_versions: dict[str, str] = Field(default_factory=dict)
    artifacts: list[Artifact] = Field(default_factory=list)
    facts: dict[str, Any] = Field(default_factory=dict, description="method-specific facts (barman id, snapshot names, row counts ...)")
    restore: str = Field("", description="how to restore this backup with stock tools")

    def artifact(self, name: str) -> Artifact:
        for a in self.artifacts:
            if a.name == name:
                return a
        raise KeyError(name)

    @property
    def total_size(self) -> int:
        return sum(a.size for a in self.artifacts)


def load_doc(model: type[Doc], data: bytes, what: str) -> Doc:
    try:
        raw = json.loads(data)
    except ValueError as exc:
        raise SiteError(f"{what} is not valid JSON: {exc}", "the object is damaged; run pgvault verify") from None
    ver = raw.get("version")
    if ver != FORMAT_VERSION:
        raise SiteError(f"{what} has format version {ver!r}; this pgvault reads version {FORMAT_VERSION}",
                        "upgrade pgvault to read this site")
    return model.model_validate(raw)
