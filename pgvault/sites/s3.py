"""A site in an S3 bucket (or an S3-compatible store via endpoint_url). Credentials come only
from boto3's standard chain (environment, profile, instance role) — never from the policy.

Atomicity: small objects are one PutObject; larger ones a multipart upload, which S3 makes
visible under the key only on CompleteMultipartUpload. An aborted writer aborts the upload,
so no partial object ever appears under the final key."""
from __future__ import annotations

import io
import os
import re
import threading
from datetime import timedelta
from concurrent.futures import ThreadPoolExecutor
from typing import BinaryIO, ClassVar, Iterator, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..crypt.config import Encryption

from ..errors import ObjectLocked, ObjectNotFound, SiteError, SiteUnreachable
from .base import PROBE_MARK, BarmanCloud, Capabilities, LockTerms, ObjectInfo, WriterMixin, path_parts

PART_SIZE = 16 * 1024 * 1024
MAX_PARTS_IN_FLIGHT = 3
CONFLICT_ATTEMPTS = 5


class ObjectLock(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    mode: Literal["governance", "compliance"] = Field(description="S3 Object Lock mode: governance (removable by a "
                                                      "principal allowed to bypass it) or compliance (nobody can shorten it)")
    retain: timedelta = Field(description="how long each object stays locked after it is written, e.g. 30d")

    @field_validator("retain", mode="before")
    @classmethod
    def _retain(cls, v):
        if isinstance(v, timedelta):
            return v
        m = re.fullmatch(r"\s*(\d+)\s*([smhdw]?)\s*", str(v))
        if not m:
            raise ValueError(f"not a duration: {v!r} (use e.g. 12h, 30d, 2w)")
        return timedelta(seconds=int(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[m.group(2)])


class S3SiteConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    type: Literal["s3"] = Field(description="an S3 bucket, or an S3-compatible store with endpoint_url")
    bucket: str = Field(min_length=3, max_length=63, description="bucket name")
    prefix: str = Field("", description="key prefix inside the bucket (no leading or trailing slash)")
    region: str | None = Field(None, description="the bucket's region, e.g. eu-west-1")
    endpoint_url: str | None = Field(None, description="endpoint of an S3-compatible store")
    storage_class: str | None = Field(None, description="S3 storage class for uploaded objects")
    connect_timeout: float = Field(5, gt=0, description="seconds to wait for a connection")
    read_timeout: float = Field(60, gt=0, description="seconds to wait for a response")
    max_attempts: int = Field(3, ge=1, le=20, description="attempts per request (boto3 standard retries)")
    encryption: Encryption | None = Field(None, description="encrypt what this site stores to these recipients "
                                          "(replaces the policy's top-level encryption for this site)")
    object_lock: ObjectLock | None = Field(None, description="write every object with an S3 Object Lock retention "
                                           "(the bucket must have Object Lock enabled)")

    def url(self) -> str:
        """s3://bucket/prefix as barman-cloud and humans write it."""
        return f"s3://{self.bucket}/{self.prefix}".rstrip("/")

    # The key a policy error about this site's place points at (the overlap check).
    location_field: ClassVar[str] = "prefix"

    def impatient(self, seconds: float) -> "S3SiteConfig":
        """This configuration, giving up within about ``seconds`` per request (monitoring)."""
        return self.model_copy(update={"connect_timeout": min(self.connect_timeout, seconds),
                                       "read_timeout": min(self.read_timeout, seconds),
                                       "max_attempts": min(self.max_attempts, 2)})

    def location_key(self) -> tuple:
        """(space, path parts) for the overlap check: the region does not tell buckets apart
        (bucket names are global per endpoint), the endpoint does."""
        return ("s3", self.endpoint_url, self.bucket), path_parts(self.prefix)


# boto3 builds clients from shared loaders that are not safe to use from several threads at
# once: every S3Site builds its client under this lock, so callers may share a site between
# threads without preparing it first.
_CLIENT_LOCK = threading.Lock()
# Clients are thread-safe once built, and building one costs ~0.1 s of CPU (service model,
# endpoint rules, event hooks): sites opened twice in one process with the same settings (a
# backup's sites and its relation record's) share one. A site that registers its own event
# handlers (on_response) gets a client of its own.
_SHARED: dict[tuple, object] = {}


def _client_key(cfg: S3SiteConfig) -> tuple:
    # the credential chain's inputs too: a client keeps the credentials it was built with
    creds = tuple(os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_PROFILE", "AWS_SHARED_CREDENTIALS_FILE"))
    return (cfg.region, cfg.endpoint_url, cfg.connect_timeout, cfg.read_timeout, cfg.max_attempts) + creds


def _shared_client(cfg: S3SiteConfig):
    with _CLIENT_LOCK:
        key = _client_key(cfg)
        if key not in _SHARED:
            _SHARED[key] = _client(cfg)
        return _SHARED[key]


def _client(cfg: S3SiteConfig):
    import boto3
    from botocore.config import Config

    session = boto3.session.Session()
    return session.client(
        "s3",
        region_name=cfg.region,
        endpoint_url=cfg.endpoint_url,
        config=Config(
            connect_timeout=cfg.connect_timeout,
            read_timeout=cfg.read_timeout,
            retries={"max_attempts": cfg.max_attempts, "mode": "standard"},
            max_pool_connections=16,
        ),
    )


class _Body(io.RawIOBase):
    """A streaming GetObject body as a file object (closes the HTTP stream on close)."""

    def __init__(self, body):
        self.body = body

    def readable(self):
        return True

    def readinto(self, b):
        data = self.body.read(len(b))
        n = len(data)
        b[:n] = data
        return n

    def close(self):
        try:
            self.body.close()
        finally:
            super().close()


class _S3Writer(WriterMixin):
    def __init__(self, site: "S3Site", key: str):
        self.site = site
        self.key = site._key(key)
        # what the next part holds: the chunks as written, joined once when the part is sent
        self.chunks: list[bytes] = []
        self.held = 0
        self.upload_id: str | None = None
        self.parts: dict[int, str] = {}
        self.futures = []
        self.pool: ThreadPoolExecutor | None = None
        self.sem = threading.BoundedSemaphore(MAX_PARTS_IN_FLIGHT)
        self.done = False

    def _extra(self) -> dict:
        return self.site._put_extra(self.key)

    def _upload_part(self, number: int, data: bytes) -> None:
        try:
            resp = self.site._call("upload part", self.site.client.upload_part, Bucket=self.site.config.bucket,
                                   Key=self.key, UploadId=self.upload_id, PartNumber=number, Body=data)
            self.parts[number] = resp["ETag"]
        finally:
            self.sem.release()

    def _flush_part(self) -> None:
        if self.upload_id is None:
            resp = self.site._call("start upload", self.site.client.create_multipart_upload,
                                   Bucket=self.site.config.bucket, Key=self.key, **self._extra())
            self.upload_id = resp["UploadId"]
            self.pool = ThreadPoolExecutor(MAX_PARTS_IN_FLIGHT, thread_name_prefix=f"s3-{self.site.name}")
        data = b"".join(self.chunks)
        self.chunks, self.held = [], 0
        self._check_futures()
        self.sem.acquire()
        self.futures.append(self.pool.submit(self._upload_part, len(self.futures) + 1, data))

    def _check_futures(self) -> None:
        for f in self.futures:
            if f.done() and f.exception():
                raise f.exception()

    def write(self, data: bytes) -> None:
        # A part is at least PART_SIZE (and less than PART_SIZE + one chunk): every part but the
        # last must be 5 MiB or more. Chunks are kept as given and joined once per part.
        self.chunks.append(bytes(data))
        self.held += len(data)
        if self.held >= PART_SIZE:
            self._flush_part()

    def commit(self) -> None:
        if self.done:
            return
        try:
            if self.upload_id is None:
                self.site._call("put", self.site.client.put_object, Bucket=self.site.config.bucket,
                                Key=self.key, Body=b"".join(self.chunks), **self._extra())
            else:
                if self.chunks:
                    self._flush_part()
                for f in self.futures:
                    f.result()
                self.site._call("complete upload", self.site.client.complete_multipart_upload,
                                Bucket=self.site.config.bucket, Key=self.key, UploadId=self.upload_id,
                                MultipartUpload={"Parts": [{"ETag": e, "PartNumber": n}
                                                           for n, e in sorted(self.parts.items())]})
                lock = self._extra()
                if "ObjectLockMode" in lock:
                    # Set again on the completed object: some S3-compatible stores (moto among
                    # them) drop the lock given at CreateMultipartUpload. The date is the same
                    # or later, so this never shortens a lock (S3 refuses that in compliance).
                    self.site._call("lock", self.site.client.put_object_retention, Bucket=self.site.config.bucket,
                                    Key=self.key, Retention={"Mode": lock["ObjectLockMode"],
                                                             "RetainUntilDate": lock["ObjectLockRetainUntilDate"]})
        except BaseException:
            self.abort()
            raise
        self.done = True
        if self.pool:
            self.pool.shutdown(wait=False)

    def abort(self) -> None:
        if self.done:
            return
        self.done = True
        if self.pool:
            self.pool.shutdown(wait=True, cancel_futures=True)
        if self.upload_id:
            try:
                self.site.client.abort_multipart_upload(Bucket=self.site.config.bucket, Key=self.key,
                                                        UploadId=self.upload_id)
            except Exception:  # best effort: a lifecycle rule should clean what remains
                pass


def _iso(ts: float) -> str:
    from datetime import datetime, timezone

    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class S3Site:
    def __init__(self, name: str, config: S3SiteConfig):
        self.name = name
        self.config = config
        self._client_obj = None
        self.prefix = config.prefix.strip("/")
        self.capabilities = Capabilities(
            barman_cloud=BarmanCloud(config.url(), "aws-s3", config.endpoint_url,
                                     {"AWS_DEFAULT_REGION": config.region} if config.region else {}),
            lists_temporaries=True,
            object_lock=LockTerms(config.object_lock.mode, config.object_lock.retain.total_seconds())
            if config.object_lock else None)

    @property
    def client(self):
        if self._client_obj is None:
            self._client_obj = _shared_client(self.config)
        return self._client_obj

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _unkey(self, full: str) -> str:
        return full[len(self.prefix) + 1:] if self.prefix else full

    def _call(self, what: str, fn, **kw):
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

        try:
            return fn(**kw)
        except NoCredentialsError as exc:
            raise SiteUnreachable(f"site {self.name!r}: no AWS credentials for {self.describe()}",
                                  "set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE or an instance role") from exc
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("NoSuchKey", "404", "NotFound"):
                raise ObjectNotFound(self.name, self._unkey(kw.get("Key", ""))) from None
            if code == "NoSuchBucket":
                raise SiteUnreachable(f"site {self.name!r}: bucket {self.config.bucket!r} does not exist",
                                      f"create it or fix sites.{self.name}.bucket") from None
            if code in ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
                raise SiteUnreachable(f"site {self.name!r}: access denied ({what} {self.describe()})",
                                      "check the credentials and the bucket policy") from None
            raise SiteError(f"site {self.name!r}: {what} failed: {code} {exc}") from None
        except BotoCoreError as exc:
            raise SiteUnreachable(f"site {self.name!r}: {self.describe()} unreachable during {what}: {exc}",
                                  "check the network, endpoint_url and region") from None

    def _put_extra(self, full_key: str) -> dict:
        """What every upload of ``full_key`` carries: the storage class, the Object Lock."""
        extra = {"StorageClass": self.config.storage_class} if self.config.storage_class else {}
        lock = self.config.object_lock
        if lock is not None and PROBE_MARK not in full_key:  # (check's probe: deleted at once, so never locked)
            # Retain-until from the injectable clock (tests); S3 refuses a date in the past.
            from ..clock import Clock

            extra["ObjectLockMode"] = lock.mode.upper()
            extra["ObjectLockRetainUntilDate"] = Clock.from_env().now() + lock.retain
        return extra

    # -- the contract
    def writer(self, key: str) -> _S3Writer:
        return _S3Writer(self, key)

    def create_exclusive(self, key: str, data: bytes) -> bool:
        """The contract's test-and-set: one PutObject with ``If-None-Match: *`` (S3 conditional
        writes, 2024; moto 5.2 answers them too). 412 PreconditionFailed: an object is there.
        409 ConditionalRequestConflict (a concurrent conditional write to the key was in flight):
        asked again, as AWS advises, until one of the two outcomes. A store that ignores the
        header overwrites instead; callers that must not be fooled read their object back."""
        from botocore.exceptions import ClientError

        full = self._key(key)

        def put(**_kw):  # (_call passes Key, for its errors)
            for _ in range(CONFLICT_ATTEMPTS):
                try:
                    self.client.put_object(Bucket=self.config.bucket, Key=full, Body=data, IfNoneMatch="*",
                                           **self._put_extra(full))
                    return True
                except ClientError as exc:
                    code = exc.response.get("Error", {}).get("Code", "")
                    if code == "PreconditionFailed":
                        return False
                    if code != "ConditionalRequestConflict":
                        raise
            raise SiteError(f"site {self.name!r}: {key} stayed in conflict over {CONFLICT_ATTEMPTS} conditional puts")

        return self._call("create", put, Key=full)

    def get(self, key: str) -> BinaryIO:
        resp = self._call("get", self.client.get_object, Bucket=self.config.bucket, Key=self._key(key))
        return io.BufferedReader(_Body(resp["Body"]), buffer_size=1 << 20)

    def head(self, key: str) -> ObjectInfo | None:
        try:
            resp = self._call("head", self.client.head_object, Bucket=self.config.bucket, Key=self._key(key))
        except ObjectNotFound:
            return None
        return ObjectInfo(key, resp["ContentLength"], resp["LastModified"].timestamp())

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        paginator = self.client.get_paginator("list_objects_v2")
        full = self._key(prefix) if prefix else (self.prefix + "/" if self.prefix else "")
        pages = self._call("list", paginator.paginate, Bucket=self.config.bucket, Prefix=full)
        try:
            for page in pages:
                for obj in page.get("Contents", []):
                    yield ObjectInfo(self._unkey(obj["Key"]), obj["Size"], obj["LastModified"].timestamp())
        except Exception as exc:
            from botocore.exceptions import BotoCoreError, ClientError

            if isinstance(exc, (BotoCoreError, ClientError)):
                raise SiteUnreachable(f"site {self.name!r}: listing {self.describe()} failed: {exc}",
                                      "check the network, endpoint_url and credentials") from None
            raise

    def delete(self, key: str) -> None:
        if self.config.object_lock is None:
            self._call("delete", self.client.delete_object, Bucket=self.config.bucket, Key=self._key(key))
            return
        # An Object Lock bucket is versioned: a plain delete only adds a delete marker and the
        # locked bytes stay. Delete the versions themselves; S3 refuses a locked one (and
        # pgvault never asks to bypass governance mode).
        resp = self._call("list versions", self.client.list_object_versions, Bucket=self.config.bucket,
                          Prefix=self._key(key))
        full = self._key(key)
        for v in resp.get("Versions", []) + resp.get("DeleteMarkers", []):
            if v["Key"] != full:
                continue
            try:
                self._call("delete", self.client.delete_object, Bucket=self.config.bucket, Key=full,
                           VersionId=v["VersionId"])
            except SiteUnreachable as exc:  # AccessDenied: the version is locked
                until = self.locked_until(key)
                raise ObjectLocked(f"site {self.name!r}: {key} is locked"
                                   + (f" until {_iso(until)}" if until else "") + f" ({exc.message})",
                                   "expiry deletes it on a later run once its lock has passed") from None

    def locked_until(self, key: str) -> float | None:
        try:
            resp = self._call("head", self.client.head_object, Bucket=self.config.bucket, Key=self._key(key))
        except ObjectNotFound:
            return None
        until = resp.get("ObjectLockRetainUntilDate")
        return until.timestamp() if until is not None else None

    def lock_enabled(self) -> bool:
        try:
            resp = self._call("object lock configuration", self.client.get_object_lock_configuration,
                              Bucket=self.config.bucket)
        except SiteError as exc:
            if "ObjectLockConfigurationNotFound" in exc.message:
                return False
            raise
        return resp.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled") == "Enabled"

    def on_response(self, callback) -> None:
        # the handler must hear this site's calls only: a client of its own, not the shared one
        with _CLIENT_LOCK:
            self._client_obj = _client(self.config)
        self._client_obj.meta.events.register("after-call.s3", lambda **_kw: callback())

    def describe(self) -> str:
        where = f" at {self.config.endpoint_url}" if self.config.endpoint_url else ""
        region = f" ({self.config.region})" if self.config.region else ""
        return f"{self.config.url()}{region}{where}"

    def list_temporaries(self, prefix: str = "") -> list[str]:
        """Unfinished multipart uploads (debris of a crash)."""
        resp = self._call("list uploads", self.client.list_multipart_uploads, Bucket=self.config.bucket,
                          Prefix=self._key(prefix) if prefix else self.prefix)
        return [self._unkey(u["Key"]) for u in resp.get("Uploads", [])]
