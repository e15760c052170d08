"""The age v1 file format (https://age-encryption.org/v1), X25519 recipients only: what pgvault
writes, `age -d -i key.txt FILE` opens, and the reverse.

Why pgvault writes the format itself rather than calling pyrage or the `age` CLI: backups are
written push-style (a Tee receives compressed chunks and fans them out to sites) and pyrage
only encrypts a whole buffer or pulls from a reader; the CLI costs a process and two pipe
copies per stream and per WAL segment. The format is small — a text header, one X25519 key
wrap per recipient, an HMAC, then ChaCha20-Poly1305 in 64 KiB chunks — and every primitive
comes from `cryptography` (OpenSSL). tests/unit/test_age.py proves interoperability both ways
with the stock CLI; bench/encryption_choice.py measured the candidates (docs/encryption.md).

Integrity: every 64 KiB chunk is authenticated and the last one is marked, so a flipped byte,
a truncation or an appended tail fails with ``CorruptCiphertext``; the header MAC binds the
recipients' stanzas to the file key.
"""
from __future__ import annotations

import base64
import hmac
import hashlib
import os
from typing import BinaryIO, Iterable

from . import bech32

MAGIC = b"age-encryption.org/v1\n"
CHUNK = 64 << 10
TAG = 16
_X25519_INFO = b"age-encryption.org/v1/X25519"


class CorruptCiphertext(ValueError):
    """The bytes are not an intact age file (tampered, truncated, not age)."""


class NoMatchingIdentity(ValueError):
    """None of the identities given opens this file."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    if "=" in text or "\n" in text:
        raise CorruptCiphertext("bad base64 in the header")
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def _hkdf(ikm: bytes, salt: bytes, info: bytes) -> bytes:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(ikm)


def warm() -> None:
    """Import the primitives now (wal-push does it in a thread while it compresses)."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey  # noqa: F401
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305  # noqa: F401
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF  # noqa: F401


def is_age(head: bytes) -> bool:
    """True when ``head`` (the first bytes of an object) starts an age file.

    >>> is_age(MAGIC + b"-> X25519 ..."), is_age(b"\\x28\\xb5\\x2f\\xfd")
    (True, False)
    """
    return bytes(head[: len(MAGIC)]) == MAGIC


# -- keys

def parse_recipient(text: str) -> bytes:
    """The X25519 public key of an ``age1…`` recipient; ValueError if it is not one."""
    hrp, key = bech32.decode(text.strip())
    if hrp != "age" or len(key) != 32:
        raise ValueError("not an age X25519 recipient (age1…)")
    return key


def parse_identity(text: str) -> bytes:
    """The X25519 private key of an ``AGE-SECRET-KEY-1…`` identity; ValueError otherwise."""
    hrp, key = bech32.decode(text.strip())
    if hrp != "age-secret-key-" or len(key) != 32:
        raise ValueError("not an age X25519 identity (AGE-SECRET-KEY-1…)")
    return key


