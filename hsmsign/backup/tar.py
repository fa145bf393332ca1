"""The tar inside a backup: written byte for byte the same on every host, and read member by
member with each header checked (path, type, size, duplicates, the manifest when it came first)
before its data is read."""

from __future__ import annotations

import gzip
import io
import re
import tarfile
import zlib
from dataclasses import dataclass, field
from typing import Any

from hsmsign.backup.format import (
    DIR_MODE,
    FILE_MODE,
    GZIP_MAGIC,
    KEY_DIRS,
    MANIFEST_NAME,
    MAX_MANIFEST_BYTES,
    MAX_MEMBER_BYTES,
    MAX_MEMBERS,
    MAX_TOTAL_BYTES,
    ArchiveError,
    mib,
    shown,
    size_text,
)
from hsmsign.backup.manifest import Manifest, ManifestFile, parse_manifest


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
    size and checksum fields filled in per member (tobuf costs ~25 us a member; this ~1 us).
    Byte for byte what `_tarinfo_header` gives; names too long for the field fall back to it."""

    def __init__(self, mtime: int):
        self.mtime = mtime
        template = _tarinfo_header("x", 0, mtime)
        self.mode_to_mtime = template[100:124]  # the fields between name and size
        self.mtime_field = template[136:148]
        self.rest = template[156:]
        # The checksum counts its own field as spaces; name and size are added per member.
        self.fixed_sum = sum(self.mode_to_mtime) + sum(self.mtime_field) + 8 * 32 + sum(self.rest)

    def file(self, name: str, size: int) -> bytes:
        raw = name.encode()
        if len(raw) > 100 or size >= 8 ** 11:
            return _tarinfo_header(name, size, self.mtime)
        size_field = b"%011o\0" % size
        checksum = self.fixed_sum + sum(raw) + sum(size_field)
        return b"".join((raw.ljust(100, b"\0"), self.mode_to_mtime, size_field, self.mtime_field,
                         b"%06o\0 " % checksum, self.rest))


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
                f"{self.what} unpacks to more than {mib(self.limit)}: refused "
                "(a backup of key files is far smaller; this looks like a decompression bomb)"
            )
        data = self.raw.read(want)
        self.count += len(data)
        if self.count > self.limit:
            raise ArchiveError(
                f"{self.what} unpacks to more than {mib(self.limit)}: refused "
                "(a backup of key files is far smaller; this looks like a decompression bomb)"
            )
        n = len(data)
        buffer[:n] = data
        return n


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
        raise ArchiveError(f"member {shown(name)} has an unsafe name: refused")
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        raise ArchiveError(f"member {shown(name)} has an absolute path: refused")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ArchiveError(f"member {shown(name)} has a '..' path component: refused")
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
    plain = _plain_ustar(raw) if raw is not None else None
    try:
        if plain is not None:  # as hsmsign writes it: the same checks, headers read faster
            _read_members(plain, contents, what, keep, raw)
            return _with_manifest(contents)
        # In memory: random access ("r:"); a decompressing stream: strictly forward ("r|").
        fileobj, mode = (io.BytesIO(raw), "r:") if raw is not None else (source, "r|")
        with tarfile.open(fileobj=fileobj, mode=mode, bufsize=tarfile.RECORDSIZE) as tar:
            _read_members(tar, contents, what, keep, raw)
    except tarfile.TarError as e:
        raise ArchiveError(f"{what} is not a valid tar archive ({e})") from None
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise ArchiveError(f"{what} is truncated or corrupt ({e or type(e).__name__})") from None
    return _with_manifest(contents)


def _with_manifest(contents: TarContents) -> TarContents:
    if MANIFEST_NAME in contents.files and contents.manifest is None:
        contents.manifest = parse_manifest(contents.files[MANIFEST_NAME])
    return contents


class _Header:
    """What `_read_members` reads of a `tarfile.TarInfo`."""

    __slots__ = ("name", "type", "size", "offset_data")

    def __init__(self, name: str, type_: bytes, size: int, offset_data: int):
        self.name, self.type, self.size, self.offset_data = name, type_, size, offset_data

    def isdir(self) -> bool:
        return self.type == tarfile.DIRTYPE

    def issparse(self) -> bool:
        return False


class _HeaderList:
    """The headers of a plain USTAR tar, handed out as `TarFile.next()` does."""

    def __init__(self, headers: list[_Header]):
        self._next = iter(headers).__next__

    def next(self) -> _Header | None:
        try:
            return self._next()
        except StopIteration:
            return None


_USTAR_MAGIC = b"ustar\x0000"
_ZERO_BLOCK = bytes(tarfile.BLOCKSIZE)
_PLAIN_TYPES = (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.DIRTYPE)


def _octal(field: bytes) -> int:
    """A numeric header field as tarfile reads it (octal up to the first NUL)."""
    return int(field.split(b"\0", 1)[0].decode("ascii").strip() or "0", 8)


def _plain_ustar(raw: bytes) -> _HeaderList | None:
    """The headers of `raw` when it is the plainest tar, as hsmsign writes it: POSIX USTAR
    headers with a good checksum, regular files and directories only, no name prefix, no
    base-256 numbers, closed by a zero block. tarfile spends ~25 us on each header (10,000
    keys: 20,000 of them); this ~3 us. For anything else None: tarfile reads it, and says
    what is wrong. Either way `_read_members` makes every check."""
    headers: list[_Header] = []
    offset = 0
    while True:
        block = raw[offset:offset + tarfile.BLOCKSIZE]
        if len(block) < tarfile.BLOCKSIZE or len(headers) > MAX_MEMBERS:
            return None
        if block == _ZERO_BLOCK:
            return _HeaderList(headers) if headers else None
        type_ = block[156:157]
        if (block[257:265] != _USTAR_MAGIC or type_ not in _PLAIN_TYPES
                or block[345:500].strip(b"\0") or block[124] & 0x80):
            return None
        try:
            for start, end in ((100, 108), (108, 116), (116, 124), (136, 148)):
                _octal(block[start:end])  # mode, uid, gid, mtime: tarfile refuses garbage
            size = _octal(block[124:136])
            checksum = _octal(block[148:156])
        except ValueError:
            return None
        if checksum != 256 + sum(block[:148]) + sum(block[156:]) or size < 0:
            return None
        name = block[:100].split(b"\0", 1)[0].decode(tarfile.ENCODING, "surrogateescape")
        if type_ == tarfile.AREGTYPE and name.endswith("/"):
            type_ = tarfile.DIRTYPE  # as tarfile reads an old-style directory
        if type_ == tarfile.DIRTYPE:
            if size:
                return None
            name = name.rstrip("/")
        headers.append(_Header(name, type_, size, offset + tarfile.BLOCKSIZE))
        offset += tarfile.BLOCKSIZE + -(-size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE


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
        quoted = shown(member.name)
        if member.type in _TYPE_NAMES or member.issparse():
            kind = "a sparse file" if member.issparse() else _TYPE_NAMES[member.type]
            raise ArchiveError(f"member {quoted} is {kind}; a backup holds only regular "
                               "files and directories: refused")
        if member.isdir():
            if name in contents.dirs or name in contents.files or name in seen_ignored:
                raise ArchiveError(f"member {quoted} appears twice: refused")
            if expected is not None and name in expected:
                raise ArchiveError(f"member {quoted} is a directory where the manifest "
                                   "lists a file: refused")
            contents.dirs.add(name)
            continue
        if member.type not in (tarfile.REGTYPE, tarfile.AREGTYPE):
            raise ArchiveError(f"member {quoted} is of tar type {member.type!r}; a backup "
                               "holds only regular files and directories: refused")
        if not name:
            raise ArchiveError(f"member {quoted} has no name: refused")
        if name in contents.files or name in contents.dirs or name in seen_ignored:
            raise ArchiveError(f"member {quoted} appears twice: refused")
        limit = MAX_MANIFEST_BYTES if name == MANIFEST_NAME else MAX_MEMBER_BYTES
        if member.size > limit:
            raise ArchiveError(
                f"member {quoted} announces {size_text(member.size)}; a key file is at most "
                f"{mib(MAX_MEMBER_BYTES)}: refused before reading it"
            )
        if expected is not None:
            listed = expected.get(name)
            if listed is None:
                raise ArchiveError(f"member {quoted} is not listed in the manifest: refused")
            if member.size != listed.size:
                raise ArchiveError(f"member {quoted} is {member.size} bytes but the manifest "
                                   f"says {listed.size}: refused")
        total += member.size
        if total > MAX_TOTAL_BYTES:
            raise ArchiveError(f"{what} holds more than {mib(MAX_TOTAL_BYTES)} of files: "
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
            raise ArchiveError(f"{what} is truncated: member {quoted} is cut short")
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
