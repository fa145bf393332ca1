"""The backup container: an age-encrypted tar holding `MANIFEST.json` and key files.

Layout of the tar (plain, uncompressed, USTAR; every member uid/gid 0, no user or group
names, files 0600, directories 0700, mtime = the manifest's creation time):

    MANIFEST.json          what the archive holds (see `Manifest`)
    private/               0700
    private/<keyid>.key    a key file exactly as it was on disk (still encrypted)
    public/                0700
    public/<keyid>.pub     its public key

so that `age -d FILE | tar -x` restores it by hand anywhere. The age layer is either a
passphrase (age's scrypt recipient) or one or more X25519 / SSH recipients.

Reading is defensive: an archive is hostile until proved otherwise. Members are read as a
stream; each header is checked (path, type, size, duplicates, the manifest when it came
first) before its data is read, and the sizes of members, of all members together and of the
archive file are capped, so that a bomb stops early. Nothing here writes outside the paths
its caller names, prints or prompts.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import stat
import tarfile
import zlib
from dataclasses import dataclass, field
from datetime import UTC
from pathlib import Path
from typing import Any

from hsmsign.errors import HsmsignError

FORMAT = "hsmsign-backup"
MANIFEST_VERSION = 1
MANIFEST_NAME = "MANIFEST.json"
SUFFIX = ".tar.age"

# Caps. A key file is a few KiB (an encrypted RSA-4096 key is about 3.4 KiB).
MAX_MEMBER_BYTES = 1 << 20  # one key file
MAX_MANIFEST_BYTES = 64 << 20
MAX_TOTAL_BYTES = 256 << 20  # every member together, after decryption / decompression
MAX_MEMBERS = 200_000
# age adds 16 bytes per 64 KiB chunk and a header of a few hundred bytes per recipient.
MAX_ARCHIVE_BYTES = MAX_TOTAL_BYTES + (1 << 20)

FILE_MODE = 0o600
DIR_MODE = 0o700

AGE_MAGIC = b"age-encryption.org/v1\n"
AGE_ARMOR = b"-----BEGIN AGE ENCRYPTED FILE-----"
GZIP_MAGIC = b"\x1f\x8b"

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_MEMBER_NAME = re.compile(r"^(private/(?P<kid>[0-9a-f]{64})\.key|public/(?P<pid>[0-9a-f]{64})\.pub)$")
KEY_DIRS = ("private", "public")


class ArchiveError(HsmsignError):
    """The archive is damaged, hostile, or not what it claims to be."""


# -- manifest ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ManifestFile:
    name: str  # "private/<keyid>.key" or "public/<keyid>.pub"
    sha256: str
    size: int

    def to_json(self) -> dict:
        return {"name": self.name, "sha256": self.sha256, "size": self.size}


@dataclass(frozen=True)
class ManifestKey:
    keyid: str
    role: str
    gun: str | None
    algorithm: str
    store: str  # "file", "token", "yubikey"
    exported: bool  # False: a hardware key, listed for completeness
    files: tuple[ManifestFile, ...] = ()
    location: str | None = None  # hardware keys: token / slot, as `key list` shows it
    slot: str | None = None

    def to_json(self) -> dict:
        out: dict[str, Any] = {"keyid": self.keyid, "role": self.role, "gun": self.gun,
                               "algorithm": self.algorithm, "store": self.store,
                               "exported": self.exported}
        if self.exported:
            out["files"] = [f.to_json() for f in self.files]
        else:
            out["location"] = self.location
            out["slot"] = self.slot
            out["note"] = "hardware key: it cannot leave its token and is not in this archive"
        return out

    @property
    def key_file(self) -> ManifestFile:
        return next(f for f in self.files if f.name.startswith("private/"))


@dataclass(frozen=True)
class Manifest:
    created: str  # RFC 3339 UTC, seconds: "2025-01-31T12:00:00Z"
    hsmsign_version: str
    keys: tuple[ManifestKey, ...]
    version: int = MANIFEST_VERSION

    def to_json(self) -> dict:
        return {"format": FORMAT, "version": self.version, "created": self.created,
                "hsmsign_version": self.hsmsign_version,
                "keys": [k.to_json() for k in self.keys]}

    def to_bytes(self) -> bytes:
        """Canonical, readable and fast: sorted keys, one line per key (the C encoder)."""
        doc = self.to_json()
        keys = doc.pop("keys")
        head = json.dumps(doc, sort_keys=True)[:-1]
        lines = ",\n".join(json.dumps(k, sort_keys=True) for k in keys)
        return f'{head}, "keys": [\n{lines}\n]}}\n'.encode()

    def files(self) -> dict[str, ManifestFile]:
        return {f.name: f for k in self.keys for f in k.files}

    @property
    def exported(self) -> list[ManifestKey]:
        return [k for k in self.keys if k.exported]

    @property
    def hardware(self) -> list[ManifestKey]:
        return [k for k in self.keys if not k.exported]

    @property
    def mtime(self) -> int:
        from datetime import datetime

        return int(datetime.strptime(self.created, "%Y-%m-%dT%H:%M:%SZ")
                   .replace(tzinfo=_utc()).timestamp())


def _utc():

    return UTC


def _bad_manifest(why: str) -> ArchiveError:
    return ArchiveError(f"{MANIFEST_NAME} is invalid: {why}; the archive cannot be trusted")


def parse_manifest(data: bytes) -> Manifest:
    """A validated manifest; an `ArchiveError` saying what is wrong otherwise."""
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise _bad_manifest(f"not JSON ({type(e).__name__})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise _bad_manifest("not an hsmsign backup manifest")
    version = doc.get("version")
    if version != MANIFEST_VERSION:
        raise ArchiveError(
            f"unknown backup format version {version!r} (this hsmsign reads version "
            f"{MANIFEST_VERSION}); restore it with the hsmsign release that made it, or by hand "
            "with `age -d ARCHIVE | tar -x` (see docs/backup.md)"
        )
    created = doc.get("created")
    if not isinstance(created, str) or not re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$", created):
        raise _bad_manifest("'created' is not a UTC time like 2025-01-31T12:00:00Z")
    keys_doc = doc.get("keys")
    if not isinstance(keys_doc, list):
        raise _bad_manifest("'keys' is not a list")
    keys: list[ManifestKey] = []
    seen_keys: set[tuple[str, str]] = set()
    seen_files: set[str] = set()
    for n, k in enumerate(keys_doc):
        keys.append(_parse_key(k, n, seen_keys, seen_files))
    return Manifest(created=created, hsmsign_version=str(doc.get("hsmsign_version", "")),
                    keys=tuple(keys), version=version)


def _parse_key(k: Any, n: int, seen_keys: set, seen_files: set) -> ManifestKey:
    from hsmsign.keys import normalize_role

    where = f"key #{n + 1}"
    if not isinstance(k, dict):
        raise _bad_manifest(f"{where} is not an object")
    keyid = k.get("keyid")
    if not isinstance(keyid, str) or not _HEX64.match(keyid):
        raise _bad_manifest(f"{where} has no valid key ID")
    where = f"key {keyid[:16]}"
    role, gun, alg, store = k.get("role"), k.get("gun"), k.get("algorithm"), k.get("store")
    if not isinstance(role, str) or not isinstance(alg, str) or not isinstance(store, str):
        raise _bad_manifest(f"{where} lacks role, algorithm or store")
    if role != "unknown":
        try:
            normalize_role(role)
        except HsmsignError:
            raise _bad_manifest(f"{where} has an invalid role") from None
    if gun is not None and not isinstance(gun, str):
        raise _bad_manifest(f"{where} has an invalid gun")
    exported = k.get("exported")
    if not isinstance(exported, bool):
        raise _bad_manifest(f"{where} does not say whether it is exported")
    if (keyid, store) in seen_keys:
        raise _bad_manifest(f"{where} is listed twice")
    seen_keys.add((keyid, store))
    if not exported:
        location, slot = k.get("location"), k.get("slot")
        return ManifestKey(keyid, role, gun, alg, store, False, (),
                           location if isinstance(location, str) else None,
                           slot if isinstance(slot, str) else None)
    if store != "file":
        raise _bad_manifest(f"{where} is exported but is not a file key")
    files_doc = k.get("files")
    if not isinstance(files_doc, list) or not files_doc:
        raise _bad_manifest(f"{where} lists no files")
    files = []
    for f in files_doc:
        if not isinstance(f, dict):
            raise _bad_manifest(f"{where} has a file entry that is not an object")
        name, digest, size = f.get("name"), f.get("sha256"), f.get("size")
        if name not in (f"private/{keyid}.key", f"public/{keyid}.pub"):
            raise _bad_manifest(f"{where} lists a file named {_shown(name)}")
        if not isinstance(digest, str) or not _HEX64.match(digest):
            raise _bad_manifest(f"{name} has no valid sha256")
        if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= MAX_MEMBER_BYTES:
            raise _bad_manifest(f"{name} has an invalid size")
        if name in seen_files:
            raise _bad_manifest(f"{name} is listed twice")
        seen_files.add(name)
        files.append(ManifestFile(name, digest, size))
    if not any(f.name.startswith("private/") for f in files):
        raise _bad_manifest(f"{where} lists no private key file")
    return ManifestKey(keyid, role, gun, alg, store, True, tuple(files))


def _shown(name: Any) -> str:
    """A member name fit for an error line: quoted, non-printables escaped, shortened."""
    text = repr(str(name))
    return text if len(text) <= 120 else text[:117] + "...'"


# -- writing the tar -----------------------------------------------------------------------


def _tarinfo_header(name: str, size: int, mtime: int, *, directory: bool = False) -> bytes:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
    info.mode = DIR_MODE if directory else FILE_MODE
    info.size = 0 if directory else size
    info.mtime = mtime
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "strict")


class _Headers:
    """USTAR headers for regular files: tarfile's own header for one TarInfo, with the name,
    size and checksum fields filled in per member (tobuf costs ~25 us a member; this ~2 us).
    Byte for byte what `_tarinfo_header` gives; names too long for the field fall back to it."""

    def __init__(self, mtime: int):
        self.mtime = mtime
        self.template = bytearray(_tarinfo_header("x", 0, mtime))

    def file(self, name: str, size: int) -> bytes:
        raw = name.encode()
        if len(raw) > 100 or size >= 8 ** 11:
            return _tarinfo_header(name, size, self.mtime)
        header = bytearray(self.template)
        header[0:100] = raw.ljust(100, b"\0")
        header[124:136] = b"%011o\0" % size
        header[148:156] = b"        "
        header[148:156] = b"%06o\0 " % sum(header)
        return bytes(header)


def build_tar(manifest: Manifest, members: dict[str, bytes],
              manifest_bytes: bytes | None = None) -> bytes:
    """The plain tar: the manifest first, then each key directory and its files, sorted.

    Headers are made here (no user/group look-ups, no stat): fast and the same on every host.
    """
    mtime = manifest.mtime
    headers = _Headers(mtime)
    manifest_bytes = manifest.to_bytes() if manifest_bytes is None else manifest_bytes
    parts = [headers.file(MANIFEST_NAME, len(manifest_bytes)), manifest_bytes,
             b"\0" * (-len(manifest_bytes) % tarfile.BLOCKSIZE)]
    for directory in KEY_DIRS:
        names = sorted(n for n in members if n.startswith(directory + "/"))
        if not names:
            continue
        parts.append(_tarinfo_header(directory, 0, mtime, directory=True))
        for name in names:
            data = members[name]
            parts += (headers.file(name, len(data)), data,
                      b"\0" * (-len(data) % tarfile.BLOCKSIZE))
    parts.append(b"\0" * (2 * tarfile.BLOCKSIZE))  # end of archive
    return b"".join(parts)


# -- age -----------------------------------------------------------------------------------


@dataclass
class Encryption:
    """How an archive is encrypted: a passphrase, or recipients (public keys)."""

    passphrase: str | None = None
    recipients: list[Any] = field(default_factory=list)  # pyrage recipients
    recipient_names: list[str] = field(default_factory=list)  # for reports (public, not secret)

    @property
    def kind(self) -> str:
        return "passphrase" if self.passphrase is not None else "recipients"

    def __repr__(self) -> str:  # never show the passphrase
        return f"Encryption(kind={self.kind!r}, recipients={self.recipient_names!r})"


def encrypt(plaintext: bytes, encryption: Encryption, extra_recipients: list[Any] = ()) -> bytes:
    import pyrage

    try:
        if encryption.passphrase is not None:
            return pyrage.passphrase.encrypt(plaintext, encryption.passphrase)
        return pyrage.encrypt(plaintext, [*encryption.recipients, *extra_recipients])
    except pyrage.EncryptError as e:
        raise HsmsignError(f"age encryption failed: {e}") from None


def parse_recipient(text: str, where: str, *, show: bool = True) -> Any:
    """An age recipient (`age1...`) or an SSH public key (`ssh-ed25519 ...`, `ssh-rsa ...`).

    Errors say `where` (and, with `show`, the text: a recipient is public), never echo a
    secret key given by mistake."""
    import pyrage

    text = text.strip()
    if text.upper().startswith(("AGE-SECRET-KEY-", "AGE-PLUGIN-")):
        raise HsmsignError(
            f"{where}: that is an age identity (a secret key), not a recipient; give its "
            "public key (`age-keygen -y FILE`), and keep the identity secret"
        )
    try:
        if text.startswith("age1"):
            return pyrage.x25519.Recipient.from_str(text)
        if text.startswith("ssh-"):
            return pyrage.ssh.Recipient.from_str(text)
    except (pyrage.RecipientError, ValueError):
        pass
    shown = f" {text[:80]!r}" if show else ""
    raise HsmsignError(
        f"{where}{shown} is not an age recipient (age1...) or SSH public key; "
        "make one with `age-keygen` and pass its public key"
    )


def read_recipients_file(path: Path) -> list[tuple[str, Any]]:
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise HsmsignError(f"cannot read recipients file {path}: {getattr(e, 'strerror', e)}") from None
    out = []
    for n, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        out.append((line, parse_recipient(line, f"{path} line {n}", show=False)))
    if not out:
        raise HsmsignError(f"recipients file {path} holds no recipient")
    return out


def read_identity_file(path: Path) -> list[Any]:
    """Identities from an age identity file (`age-keygen` output) or an SSH private key.

    Error messages name the file and line, never its content.
    """
    import pyrage

    try:
        data = path.read_bytes()
    except OSError as e:
        raise HsmsignError(f"cannot read identity file {path}: {e.strerror}") from None
    if data.startswith(AGE_MAGIC) or data.lstrip().startswith(AGE_ARMOR):
        raise HsmsignError(f"identity file {path} is itself age-encrypted; decrypt it with "
                           "`age -d` first")
    if b"-----BEGIN OPENSSH PRIVATE KEY-----" in data or b"-----BEGIN RSA PRIVATE KEY-----" in data:
        try:
            return [pyrage.ssh.Identity.from_buffer(data)]
        except (pyrage.IdentityError, ValueError):
            raise HsmsignError(f"identity file {path} is an SSH key pyrage cannot use "
                               "(passphrase-protected SSH keys are not supported)") from None
    identities = []
    try:
        text = data.decode()
    except UnicodeDecodeError:
        raise HsmsignError(f"identity file {path} is not an age identity file") from None
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            identities.append(pyrage.x25519.Identity.from_str(line))
        except (pyrage.IdentityError, ValueError):
            raise HsmsignError(f"identity file {path} line {n} is not an age identity "
                               "(AGE-SECRET-KEY-1...)") from None
    if not identities:
        raise HsmsignError(f"identity file {path} holds no identity")
    return identities


def age_stanzas(ciphertext: bytes) -> list[str]:
    """The stanza types of an age header ("scrypt", "X25519", ...), binary or armored."""
    data = ciphertext
    if data.lstrip().startswith(AGE_ARMOR):
        import base64

        body = data.lstrip().split(b"\n", 1)[1] if b"\n" in data else b""
        body = body.split(b"-----END", 1)[0]
        text = b"".join(body.split())[:8192]
        try:
            data = base64.b64decode(text[:len(text) // 4 * 4])
        except ValueError:
            return []
    if not data.startswith(AGE_MAGIC):
        return []
    out = []
    for line in data[:1 << 16].split(b"\n")[1:]:
        if line.startswith(b"---"):
            break
        if line.startswith(b"-> "):
            out.append(line[3:].split(b" ", 1)[0].decode("ascii", "replace"))
    return out


def decrypt(ciphertext: bytes, *, what: str, passphrase: str | None = None,
            identities: list[Any] = (), identity_names: str = "") -> bytes | None:
    """The plaintext; None for a wrong passphrase (so a prompt can ask again).

    A wrong identity and a damaged or truncated file are errors that say which.
    """
    import pyrage

    try:
        if passphrase is not None:
            return pyrage.passphrase.decrypt(ciphertext, passphrase)
        return pyrage.decrypt(ciphertext, list(identities))
    except pyrage.DecryptError as e:
        reason = str(e)
    if passphrase is not None and reason == "Decryption failed":
        return None  # the scrypt stanza did not open: wrong passphrase (or a damaged header)
    if reason == "No matching keys found":
        raise ArchiveError(f"none of the identities in {identity_names} can decrypt {what} "
                           "(a wrong identity, or a damaged archive header)")
    raise ArchiveError(f"{what} is damaged or truncated (age: {reason}); "
                       "nothing was read from it; use another copy of the backup")


# -- reading archives ----------------------------------------------------------------------


class _Capped(io.RawIOBase):
    """A reader that refuses to deliver more than `limit` bytes: decompression stops early."""

    def __init__(self, raw, limit: int, what: str):
        self.raw = raw
        self.limit = limit
        self.count = 0
        self.what = what

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        want = min(len(buffer), self.limit + 1 - self.count)
        if want <= 0:
            raise ArchiveError(
                f"{self.what} unpacks to more than {_mib(self.limit)}: refused "
                "(a backup of key files is far smaller; this looks like a decompression bomb)"
            )
        data = self.raw.read(want)
        self.count += len(data)
        if self.count > self.limit:
            raise ArchiveError(
                f"{self.what} unpacks to more than {_mib(self.limit)}: refused "
                "(a backup of key files is far smaller; this looks like a decompression bomb)"
            )
        n = len(data)
        buffer[:n] = data
        return n


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.0f} MiB" if n >= 1 << 20 else f"{n} bytes"


def _size(n: int) -> str:
    return f"{n / (1 << 30):.1f} GiB" if n >= 1 << 30 else _mib(n)


def read_archive_file(path: Path) -> bytes:
    """The bytes of an archive file, refusing one too large to be a backup before reading it."""
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise ArchiveError(f"{path} is not a regular file; give the archive file")
            size = st.st_size
            if size > MAX_ARCHIVE_BYTES:
                raise ArchiveError(
                    f"{path} is {_size(size)}; a backup of key files is at most "
                    f"{_mib(MAX_ARCHIVE_BYTES)}: refused without reading it"
                )
            data = f.read(MAX_ARCHIVE_BYTES + 1)
    except IsADirectoryError:
        raise HsmsignError(f"{path} is a directory; give the archive file") from None
    except FileNotFoundError:
        raise HsmsignError(f"{path} does not exist") from None
    except OSError as e:
        raise HsmsignError(f"cannot read {path}: {e.strerror}") from None
    if len(data) > MAX_ARCHIVE_BYTES:
        raise ArchiveError(f"{path} is larger than {_mib(MAX_ARCHIVE_BYTES)}: refused")
    return data


def container_kind(data: bytes) -> str:
    """"age", "gzip" or "tar" (anything else is refused)."""
    if data.startswith(AGE_MAGIC) or data.lstrip()[:64].startswith(AGE_ARMOR):
        return "age"
    if data.startswith(GZIP_MAGIC):
        return "gzip"
    if len(data) >= 512 and data[257:262] == b"ustar":
        return "tar"
    if len(data) >= 1024 and not data.strip(b"\0"):
        return "tar"  # an empty tar
    return "unknown"


@dataclass
class TarContents:
    """The regular files and directories of a tar, by normalized name."""

    files: dict[str, bytes] = field(default_factory=dict)
    dirs: set[str] = field(default_factory=set)
    manifest: Manifest | None = None
    ignored: list[str] = field(default_factory=list)  # files whose data was not kept


_TYPE_NAMES = {
    tarfile.SYMTYPE: "a symbolic link", tarfile.LNKTYPE: "a hard link",
    tarfile.CHRTYPE: "a character device", tarfile.BLKTYPE: "a block device",
    tarfile.FIFOTYPE: "a FIFO", tarfile.GNUTYPE_SPARSE: "a sparse file",
    tarfile.CONTTYPE: "a contiguous file",
}


def safe_member_name(name: str) -> str:
    """The member name relative to the archive root ("./a/b" -> "a/b"); hostile paths refused."""
    if "\0" in name or "\\" in name:
        raise ArchiveError(f"member {_shown(name)} has an unsafe name: refused")
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        raise ArchiveError(f"member {_shown(name)} has an absolute path: refused")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ArchiveError(f"member {_shown(name)} has a '..' path component: refused")
    return "/".join(parts)


def read_tar(source: bytes | Any, *, what: str, keep: Any = None) -> TarContents:
    """Read a tar (bytes in memory, or a stream) member by member, refusing anything hostile
    before reading it.

    `keep(name)` says whether a regular file's data is kept (default: all). When
    `MANIFEST.json` comes first (as hsmsign writes it) every later header is checked against
    it at once: a member not listed, or of another size, stops the reading there.
    """
    contents = TarContents()
    raw = source if isinstance(source, bytes) else None
    try:
        # In memory: random access ("r:"); a decompressing stream: strictly forward ("r|").
        fileobj, mode = (io.BytesIO(raw), "r:") if raw is not None else (source, "r|")
        with tarfile.open(fileobj=fileobj, mode=mode, bufsize=tarfile.RECORDSIZE) as tar:
            _read_members(tar, contents, what, keep, raw)
    except tarfile.TarError as e:
        raise ArchiveError(f"{what} is not a valid tar archive ({e})") from None
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise ArchiveError(f"{what} is truncated or corrupt ({e or type(e).__name__})") from None
    if MANIFEST_NAME in contents.files and contents.manifest is None:
        contents.manifest = parse_manifest(contents.files[MANIFEST_NAME])
    return contents


def _read_members(tar: tarfile.TarFile, contents: TarContents, what: str, keep: Any,
                  raw: bytes | None) -> None:
    total = 0
    count = 0
    expected: dict[str, ManifestFile] | None = None
    seen_ignored: set[str] = set()
    while True:
        member = tar.next()
        if member is None:
            break
        count += 1
        if count > MAX_MEMBERS:
            raise ArchiveError(f"{what} has more than {MAX_MEMBERS} members: refused")
        name = safe_member_name(member.name)
        shown = _shown(member.name)
        if member.type in _TYPE_NAMES or member.issparse():
            kind = "a sparse file" if member.issparse() else _TYPE_NAMES[member.type]
            raise ArchiveError(f"member {shown} is {kind}; a backup holds only regular "
                               "files and directories: refused")
        if member.isdir():
            if name in contents.dirs or name in contents.files or name in seen_ignored:
                raise ArchiveError(f"member {shown} appears twice: refused")
            if expected is not None and name in expected:
                raise ArchiveError(f"member {shown} is a directory where the manifest "
                                   "lists a file: refused")
            contents.dirs.add(name)
            continue
        if member.type not in (tarfile.REGTYPE, tarfile.AREGTYPE):
            raise ArchiveError(f"member {shown} is of tar type {member.type!r}; a backup "
                               "holds only regular files and directories: refused")
        if not name:
            raise ArchiveError(f"member {shown} has no name: refused")
        if name in contents.files or name in contents.dirs or name in seen_ignored:
            raise ArchiveError(f"member {shown} appears twice: refused")
        limit = MAX_MANIFEST_BYTES if name == MANIFEST_NAME else MAX_MEMBER_BYTES
        if member.size > limit:
            raise ArchiveError(
                f"member {shown} announces {_size(member.size)}; a key file is at most "
                f"{_mib(MAX_MEMBER_BYTES)}: refused before reading it"
            )
        if expected is not None:
            listed = expected.get(name)
            if listed is None:
                raise ArchiveError(f"member {shown} is not listed in the manifest: refused")
            if member.size != listed.size:
                raise ArchiveError(f"member {shown} is {member.size} bytes but the manifest "
                                   f"says {listed.size}: refused")
        total += member.size
        if total > MAX_TOTAL_BYTES:
            raise ArchiveError(f"{what} holds more than {_mib(MAX_TOTAL_BYTES)} of files: "
                               "refused (a backup of key files is far smaller)")
        wanted = keep is None or name == MANIFEST_NAME or keep(name)
        if not wanted:
            contents.ignored.append(name)
            seen_ignored.add(name)
            continue
        if raw is not None:  # in memory: a slice, no copy through tarfile's file object
            data = raw[member.offset_data:member.offset_data + member.size]
        else:
            data = tar.extractfile(member).read(member.size)  # type: ignore[union-attr]
        if len(data) != member.size:
            raise ArchiveError(f"{what} is truncated: member {shown} is cut short")
        contents.files[name] = data
        if name == MANIFEST_NAME and count == 1:
            contents.manifest = parse_manifest(data)
            expected = contents.manifest.files()


def open_plaintext(data: bytes, *, what: str) -> bytes | Any:
    """A plain tar as `read_tar` takes it: the bytes themselves, or for gzip a stream that
    decompresses on the fly within the caps."""
    if data.startswith(GZIP_MAGIC):
        gz = gzip.GzipFile(fileobj=io.BytesIO(data), mode="rb")
        return io.BufferedReader(_Capped(gz, MAX_TOTAL_BYTES + MAX_MANIFEST_BYTES, what),
                                 buffer_size=1 << 16)
    return data


def check_contents(contents: TarContents, *, what: str, deep: bool = True) -> Manifest:
    """Every member is what the manifest says, and the manifest's every file is there.

    `deep` also checks each key's members against each other: the key file's headers say
    the manifest's role and GUN, and the public key has the key ID in its name."""
    manifest = contents.manifest
    if manifest is None:
        raise ArchiveError(f"{what} has no {MANIFEST_NAME}: not an hsmsign backup")
    expected = manifest.files()
    for name in contents.dirs:
        if name not in ("", *KEY_DIRS):
            raise ArchiveError(f"member {_shown(name)} is a directory an hsmsign backup does "
                               "not have: refused")
    for name in contents.ignored:
        raise ArchiveError(f"member {_shown(name)} is not listed in the manifest: refused")
    for name, data in contents.files.items():
        if name == MANIFEST_NAME:
            continue
        listed = expected.get(name)
        if listed is None:
            raise ArchiveError(f"member {_shown(name)} is not listed in the manifest: refused")
        if len(data) != listed.size:
            raise ArchiveError(f"member {_shown(name)} is {len(data)} bytes but the manifest "
                               f"says {listed.size}: refused")
        if hashlib.sha256(data).hexdigest() != listed.sha256:
            raise ArchiveError(f"member {_shown(name)} does not match its SHA-256 in the "
                               "manifest: the archive was changed or is damaged")
    for name in expected:
        if name not in contents.files:
            raise ArchiveError(f"the manifest lists {name} but the archive does not hold it: "
                               "the archive is incomplete")
    if deep:
        for key in manifest.exported:
            _check_key_members(key, contents.files)
    return manifest


