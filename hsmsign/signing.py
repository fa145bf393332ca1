"""securesystemslib `Signer`s backed by hsmsign's stores.

Any python-tuf based tool can sign with them (`Metadata.sign(signer, append=True)`), and the
`hsmsign:` URI scheme finds a key in whichever store holds it (hardware first):

    Signer.from_priv_key_uri("hsmsign:<keyid>", public_key, secrets_handler)
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass, field
from queue import SimpleQueue
from typing import TYPE_CHECKING

from securesystemslib.signer import (
    SIGNER_FOR_URI_SCHEME,
    Key,
    SecretsHandler,
    Signature,
    Signer,
    SSlibKey,
)

from hsmsign.canonical import signed_bytes
from hsmsign.config import load_token_config, resolve_home
from hsmsign.errors import HsmsignError
from hsmsign.keys import key_id, load_public_key_pem, tuf_key
from hsmsign.keystore.signers import (  # noqa: F401 - the signers, importable from here as before
    FileSigner,
    HardwareSigner,
    TokenSigner,
    YubiKeySigner,
)
from hsmsign.keystore.stores import KeyStores
from hsmsign.secrets import Secrets, secret_kind

if TYPE_CHECKING:
    from tuf.api.metadata import Metadata

logger = logging.getLogger(__name__)

URI_SCHEME = "hsmsign"


def signer_for(stores: KeyStores, keyid: str, public_key: Key | None = None) -> Signer:
    """A signer for `keyid` from the best store that holds it (a token before a file)."""
    record = stores.locate(keyid)[0]
    store = stores.store_of(record)
    if public_key is not None and public_key.keyid != keyid:
        raise HsmsignError(f"public key {public_key.keyid} does not belong to key {keyid}")
    if public_key is not None and not _same_public_material(
            public_key, tuf_key(store.public_key(keyid))):
        # Else every signature would fail to verify against the key the caller will check with.
        raise HsmsignError(f"the public key given for {keyid} is not that key's public key "
                           "(its key ID matches, its key material does not)")
    logger.debug("key %s signs from the %s store (%s)", keyid[:7], record.store, record.location)
    return store.signer(keyid, public_key)


def _same_public_material(a: Key, b: Key) -> bool:
    """The same public key material, however its PEM is written (key types and schemes have
    more than one name: "ecdsa" and the older "ecdsa-sha2-nistp256")."""
    def material(key: Key) -> str:
        return "".join(str(key.keyval.get("public", "")).split())

    if material(a) == material(b):
        return True
    try:  # the same key in another PEM layout: hsmsign's key ID is of the key itself
        return (key_id(load_public_key_pem(str(a.keyval["public"]).encode()))
                == key_id(load_public_key_pem(str(b.keyval["public"]).encode())))
    except (KeyError, HsmsignError):
        return False


class _HandlerPrompter:
    """Lets a securesystemslib secrets handler answer hsmsign's prompts. It is asked, as
    securesystemslib's own signers ask theirs, for a "pin" (token, YubiKey) or a
    "passphrase" (encrypted key file)."""

    def __init__(self, handler: SecretsHandler):
        self.handler = handler

    def ask_secret(self, prompt: str) -> str:
        return self.handler(secret_kind(prompt))

    def tell(self, message: str) -> None:
        pass


class HsmsignSigner(Signer):
    """Entry point for `hsmsign:<keyid>` URIs; the home comes from `$HSMSIGN_HOME`."""

    @classmethod
    def from_priv_key_uri(cls, priv_key_uri: str, public_key: Key,
                          secrets_handler: SecretsHandler | None = None) -> Signer:
        scheme, _, keyid = priv_key_uri.partition(":")
        if scheme != URI_SCHEME or not keyid:
            raise ValueError(f"not an {URI_SCHEME}: key URI: {priv_key_uri}")
        home = resolve_home(None)
        # A handler given is the one source of secrets (as for securesystemslib's signers);
        # without one, the environment (HSMSIGN_PIN, HSMSIGN_<ROLE>_PASSPHRASE, ...).
        secrets = (Secrets(environ={k: v for k, v in os.environ.items()  # settings stay
                                    if not k.endswith(("_PIN", "_PASSPHRASE"))},
                           prompter=_HandlerPrompter(secrets_handler))
                   if secrets_handler else
                   Secrets(prompter=None, nobody_to_ask="no secrets_handler was given to "
                                                        "Signer.from_priv_key_uri to ask"))
        stores = KeyStores(home, secrets, load_token_config(home))
        return signer_for(stores, stores.resolve(keyid), public_key)

    @property
    def public_key(self) -> Key:  # pragma: no cover - never instantiated
        raise NotImplementedError

    def sign(self, payload: bytes) -> Signature:  # pragma: no cover - never instantiated
        raise NotImplementedError


SIGNER_FOR_URI_SCHEME[URI_SCHEME] = HsmsignSigner


@dataclass
class SigningReport:
    """Who signed a role's metadata, and how far it is from its threshold."""

    role: str
    version: int
    threshold: int
    authorized: list[str]  # key IDs whose signatures count
    signed_here: list[str] = field(default_factory=list)  # signatures added by this process
    valid: list[str] = field(default_factory=list)  # every valid signature of an authorized key
    # The canonical bytes that were signed, when they were computed (the repository checks
    # thresholds on them without canonicalising a 100,000-target role again).
    payload: bytes | None = field(default=None, repr=False, compare=False)

    @property
    def missing(self) -> int:
        return max(0, self.threshold - len(self.valid))

    @property
    def unsigned_keys(self) -> list[str]:
        return [k for k in self.authorized if k not in self.valid]

    def to_json(self) -> dict:
        return {"role": self.role, "version": self.version, "threshold": self.threshold,
                "signed_here": self.signed_here, "valid_signatures": self.valid,
                "missing": self.missing, "can_still_sign": self.unsigned_keys}


