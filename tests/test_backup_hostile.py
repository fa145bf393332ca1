"""Hostile and broken archives, each through the real CLI (`backup restore` and `backup
verify`): exit 1, one clear `error:` line, nothing written to the home or anywhere else.

Archives are built here byte by byte (Python's tarfile, and hand-made headers where tarfile
will not write them), sealed with age (pyrage) to an identity made by the stock age-keygen.
"""

from __future__ import annotations

import gzip
import io
import hashlib
import json
import os
import subprocess
import sys
import tarfile
import uuid
from pathlib import Path

import pyrage
import pytest
from conftest import NOTARY, Cli

GiB = 1 << 30
MiB = 1 << 20


@pytest.fixture(scope="module")
def identity(tmp_path_factory) -> tuple[Path, str]:
    path = tmp_path_factory.mktemp("hostile-identity") / "id.txt"
    subprocess.run(["age-keygen", "-o", str(path)], check=True, capture_output=True)
    recipient = subprocess.run(["age-keygen", "-y", str(path)], check=True, capture_output=True,
                               text=True).stdout.strip()
    return path, recipient


@pytest.fixture(scope="module")
def real_key(prepared_home) -> dict:
    """One real key file (targets, ecdsa-p256) and its public key, from the session's home."""
    private = sorted((prepared_home / "private").iterdir())
    for path in private:
        data = path.read_bytes()
        if b"role: targets" in data:
            keyid = path.name[:-4]
            return {"keyid": keyid, "key": data,
                    "pub": (prepared_home / "public" / f"{keyid}.pub").read_bytes()}
    raise AssertionError("prepared_home has no targets key")


def manifest(real_key: dict, **changes) -> dict:
    keyid = real_key["keyid"]
    doc = {
        "format": "hsmsign-backup", "version": 1, "created": "2025-01-31T12:00:00Z",
        "hsmsign_version": "0.1.0",
        "keys": [{
            "keyid": keyid, "role": "targets", "gun": "example.com/app",
            "algorithm": "ecdsa-p256", "store": "file", "exported": True,
            "files": [
                {"name": f"private/{keyid}.key", "size": len(real_key["key"]),
                 "sha256": hashlib.sha256(real_key["key"]).hexdigest()},
                {"name": f"public/{keyid}.pub", "size": len(real_key["pub"]),
                 "sha256": hashlib.sha256(real_key["pub"]).hexdigest()},
            ],
        }],
    }
    doc.update(changes)
    return doc


def member(name: str, data: bytes = b"", *, type=tarfile.REGTYPE, size: int | None = None,
           **attrs) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type = type
    info.mode = 0o700 if type == tarfile.DIRTYPE else 0o600
    info.size = len(data) if size is None else size
    info.mtime = 1738324800
    for k, v in attrs.items():
        setattr(info, k, v)
    return info, data


def tar_of(members: list[tuple[tarfile.TarInfo, bytes]], format: int = tarfile.GNU_FORMAT) -> bytes:
    """A tar (GNU format unless told) of exactly these members (an announced size may exceed
    the data)."""
    out = bytearray()
    for info, data in members:
        out += info.tobuf(format, "utf-8", "surrogateescape")
        if info.type in (tarfile.REGTYPE, tarfile.AREGTYPE):
            out += data + b"\0" * (-len(data) % 512)
    return bytes(out + b"\0" * 1024)


def good_members(real_key: dict, doc: dict | None = None) -> list:
    keyid = real_key["keyid"]
    return [
        member("MANIFEST.json", json.dumps(doc or manifest(real_key)).encode()),
        member("private", type=tarfile.DIRTYPE),
        member(f"private/{keyid}.key", real_key["key"]),
        member("public", type=tarfile.DIRTYPE),
        member(f"public/{keyid}.pub", real_key["pub"]),
    ]


def seal(plain: bytes, recipient: str) -> bytes:
    return pyrage.encrypt(plain, [pyrage.x25519.Recipient.from_str(recipient)])


def sparse_header(name: str, realsize: int) -> bytes:
    """A GNU sparse member ('S') whose map expands to `realsize` bytes of zeros: tarfile
    will not write one, so the header is patched by hand."""
    info = tarfile.TarInfo(name)
    info.type = tarfile.GNUTYPE_SPARSE
    info.size = 0
    buf = bytearray(info.tobuf(tarfile.GNU_FORMAT, "utf-8", "strict"))
    buf[386:398] = b"%011o\0" % (realsize - 1)  # one map entry: 1 byte of data at the end
    buf[398:410] = b"%011o\0" % 0
    buf[483:495] = b"%012o" % realsize
    buf[148:156] = b"        "
    buf[148:156] = b"%06o\0 " % sum(buf)
    return bytes(buf)


