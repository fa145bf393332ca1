"""The guided offline root ceremony: several tokens, a threshold root, a signed transcript.

The parts: `plan` (who holds which token, checked strictly), `preflight` (host checks),
`custodians` (the custodians' tokens), `frame` (the run/abort frame and what every ceremony
shares), `root` (`ceremony root`), `rotation` (`ceremony rotate-root`), `transcript` (the
hash-chained, signed record) and `verification` (checking a transcript against REPO).

Nothing here prints or prompts: the CLI hands in a `CeremonyUI`.
"""

from hsmsign.ceremony.custodians import CustodianToken
from hsmsign.ceremony.frame import Ceremony
from hsmsign.ceremony.plan import Custodian, Plan, load_plan
from hsmsign.ceremony.preflight import (
    check_destination,
    library_versions,
    network_interfaces_up,
    require_offline,
)
from hsmsign.ceremony.root import RootCeremony
from hsmsign.ceremony.rotation import RootRotation
from hsmsign.ceremony.transcript import (
    Transcript,
    check_transcript_destination,
    transcript_files,
    write_transcript,
)
from hsmsign.ceremony.ui import CeremonyAborted, CeremonyUI
from hsmsign.ceremony.verification import ATTESTATIONS, signed_sha256, verify_transcript

__all__ = ["ATTESTATIONS", "Ceremony", "CeremonyAborted", "CeremonyUI", "Custodian",
           "CustodianToken", "Plan", "RootCeremony", "RootRotation", "Transcript",
           "check_destination", "check_transcript_destination", "library_versions", "load_plan",
           "network_interfaces_up", "require_offline", "signed_sha256", "transcript_files",
           "verify_transcript", "write_transcript"]