def valid_signers(md: Metadata, keys: dict[str, Key], data: bytes | None = None) -> list[str]:
    """Key IDs of `keys` with a valid signature on `md` (`data`: its canonical bytes, if known)."""
    valid = []
    data = signed_bytes(md) if data is None else data
    for keyid, sig in md.signatures.items():
        key = keys.get(keyid)
        if key is None:
            continue
        try:
            key.verify_signature(sig, data)
        except Exception:  # noqa: BLE001 - any failure means "not a valid signature"
            continue
        valid.append(keyid)
    return valid


class _ParsedKeyCheck:
    """Checks signatures of one TUF key with its public key parsed once.

    `SSlibKey.verify_signature` parses the key's PEM on every call (~10 us of a ~85 us check)
    and securesystemslib has no public way to keep the parsed key (no upstream issue found);
    for the schemes hsmsign makes, this verifies with the `cryptography` key it parsed itself,
    with the hash and padding securesystemslib uses, and leaves every other key to
    `verify_signature`.
    """

    def __init__(self, key: SSlibKey):
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
        from cryptography.hazmat.primitives.serialization import load_pem_public_key

        self.key = key
        self._verify = None
        try:
            if key.keytype == "ed25519" and key.scheme == "ed25519":
                public = ed25519.Ed25519PublicKey.from_public_bytes(
                    bytes.fromhex(key.keyval["public"]))
                self._verify = public.verify
            elif key.keytype == "ecdsa" and key.scheme in _ECDSA_CURVES:
                curve, hash_type = _ECDSA_CURVES[key.scheme]
                public = load_pem_public_key(key.keyval["public"].encode())
                if isinstance(public, ec.EllipticCurvePublicKey) and public.curve.name == curve:
                    ecdsa = ec.ECDSA(hash_type())
                    self._verify = lambda signature, data: public.verify(signature, data, ecdsa)
            elif key.keytype == "rsa" and key.scheme == "rsassa-pss-sha256":
                public = load_pem_public_key(key.keyval["public"].encode())
                if isinstance(public, rsa.RSAPublicKey):
                    sha256 = hashes.SHA256()
                    pss = padding.PSS(mgf=padding.MGF1(sha256), salt_length=padding.PSS.AUTO)
                    self._verify = lambda signature, data: public.verify(signature, data, pss,
                                                                         sha256)
        except (KeyError, ValueError, TypeError):
            self._verify = None  # securesystemslib's own check reports the bad key

    def verify_signature(self, signature: Signature, data: bytes) -> None:
        """Nothing, or an exception when `signature` is not `key`'s over `data`."""
        if self._verify is None:
            return self.key.verify_signature(signature, data)
        if signature.keyid != self.key.keyid:
            raise HsmsignError(f"signature by {signature.keyid}, not {self.key.keyid}")
        self._verify(bytes.fromhex(signature.signature), data)
        return None


