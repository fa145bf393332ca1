"""`hsmsign ceremony root`: a new repository whose root keys are on the custodians' tokens.

Steps: preflight, one root key per custodian token, online keys, metadata (each custodian
signs root), client-side verification, backups of the file keys, transcript, and only then
the move into REPO and the home (see `frame.py` for what a stop leaves).
"""

from __future__ import annotations

import hashlib
import os
import platform
from datetime import datetime, timezone
from pathlib import Path

from hsmsign.ceremony.frame import Ceremony
from hsmsign.ceremony.preflight import (
    check_destination,
    library_versions,
    require_offline,
    require_secrets,
)
from hsmsign.ceremony.verification import signed_sha256
from hsmsign.config import NO_TOKEN, check_home, ensure_home
from hsmsign.errors import HsmsignError
from hsmsign.fsutil import sha256_file
from hsmsign.keys import DEFAULT_ALGORITHM, ONLINE_ROLES, algorithm, tuf_key
from hsmsign.keystore.base import StoreKind
from hsmsign.keystore.stores import KeyStores
from hsmsign.repository import HsmsignRepository
from hsmsign.repository.verification import verify
from hsmsign.signing import SigningService



class RootCeremony(Ceremony):
    """One run of `hsmsign ceremony root`."""

    def steps(self, staged_home: Path) -> dict:
        self.root_keys(staged_home)
        online = self.online_keys(staged_home)
        self.metadata(staged_home, online)
        self.verify_staged()
        backups = self.backups(staged_home)
        self.sign_transcript()
        return self.move_into_place(staged_home, backups)

    def preflight(self) -> None:
        require_secrets(self.plan, self.secrets, ONLINE_ROLES)
        check_home(self.home)  # where the online keys go at the end
        rows = []
        up = require_offline(self.plan)
        rows.append(("network", f"UP: {', '.join(up)} (allowed for a rehearsal)" if up else "offline"))
        clock = datetime.now(timezone.utc).replace(microsecond=0)
        rows.append(("clock (UTC)", clock.isoformat()))
        versions = library_versions()
        rows.extend((name, v) for name, v in versions.items())
        if self.repo.exists() and (not self.repo.is_dir() or any(self.repo.iterdir())):
            raise HsmsignError(f"{self.repo} exists and is not empty; choose a new directory")
        if not self.repo.parent.is_dir():
            raise HsmsignError(f"{self.repo.parent} does not exist")
        self.check_transcript_file()
        destinations = [check_destination(d) for d in self.plan.backup_destinations]
        for d in destinations:
            rows.append(("backup to", f"{d['path']} ({d['free_bytes'] // (1 << 20)} MiB free)"))
        from hsmsign.backup import same_disk_warnings

        # The laptop's own disk holds the repository's parent: a drive there is not mounted.
        for warning in same_disk_warnings([Path(d["path"]) for d in destinations],
                                          self.repo.parent, "the repository"):
            rows.append(("WARNING", warning))
        rows.append(("threshold", f"{self.plan.threshold} of {self.plan.tokens} root keys"))
        for i, c in enumerate(self.plan.custodians, 1):
            rows.append((f"custodian {i}", f"{c.name}: {c.token}"))
        if self.plan.left_out:
            rows.append(("left out", f"{', '.join(self.plan.left_out)} (--tokens "
                                     f"{self.plan.tokens})"))
        if self.plan.operator or self.plan.witnesses:
            rows.append(("people", f"operator {self.plan.operator or '?'}; witnesses "
                                   f"{', '.join(self.plan.witnesses) or 'none'}"))
        rows.append(("plan", f"sha256 {self.plan.source_sha256}" if self.plan.source_sha256
                     else "from the command line"))
        present = self.custodians.present()
        rows.append(("tokens present", ", ".join(present) or "none yet (each is asked for in turn)"))
        self.ui.screen("1. Preflight", rows)
        self.transcript.record("preflight", {
            "network_up": up, "network_allowed": self.plan.allow_network, "clock": clock.isoformat(),
            "versions": versions, "backup_destinations": destinations, "tokens_present": present,
            "threshold": self.plan.threshold,
            "custodians": [{"name": c.name, "token": c.token} for c in self.plan.custodians],
            "left_out_of_the_plan": self.plan.left_out,
            "host": platform.node(), "operator": self.plan.operator,
            "witnesses": self.plan.witnesses, "plan_sha256": self.plan.source_sha256,
            "confirmations": "from the plan (rehearsal)" if self.plan.confirm_all else "typed",
            "expires_days": self.plan.expires,
        })
        self.confirm(f"Is the date and time shown ({clock:%Y-%m-%d %H:%M} UTC) correct?")

    def root_keys(self, staged_home: Path) -> None:
        for i, custodian in enumerate(self.plan.custodians, 1):
            token = self.custodians.insert(custodian, i, staged_home)
            record = self.custodians.generate_root_key(token)
            rows = [("token", record.location), ("key ID", record.keyid),
                    ("algorithm", record.algorithm)]
            if token.attestation is not None:
                a = token.attestation
                rows.append(("attested", f"generated on YubiKey {a['serial']} (firmware "
                                         f"{a['firmware']}), PIN policy {a['pin_policy']}, "
                                         f"touch policy {a['touch_policy']}"))
            rows.append(("write down", f"the first 16 characters: {record.keyid[:16]}"))
            self.ui.screen(f"2. Root key {i} of {self.plan.tokens}: {custodian.name}", rows)
            self.transcript.record("root key", {
                "custodian": custodian.name, "token": custodian.token,
                "location": record.location, "keyid": record.keyid, "algorithm": record.algorithm,
                "public_key_sha256": hashlib.sha256(
                    tuf_key(token.store.public_key(record.keyid)).keyval["public"].encode()
                ).hexdigest(),
                **self.custodians.attestation_entry(token),
            })
            self.confirm(f"Has {custodian.name} written down key ID {record.keyid[:16]}...?")

    def _online_stores(self, staged_home: Path) -> KeyStores:
        if self.plan.online_store == StoreKind.TOKEN:
            return KeyStores(staged_home, self.secrets,
                             self.custodians.token_config(self.plan.online_token), force=self.force)
        return KeyStores(staged_home, self.secrets, NO_TOKEN)

    def online_keys(self, staged_home: Path) -> dict[str, str]:
        stores = self._online_stores(staged_home)
        keys = {}
        for role in ONLINE_ROLES:
            record, _ = stores.generate(role, None, algorithm(DEFAULT_ALGORITHM), self.plan.online_store)
            keys[role] = record.keyid
            if record.store == StoreKind.TOKEN:
                self.custodians.created(record, label=self.plan.online_token)
        self.ui.screen("3. Online keys", [(role, f"{keyid} ({self.plan.online_store})")
                                          for role, keyid in keys.items()])
        self.transcript.record("online keys", {"store": self.plan.online_store, "keys": keys})
        return keys

    def metadata(self, staged_home: Path, online: dict[str, str]) -> None:
        assert self.work is not None
        source = self._online_stores(staged_home)
        root_keys = [tuf_key(t.store.public_key(t.keyid)) for t in self.tokens]
        role_keys = {role: [tuf_key(source.public_key(keyid))] for role, keyid in online.items()}
        repo = HsmsignRepository(self.work / "repo", SigningService(source))
        repo.init(root_keys, self.plan.threshold, role_keys, self.plan.expires)
        repo.commit()
        # Each custodian signs 1.root.json with their own token, one after another.
        signed = []
        for token in self.tokens:
            if len(signed) >= self.plan.threshold and not self.plan.confirm_all:
                if not self.ui.confirm(f"The threshold is reached. Should {token.custodian.name} sign too?"):
                    continue
            self.custodians.require_inserted(token, "sign the root")
            staged = HsmsignRepository(self.work / "repo",
                                       SigningService(token.stores, only={token.keyid}))
            report = staged.sign_current("root")
            staged.commit()
            signed.append(token.keyid)
            self.transcript.record("root signature", {
                "custodian": token.custodian.name, "keyid": token.keyid,
                "signatures": f"{len(report.valid)}/{report.threshold}",
            })
        self.ui.screen("4. Metadata", [("root", f"signed by {len(signed)} of {self.plan.tokens}; "
                                               f"threshold {self.plan.threshold}")])

    def verify_staged(self) -> None:
        assert self.work is not None
        result = verify(HsmsignRepository(self.work / "repo"))
        paths = sorted((self.work / "repo" / "metadata").iterdir())
        files = {p.name: sha256_file(p) for p in paths}
        self.ui.screen("5. Verified as a TUF client would", [
            (role, f"v{v} ok") for role, v in result.roles.items()])
        self.transcript.record("verify", {"roles": result.roles, "metadata_sha256": files,
                                          "signed_sha256": {p.name: signed_sha256(p.read_bytes())
                                                            for p in paths}})

    def backups(self, staged_home: Path) -> list[dict]:
        if not self.plan.backup_destinations:
            self.transcript.record("backups", {"destinations": [], "note": "no backup destination"})
            return []
        from hsmsign.backup import backup_file_keys

        results = backup_file_keys(staged_home, self.plan.backup_destinations, self.secrets)
        self.backup_archives = [Path(r["path"]) for r in results]
        # Whole names and digests, in the value column (which wraps): to be read aloud.
        rows = [(f"copy {i}", f"{r['path']} ({r['size']} bytes, read back and verified)")
                for i, r in enumerate(results, 1)]
        rows += [("sha256", digest) for digest in sorted({r["sha256"] for r in results})]
        self.ui.screen("6. Backups", rows)
        self.transcript.record("backups", {"archives": results})
        return results

    def move_into_place(self, staged_home: Path, backups: list[dict]) -> dict:
        """Only now does anything appear in REPO and the home."""
        assert self.work is not None
        from hsmsign.fsutil import atomic_write, ensure_private_dir

        if self.repo.exists() and (not self.repo.is_dir() or any(self.repo.iterdir())):
            raise HsmsignError(f"{self.repo} is no longer empty (something was written there "
                               "during the ceremony); nothing was moved")
        staged_keys = sorted((staged_home / "private").glob("*.key")) if (staged_home / "private").is_dir() else []
        for key in staged_keys:
            if (self.home / "private" / key.name).exists():
                raise HsmsignError(f"key {key.stem} is already in {self.home}; nothing was moved")
        if self.repo.exists():
            self.repo.rmdir()  # checked empty in preflight
        os.replace(self.work / "repo", self.repo)
        for sub in ("private", "public"):
            if not (staged_home / sub).is_dir():
                continue
            ensure_home(self.home)
            ensure_private_dir(self.home / sub)
            for f in sorted((staged_home / sub).iterdir()):
                atomic_write(self.home / sub / f.name, f.read_bytes())
        self.write_attestations()
        transcript = self.write_transcript(self.repo / "ceremony-transcript.json")
        return {"repository": str(self.repo), "transcript": str(transcript),
                "root_keys": [t.keyid for t in self.tokens], "threshold": self.plan.threshold,
                "backups": backups, "digest": self.transcript.digest}