def _check_key_members(key: ManifestKey, files: dict[str, bytes]) -> None:
    """The key file's headers say the manifest's role, and the public key has the key's ID."""
    from hsmsign import pkcs8
    from hsmsign.keys import key_id, load_public_key_pem

    name = key.key_file.name
    try:
        block = pkcs8.read_private_key_pem(files[name])
    except pkcs8.KeyFormatError as e:
        raise ArchiveError(f"member {name} is not a key file ({e})") from None
    if not block.encrypted:
        raise ArchiveError(f"member {name} is a private key in the clear: refused (hsmsign "
                           "backs up only encrypted key files)")
    headers = {k.lower(): v for k, v in block.headers.items()}
    if headers.get("role", "unknown") != key.role or (headers.get("gun") or None) != key.gun:
        raise ArchiveError(f"member {name} says role {headers.get('role')!r} / gun "
                           f"{headers.get('gun')!r} but the manifest says {key.role!r} / "
                           f"{key.gun!r}: refused")
    public = f"public/{key.keyid}.pub"
    if public in files:
        try:
            actual = key_id(load_public_key_pem(files[public]))
        except HsmsignError:
            raise ArchiveError(f"member {public} is not a public key: refused") from None
        if actual != key.keyid:
            raise ArchiveError(f"member {public} holds key {actual[:16]}..., not the key its "
                               "name says: refused")


def member_name_is_key(name: str) -> bool:
    return bool(_MEMBER_NAME.match(name))