# -- the cases -----------------------------------------------------------------------------


def _replace(members: list, name: str, new) -> list:
    return [new if m[0].name == name else m for m in members]


def case_archive(case: str, real_key: dict, recipient: str, tmp_path: Path) -> Path:
    keyid = real_key["keyid"]
    key_name, pub_name = f"private/{keyid}.key", f"public/{keyid}.pub"
    good = good_members(real_key)
    plain: bytes | None = None
    if case == "dotdot":
        members = [*good, member("../evil.key", b"evil")]
    elif case == "absolute":
        members = [*good, member(f"/tmp/hsmsign-evil-{uuid.uuid4().hex}.key", b"evil")]
    elif case == "symlink":
        members = _replace(good, key_name, member(key_name, type=tarfile.SYMTYPE,
                                                  linkname="/etc/shadow"))
    elif case == "hardlink":
        members = _replace(good, key_name, member(key_name, type=tarfile.LNKTYPE,
                                                  linkname="/etc/shadow"))
    elif case == "chardev":
        members = _replace(good, key_name, member(key_name, type=tarfile.CHRTYPE, devmajor=1,
                                                  devminor=3))
    elif case == "blockdev":
        members = _replace(good, key_name, member(key_name, type=tarfile.BLKTYPE, devmajor=7,
                                                  devminor=0))
    elif case == "fifo":
        members = _replace(good, key_name, member(key_name, type=tarfile.FIFOTYPE))
    elif case == "directory":
        members = _replace(good, key_name, member(key_name, type=tarfile.DIRTYPE))
    elif case == "duplicate":
        members = [*good, member(key_name, real_key["key"].replace(b"targets", b"snapshot"))]
    elif case == "larger":
        members = _replace(good, key_name, member(key_name, real_key["key"] + b"\n" * 100))
    elif case == "unlisted":
        members = [*good, member(f"private/{'0' * 64}.key", real_key["key"])]
    elif case == "absent":
        members = [m for m in good if m[0].name != pub_name]
    elif case == "changed":
        flipped = bytearray(real_key["key"])
        flipped[-40] ^= 0x01
        members = _replace(good, key_name, member(key_name, bytes(flipped)))
    elif case == "manifest-path":
        doc = manifest(real_key)
        doc["keys"][0]["files"][1]["name"] = "../../etc/passwd"
        members = good_members(real_key, doc)
    elif case == "version":
        members = good_members(real_key, manifest(real_key, version=2))
    elif case == "manifest-garbage":
        members = _replace(good, "MANIFEST.json", member("MANIFEST.json", b"{not json"))
    elif case == "announced-10g":
        members = [good[0], good[1], member(key_name, b"", size=10 * GiB)]
    elif case == "clear-key":
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec

        pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption())
        clear = pem.replace(b"-----\n", b"-----\nrole: targets\ngun: example.com/app\n\n", 1)
        members = good_members({**real_key, "key": clear})
    elif case == "sparse-10g":
        plain = good[0][0].tobuf(tarfile.GNU_FORMAT, "utf-8", "strict") + \
            good[0][1] + b"\0" * (-len(good[0][1]) % 512) + sparse_header(key_name, 10 * GiB) + \
            b"\0" * 512 + b"\0" * 1024
    else:
        members = good
    if plain is None:
        plain = tar_of(members)
    sealed = seal(plain, recipient)
    if case == "tampered":
        flipped = bytearray(sealed)
        flipped[-30] ^= 0x01
        sealed = bytes(flipped)
    elif case == "truncated":
        sealed = sealed[:-100]
    elif case == "truncated-header":
        sealed = sealed[:40]
    path = tmp_path / f"{case}.tar.age"
    path.write_bytes(sealed)
    if case == "age-10g":
        with open(path, "r+b") as f:  # a valid age header, then 10 GB of zeros (sparse on disk)
            f.truncate(10 * GiB)
    return path



