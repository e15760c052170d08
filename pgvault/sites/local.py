"""A site in a local directory. Writes go to a hidden temp file in the final directory (whose
writeback to disk is started every few MiB as it streams), are fsynced, renamed into place and
the directory fsynced: a crash leaves either the whole object
or a temp file that ``list`` never shows. Files are 0600, directories 0700. When pgvault runs
as root, new files take the owner of the site's root directory, so the postgres user (which
runs archive_command) and root can share a site."""
from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import BinaryIO, ClassVar, Iterator, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..crypt.config import Encryption

from ..errors import ObjectNotFound, SiteError, SiteUnreachable
from ..fsutil import TMP_PREFIX, WRITEBACK_EVERY, fsync_dir, start_writeback
from .base import Capabilities, ObjectInfo, WriterMixin, path_parts


class LocalSiteConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    type: Literal["local"] = Field(description="a directory on this host (or a mounted file system)")
    path: str = Field(min_length=1, description="absolute path of the site's root directory")
    encryption: Encryption | None = Field(None, description="encrypt what this site stores to these recipients "
                                          "(replaces the policy's top-level encryption for this site)")

    # The key a policy error about this site's place points at (the overlap check).
    location_field: ClassVar[str] = "path"

    def impatient(self, seconds: float) -> "LocalSiteConfig":
        """This configuration, giving up within about ``seconds`` (monitoring): a local file
        system has no timeouts to shorten."""
        return self

    def location_key(self) -> tuple:
        """(space, path parts) for the overlap check (pgvault.sites.base.overlaps)."""
        return ("local",), path_parts(os.path.normpath(self.path))


class _LocalWriter(WriterMixin):
    def __init__(self, site: "LocalSite", key: str):
        self.site = site
        self.final = site._path(key)
        site._mkdirs(self.final.parent)
        self.tmp = self.final.parent / f"{TMP_PREFIX}{self.final.name}.{uuid.uuid4().hex[:8]}"
        fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        site._chown(self.tmp)
        self.fh = os.fdopen(fd, "wb", buffering=0)
        self.done = False
        self.written = self.flushed = 0

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = self.fh.write(view)
            view = view[n:]
        self.written += len(data)
        if self.written - self.flushed >= WRITEBACK_EVERY:
            # Start writing to disk as the stream goes, so commit's fsync is short.
            start_writeback(self.fh.fileno(), self.flushed, self.written - self.flushed)
            self.flushed = self.written

    def commit(self) -> None:
        if self.done:
            return
        self.fh.flush()
        os.fsync(self.fh.fileno())
        self.fh.close()
        os.rename(self.tmp, self.final)
        fsync_dir(self.final.parent)
        self.done = True

    def abort(self) -> None:
        if self.done:
            return
        self.done = True
        try:
            self.fh.close()
        finally:
            try:
                os.unlink(self.tmp)
            except FileNotFoundError:
                pass


class LocalSite:
    def __init__(self, name: str, config: LocalSiteConfig):
        self.name = name
        self.config = config
        self.root = Path(config.path)
        self._owner: tuple[int, int] | None = None
        self.capabilities = Capabilities(local_root=self.root, cheap_head=True, lists_temporaries=True)

    # -- internals
    def _path(self, key: str) -> Path:
        if key.startswith("/") or ".." in key.split("/"):
            raise SiteError(f"site {self.name!r}: invalid key {key!r}")
        return self.root / key

    def _ensure_root(self) -> None:
        if not self.root.is_dir():
            parent = self.root.parent
            if not parent.is_dir():
                raise SiteUnreachable(f"site {self.name!r}: directory {parent} does not exist",
                                      f"create it or fix sites.{self.name}.path")
            self.root.mkdir(mode=0o700, exist_ok=True)
        if self._owner is None:
            st = self.root.stat()
            self._owner = (st.st_uid, st.st_gid)

    def _chown(self, path: Path) -> None:
        if os.geteuid() != 0:
            return
        self._ensure_root()
        if self._owner != (0, 0):
            os.lchown(path, *self._owner)

    def _mkdirs(self, path: Path) -> None:
        self._ensure_root()
        missing = []
        p = path
        while not p.exists():
            missing.append(p)
            p = p.parent
        for d in reversed(missing):
            try:
                d.mkdir(mode=0o700)
            except FileExistsError:
                continue
            self._chown(d)

    # -- the contract
    def writer(self, key: str) -> _LocalWriter:
        try:
            return _LocalWriter(self, key)
        except PermissionError as exc:
            raise SiteError(f"site {self.name!r}: cannot write {key!r}: {exc.strerror}",
                            f"check the owner and mode of {self.root}") from exc

    def create_exclusive(self, key: str, data: bytes) -> bool:
        """The contract's test-and-set: the bytes are written and fsynced in a temp file, then
        hard-linked to the final name. link(2) fails with EEXIST when the name exists, atomically
        against any other link or rename — and, unlike O_CREAT|O_EXCL on the final name, a reader
        never sees the object half written."""
        w = self.writer(key)
        try:
            w.write(data)
            w.fh.flush()
            os.fsync(w.fh.fileno())
            try:
                os.link(w.tmp, w.final)
            except FileExistsError:
                return False
            except PermissionError as exc:
                raise SiteError(f"site {self.name!r}: cannot write {key!r}: {exc.strerror}",
                                f"check the owner and mode of {self.root}") from exc
            fsync_dir(w.final.parent)
            return True
        finally:
            w.abort()  # the temp name goes; the linked object stays

    def get(self, key: str) -> BinaryIO:
        try:
            return open(self._path(key), "rb")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ObjectNotFound(self.name, key) from None

    def head(self, key: str) -> ObjectInfo | None:
        try:
            st = self._path(key).stat()
        except (FileNotFoundError, NotADirectoryError):
            return None
        if not os.path.isfile(self._path(key)):
            return None
        return ObjectInfo(key, st.st_size, st.st_mtime)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        if not self.root.is_dir():
            return iter(())
        # Walk only the directory the prefix names, not the whole site.
        base = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        start = self.root / base if base else self.root
        if not start.is_dir():
            return iter(())
        found = []
        for dirpath, dirnames, filenames in os.walk(start):
            rel_dir = os.path.relpath(dirpath, self.root)
            rel_dir = "" if rel_dir == "." else rel_dir + "/"
            for fn in filenames:
                if fn.startswith(TMP_PREFIX):
                    continue
                key = rel_dir + fn
                if key.startswith(prefix):
                    try:
                        st = os.stat(os.path.join(dirpath, fn))
                    except FileNotFoundError:
                        continue
                    found.append(ObjectInfo(key, st.st_size, st.st_mtime))
        found.sort(key=lambda o: o.key)
        return iter(found)

    def list_temporaries(self, prefix: str = "") -> list[str]:
        """In-flight or crashed writes (debris), for verify and cleanup."""
        out = []
        start = self.root / prefix if prefix else self.root
        if not start.is_dir():
            return out
        for dirpath, _d, filenames in os.walk(start):
            for fn in filenames:
                if fn.startswith(TMP_PREFIX):
                    out.append(os.path.relpath(os.path.join(dirpath, fn), self.root))
        return out

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            path.unlink()
        except FileNotFoundError:
            return
        # Remove now-empty directories up to the root, so deleted backups leave no shells.
        parent = path.parent
        while parent != self.root and parent.is_relative_to(self.root):
            try:
                parent.rmdir()
            except OSError:
                break
            parent = parent.parent

    def on_response(self, callback) -> None:
        """Nothing to report: a call here cannot hang on a network."""

    def describe(self) -> str:
        return f"local:{self.root}"
