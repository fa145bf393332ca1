"""What every ceremony shares: one run/abort frame around its steps, confirmations, the
custodians' tokens, and the signed transcript.

A ceremony stages everything in a work directory next to REPO and moves it into place only
when every step passed; a failure or an abort (Ctrl-C included) is recorded in the transcript,
leaves REPO and the home as they were, and lists the keys created on tokens (which cannot be
un-generated) so the operator can remove them.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

from hsmsign.ceremony.custodians import CustodianToken, Custodians
from hsmsign.ceremony.plan import Custodian, Plan
from hsmsign.ceremony.transcript import (
    Transcript,
    check_transcript_destination,
    write_transcript,
)
from hsmsign.ceremony.ui import CeremonyAborted, CeremonyUI
from hsmsign.ceremony.verification import ATTESTATIONS
from hsmsign.errors import HsmsignError
from hsmsign.secrets import Secrets
from hsmsign.signing import signer_for

class Ceremony:
    """One run of a ceremony: `run()` frames the subclass's `steps()`."""

    transcript_kind = "root"  # what the transcript says the ceremony was
    work_name = "ceremony"  # the staging directory is REPO's sibling `.REPO.<work_name>-*`

    def __init__(self, repo: Path, home: Path, plan: Plan, ui: CeremonyUI, secrets: Secrets, *,
                 environ: Mapping[str, str] | None = None, force: bool = False,
                 transcript_file: Path | None = None):
        self.repo = repo
        self.transcript_file = transcript_file  # None: the ceremony's default name inside REPO
        self.home = home
        self.plan = plan
        self.ui = ui
        self.secrets = secrets
        self.environ = os.environ if environ is None else environ
        self.force = force
        self.transcript = Transcript(self.transcript_kind)
        self.custodians = Custodians(plan, ui, secrets, self.transcript, home=home,
                                     environ=self.environ, force=force)
        self.work: Path | None = None
        self.backup_archives: list[Path] = []  # removed again if the ceremony stops after them

    @property
    def tokens(self) -> list[CustodianToken]:
        return self.custodians.tokens

    @property
    def created_on_tokens(self) -> list[str]:
        """"<keyid> on <token>" for every key made on a token, for an abort."""
        return self.custodians.created_on_tokens

    @property
    def removals(self) -> list[str]:
        """How to remove each of `created_on_tokens`, as a command."""
        return self.custodians.removals

    # -- the frame -----------------------------------------------------------------------

    def prepare(self) -> None:
        """What must hold before anyone is asked anything (a rotation: the repository)."""

    def preflight(self) -> None:
        raise NotImplementedError

    def steps(self, staged_home: Path) -> dict:
        """The ceremony proper, in the work directory; returns what the CLI shows."""
        raise NotImplementedError

    def run(self) -> dict:
        self.prepare()
        self.ask_custodians()
        self.plan.check()
        self.preflight()
        self.work = Path(tempfile.mkdtemp(prefix=f".{self.repo.name}.{self.work_name}-",
                                          dir=self.repo.parent))
        try:
            staged_home = self.work / "home"
            staged_home.mkdir(mode=0o700)
            return self.steps(staged_home)
        except BaseException as e:
            self.transcript.record("aborted", {"reason": str(e) or type(e).__name__,
                                               "created_on_tokens": self.created_on_tokens})
            for archive in self.backup_archives:  # a backup of keys that were never put in use
                archive.unlink(missing_ok=True)
            raise
        finally:
            self.custodians.close()
            shutil.rmtree(self.work, ignore_errors=True)

    # -- shared steps --------------------------------------------------------------------

    def confirm(self, question: str) -> None:
        if self.plan.confirm_all:
            self.transcript.record("confirmation", {"question": question, "answer": "yes (plan)"})
            return
        if not self.ui.confirm(question):
            self.transcript.record("confirmation", {"question": question, "answer": "no"})
            raise CeremonyAborted(f"aborted by the operator at: {question}")
        self.transcript.record("confirmation", {"question": question, "answer": "yes"})

    def ask_custodians(self) -> None:
        """Names and tokens the plan does not give, asked of the operator."""
        while len(self.plan.custodians) < self.plan.tokens:
            i = len(self.plan.custodians) + 1
            name = self.ui.ask(f"Name of custodian {i} of {self.plan.tokens}:").strip()
            token = self.ui.ask(f"{name}'s token: yubikey:SERIAL, or the label of a PKCS#11 "
                                "token:").strip()
            if not token.startswith(("yubikey:", "pkcs11:")):
                token = f"pkcs11:token={token}"
            self.plan.custodians.append(Custodian(name, token))
            try:
                self.plan.check()
            except HsmsignError:
                self.plan.custodians.pop()
                raise

    def sign_transcript(self, root_version: int = 1) -> None:
        self.transcript.record("complete", {"root_keys": [t.keyid for t in self.tokens],
                                            "threshold": self.plan.threshold,
                                            "root_version": root_version})
        for token in self.tokens:
            self.custodians.require_inserted(token, "sign the transcript")
            signer = signer_for(token.stores, token.keyid)
            self.transcript.sign(signer)

    def check_transcript_file(self) -> None:
        """In preflight: a `--transcript FILE` can be written at the end, and is no earlier
        ceremony's record."""
        if self.transcript_file is not None:
            check_transcript_destination(self.transcript_file, self.repo)

    def write_transcript(self, default: Path) -> Path:
        """The signed transcript, at `--transcript FILE` or else `default`; where it went."""
        path = self.transcript_file or default
        write_transcript(self.transcript, path)
        return path

    def write_attestations(self) -> None:
        """Each YubiKey's attestation (slot certificate, then the device's), for anyone to check
        later with `hsmsign key attest KEYID --certificate F --repo REPO`."""
        from hsmsign.fsutil import atomic_write

        for token in self.tokens:
            if token.attestation is not None:
                (self.repo / ATTESTATIONS).mkdir(exist_ok=True)
                atomic_write(self.repo / ATTESTATIONS / f"{token.keyid}.pem",
                             token.attestation["pem"].encode(), mode=0o644)
