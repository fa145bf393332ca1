"""The backup archive's format: one file, an age-encrypted tar of the key files and a manifest.

Layout of the tar (plain, uncompressed, USTAR; every member uid/gid 0, no user or group
names, files 0600, directories 0700, mtime = the manifest's creation time):

    MANIFEST.json          what the archive holds (see `manifest.Manifest`)
    private/               0700
    private/<keyid>.key    a key file exactly as it was on disk (still encrypted)
    public/                0700
    public/<keyid>.pub     its public key

so that `age -d FILE | tar -x` restores it by hand anywhere. The age layer is either a
passphrase (age's scrypt recipient) or one or more X25519 / SSH recipients.

Reading is defensive: an archive is hostile until proved otherwise, and the caps below stop a
bomb early. The modules of this package: `manifest` (the manifest, and members checked against
it), `tar` (writing and reading the tar), `age` (encryption), `reading` (from a file to checked
contents), `create`, `verify` and `restore`.
"""

from __future__ import annotations

from collections.abc import Callable
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
KEY_DIRS = ("private", "public")


class ArchiveError(HsmsignError):
    """The archive is damaged, hostile, or not what it claims to be."""


def shown(name: Any) -> str:
    """A member name fit for an error line: quoted, non-printables escaped, shortened."""
    text = repr(str(name))
    return text if len(text) <= 120 else text[:117] + "...'"


def mib(n: int) -> str:
    return f"{n / (1 << 20):.0f} MiB" if n >= 1 << 20 else f"{n} bytes"


def size_text(n: int) -> str:
    return f"{n / (1 << 30):.1f} GiB" if n >= 1 << 30 else mib(n)


# progress(task, done, total): called as work advances; the CLI draws a bar from it.
Progress = Callable[[str, int, int], None]


def no_progress(task: str, done: int, total: int) -> None:
    pass
