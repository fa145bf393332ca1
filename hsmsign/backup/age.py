"""The age layer of a backup (pyrage): a passphrase (age's scrypt recipient) or X25519 / SSH
recipients; identity and recipient files; telling a wrong passphrase from a damaged file."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hsmsign.backup.format import AGE_ARMOR, AGE_MAGIC, ArchiveError
from hsmsign.errors import HsmsignError


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
