"""Encrypted backups of the file keys, and safe restores (see docs/backup.md).

    create_backup   every file key of a home (and a record of its hardware keys) into one
                    age-encrypted tar, written to each destination, read back and decrypted
                    before anything is renamed into place
    verify_backup   decrypt, check every member against the manifest, optionally prove that
                    each key file opens with its role's passphrase
    restore_backup  what would be added / is already there / conflicts; then a staged,
                    all-or-nothing write into the home

The archive format is in `format`, `manifest`, `tar` and `age`; `reading` follows an archive
from its file to checked contents. Nothing here prints or prompts: secrets come from
`Secrets`, progress goes to a callback, results are returned.
"""

from hsmsign.backup.age import (
    Encryption,
    parse_recipient,
    read_identity_file,
    read_recipients_file,
)
from hsmsign.backup.create import (
    ArchiveCopy,
    CreateResult,
    archive_name,
    backup_file_keys,
    collect,
    create_backup,
    resolve_destinations,
    same_disk_warnings,
)
from hsmsign.backup.format import ArchiveError, Progress
from hsmsign.backup.manifest import Manifest, ManifestFile, ManifestKey, parse_manifest
from hsmsign.backup.reading import Opened, open_archive
from hsmsign.backup.restore import (
    RestoreConflict,
    RestoreEntry,
    RestoreResult,
    restore_backup,
)
from hsmsign.backup.verify import VerifyResult, verify_backup

__all__ = ["ArchiveCopy", "ArchiveError", "CreateResult", "Encryption", "Manifest", "ManifestFile",
           "ManifestKey", "Opened", "Progress", "RestoreConflict", "RestoreEntry", "RestoreResult",
           "VerifyResult", "archive_name", "backup_file_keys", "collect", "create_backup",
           "open_archive", "parse_manifest", "parse_recipient", "read_identity_file",
           "read_recipients_file", "resolve_destinations", "restore_backup", "same_disk_warnings",
           "verify_backup"]
