"""S3 Object Lock on moto_server, for real: objects are written locked (read back with
head_object), S3 itself refuses to delete a locked version, `check` refuses a bucket without
Object Lock, expiry plans around locks (`locked until ...`), never tries a locked object, and
deletes it on a later run once the lock has passed."""
from __future__ import annotations

import json
import re
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from pgvault import sandbox

from ..conftest import bucket_name
from .test_logical import load_data

RETAIN_S = 10  # long enough for the steps that need the lock, short enough to outlive in a test


def _keys(c, bucket: str, backup_id: str) -> list[dict]:
    resp = c.list_object_versions(Bucket=bucket, Prefix="pg/clusters/main/backups/" + backup_id)
    return resp.get("Versions", []) + resp.get("DeleteMarkers", [])


def test_object_lock_written_enforced_checked_and_planned_around(s3world):
    w = s3world
    load_data(w.pg, rows=200)
    c = w.moto.client()
    plain, vault = bucket_name(), bucket_name()
    c.create_bucket(Bucket=plain)
    c.create_bucket(Bucket=vault, ObjectLockEnabledForBucket=True)
    common = {"type": "s3", "region": "us-east-1", "prefix": "pg", "endpoint_url": w.moto.url}
    w.sites["plain"] = {**common, "bucket": plain, "object_lock": {"mode": "governance", "retain": "30d"}}
    w.sites["vault"] = {**common, "bucket": vault, "object_lock": {"mode": "compliance", "retain": f"{RETAIN_S}s"}}
    w.jobs["dumps"] = {"method": "logical", "sites": ["vault"], "retain": {"count": 1}}
    w.policy()

    cp = w.cli("check", check=False)
    assert cp.returncode == 2, cp.stdout
    assert re.search(r"CRITICAL +site plain: .*no Object Lock enabled", cp.stdout), cp.stdout
    assert re.search(r"OK +object lock vault: bucket has Object Lock enabled", cp.stdout), cp.stdout
    assert "Traceback" not in cp.stderr

    b1 = w.cli("backup", "dumps").stdout.split()[0]
    b2 = w.cli("backup", "dumps").stdout.split()[0]
    manifest = f"pg/clusters/main/backups/{b1}/manifest.json"
    head = c.head_object(Bucket=vault, Key=manifest)
    until = head["ObjectLockRetainUntilDate"]
    assert head["ObjectLockMode"] == "COMPLIANCE"
    assert timedelta(0) < until - datetime.now(timezone.utc) <= timedelta(seconds=RETAIN_S)
    # every artifact (a dump is one PUT; the big ones are multipart: locked after completion too)
    for v in _keys(c, vault, b1):
        assert c.head_object(Bucket=vault, Key=v["Key"])["ObjectLockMode"] == "COMPLIANCE", v["Key"]

    # S3 refuses to delete a locked version, with or without a governance bypass
    for bypass in (False, True):
        with pytest.raises(ClientError) as exc:
            c.delete_object(Bucket=vault, Key=manifest, VersionId=head["VersionId"], BypassGovernanceRetention=bypass)
        assert exc.value.response["Error"]["Code"] == "AccessDenied"

    # expiry: b1 is expired by retention (count 1) but locked; planned around, not attempted
    dry = w.cli("expire", "--dry-run", "--site", "vault")
    line = next(ln for ln in dry.stdout.splitlines() if b1 in ln)
    assert "KEEP" in line and "locked until " + until.strftime("%Y-%m-%dT%H:%M:%SZ") in line, dry.stdout
    run = w.cli("expire", "--site", "vault", "--json")
    (doc,) = json.loads(run.stdout)
    assert doc["errors"] == [] and {b["backup_id"] for b in doc["backups"]} == {b1, b2}
    assert _keys(c, vault, b1)

    # with the injectable clock past the lock, the plan expires it (the reason is printed)
    later = (until + timedelta(seconds=1)).isoformat()
    dry = w.cli("expire", "--dry-run", "--site", "vault", env={"PGVAULT_NOW": later})
    assert "EXPIRE" in next(ln for ln in dry.stdout.splitlines() if b1 in ln), dry.stdout

    # a later run, once the lock has passed for S3 too (it keeps real time), deletes every version
    sandbox.wait_until(lambda: datetime.now(timezone.utc) > until + timedelta(seconds=1), RETAIN_S + 30,
                       "the lock of the first backup to pass")
    (doc,) = json.loads(w.cli("expire", "--site", "vault", "--json").stdout)
    assert doc["errors"] == [], doc
    assert _keys(c, vault, b1) == []
    assert [d["backup_id"] for d in json.loads(w.cli("list", "--site", "vault", "--json").stdout)] == [b2]


def test_pgvault_has_no_call_that_could_shorten_or_bypass_a_lock():
    """A pgvault run with stolen credentials cannot shorten a compliance lock (S3 refuses it;
    moto does not enforce that, so this pins down that pgvault never tries): the only
    retention call re-applies the site's full retain period to a just-completed upload, and
    nothing asks to bypass governance mode."""
    src = Path(__file__).resolve().parents[2] / "pgvault"
    calls = [(f.name, ln.strip()) for f in src.rglob("*.py") for ln in f.read_text().splitlines()
             if "put_object_retention" in ln or "BypassGovernance" in ln or "put_object_lock_configuration" in ln]
    assert [n for n, _ in calls] == ["s3.py"], calls
    text = (src / "sites" / "s3.py").read_text()
    assert "BypassGovernanceRetention" not in text and "put_object_lock_configuration" not in text
