"""`hsmsign ceremony rotate-root`: a new root version with new custodian keys.

The new root is signed by the new keys and by the old keys of the `old_custodian` tokens
present, so that a client trusting the old root follows the rotation. A custodian whose token
already holds a key of the current root keeps it. Only the new `N.root.json` (and the
transcript) is written into REPO, after the whole chain verifies from `1.root.json`; when the
old keys present fall short of the old threshold it is written into `REPO/staged/` instead,
for the other old custodians to sign on other days.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from hsmsign.ceremony.frame import Ceremony
from hsmsign.ceremony.preflight import library_versions, require_offline, require_secrets
from hsmsign.ceremony.verification import signed_sha256
from hsmsign.config import NO_TOKEN
from hsmsign.errors import HsmsignError
from hsmsign.fsutil import sha256_file
from hsmsign.keys import tuf_key
from hsmsign.keystore.stores import KeyStores
from hsmsign.repository import HsmsignRepository
from hsmsign.repository.publication import role_thresholds
from hsmsign.repository.staging import StagingArea
from hsmsign.repository.verification import verify
from hsmsign.signing import SigningService


class RootRotation(Ceremony):
    """One run of `hsmsign ceremony rotate-root`."""

    transcript_kind = "rotate-root"
    work_name = "rotation"

    def prepare(self) -> None:
        current = HsmsignRepository(self.repo)
        verify(current)  # rotate from a repository that verifies, nothing else
        if StagingArea(self.repo).files():
            raise HsmsignError(f"{self.repo} has staged changes (`hsmsign stage list`); publish or "
                               "discard them before rotating root; nothing changed")
        self.old_root = current.open("root")

    def steps(self, staged_home: Path) -> dict:
        assert self.work is not None
        shutil.copytree(self.repo / "metadata", self.work / "repo" / "metadata")
        if (self.repo / "hsmsign.json").exists():
            shutil.copy(self.repo / "hsmsign.json", self.work / "repo" / "hsmsign.json")
        self.root_keys(staged_home)
        self.old_custodian_tokens(staged_home)
        version = self.new_root(staged_home)
        if (self.work / "repo" / "staged" / f"{version}.root.json").exists():
            # The old custodians present are short of the old root's threshold: the rest
            # sign on other days (`hsmsign sign REPO root`, or `sign --file --previous`).
            return self.stage_root(version)
        self.verify_rotation(version)
        self.sign_transcript(version)
        return self.write_root(version)

    def preflight(self) -> None:
        require_secrets(self.plan, self.secrets, file_roles=())
        self.check_transcript_file()
        old_keys = sorted(self.old_root.signed.roles["root"].keyids)
        self.ui.screen("1. Preflight: rotating root", [
            ("repository", str(self.repo)),
            ("current root", f"v{self.old_root.signed.version}, "
                             f"{self.old_root.signed.roles['root'].threshold} of {len(old_keys)}"),
            *((f"old key {i}", k) for i, k in enumerate(old_keys, 1)),
            ("new threshold", f"{self.plan.threshold} of {self.plan.tokens}"),
        ])
        up = require_offline(self.plan)
        self.transcript.record("preflight", {
            "repository": str(self.repo), "network_up": up, "versions": library_versions(),
            "current_root_version": self.old_root.signed.version, "old_root_keys": old_keys,
            "threshold": self.plan.threshold,
            "custodians": [{"name": c.name, "token": c.token} for c in self.plan.custodians],
            "old_custodians": [{"name": c.name, "token": c.token} for c in self.plan.old_custodians],
        })
        self.confirm(f"Rotate the root of {self.repo} (v{self.old_root.signed.version}) now?")

    def root_keys(self, staged_home: Path) -> None:
        """Keep a custodian's current root key when their token has one; else make a new one."""
        old_keys = set(self.old_root.signed.roles["root"].keyids)
        for i, custodian in enumerate(self.plan.custodians, 1):
            token = self.custodians.insert(custodian, i, staged_home)
            kept = [k for k in token.store.keyids() if k in old_keys]
            if kept:
                token.keyid = kept[0]
                action = "kept"
            else:
                self.custodians.generate_root_key(token)
                action = "generated"
            self.ui.screen(f"2. Root key {i} of {self.plan.tokens}: {custodian.name}",
                           [("key ID", token.keyid), ("", action)])
            self.transcript.record("root key", {
                "custodian": custodian.name, "token": custodian.token, "keyid": token.keyid,
                "action": action, **self.custodians.attestation_entry(token),
            })

    def old_custodian_tokens(self, staged_home: Path) -> None:
        old_keys = set(self.old_root.signed.roles["root"].keyids)
        for i, custodian in enumerate(self.plan.old_custodians, 1):
            if not self.plan.confirm_all:
                self.ui.pause(f"Insert the old root token of {custodian.name}, then press Enter")
            token = self.custodians.open(custodian, i, staged_home)
            held = [k for k in token.store.keyids() if k in old_keys]
            if not held:
                raise HsmsignError(f"the token of {custodian.name} holds none of the current root keys")
            self.custodians.login(token)
            token.keyid = held[0]
            self.custodians.old_tokens.append(token)
            self.transcript.record("old root key", {"custodian": custodian.name, "keyid": token.keyid})

    def new_root(self, staged_home: Path) -> int:
        assert self.work is not None
        nobody = KeyStores(staged_home, self.secrets, NO_TOKEN)
        staged = HsmsignRepository(self.work / "repo", SigningService(nobody))
        new_keys = [tuf_key(t.store.public_key(t.keyid)) for t in self.tokens]
        with staged.edit_root() as root:
            for keyid in list(root.roles["root"].keyids):
                if keyid not in {k.keyid for k in new_keys}:
                    root.revoke_key(keyid, "root")
            for key in new_keys:
                if key.keyid not in root.roles["root"].keyids:
                    root.add_key(key, "root")
            root.roles["root"].threshold = self.plan.threshold
        staged.commit()
        version = staged.open("root").signed.version
        signers = {t.keyid: t for t in (*self.tokens, *self.custodians.old_tokens)}
        for keyid, token in signers.items():
            self.custodians.require_inserted(token, "sign the new root")
            again = HsmsignRepository(self.work / "repo", SigningService(token.stores, only={keyid}))
            again.sign_current("root")
            again.commit()
            reports = again.reports
            self.transcript.record("root signature", {
                "custodian": token.custodian.name, "keyid": keyid,
                "new_keys": f"{len(reports['root'].valid)}/{reports['root'].threshold}",
                "old_keys": (f"{len(reports['root (previous keys)'].valid)}/"
                             f"{reports['root (previous keys)'].threshold}"),
            })
        return version

    def verify_rotation(self, version: int) -> None:
        assert self.work is not None
        staged = HsmsignRepository(self.work / "repo")
        from_first = verify(staged)
        from_old = verify(staged, (self.repo / "metadata" /
                                   f"{self.old_root.signed.version}.root.json").read_bytes())
        name = f"{version}.root.json"
        digest = sha256_file(self.work / "repo" / "metadata" / name)
        self.ui.screen("3. Verified", [("from 1.root.json", f"root v{from_first.root_version} ok"),
                                       ("from the old root", f"root v{from_old.root_version} ok")])
        self.transcript.record("verify", {"roles": from_first.roles, "metadata_sha256": {name: digest},
                                          "followed_from_old_root": True})

    def stage_root(self, version: int) -> dict:
        """Put the new root into REPO/staged/ with the signatures it has, and say who must
        still sign; it is published by the command that brings the last one."""
        assert self.work is not None
        work = HsmsignRepository(self.work / "repo")
        md = work.open("root")
        checks = role_thresholds(work, "root", md)
        needs = [t.to_json() for t in checks if not t.met]
        name = StagingArea(self.repo).write("root", md)
        self.ui.screen("3. Staged: more signatures needed", [
            ("staged", f"staged/{name}"),
            *((t.label, f"{len(t.signed)}/{t.threshold}; needs {t.missing} more from: "
                        f"{', '.join(k[:16] for k in t.unsigned)}") for t in checks if not t.met),
        ])
        staged_file = self.repo / "staged" / name
        self.transcript.record("staged", {
            "metadata_sha256": {name: sha256_file(staged_file)},
            "signed_sha256": {name: signed_sha256(staged_file.read_bytes())}, "needs": needs})
        self.sign_transcript(version)
        self.write_attestations()
        transcript = self.write_transcript(
            self.repo / f"ceremony-rotate-root-{version}-transcript.json")
        return {"repository": str(self.repo), "transcript": str(transcript), "root_version": version,
                "root_keys": [t.keyid for t in self.tokens], "threshold": self.plan.threshold,
                "digest": self.transcript.digest, "staged": f"staged/{name}", "needs": needs}

    def write_root(self, version: int) -> dict:
        from hsmsign.fsutil import atomic_write

        assert self.work is not None
        name = f"{version}.root.json"
        atomic_write(self.repo / "metadata" / name, (self.work / "repo" / "metadata" / name).read_bytes(),
                     mode=0o644)
        self.write_attestations()
        transcript = self.write_transcript(
            self.repo / f"ceremony-rotate-root-{version}-transcript.json")
        return {"repository": str(self.repo), "transcript": str(transcript), "root_version": version,
                "root_keys": [t.keyid for t in self.tokens], "threshold": self.plan.threshold,
                "digest": self.transcript.digest}
