"""`backup verify`: decrypt, check every member against the manifest, and optionally prove
that each key file opens with its role's passphrase."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from hsmsign.backup.format import ArchiveError, Progress, no_progress
from hsmsign.backup.manifest import Manifest, ManifestKey, key_summary
from hsmsign.backup.reading import open_archive

if TYPE_CHECKING:
    from hsmsign.secrets import Secrets


@dataclass
class VerifyResult:
    path: str
    manifest: Manifest
    encryption: str
    members: int
    passphrases_checked: bool = False

    def to_json(self) -> dict:
        return {
            "archive": self.path,
            "created": self.manifest.created,
            "hsmsign_version": self.manifest.hsmsign_version,
            "format_version": self.manifest.version,
            "encryption": self.encryption,
            "members": self.members,
            "key_count": len(self.manifest.exported),
            "hardware_key_count": len(self.manifest.hardware),
            "passphrases_checked": self.passphrases_checked,
            "keys": [key_summary(k) for k in self.manifest.keys],
        }


def verify_backup(path: Path, secrets: Secrets, identity_files: list[Path] = (), *,
                  check_passphrases: bool = False,
                  progress: Progress = no_progress) -> VerifyResult:
    opened = open_archive(path, secrets, identity_files)
    manifest = opened.manifest
    assert manifest is not None and opened.encryption is not None
    if check_passphrases:
        keys = manifest.exported
        for n, key in enumerate(keys, 1):
            _check_passphrase(key, opened.contents.files[key.key_file.name], secrets)
            progress("Checking passphrases", n, len(keys))
    return VerifyResult(str(path), manifest, opened.encryption, len(opened.contents.files),
                        check_passphrases)


def _check_passphrase(key: ManifestKey, data: bytes, secrets: Secrets) -> None:
    from hsmsign import pkcs8
    from hsmsign.keys import key_id

    role = key.role if key.role != "unknown" else "delegation"
    purpose = f"{key.role} key {key.keyid[:7]} in the backup"

    def attempt(passphrase: str):
        try:
            return pkcs8.load_private_key(data, passphrase.encode())
        except pkcs8.WrongPassphrase:
            return None
        except pkcs8.KeyFormatError as e:
            raise ArchiveError(f"{key.key_file.name} in the backup is corrupt ({e})") from None

    private = secrets.unlock(role, purpose, attempt)
    if key_id(private.public_key()) != key.keyid:
        raise ArchiveError(f"{key.key_file.name} in the backup holds a different key than its "
                           "name says")
