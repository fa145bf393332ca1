"""Checking a ceremony's transcript against the repository it made (`ceremony
verify-transcript`): the hash chain, the root keys' signatures, and the files it lists."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from hsmsign.ceremony.transcript import Transcript
from hsmsign.errors import HsmsignError
from hsmsign.fsutil import sha256_file
from hsmsign.repository import HsmsignRepository

ATTESTATIONS = "attestations"  # REPO/attestations/<keyid>.pem: the YubiKeys' attestations


def signed_sha256(metadata: bytes) -> str | None:
    """SHA-256 of a metadata file's canonical `signed` part: the same however many
    signatures it has."""
    from securesystemslib.formats import encode_canonical

    try:
        return hashlib.sha256(encode_canonical(json.loads(metadata)["signed"]).encode()).hexdigest()
    except (ValueError, KeyError, TypeError):
        return None


def verify_transcript(path: Path, repo: Path) -> dict:
    """The chain is intact, the root keys of REPO signed it, and the files it lists match."""
    try:
        transcript = Transcript.from_json(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError) as e:
        raise HsmsignError(f"cannot read transcript {path}: {e}") from None
    transcript.check_chain()
    repository = HsmsignRepository(repo)
    repository.require()
    complete = next((e for e in transcript.entries if e["step"] == "complete"), None)
    if complete is None:
        raise HsmsignError("the transcript has no 'complete' entry: the ceremony did not finish")
    root_version = int(complete["data"].get("root_version", 1))
    root_name = f"{root_version}.root.json"
    staged = next((e for e in transcript.entries if e["step"] == "staged"), None)
    for name, digest in (staged["data"].get("signed_sha256", {}) if staged else {}).items():
        # A rotation whose new root was staged for custodians signing on other days.
        published = repository.metadata_dir / name
        if not published.exists():
            raise HsmsignError(f"{name} is still staged, not published: the remaining custodians "
                               "must sign it first (`hsmsign stage list`)")
        if signed_sha256(published.read_bytes()) != digest:
            raise HsmsignError(f"metadata/{name} is not the root the ceremony staged")
    root = repository.read_file(root_name, "root")
    keys, threshold = repository.role_keys("root", root)
    signed_by = transcript.check_signatures(keys, threshold)
    verified = next((e for e in transcript.entries if e["step"] == "verify"), None)
    replaced = []
    if verified is not None:
        signed = verified["data"].get("signed_sha256", {})
        for name, digest in verified["data"]["metadata_sha256"].items():
            path_on_disk = repository.metadata_dir / name
            if path_on_disk.exists() and sha256_file(path_on_disk) == digest:
                continue
            if name == "timestamp.json" and path_on_disk.exists():  # replaced by design
                replaced.append(name)
                continue
            if path_on_disk.exists() and (
                    signed_sha256(path_on_disk.read_bytes()) == signed.get(name)
                    or (name == root_name and name not in signed)):
                continue  # the same metadata; signatures were added later (`hsmsign sign`)
            raise HsmsignError(f"metadata/{name} is not the file the ceremony wrote")
    for entry in transcript.entries:
        attestation = entry["data"].get("attestation") if entry["step"] == "root key" else None
        if attestation:
            name = f"{ATTESTATIONS}/{entry['data']['keyid']}.pem"
            on_disk = repo / name
            if not on_disk.exists() or sha256_file(on_disk) != attestation["pem_sha256"]:
                raise HsmsignError(f"{name} is not the attestation the ceremony recorded")
    return {"entries": len(transcript.entries), "digest": transcript.digest,
            "signed_by": signed_by, "threshold": threshold, "replaced_since": replaced}