# Runs the real CLI and records its own /proc/self/io at exit: how much a command read is a
# count, not a time, so a loaded machine cannot make these checks flaky, and a command that read
# a 10 GiB archive (or an endless device) shows it here.
_IO_PROBE = """
import atexit, runpy, sys
out = sys.argv.pop(1)
def _record():
    with open("/proc/self/io") as f, open(out, "w") as o:
        o.write(f.read())
atexit.register(_record)
runpy.run_module("hsmsign", run_name="__main__", alter_sys=True)
"""


def fails_reading_little(cli: Cli, probe_dir: Path, *args: str, limit: int = 256 * MiB):
    """`cli.fails(*args)`, and the command read fewer than `limit` bytes in all (Python's own
    imports included)."""
    probe = probe_dir / f"io-{uuid.uuid4().hex}"
    proc = subprocess.run([sys.executable, "-c", _IO_PROBE, str(probe), "--home", str(cli.home),
                           *args], env=cli.env, capture_output=True, text=True, input="",
                          timeout=120)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 1 and len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    counters = dict(line.split(": ") for line in probe.read_text().splitlines())
    assert int(counters["rchar"]) < limit, f"read {int(counters['rchar'])} bytes"
    return errors[0]

CASES = {
    "dotdot": "'..' path component",
    "absolute": "absolute path",
    "symlink": "is a symbolic link",
    "hardlink": "is a hard link",
    "chardev": "is a character device",
    "blockdev": "is a block device",
    "fifo": "is a FIFO",
    "directory": "is a directory where the manifest lists a file",
    "duplicate": "appears twice",
    "larger": "bytes but the manifest says",
    "unlisted": "is not listed in the manifest",
    "absent": "but the archive does not hold it",
    "changed": "does not match its SHA-256",
    "manifest-path": "lists a file named",
    "version": "unknown backup format version 2",
    "manifest-garbage": "MANIFEST.json is invalid: not JSON",
    "clear-key": "is a private key in the clear: refused",
    "tampered": "is damaged or truncated",
    "truncated": "is damaged or truncated",
    "truncated-header": "is damaged or truncated",
    "announced-10g": "announces 10.0 GiB",
    "sparse-10g": "is a sparse file",
    "age-10g": "refused without reading it",
}


@pytest.mark.parametrize("case", list(CASES))
def test_hostile_age_archive_is_refused_and_nothing_is_written(case, real_key, identity,
                                                               tmp_path, tmp_path_factory,
                                                               no_token_env):
    archive = case_archive(case, real_key, identity[1], tmp_path)
    before = sorted(os.listdir(tmp_path))
    home = tmp_path / "home"
    cli = Cli(home, dict(no_token_env))
    probes = tmp_path_factory.mktemp("io")
    for command in ("restore", "verify"):
        # stopped early: never read the 10 GB
        error = fails_reading_little(cli, probes, "backup", command, str(archive),
                                     "--identity", str(identity[0]))
        assert CASES[case] in error
        assert not home.exists()
        assert sorted(os.listdir(tmp_path)) == before  # nothing beside the archive either
    assert not list(Path("/tmp").glob("hsmsign-evil-*"))


def test_the_good_archive_of_the_cases_restores(real_key, identity, tmp_path, no_token_env):
    """The base the hostile cases change is itself accepted: the refusals are the changes'."""
    archive = case_archive("good", real_key, identity[1], tmp_path)
    home = tmp_path / "home"
    out = json.loads(Cli(home, dict(no_token_env))("backup", "restore", str(archive), "-i",
                                                   str(identity[0]), "--json").stdout)
    assert [(k["keyid"], k["action"]) for k in out["keys"]] == [(real_key["keyid"], "add")]
    assert (home / "private" / f"{real_key['keyid']}.key").read_bytes() == real_key["key"]


def test_wrong_identity_is_refused(real_key, identity, tmp_path, no_token_env):
    archive = case_archive("good", real_key, identity[1], tmp_path)
    other = tmp_path / "other.txt"
    other.write_text(str(pyrage.x25519.Identity.generate()) + "\n")
    cli = Cli(tmp_path / "home", dict(no_token_env))
    for command in ("restore", "verify"):
        error = cli.fails("backup", command, str(archive), "-i", str(other)).error_lines[0]
        assert "none of the identities in" in error and str(other) in error
        assert "AGE-SECRET-KEY" not in error
    not_identity = tmp_path / "not-identity.txt"
    not_identity.write_text("AGE-SECRET-KEY-1NOTAKEY\n")
    error = cli.fails("backup", "restore", str(archive), "-i", str(not_identity)).error_lines[0]
    assert "line 1 is not an age identity" in error and "NOTAKEY" not in error
    assert not (tmp_path / "home").exists()


