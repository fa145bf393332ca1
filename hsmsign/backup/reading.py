"""Opening an archive: from the file, through its container (age, or a plain tar / tar.gz of a
trust dir) and decryption, to its members read and checked against the manifest. Verify and
restore both start here."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from hsmsign.backup.age import age_stanzas, decrypt, read_identity_file
from hsmsign.backup.format import (
    AGE_ARMOR,
    AGE_MAGIC,
    GZIP_MAGIC,
    MAX_ARCHIVE_BYTES,
    ArchiveError,
    mib,
    size_text,
)
from hsmsign.backup.manifest import Manifest, check_contents
from hsmsign.backup.tar import TarContents, open_plaintext, read_tar
from hsmsign.errors import HsmsignError

if TYPE_CHECKING:
    from hsmsign.secrets import Secrets


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
                    f"{path} is {size_text(size)}; a backup of key files is at most "
                    f"{mib(MAX_ARCHIVE_BYTES)}: refused without reading it"
                )
            data = f.read(MAX_ARCHIVE_BYTES + 1)
    except IsADirectoryError:
        raise HsmsignError(f"{path} is a directory; give the archive file") from None
    except FileNotFoundError:
        raise HsmsignError(f"{path} does not exist") from None
    except OSError as e:
        raise HsmsignError(f"cannot read {path}: {e.strerror}") from None
    if len(data) > MAX_ARCHIVE_BYTES:
        raise ArchiveError(f"{path} is larger than {mib(MAX_ARCHIVE_BYTES)}: refused")
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
class Opened:
    """A decrypted archive, its members read and checked."""

    path: Path
    container: str  # "age", "gzip", "tar"
    encryption: str | None  # "passphrase", "recipients", or None for a plain tar
    contents: TarContents
    manifest: Manifest | None  # None: a key tree without a manifest (a trust dir)


def _decrypt_archive(path: Path, data: bytes, secrets: Secrets,
                     identity_files: list[Path]) -> tuple[bytes, str]:
    what = str(path)
    stanzas = age_stanzas(data)
    if "scrypt" in stanzas:
        plaintext = secrets.unlock_backup(
            f"backup {path.name}",
            lambda passphrase: decrypt(data, what=what, passphrase=passphrase))
        return plaintext, "passphrase"
    if not set(stanzas) & {"X25519", "ssh-ed25519", "ssh-rsa"}:
        raise HsmsignError(f"{path}: its age header names neither a passphrase nor a recipient "
                           f"hsmsign knows ({', '.join(stanzas) or 'none'}); it is damaged, or "
                           "made for an age plugin: use another copy, or the plugin with `age -d`")
    if not identity_files:
        raise HsmsignError(f"{path} is encrypted to age recipients; pass --identity FILE "
                           "(the age identity file of one of them)")
    identities = [i for f in identity_files for i in read_identity_file(Path(f))]
    names = ", ".join(str(f) for f in identity_files)
    plaintext = decrypt(data, what=what, identities=identities, identity_names=names)
    assert plaintext is not None
    return plaintext, "recipients"


def _keep(name: str) -> bool:
    return name.endswith((".key", ".pem", ".pub"))


def open_archive(path: Path, secrets: Secrets, identity_files: list[Path] = (), *,
                 allow_plain: bool = False) -> Opened:
    path = Path(path)
    data = read_archive_file(path)
    container = container_kind(data)
    if container == "age":
        plaintext, encryption = _decrypt_archive(path, data, secrets, list(identity_files))
    elif container in ("gzip", "tar") and allow_plain:
        plaintext, encryption = data, None
    elif container in ("gzip", "tar"):
        raise HsmsignError(f"{path} is a plain {'tar.gz' if container == 'gzip' else 'tar'}, "
                           "not an hsmsign backup; `hsmsign backup restore` imports the keys "
                           "of a notary / docker trust dir from it")
    else:
        raise HsmsignError(f"{path} is not an hsmsign backup (.tar.age), a tar or a tar.gz")
    what = str(path)
    contents = read_tar(open_plaintext(plaintext, what=what), what=what,
                                keep=_keep)
    manifest = None
    if contents.manifest is not None or not allow_plain:
        manifest = check_contents(contents, what=what)
    return Opened(path, container, encryption, contents, manifest)
