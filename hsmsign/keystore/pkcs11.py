"""Keys on any PKCS#11 token through python-pkcs11 (SoftHSM, ykcs11, OpenSC, network HSMs).

Private keys are generated or imported as token objects that are private, sensitive and never
extractable; `CKA_LABEL` is the role, `CKA_ID` a random 16-byte identifier fixed at creation.
The TUF key ID is computed from the public key object, so listing needs no PIN.

Finding modules and tokens is in `pkcs11_tokens`, converting key material in `pkcs11_objects`.
One session and one login per process (PKCS#11 login state belongs to the application), reused
for every key and signature.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hsmsign.config import TokenConfig
from hsmsign.errors import HsmsignError, PinLocked, SeveralTokens, TokenAbsent, WrongPin
from hsmsign.keys import Algorithm, KeyRecord, algorithm_of, key_id
from hsmsign.keystore.pkcs11_objects import (
    EC_HASH,
    ED25519_OID_DER,
    der_ecdsa_signature,
    public_key_from_object,
    token_attributes,
)
from hsmsign.keystore.pkcs11_tokens import (  # list_tokens, remote_address: importable from here
    PinPolicyError,
    TokenError,
    is_gone,
    list_tokens,
    load_module,
    module_place,
    pin_refusal,
    pin_tries_hint,
    pin_tries_left,
    present_slots,
    remote_address,
    token_gone,
    token_text,
)
from hsmsign.keystore.base import Listing, StoreContext, StoreKind
from hsmsign.keystore.scanned import ScannedStore
from hsmsign.secrets import Secrets

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
    from securesystemslib.signer import Key, Signer

logger = logging.getLogger(__name__)

STORE = StoreKind.TOKEN
CKA_ID_LENGTH = 16


def _guarded(doing: str):
    """A store method whose token (or network HSM server) stopping answering is one TokenError."""
    def decorate(method):
        @functools.wraps(method)
        def wrapper(self, *args, **kwargs):
            with self._answering(doing):
                return method(self, *args, **kwargs)
        return wrapper
    return decorate


@dataclass
class _TokenKey:
    record: KeyRecord
    cka_id: bytes
    public_key: Any
    algorithm: Algorithm


class Pkcs11KeyStore(ScannedStore):
    """One token in one PKCS#11 module."""

    kind = STORE

    def __init__(self, config: TokenConfig, secrets: Secrets, *, force: bool = False,
                 home: Path | None = None):
        self.config = config
        self.secrets = secrets
        self.force = force
        self.home = home
        self._lib = None
        self._module: str | None = None
        self._slot = None
        self._session = None
        self._logged_in = False
        self._keys: dict[str, _TokenKey] | None = None
        self._signing_functions: dict[str, Any] = {}  # keyid -> signing function (logged-in session)

    @classmethod
    def for_home(cls, context: StoreContext) -> Pkcs11KeyStore:
        return cls(context.token_config, context.secrets, force=context.force, home=context.home)

    # -- the KeyStore interface ----------------------------------------------------------

    def enabled(self) -> bool:
        """A module is configured, or found in a well-known place (and tokens are not off)."""
        return bool(self.config.candidate_modules())

    def listing(self) -> Listing:
        """The token's keys; a token the user configured that is absent is a warning."""
        try:
            if self.config.explicit or self.enabled():
                if self.is_present():
                    return Listing(keys=self.list_keys())
                if self.config.explicit:
                    self.require_present()  # raises the precise reason
        except TokenError as e:
            return Listing(keys=[], warnings=[f"token keys not listed: {e}"])
        return Listing(keys=[])

    def import_key(self, key: PrivateKeyTypes, role: str, options=None, *,
                   gun: str | None = None, passphrase: str | None = None) -> KeyRecord:
        """`import_private` (a token keeps no GUN and needs no passphrase)."""
        return self.import_private(key, role)

    def signer(self, keyid: str, public_key: Key | None = None) -> Signer:
        from hsmsign.keystore.signers import TokenSigner  # securesystemslib: only to sign

        return TokenSigner(self, keyid, public_key)

    def reason_asked(self) -> str:
        self.require_present()
        return "asked for a token key"

    def reason_auto_root(self, file_option: str) -> str | None:
        if not self.enabled():
            return None
        try:
            self.require_present()
        except TokenError as e:
            # A token the user named, or several to choose from: never a silent file.
            if self.config.explicit or isinstance(e, SeveralTokens):
                raise type(e)(f"{e}; or pass {file_option} to keep the root key in a file") from None
            return None
        why = f"a PKCS#11 token is present: {self.token_name}"
        if "softhsm" in self.module.lower():
            why += " (SoftHSM keeps keys in files: right for tests, not for a production root)"
        return why

    # -- finding the token -------------------------------------------------------------

    def _find_slot(self):
        if self._slot is not None:
            return self._slot
        for module in self.config.candidate_modules():
            try:
                lib = load_module(module)
                slots = [s for s in present_slots(lib, module) if self._matches(s.get_token())]
            except TokenError:
                if self.config.module:
                    raise
                continue
            if len(slots) > 1:
                labels = ", ".join(token_text(s.get_token().label) for s in slots)
                raise SeveralTokens(
                    f"several tokens present ({labels}); choose one with HSMSIGN_TOKEN_LABEL "
                    "or HSMSIGN_TOKEN_SERIAL"
                )
            if slots:
                self._lib, self._module, self._slot = lib, module, slots[0]
                return self._slot
            if self.config.module:
                break
        if not self.config.candidate_modules():
            raise TokenAbsent("no PKCS#11 module configured or found; set HSMSIGN_PKCS11_MODULE")
        wanted = (f"with label {self.config.label!r}" if self.config.label
                  else f"with serial {self.config.serial!r}" if self.config.serial else "")
        where = (module_place(self.config.module) if self.config.module
                 else ", ".join(self.config.candidate_modules()))
        raise TokenAbsent(
            f"no token {wanted} is present in {where}; plug it in, or check "
            "HSMSIGN_TOKEN_LABEL / `hsmsign token list`".replace("  ", " ")
        )

    def _matches(self, token) -> bool:
        from pkcs11 import TokenFlag

        if self.config.label is not None:
            return token_text(token.label) == self.config.label
        if self.config.serial is not None:
            return token_text(token.serial) == self.config.serial
        return bool(int(token.flags) & TokenFlag.TOKEN_INITIALIZED)

    def require_present(self) -> None:
        """Nothing, or a TokenError saying precisely why the token cannot be used."""
        self._find_slot()

    @property
    def slot_id(self) -> int:
        return self._find_slot().slot_id

    def is_present(self) -> bool:
        try:
            self._find_slot()
            return True
        except TokenError:
            return False

    def _token(self):
        # A fresh token object: its flags (PIN tries) are read when it is made.
        slot = self._find_slot()
        try:
            return slot.get_token()
        except Exception as e:
            if is_gone(e):
                raise token_gone(e, "reading the token", self._module) from None
            raise

    @property
    def token_name(self) -> str:
        token = self._token()
        return f"{token_text(token.label)} (serial {token_text(token.serial)})"

    @property
    def module(self) -> str:
        self._find_slot()
        return self._module  # type: ignore[return-value]

    # -- sessions ----------------------------------------------------------------------

    def _open_session(self):
        if self._session is None:
            token = self._token()
            with self._answering("opening a session"):
                self._session = token.open(rw=self._rw(token))
        return self._session

    @contextmanager
    def _answering(self, doing: str):
        """Turn a token (or a network HSM's server) that stopped answering into one TokenError
        naming it; the dead session is forgotten, so that nothing more is sent over it."""
        try:
            yield
        except HsmsignError:
            raise
        except Exception as e:
            if not is_gone(e):
                raise
            self._session = None
            self._logged_in = False
            self._signing_functions.clear()
            raise token_gone(e, doing, self._module) from None

    @staticmethod
    def _rw(token) -> bool:
        from pkcs11 import TokenFlag

        return not int(token.flags) & TokenFlag.WRITE_PROTECTED

    def _login(self):
        """The one logged-in session; PIN tries are checked before and reported after."""
        import pkcs11

        if self._logged_in:
            return self._session
        token = self._token()
        name = token_text(token.label)
        refusal = pin_refusal(int(token.flags), name, self.force)
        if refusal:
            raise PinPolicyError(refusal)
        pin = self.secrets.pin(name)
        logger.debug("logging in to token %s in %s", name, self._module)
        try:
            with self._answering(f"logging in to token {name}"):
                session = token.open(rw=self._rw(token), user_pin=pin)
        except pkcs11.PinIncorrect:
            self.secrets.forget_pin(name)
            flags = int(self._token().flags)
            raise WrongPin(f"wrong PIN for token {name}; {pin_tries_hint(flags)}",
                           attempts_remaining=pin_tries_left(flags)) from None
        except pkcs11.PinLocked:
            raise PinLocked(
                f"the user PIN of token {name} is locked; unblock it with the SO PIN"
            ) from None
        except pkcs11.PinLenRange:
            self.secrets.forget_pin(name)
            raise HsmsignError(f"the PIN for token {name} has the wrong length") from None
        # Login state is per application: the new session replaces the public one.
        if self._session is not None:
            self._session.close()
        self._session = session
        self._logged_in = True
        self._signing_functions.clear()
        return session

    def login(self) -> None:
        """Log in now (e.g. to check a PIN before a long operation)."""
        self._login()

    def reset(self) -> None:
        """Forget the session, the slot and what was read from the token (PINs stay cached)."""
        self.close()
        self._slot = None
        self._lib = None
        self._keys = None

    def rescan(self, others: list[Pkcs11KeyStore] = ()) -> None:
        """Look for tokens plugged in since the module was loaded.

        Some modules (SoftHSM among them) see new tokens only after C_Finalize/C_Initialize,
        which ends every session of the module: `others` sharing it are reset too and log in
        again (with their cached PIN) when next used.
        """
        for store in (self, *others):
            store.reset()
        for module in self.config.candidate_modules():
            try:
                load_module(module).reinitialize()
            except TokenError:
                continue

    def close(self) -> None:
        if self._session is not None:
            try:
                self._session.close()
            except Exception as e:  # a session that died with its token or server: gone anyway
                if not is_gone(e):
                    raise
            finally:
                self._session = None
                self._logged_in = False
                self._signing_functions.clear()

    # -- keys --------------------------------------------------------------------------

    def _scan(self) -> dict[str, _TokenKey]:
        from pkcs11 import Attribute, ObjectClass

        if self._keys is not None:
            return self._keys
        session = self._session or self._open_session()
        location = self.token_name
        keys: dict[str, _TokenKey] = {}
        with self._answering("listing its keys"):
            for obj in session.get_objects({Attribute.CLASS: ObjectClass.PUBLIC_KEY}):
                try:
                    public_key = public_key_from_object(obj)
                    alg = algorithm_of(public_key)
                except HsmsignError:
                    continue  # a key TUF cannot use (another application's): not ours to list
                keyid = key_id(public_key)
                keys[keyid] = _TokenKey(
                    record=KeyRecord(keyid=keyid, role=token_text(obj.label) or "unknown", gun=None,
                                     algorithm=alg.name, store=STORE, location=location),
                    cka_id=bytes(obj[Attribute.ID]),
                    public_key=public_key,
                    algorithm=alg,
                )
        self._keys = keys
        return keys

    def _missing(self, keyid: str) -> str:
        return f"key {keyid} is not on token {self.token_name}"

    def _require_mechanism(self, mechanism, what: str) -> None:
        if mechanism not in self._find_slot().get_mechanisms():
            raise TokenError(
                f"token {self.token_name} cannot {what} (no {mechanism.name}); "
                "choose --algorithm ecdsa-p256"
            )

    @_guarded("generating a key")
    def generate(self, role: str, alg: Algorithm, options=None, *,
                 gun: str | None = None) -> KeyRecord:
        """A new key pair made inside the token; the private half never leaves it (a token
        keeps no GUN, and has no options)."""
        from pkcs11 import Attribute, KeyType, Mechanism
        from pkcs11.util.ec import encode_named_curve_parameters

        session = self._login()
        cka_id = os.urandom(CKA_ID_LENGTH)
        public, private = self._templates(role, cka_id)
        if alg.keytype == "ecdsa":
            self._require_mechanism(Mechanism.EC_KEY_PAIR_GEN, f"generate {alg.name} keys")
            public[Attribute.EC_PARAMS] = encode_named_curve_parameters(alg.curve)
            session.generate_keypair(KeyType.EC, store=True, mechanism=Mechanism.EC_KEY_PAIR_GEN,
                                     public_template=public, private_template=private)
        elif alg.keytype == "ed25519":
            self._require_mechanism(Mechanism.EC_EDWARDS_KEY_PAIR_GEN, "generate Ed25519 keys")
            public[Attribute.EC_PARAMS] = ED25519_OID_DER
            session.generate_keypair(KeyType.EC_EDWARDS, store=True,
                                     mechanism=Mechanism.EC_EDWARDS_KEY_PAIR_GEN,
                                     public_template=public, private_template=private)
        elif alg.keytype == "rsa":
            self._require_mechanism(Mechanism.RSA_PKCS_KEY_PAIR_GEN, "generate RSA keys")
            session.generate_keypair(KeyType.RSA, alg.bits, store=True,
                                     public_template=public, private_template=private)
        else:
            raise HsmsignError(f"cannot generate {alg.name} keys on a token")
        return self._record_for(cka_id)

    @staticmethod
    def _templates(role: str, cka_id: bytes) -> tuple[dict, dict]:
        from pkcs11 import Attribute

        # Signing keys only: no encryption, wrapping or key derivation with them.
        public = {Attribute.TOKEN: True, Attribute.PRIVATE: False, Attribute.VERIFY: True,
                  Attribute.ENCRYPT: False, Attribute.WRAP: False,
                  Attribute.LABEL: role, Attribute.ID: cka_id}
        private = {Attribute.TOKEN: True, Attribute.PRIVATE: True, Attribute.SENSITIVE: True,
                   Attribute.EXTRACTABLE: False, Attribute.SIGN: True, Attribute.DECRYPT: False,
                   Attribute.UNWRAP: False, Attribute.DERIVE: False,
                   Attribute.LABEL: role, Attribute.ID: cka_id}
        return public, private

    def _record_for(self, cka_id: bytes) -> KeyRecord:
        self._keys = None
        for key in self._scan().values():
            if key.cka_id == cka_id:
                return key.record
        raise TokenError("the token did not keep the key it just made")  # pragma: no cover

    @_guarded("importing a key")
    def import_private(self, key: PrivateKeyTypes, role: str) -> KeyRecord:
        """Put a software key on the token, sensitive and non-extractable from then on."""
        from pkcs11 import Attribute, ObjectClass

        keyid = key_id(key.public_key())
        if keyid in self._scan():
            raise HsmsignError(f"key {keyid} is already on token {self.token_name}; nothing imported")
        session = self._login()
        cka_id = os.urandom(CKA_ID_LENGTH)
        public, private = self._templates(role, cka_id)
        key_type, public_values, private_values = token_attributes(key)
        public.update({Attribute.CLASS: ObjectClass.PUBLIC_KEY, Attribute.KEY_TYPE: key_type,
                       **public_values})
        private.update({Attribute.CLASS: ObjectClass.PRIVATE_KEY, Attribute.KEY_TYPE: key_type,
                        **private_values})
        created = session.create_object(private)
        try:
            session.create_object(public)
        except Exception:
            created.destroy()
            raise
        return self._record_for(cka_id)

    @_guarded("removing a key")
    def remove(self, keyid: str) -> None:
        """Destroy the private key, the public key and any certificate with the same CKA_ID."""
        from pkcs11 import Attribute

        cka_id = self._get(keyid).cka_id
        session = self._login()
        for obj in list(session.get_objects({Attribute.ID: cka_id})):
            obj.destroy()
        self._keys = None
        self._signing_functions.pop(keyid, None)

    def sign(self, keyid: str, payload: bytes) -> bytes:
        """A signature over `payload` in the encoding TUF expects, made on the token."""
        sign = self._signing_functions.get(keyid)
        try:
            if sign is None:
                sign = self._signing_functions[keyid] = self._signing_function(keyid)
            return sign(payload)
        except Exception as e:
            if not is_gone(e):
                raise
            self._signing_functions.pop(keyid, None)
            raise token_gone(e, f"signing with key {keyid[:7]}", self._module) from None

    def _signing_function(self, keyid: str):
        """payload -> signature for one key, with everything but the token call done once."""
        from pkcs11 import MGF, Mechanism, ObjectClass

        token_key = self._get(keyid)
        private = self._login().get_key(object_class=ObjectClass.PRIVATE_KEY, id=token_key.cka_id)
        alg = token_key.algorithm
        if alg.keytype == "ecdsa":
            # SoftHSM 2.6 has no CKM_ECDSA_SHA256: hash here, sign the digest, DER-encode r||s.
            new_hash = getattr(hashlib, EC_HASH[alg.curve])
            ecdsa = Mechanism.ECDSA

            def sign_ecdsa(payload: bytes) -> bytes:
                return der_ecdsa_signature(private.sign(new_hash(payload).digest(), mechanism=ecdsa))
            return sign_ecdsa
        if alg.keytype == "ed25519":
            return lambda payload: private.sign(payload, mechanism=Mechanism.EDDSA)
        if alg.keytype == "rsa":
            params = (Mechanism.SHA256, MGF.SHA256, 32)
            return lambda payload: private.sign(hashlib.sha256(payload).digest(),
                                                mechanism=Mechanism.RSA_PKCS_PSS,
                                                mechanism_param=params)
        raise HsmsignError(f"cannot sign with {alg.name} keys")  # pragma: no cover


__all__ = ["CKA_ID_LENGTH", "STORE", "PinPolicyError", "Pkcs11KeyStore", "TokenError",
           "list_tokens", "pin_refusal", "remote_address"]
