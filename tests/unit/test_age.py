"""pgvault's age format against the stock `age` CLI, both ways, and what it must refuse:
a flipped byte, a truncation, an appended tail, the wrong identity. Plus the policy side:
recipients validated, a private key in a policy refused with its dotted path."""
from __future__ import annotations

import doctest
import io
import os
import subprocess

import pytest

from pgvault.crypt import age, bech32, keys
from pgvault.errors import KeyRequired, PolicyError
from pgvault.policy.load import parse_policy


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    d = tmp_path_factory.mktemp("age")
    key = d / "key.txt"
    subprocess.run(["age-keygen", "-o", str(key)], check=True, capture_output=True)
    rcpt = subprocess.run(["age-keygen", "-y", str(key)], check=True, capture_output=True, text=True).stdout.strip()
    return key, rcpt, keys.parse(key.read_text(), "key")


# sizes around the 64 KiB chunk boundary: empty, one byte, exactly one chunk, one more, several
SIZES = [0, 1, age.CHUNK - 1, age.CHUNK, age.CHUNK + 1, 3 * age.CHUNK, 200_001]


@pytest.mark.parametrize("size", SIZES)
def test_stock_cli_opens_what_pgvault_writes_both_one_shot_and_streamed(pair, size, tmp_path):
    key, rcpt, _ids = pair
    data = os.urandom(size)
    one = age.seal(data, [rcpt])
    s = age.Sealer([rcpt])
    streamed = b"".join(s.update(data[i:i + 7777]) for i in range(0, size, 7777)) + s.finish()
    for blob in (one, streamed):
        f = tmp_path / "x.age"
        f.write_bytes(blob)
        out = subprocess.run(["age", "-d", "-i", str(key), str(f)], check=True, capture_output=True).stdout
        assert out == data


def test_pgvault_opens_what_the_stock_cli_writes(pair, tmp_path):
    key, rcpt, ids = pair
    data = os.urandom(150_000)
    enc = subprocess.run(["age", "-r", rcpt], input=data, check=True, capture_output=True).stdout
    assert age.open_bytes(enc, ids) == data
    r = age.Opener(io.BytesIO(enc), ids)
    assert b"".join(iter(lambda: r.read(1000), b"")) == data


def test_tampering_truncation_and_wrong_keys_are_detected(pair):
    _key, rcpt, ids = pair
    data = os.urandom(3 * age.CHUNK + 10)
    blob = age.seal(data, [rcpt])
    for pos in (30, len(blob) // 2, len(blob) - 1):  # header, payload, last tag
        bad = bytearray(blob)
        bad[pos] ^= 0x01
        with pytest.raises((age.CorruptCiphertext, age.NoMatchingIdentity)):
            age.open_bytes(bytes(bad), ids)
    with pytest.raises(age.CorruptCiphertext):
        age.open_bytes(blob[:-(age.CHUNK // 2)], ids)    # truncated mid-chunk
    with pytest.raises(age.CorruptCiphertext):
        age.open_bytes(blob[: len(blob) - 26], ids)       # the whole last chunk cut: the previous is not marked last
    with pytest.raises(age.CorruptCiphertext):
        age.open_bytes(blob + b"tail", ids)
    other, _ = age.generate()
    with pytest.raises(age.NoMatchingIdentity):
        age.open_bytes(blob, [age.parse_identity(other)])
    # several recipients: each opens it
    ident2, rcpt2 = age.generate()
    two = age.seal(data, [rcpt, rcpt2])
    assert age.open_bytes(two, ids) == data == age.open_bytes(two, [age.parse_identity(ident2)])


def test_keys_from_env_file_or_text_and_messages_name_the_recipient(pair, monkeypatch):
    key, rcpt, _ = pair
    monkeypatch.setenv(keys.ENV, str(key))
    assert keys.recipients_opened() == {rcpt}
    monkeypatch.setenv(keys.ENV, key.read_text())
    assert keys.recipients_opened() == {rcpt}
    assert keys.missing_key([rcpt], "backup X") is None
    _other_id, other = age.generate()
    problem = keys.missing_key([other], "backup X")
    assert isinstance(problem, KeyRequired) and problem.exit_code == 2 and other in problem.message
    assert "AGE-SECRET-KEY" not in problem.message + (problem.hint or "")
    monkeypatch.delenv(keys.ENV)
    problem = keys.missing_key([other], "backup X")
    assert "no identity was given" in problem.message and "--identity" in problem.hint


def test_policy_takes_recipients_and_refuses_a_private_key_with_its_path():
    ident, rcpt = age.generate()
    base = f"""
version: 1
cluster: {{name: main, conninfo: "host=/tmp"}}
encryption: {{recipients: [{rcpt}]}}
sites:
  a: {{type: local, path: /var/backups/a}}
  eu: {{type: s3, bucket: acme-eu, encryption: {{recipients: [{rcpt}, {age.generate()[1]}]}},
        object_lock: {{mode: compliance, retain: 30d}}}}
"""
    p = parse_policy(base)
    assert p.recipients("a") == (rcpt,) and len(p.recipients("eu")) == 2
    assert p.sites["eu"].object_lock.retain.days == 30
    bad = base.replace(f"encryption: {{recipients: [{rcpt}]}}", f"encryption: {{recipients: [{ident}, age1nope]}}", 1)
    bad = bad.replace("mode: compliance", "mode: forever")
    with pytest.raises(PolicyError) as exc:
        parse_policy(bad)
    paths = {path for path, _m, _h in exc.value.problems}
    assert "encryption.recipients" in paths and "sites.eu.object_lock.mode" in paths, exc.value.problems
    assert ident not in exc.value.message  # the secret is not echoed back


def test_doctests():
    for mod in (age, bech32, keys):
        assert doctest.testmod(mod).failed == 0