def _ecdsa_curves() -> dict:
    from cryptography.hazmat.primitives import hashes

    return {"ecdsa-sha2-nistp256": ("secp256r1", hashes.SHA256),
            "ecdsa-sha2-nistp384": ("secp384r1", hashes.SHA384),
            "ecdsa-sha2-nistp521": ("secp521r1", hashes.SHA512)}


_ECDSA_CURVES = _ecdsa_curves()


def _data(plan: _Plan) -> bytes:
    if plan.data is None:
        plan.data = signed_bytes(plan.md)
    return plan.data


PIPELINE_MIN = 16  # signatures in a batch before signing ahead in a thread pays off


@dataclass
class _Plan:
    """One metadata object of a `sign_many` batch: what it needs, and what it got."""

    md: Metadata
    keys: dict[str, Key]
    counted: dict[str, Key]
    data: bytes | None
    verified: set[str]
    todo: list[str]  # key IDs to sign with here
    report: SigningReport


class SigningService:
    """Signs metadata with every key of a role that this machine holds, hardware first.

    Each new signature is checked against the role's public key before it is kept, so a token
    that returns garbage can never leave a bad signature in the repository.
    """

    def __init__(self, stores: KeyStores, only: set[str] | None = None, remote=None):
        self.stores = stores
        self.only = only  # sign only with these key IDs (e.g. `sign --key`)
        # Keys a signing service grants (`hsmsign.service.client.RemoteKeys`: `keyids()`,
        # `signer(keyid, public_key)`); a key held here signs here.
        self.remote = remote
        self._signers: dict[str, Signer] = {}
        self._checkers: dict[str, _ParsedKeyCheck] = {}
        self._local: set[str] | None = None
        self._here: set[str] | None = None
        self.warnings: list[str] = []  # why keys may be missing here (an absent token)

    def available(self, keyids) -> list[str]:
        """The key IDs among `keyids` that some store here (or the signing service) holds."""
        if self._here is None:
            self._local = self.stores.all_keyids()
            self._here = self._local | (self.remote.keyids() if self.remote is not None else set())
        return [k for k in keyids if k in self._here and (self.only is None or k in self.only)]

    def signer(self, keyid: str, public_key: Key) -> Signer:
        if keyid not in self._signers:
            if self._local is None:
                self.available([])
            if self.remote is not None and keyid not in self._local:
                self._signers[keyid] = self.remote.signer(keyid, public_key)
            else:
                self._signers[keyid] = signer_for(self.stores, keyid, public_key)
        return self._signers[keyid]

    def sign(self, md: Metadata, role: str, keys: dict[str, Key], threshold: int, *,
             counted: dict[str, Key] | None = None) -> SigningReport:
        """Add this machine's signatures for `keys` to `md`.

        `counted` are the keys whose valid signatures count towards `threshold` (default
        `keys`); root rotation signs with old and new keys but counts them separately.
        """
        return self.sign_many([(md, role, keys, threshold, counted)])[0]

    def sign_many(self, items) -> list[SigningReport]:
        """`sign` for many metadata objects: `(md, role, keys, threshold[, counted])` each.

        Every new signature is checked against the role's public key before it is kept, and
        each signature is verified once: the report reuses what the check found. For a large
        batch on a PKCS#11 token the token signs in a background thread while this one checks
        the signatures already made (python-pkcs11 releases the GIL in C_Sign, cryptography
        during most of a verification), so the check costs little extra time.
        """
        plans = [self._plan(*item) for item in items]
        if any(len(plan.verified.union(plan.todo) & plan.counted.keys()) < plan.report.threshold
               for plan in plans):
            # Short of keys: when the configured token is absent, that may be why. A warning,
            # not an error: other custodians' keys, or a root token in its safe, are absent
            # by design, and a cron job must go on refreshing timestamp.
            problem = self.stores.configured_token_problem()
            if problem and problem not in self.warnings:
                self.warnings.append(problem)
        pending = [(plan, keyid) for plan in plans for keyid in plan.todo]
        checkers = [self._checker(plan.keys[keyid]).verify_signature for plan, keyid in pending]
        with closing(self._signatures(pending)) as signatures:
            for (plan, keyid), verify, signature in zip(pending, checkers, signatures):
                try:
                    verify(signature, plan.data)
                except Exception:  # noqa: BLE001
                    raise HsmsignError(
                        f"the signature key {keyid[:7]} made for {plan.report.role} does not "
                        "verify; nothing was written"
                    ) from None
                plan.md.signatures[keyid] = signature
                plan.report.signed_here.append(keyid)
                plan.verified.add(keyid)
        for plan in plans:
            plan.report.valid = [k for k in sorted(plan.counted) if k in plan.verified]
            plan.report.payload = plan.data
        return [plan.report for plan in plans]

    def _checker(self, key: Key) -> Key | _ParsedKeyCheck:
        """What checks new signatures of `key`: its public key parsed once per process."""
        if type(key) is not SSlibKey:
            return key
        checker = self._checkers.get(key.keyid)
        if checker is None or (checker.key is not key and checker.key != key):
            checker = _ParsedKeyCheck(key)
            self._checkers[key.keyid] = checker
        return checker

    def _plan(self, md: Metadata, role: str, keys: dict[str, Key], threshold: int,
              counted: dict[str, Key] | None = None) -> _Plan:
        counted = keys if counted is None else counted
        # Canonical JSON once (it dominates for big roles); for unsigned metadata, only when a
        # key here signs it, so that a batch serialises while the token signs.
        data = signed_bytes(md) if md.signatures else None
        verified = set(valid_signers(md, {**keys, **counted}, data)) if md.signatures else set()
        # Keys already signed (e.g. `sign` run twice) are not signed again.
        todo = [k for k in self.available(sorted(keys)) if k not in verified]
        return _Plan(md, keys, counted, data, verified, todo,
                     SigningReport(role, md.signed.version, threshold, sorted(counted)))

    def _signatures(self, pending: list[tuple[_Plan, str]]) -> Iterator[Signature]:
        """The signatures for `pending`, in order; made ahead in a thread for a big batch on
        PKCS#11 tokens (logged in here first, so that a PIN is never asked from the thread)."""
        signers = [self.signer(keyid, plan.keys[keyid]) for plan, keyid in pending]
        if len(pending) < PIPELINE_MIN or not all(type(s) is TokenSigner for s in signers):
            for (plan, _), signer in zip(pending, signers, strict=True):
                yield signer.sign(_data(plan))
            return
        for store in {id(s.store): s.store for s in signers}.values():
            store.login()
        # Serialise first: pure Python holds the GIL, and the thread would wait for it (up to
        # the 5 ms switch interval) between signatures. From here on only the thread talks to
        # the token; this one verifies, which releases the GIL for most of its time.
        jobs = [(signer, _data(plan)) for (plan, _), signer in zip(pending, signers, strict=True)]
        results: SimpleQueue = SimpleQueue()
        stop = threading.Event()

        def sign_all() -> None:
            for signer, payload in jobs:
                if stop.is_set():
                    return
                try:
                    results.put(signer.sign(payload))
                except BaseException as e:  # noqa: BLE001 - handed to the caller's thread
                    results.put(e)
                    return

        thread = threading.Thread(target=sign_all, name="hsmsign-sign", daemon=True)
        thread.start()
        try:
            for _ in jobs:
                result = results.get()
                if isinstance(result, BaseException):
                    raise result
                yield result
        finally:
            stop.set()
            thread.join()
