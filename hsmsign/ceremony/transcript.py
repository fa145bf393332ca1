"""The ceremony transcript: a hash chain of entries whose final digest the root keys sign.

Each entry is `{"seq", "time", "step", "data", "prev"}` plus `"hash"`, the SHA-256 of the
canonical JSON of the entry without its hash; `prev` is the hash of the entry before (64 zeros
for the first). The last entry's hash is signed by the new root keys with the same signature
schemes as TUF metadata, so anyone holding the repository's root can check that no entry was
edited, removed or reordered afterwards (`ceremony verify-transcript`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from securesystemslib.signer import Key, Signature, Signer

from hsmsign.errors import HsmsignError
from hsmsign.hashchain import GENESIS, ChainBroken, check_chain, entry_hash

FORMAT = "hsmsign-ceremony-transcript/1"


def _plain(value: Any) -> Any:
    """JSON values canonical JSON can encode: whole floats become ints, others strings."""
    if isinstance(value, float):
        return int(value) if value.is_integer() else repr(value)
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


@dataclass
class Transcript:
    kind: str  # "root" or "rotate-root"
    entries: list[dict] = field(default_factory=list)
    signatures: list[dict] = field(default_factory=list)

    def record(self, step: str, data: dict[str, Any]) -> dict:
        entry = {
            "seq": len(self.entries) + 1,
            "time": datetime.now(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z"),
            "step": step,
            "data": _plain(json.loads(json.dumps(data))),
            "prev": self.entries[-1]["hash"] if self.entries else GENESIS,
        }
        entry["hash"] = entry_hash(entry)
        self.entries.append(entry)
        return entry

    @property
    def digest(self) -> str:
        return self.entries[-1]["hash"] if self.entries else GENESIS

    def sign(self, signer: Signer) -> None:
        signature = signer.sign(self.digest.encode())
        signer.public_key.verify_signature(signature, self.digest.encode())
        self.signatures.append(signature.to_dict())

    def to_json(self) -> dict:
        return {"format": FORMAT, "kind": self.kind, "entries": self.entries,
                "digest": self.digest, "signatures": self.signatures}

    @classmethod
    def from_json(cls, data: dict) -> Transcript:
        if data.get("format") != FORMAT:
            raise HsmsignError(f"not an hsmsign ceremony transcript (format {data.get('format')!r})")
        return cls(data["kind"], list(data["entries"]), list(data.get("signatures", [])))

    def check_chain(self) -> None:
        try:
            check_chain(self.entries)
        except ChainBroken as e:  # the ceremony's words, naming the step
            i = e.index
            if e.edited:
                raise HsmsignError(f"transcript entry {i} ({self.entries[i - 1].get('step')}) "
                                   "was edited afterwards") from None
            raise HsmsignError(f"transcript entry {i} is out of order or an entry is missing") from None

    def check_signatures(self, keys: dict[str, Key], threshold: int) -> list[str]:
        """Key IDs of `keys` that signed the final digest; an error below `threshold`."""
        valid = []
        for raw in self.signatures:
            sig = Signature.from_dict(dict(raw))
            key = keys.get(sig.keyid)
            if key is None:
                continue
            try:
                key.verify_signature(sig, self.digest.encode())
            except Exception:  # noqa: BLE001
                raise HsmsignError(f"the transcript signature by {sig.keyid[:7]} does not verify") from None
            valid.append(sig.keyid)
        if len(set(valid)) < threshold:
            raise HsmsignError(
                f"the transcript is signed by {len(set(valid))} of the root keys; {threshold} needed"
            )
        return valid

    def to_markdown(self) -> str:
        lines = [f"# hsmsign ceremony transcript ({self.kind})", "",
                 f"Final digest: `{self.digest}`", ""]
        for entry in self.entries:
            lines.append(f"## {entry['seq']}. {entry['step']} — {entry['time']}")
            lines.append("")
            for key, value in entry["data"].items():
                if isinstance(value, (dict, list)):
                    value = json.dumps(value, sort_keys=True)
                lines.append(f"- **{key}**: {value}")
            lines.append(f"- hash: `{entry['hash']}`")
            lines.append("")
        lines.append("## Signatures over the final digest")
        lines.append("")
        for sig in self.signatures:
            lines.append(f"- `{sig['keyid']}`")
        lines.append("")
        return "\n".join(lines)



def transcript_files(path: Path) -> tuple[Path, Path]:
    """The signed transcript (JSON) at `path` and its Markdown rendering beside it (`.md`)."""
    return path, path.with_suffix(".md")


def check_transcript_destination(path: Path, repo: Path) -> None:
    """A `--transcript FILE` the ceremony can write at the end, checked before the first key:
    a record of an earlier ceremony is never overwritten."""
    json_file, markdown = transcript_files(path)
    if json_file == markdown:
        raise HsmsignError(f"--transcript {path}: give the JSON file's name (its Markdown "
                           f"rendering is written beside it as {markdown.name})")
    for f in (json_file, markdown):
        if os.path.lexists(f):
            raise HsmsignError(f"{f} already exists (a transcript is never overwritten); "
                               "choose another --transcript")
    parent = path.parent.resolve()
    if parent == repo.resolve() and not repo.exists():
        return  # the repository the ceremony creates
    if not parent.is_dir():
        raise HsmsignError(f"--transcript {path}: {path.parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise HsmsignError(f"--transcript {path}: {path.parent} is not writable")


def write_transcript(transcript: Transcript, path: Path) -> None:
    """The signed transcript as JSON at `path`, and its Markdown rendering beside it."""
    from hsmsign.fsutil import atomic_write

    json_file, markdown = transcript_files(path)
    atomic_write(json_file, json.dumps(transcript.to_json(), indent=2).encode() + b"\n", mode=0o644)
    atomic_write(markdown, transcript.to_markdown().encode(), mode=0o644)