# -- plain tar / tar.gz (the DCT migration path) ---------------------------------------------


def _notary_root_key() -> tuple[str, bytes]:
    path = next((NOTARY / "trustdir-0.3" / "private" / "root_keys").iterdir())
    return f"private/root_keys/{path.name}", path.read_bytes()


@pytest.mark.parametrize("case,expected", [
    ("dotdot", "'..' path component"),
    ("symlink", "is a symbolic link"),
    ("hardlink", "is a hard link"),
    ("fifo", "is a FIFO"),
    ("duplicate", "appears twice"),
    ("truncated", "truncated or corrupt"),
    ("clear-key", "is a private key in the clear: refused"),
])
def test_hostile_trust_dir_tar_gz_is_refused(case, expected, tmp_path, no_token_env):
    name, data = _notary_root_key()
    members = [member("private", type=tarfile.DIRTYPE), member(name, data)]
    if case == "dotdot":
        members.append(member("private/../../evil.key", data))
    elif case == "symlink":
        members.append(member("private/root_keys/link.key", type=tarfile.SYMTYPE,
                              linkname="/etc/shadow"))
    elif case == "hardlink":
        members.append(member("private/root_keys/link.key", type=tarfile.LNKTYPE,
                              linkname="/etc/shadow"))
    elif case == "fifo":
        members.append(member("private/root_keys/fifo.key", type=tarfile.FIFOTYPE))
    elif case == "duplicate":
        members.append(member(name, data))
    elif case == "clear-key":
        members.append(member("private/root_keys/clear.key",
                              (NOTARY / "pkcs8-vectors" / "03-ecdsa-secp256r1-plain.pem").read_bytes()))
    blob = gzip.compress(tar_of(members), mtime=0)
    if case == "truncated":
        blob = blob[: len(blob) // 2]
    archive = tmp_path / "trust.tar.gz"
    archive.write_bytes(blob)
    home = tmp_path / "home"
    env = {**no_token_env, "HSMSIGN_ROOT_PASSPHRASE": "password"}
    result = Cli(home, env).fails("backup", "restore", str(archive))
    assert expected in result.error_lines[0], result.stderr
    assert not home.exists() and not (tmp_path / "evil.key").exists()


def _gz(data: bytes) -> bytes:
    return gzip.compress(data, compresslevel=9, mtime=0)


def test_gzip_bomb_of_10_gb_of_zeros_announced_as_a_key_stops_at_the_header(tmp_path,
                                                                            no_token_env):
    """10 GiB of real zeros (10,240 gzip members of 1 MiB each, about 10 MB on disk)."""
    zeros = _gz(b"\0" * MiB)
    info, _ = member(f"private/{'ab' * 32}.key", size=10 * GiB)
    bomb = tmp_path / "bomb.tar.gz"
    with open(bomb, "wb") as f:
        f.write(_gz(info.tobuf(tarfile.GNU_FORMAT, "utf-8", "strict")))
        for _ in range(10 * 1024):
            f.write(zeros)
        f.write(_gz(b"\0" * 1024))
    assert bomb.stat().st_size < 20 * MiB
    with gzip.open(bomb) as g:  # it is what it says: a header for 10 GiB, then zeros
        head = tarfile.TarInfo.frombuf(g.read(512), "utf-8", "strict")
        assert head.size == 10 * GiB and g.read(MiB) == b"\0" * MiB
    result = Cli(tmp_path / "home", dict(no_token_env)).fails("backup", "restore", str(bomb))
    assert "announces 10.0 GiB" in result.error_lines[0]  # the header's size, before any content
    assert not (tmp_path / "home").exists()


def test_gzip_bomb_of_many_small_members_stops_at_the_total_cap(tmp_path, no_token_env):
    """10,240 members of 1 MiB of zeros each (under the per-member cap): the total cap stops
    the reading after 256 MiB, long before 10 GiB."""
    zeros = _gz(b"\0" * MiB)
    bomb = tmp_path / "many.tar.gz"
    with open(bomb, "wb") as f:
        for n in range(10 * 1024):
            info, _ = member(f"junk/{n:05d}.bin", size=MiB)
            f.write(_gz(info.tobuf(tarfile.GNU_FORMAT, "utf-8", "strict")))
            f.write(zeros)
        f.write(_gz(b"\0" * 1024))
    result = Cli(tmp_path / "home", dict(no_token_env)).fails("backup", "restore", str(bomb))
    assert "holds more than 256 MiB" in result.error_lines[0]  # the running total's cap
    assert not (tmp_path / "home").exists()


def test_gzip_bomb_in_a_long_name_header_stops_at_the_unpacked_cap(tmp_path, no_token_env):
    """A GNU long-name record announcing a 10 GiB name (tarfile reads a name whole before
    any member is seen): the decompressing reader itself stops at its cap."""
    zeros = _gz(b"\0" * MiB)
    info, _ = member("././@LongLink", type=tarfile.GNUTYPE_LONGNAME, size=10 * GiB)
    bomb = tmp_path / "longname.tar.gz"
    with open(bomb, "wb") as f:
        f.write(_gz(info.tobuf(tarfile.GNU_FORMAT, "utf-8", "strict")))
        for _ in range(10 * 1024):
            f.write(zeros)
    result = Cli(tmp_path / "home", dict(no_token_env)).fails("backup", "restore", str(bomb))
    assert "unpacks to more than 320 MiB" in result.error_lines[0]  # the reader's own cap
    assert not (tmp_path / "home").exists()


def test_not_an_archive_at_all(tmp_path, tmp_path_factory, no_token_env):
    junk = tmp_path / "junk.tar.age"
    junk.write_bytes(b"hello, this is not an archive\n" * 40)
    cli = Cli(tmp_path / "home", dict(no_token_env))
    assert "is not an hsmsign backup" in cli.fails("backup", "restore", str(junk)).error_lines[0]
    assert "does not exist" in cli.fails("backup", "verify",
                                         str(tmp_path / "missing.tar.age")).error_lines[0]
    # an endless device is not read
    assert "not a regular file" in fails_reading_little(cli, tmp_path_factory.mktemp("io"),
                                                        "backup", "restore", "/dev/zero")
    assert not (tmp_path / "home").exists()


def ustar_of(members: list[tuple[tarfile.TarInfo, bytes]]) -> bytes:
    """A POSIX USTAR tar of these members, as hsmsign writes its own (its fast reader's input)."""
    return tar_of(members, tarfile.USTAR_FORMAT)


def test_plain_ustar_tars_are_read_as_tarfile_reads_them(real_key):
    """hsmsign reads the headers of a plain USTAR tar in memory itself (tarfile is ~8x slower
    per header: 20,000 headers for 10,000 keys); what it reads, and every refusal, must be
    what reading the same bytes through tarfile (as a stream) gives."""
    from hsmsign.backup.format import ArchiveError
    from hsmsign.backup.tar import _plain_ustar, read_tar

    keyid = real_key["keyid"]
    good = good_members(real_key)
    variants = {
        "good": good,
        "old-style directory": _replace(good, "public", member("public/", type=tarfile.AREGTYPE)),
        "twice": [*good, member(f"public/{keyid}.pub", real_key["pub"])],
        "not listed": [*good, member("private/" + "0" * 64 + ".key", b"x")],
        "size": _replace(good, f"public/{keyid}.pub", member(f"public/{keyid}.pub", b"short")),
        "dotdot": [*good, member("private/../../etc/x", b"x")],
        "absolute": [*good, member("/etc/x", b"x")],
        "dir for a file": _replace(good, f"public/{keyid}.pub",
                                   member(f"public/{keyid}.pub", type=tarfile.DIRTYPE)),
        "manifest later": [*good[1:], good[0]],
        "empty name": [*good, member("./", b"x")],
    }

    def outcome(source):
        try:
            c = read_tar(source, what="the archive", keep=lambda n: n.endswith((".key", ".pub")))
        except ArchiveError as e:
            return "refused", str(e)
        return sorted(c.files.items()), sorted(c.dirs), c.ignored, c.manifest

    for name, members in variants.items():
        raw = ustar_of(members)
        assert _plain_ustar(raw) is not None, name  # the fast reader took it
        assert outcome(raw) == outcome(io.BufferedReader(io.BytesIO(raw))), name
    assert outcome(ustar_of(good))[0] != "refused"
    # Anything else goes to tarfile: links, GNU headers, a bad checksum, a cut-off archive.
    raw = ustar_of(good)
    for other in (ustar_of([*good, member("l", type=tarfile.SYMTYPE, linkname="x")]),
                  tar_of(good), raw[:148] + b"0000000\0" + raw[156:], raw[:700]):
        assert _plain_ustar(other) is None