def identity_recipient(secret: bytes) -> str:
    """The ``age1…`` recipient of an identity (what `age-keygen -y` prints)."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    pub = X25519PrivateKey.from_private_bytes(secret).public_key().public_bytes_raw()
    return bech32.encode("age", pub)


def generate() -> tuple[str, str]:
    """A new (identity, recipient) pair as text — tests and the demo; users run age-keygen."""
    secret = os.urandom(32)
    return bech32.encode("age-secret-key-", secret).upper(), identity_recipient(secret)


# -- writing

def _header(recipients: Iterable[bytes], file_key: bytes) -> bytes:
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

    lines = [MAGIC]
    for pub in recipients:
        eph = X25519PrivateKey.generate()
        share = eph.public_key().public_bytes_raw()
        shared = eph.exchange(X25519PublicKey.from_public_bytes(pub))
        wrap = _hkdf(shared, share + pub, _X25519_INFO)
        body = ChaCha20Poly1305(wrap).encrypt(bytes(12), file_key, None)
        lines.append(f"-> X25519 {_b64(share)}\n{_b64(body)}\n".encode())  # 43 columns: one line
    head = b"".join(lines) + b"---"
    mac = hmac.new(_hkdf(file_key, b"", b"header"), head, hashlib.sha256).digest()
    return head + f" {_b64(mac)}\n".encode()


class Sealer:
    """Encrypts a stream push-style: ``update(chunk)`` and ``finish()`` return ciphertext to
    write. The first output carries the header. One chunk is held back until the next data
    or ``finish`` shows whether it is the last (age marks the last chunk)."""

    def __init__(self, recipients: list[str]):
        from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

        if not recipients:
            raise ValueError("no recipients")
        file_key = os.urandom(16)
        nonce = os.urandom(16)
        self._pending = _header([parse_recipient(r) for r in recipients], file_key) + nonce
        self._aead = ChaCha20Poly1305(_hkdf(file_key, nonce, b"payload"))
        self._buf = bytearray()
        self._counter = 0

    def _seal(self, chunk, last: bool) -> bytes:
        nonce = self._counter.to_bytes(11, "big") + (b"\x01" if last else b"\x00")
        self._counter += 1
        return self._aead.encrypt(nonce, chunk, None)  # (a memoryview: no copy in)

    def update(self, data: bytes) -> bytes:
        self._buf += data
        out = [self._pending] if self._pending else []
        self._pending = b""
        n = (len(self._buf) - 1) // CHUNK  # keep at least one byte: the last chunk is sealed by finish
        if n > 0:
            view = memoryview(self._buf)
            out += [self._seal(view[i * CHUNK:(i + 1) * CHUNK], False) for i in range(n)]
            view.release()
            del self._buf[: n * CHUNK]
        return b"".join(out)

    def finish(self) -> bytes:
        out = self._pending + self._seal(self._buf, True)
        self._pending, self._buf = b"", bytearray()
        return out


def seal(data: bytes, recipients: list[str]) -> bytearray:
    """Encrypt a whole buffer (a WAL file) to ``recipients``: straight into one preallocated
    buffer (``encrypt_into``: no per-chunk allocation, no final join — a third less CPU on
    a compressed 16 MiB segment)."""
    s = Sealer(recipients)
    view = memoryview(data)
    n = max(1, -(-len(view) // CHUNK))  # chunks; an empty file is one empty, last chunk
    head = s._pending
    out = bytearray(len(head) + len(view) + n * TAG)
    out[: len(head)] = head
    into = getattr(s._aead, "encrypt_into", None)
    om = memoryview(out)
    pos = len(head)
    for i in range(n):
        chunk = view[i * CHUNK:(i + 1) * CHUNK]
        nonce = i.to_bytes(11, "big") + (b"\x01" if i == n - 1 else b"\x00")
        end = pos + len(chunk) + TAG
        if into is not None:
            into(nonce, chunk, None, om[pos:end])
        else:  # cryptography < 45
            om[pos:end] = s._aead.encrypt(nonce, chunk, None)
        pos = end
    om.release()
    view.release()
    return out  # (a bytearray: every writer takes any bytes-like object)


# -- reading

def _read_line(stream: BinaryIO, limit: int = 512) -> bytes:
    out = bytearray()
    while len(out) < limit:
        c = stream.read(1)
        if not c:
            raise CorruptCiphertext("truncated header")
        out += c
        if c == b"\n":
            return bytes(out)
    raise CorruptCiphertext("header line too long")


def _file_key(stream: BinaryIO, identities: list[bytes]) -> bytes:
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

    if stream.read(len(MAGIC)) != MAGIC:
        raise CorruptCiphertext("not an age file")
    head = bytearray(MAGIC)
    stanzas = []
    while True:
        line = _read_line(stream)
        if line.startswith(b"--- "):
            head += b"---"
            mac = _unb64(line[4:-1].decode("ascii", "replace"))
            break
        if not line.startswith(b"-> "):
            raise CorruptCiphertext("bad header")
        head += line
        args = line[3:-1].decode("ascii", "replace").split(" ")
        body = b""
        while True:
            bl = _read_line(stream)
            head += bl
            body += _unb64(bl[:-1].decode("ascii", "replace"))
            if len(bl) - 1 < 64:
                break
        stanzas.append((args, body))
    if not identities:
        raise NoMatchingIdentity("no identity given")
    for args, body in stanzas:
        if args[0] != "X25519" or len(args) != 2:
            continue
        share = _unb64(args[1])
        for secret in identities:
            priv = X25519PrivateKey.from_private_bytes(secret)
            try:
                shared = priv.exchange(X25519PublicKey.from_public_bytes(share))
            except ValueError:
                raise CorruptCiphertext("bad X25519 share") from None
            wrap = _hkdf(shared, share + priv.public_key().public_bytes_raw(), _X25519_INFO)
            try:
                file_key = ChaCha20Poly1305(wrap).decrypt(bytes(12), body, None)
            except InvalidTag:
                continue
            want = hmac.new(_hkdf(file_key, b"", b"header"), bytes(head), hashlib.sha256).digest()
            if not hmac.compare_digest(want, mac):
                raise CorruptCiphertext("header MAC mismatch")
            return file_key
    raise NoMatchingIdentity("none of the identities opens this file")


class Opener:
    """A reader of the plaintext of an age stream; ``CorruptCiphertext`` the moment a chunk
    fails to authenticate (nothing unauthenticated is ever returned)."""

    def __init__(self, stream: BinaryIO, identities: list[bytes]):
        from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

        self.stream = stream
        file_key = _file_key(stream, identities)
        nonce = _read_exact(stream, 16)
        if len(nonce) != 16:
            raise CorruptCiphertext("truncated payload")
        self._aead = ChaCha20Poly1305(_hkdf(file_key, nonce, b"payload"))
        self._counter = 0
        self._next = _read_exact(stream, CHUNK + TAG)
        self._out = b""
        self._done = False

    def _advance(self) -> None:
        from cryptography.exceptions import InvalidTag

        cur = self._next
        self._next = _read_exact(self.stream, CHUNK + TAG) if len(cur) == CHUNK + TAG else b""
        last = not self._next
        nonce = self._counter.to_bytes(11, "big") + (b"\x01" if last else b"\x00")
        self._counter += 1
        try:
            self._out = self._aead.decrypt(nonce, cur, None)
        except InvalidTag:
            raise CorruptCiphertext(f"chunk {self._counter - 1} fails authentication (tampered or truncated)") from None
        if not self._out and (not last or self._counter > 1):
            raise CorruptCiphertext("empty chunk")
        self._done = last

    def read(self, n: int = -1) -> bytes:
        parts = []
        want = n if n is not None and n >= 0 else None
        while want is None or want > 0:
            if not self._out:
                if self._done:
                    break
                self._advance()
                continue
            take = self._out if want is None else self._out[:want]
            self._out = self._out[len(take):]
            parts.append(take)
            if want is not None:
                want -= len(take)
        return b"".join(parts)

    read1 = read

    def close(self) -> None:
        self.stream.close()


def _read_exact(stream: BinaryIO, n: int) -> bytes:
    parts, got = [], 0
    while got < n:
        b = stream.read(n - got)
        if not b:
            break
        parts.append(b)
        got += len(b)
    return b"".join(parts)


def open_bytes(data: bytes, identities: list[bytes]) -> bytes:
    """Decrypt a whole buffer."""
    import io

    return Opener(io.BytesIO(data), identities).read()
