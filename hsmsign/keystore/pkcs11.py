"""Keys on any PKCS#11 token through python-pkcs11 (SoftHSM, ykcs11, OpenSC, network HSMs).

Private keys are generated or imported as token objects that are private, sensitive and never
extractable; `CKA_LABEL` is the role, `CKA_ID` a random 16-byte identifier fixed at creation.
The TUF key ID is computed from the public key object, so listing needs no PIN.

One session and one login per process (PKCS#11 login state belongs to the application), reused
for every key and signature.
"""

from __future__ import annotations

import functools
import hashlib
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hsmsign.config import TokenConfig
from hsmsign.errors import HsmsignError
from hsmsign.keys import Algorithm, KeyRecord, algorithm_of, key_id
from hsmsign.keystore.scanned import ScannedStore
from hsmsign.secrets import Secrets

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.types import (
        PrivateKeyTypes,
        PublicKeyTypes,
    )

STORE = "token"
ED25519_OID_DER = bytes.fromhex("06032b6570")
CKA_ID_LENGTH = 16


class TokenError(HsmsignError):
    """The module or token cannot be used as configured."""


class PinPolicyError(HsmsignError):
    """hsmsign refused to spend a PIN try."""


def _load_module(path: str):
    import pkcs11

    if not os.path.exists(path):
        raise TokenError(
            f"PKCS#11 module {path} does not exist; set HSMSIGN_PKCS11_MODULE to the path of "
            "your token's module (e.g. /usr/lib/softhsm/libsofthsm2.so)"
        )
    try:
        return pkcs11.lib(path)
    except pkcs11.PKCS11Error as e:
        reason = str(e).rsplit(": ", 1)[-1]
        raise TokenError(
            f"{path} is not a usable PKCS#11 module ({reason}); set HSMSIGN_PKCS11_MODULE to "
            "your token's module"
        ) from None


P11_KIT_CLIENT = "p11-kit-client.so"


def remote_address(module: str) -> str | None:
    """The server a PKCS#11 remoting module talks to, or None for a local module.

    p11-kit's client module forwards every call to a `p11-kit server` (a network HSM's token
    exported over a Unix socket, often forwarded over SSH); without P11_KIT_SERVER_ADDRESS it
    uses p11-kit's default socket, $XDG_RUNTIME_DIR/p11-kit/pkcs11.
    """
    if os.path.basename(module) != P11_KIT_CLIENT:
        return None
    default = f"unix:path={os.environ.get('XDG_RUNTIME_DIR', '/run/user/' + str(os.getuid()))}/p11-kit/pkcs11"
    return os.environ.get("P11_KIT_SERVER_ADDRESS") or default


def module_place(module: str) -> str:
    """Where a module's tokens are, for messages: the module, and the server for a remote one."""
    address = remote_address(module)
    return module if address is None else f"{module} (p11-kit server {address})"


def _present_slots(lib, module: str) -> list:
    """Slots with a token; a module that cannot enumerate them (e.g. no pcscd) is an error."""
    import pkcs11

    try:
        slots = list(lib.get_slots(token_present=True))
        return [slot for slot in slots if _answers(slot)]
    except pkcs11.PKCS11Error as e:
        address = remote_address(module)
        if address is not None:
            raise TokenError(
                f"cannot reach the p11-kit server {address} through {module} "
                f"({type(e).__name__}); is the server running and its socket forwarded here?"
            ) from None
        raise TokenError(
            f"PKCS#11 module {module} cannot list its slots ({type(e).__name__}); is the "
            "reader service (pcscd) running and the device plugged in?"
        ) from None


def _answers(slot) -> bool:
    """A slot whose token can be read (one being removed right now cannot)."""
    try:
        slot.get_token()
        return True
    except Exception as e:  # noqa: BLE001
        if _is_gone(e):
            return False
        raise


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return str(value).strip().rstrip("\x00").strip()


_GONE = ("DeviceRemoved", "TokenNotPresent", "DeviceError", "GeneralError",
         "SessionHandleInvalid", "SessionClosed", "ObjectHandleInvalid", "SlotIDInvalid")


def _token_gone(error: Exception, doing: str, module: str | None = None) -> TokenError:
    """The error for a token that vanished (unplugged, module restarted, a network HSM's
    server gone) while in use."""
    address = remote_address(module) if module else None
    if address is not None:
        return TokenError(f"the p11-kit server {address} stopped answering while {doing} "
                          f"({type(error).__name__}); nothing was written: check that the "
                          "server runs and is reachable, then run the command again")
    return TokenError(f"the token stopped answering while {doing} ({type(error).__name__}: "
                      "was it removed?); plug it in and run the command again")


def _is_gone(error: Exception) -> bool:
    return type(error).__name__ in _GONE


def flag_names(flags: int) -> list[str]:
    from pkcs11 import TokenFlag

    return [f.name for f in TokenFlag if f.value and flags & f.value == f.value]


@dataclass(frozen=True)
class TokenInfo:
    module: str
    slot: int
    label: str
    serial: str
    manufacturer: str
    model: str
    flags: list[str]

    def to_json(self) -> dict:
        return dict(self.__dict__)


def list_tokens(config: TokenConfig) -> list[TokenInfo]:
    """Every token present in the configured module, or in every well-known module."""
    found = []
    for module in config.candidate_modules():
        try:
            lib = _load_module(module)
            slots = _present_slots(lib, module)
        except TokenError:
            if config.module:
                raise
            continue
        for slot in slots:
            token = slot.get_token()
            found.append(TokenInfo(
                module=module,
                slot=slot.slot_id,
                label=_text(token.label),
                serial=_text(token.serial),
                manufacturer=_text(token.manufacturer_id),
                model=_text(token.model),
                flags=flag_names(int(token.flags)),
            ))
    return found


def pin_refusal(flags: int, token: str, force: bool) -> str | None:
    """Why a login must not be tried now, or None. The token's own flags decide."""
    from pkcs11 import TokenFlag

    if flags & TokenFlag.USER_PIN_LOCKED:
        return (f"the user PIN of token {token} is locked; unblock it with the SO PIN "
                "(e.g. `pkcs11-tool --init-pin --login --login-type so`) before using it")
    if flags & TokenFlag.USER_PIN_FINAL_TRY and not force:
        return (f"token {token} has one PIN try left and a wrong PIN would lock it; "
                "re-run with --force if you are sure of the PIN")
    return None


def pin_tries_hint(flags: int) -> str:
    from pkcs11 import TokenFlag

    if flags & TokenFlag.USER_PIN_LOCKED:
        return "the PIN is now locked; unblock it with the SO PIN"
    if flags & TokenFlag.USER_PIN_FINAL_TRY:
        return "one try is left before the PIN locks"
    if flags & TokenFlag.USER_PIN_COUNT_LOW:
        return "the token reports few tries left"
    return "check HSMSIGN_PIN or type it again"


def public_key_from_object(obj) -> PublicKeyTypes:
    """A cryptography public key from a PKCS#11 public key object."""
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
    from cryptography.hazmat.primitives.serialization import load_der_public_key
    from pkcs11 import Attribute, KeyType

    key_type = obj.key_type
    if key_type == KeyType.RSA:
        n = int.from_bytes(obj[Attribute.MODULUS], "big")
        e = int.from_bytes(obj[Attribute.PUBLIC_EXPONENT], "big")
        return rsa.RSAPublicNumbers(e, n).public_key()
    if key_type == KeyType.EC:
        from pkcs11.util.ec import encode_ec_public_key

        return load_der_public_key(encode_ec_public_key(obj))
    if key_type == KeyType.EC_EDWARDS:
        point = bytes(obj[Attribute.EC_POINT])
        if len(point) == 34 and point[:2] == b"\x04\x20":  # DER OCTET STRING around the key
            point = point[2:]
        return ed25519.Ed25519PublicKey.from_public_bytes(point)
    raise HsmsignError(f"unsupported key type {key_type} on token")


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

    # -- finding the token -------------------------------------------------------------

    def _find_slot(self):
        if self._slot is not None:
            return self._slot
        for module in self.config.candidate_modules():
            try:
                lib = _load_module(module)
                slots = [s for s in _present_slots(lib, module) if self._matches(s.get_token())]
            except TokenError:
                if self.config.module:
                    raise
                continue
            if len(slots) > 1:
                labels = ", ".join(_text(s.get_token().label) for s in slots)
                raise TokenError(
                    f"several tokens present ({labels}); choose one with HSMSIGN_TOKEN_LABEL "
                    "or HSMSIGN_TOKEN_SERIAL"
                )
            if slots:
                self._lib, self._module, self._slot = lib, module, slots[0]
                return self._slot
            if self.config.module:
                break
        if not self.config.candidate_modules():
            raise TokenError("no PKCS#11 module configured or found; set HSMSIGN_PKCS11_MODULE")
        wanted = (f"with label {self.config.label!r}" if self.config.label
                  else f"with serial {self.config.serial!r}" if self.config.serial else "")
        where = (module_place(self.config.module) if self.config.module
                 else ", ".join(self.config.candidate_modules()))
        raise TokenError(
            f"no token {wanted} is present in {where}; plug it in, or check "
            "HSMSIGN_TOKEN_LABEL / `hsmsign token list`".replace("  ", " ")
        )

    def _matches(self, token) -> bool:
        from pkcs11 import TokenFlag

        if self.config.label is not None:
            return _text(token.label) == self.config.label
        if self.config.serial is not None:
            return _text(token.serial) == self.config.serial
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
            if _is_gone(e):
                raise _token_gone(e, "reading the token", self._module) from None
            raise

    @property
    def token_name(self) -> str:
        token = self._token()
        return f"{_text(token.label)} (serial {_text(token.serial)})"

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
            if not _is_gone(e):
                raise
            self._session = None
            self._logged_in = False
            self._signing_functions.clear()
            raise _token_gone(e, doing, self._module) from None

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
        name = _text(token.label)
        refusal = pin_refusal(int(token.flags), name, self.force)
        if refusal:
            raise PinPolicyError(refusal)
        pin = self.secrets.pin(name)
        try:
            with self._answering(f"logging in to token {name}"):
                session = token.open(rw=self._rw(token), user_pin=pin)
        except pkcs11.PinIncorrect:
            self.secrets.forget_pin(name)
            hint = pin_tries_hint(int(self._token().flags))
            raise HsmsignError(f"wrong PIN for token {name}; {hint}") from None
        except pkcs11.PinLocked:
            raise HsmsignError(
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
                _load_module(module).reinitialize()
            except TokenError:
                continue

    def close(self) -> None:
        if self._session is not None:
            try:
                self._session.close()
            except Exception as e:  # a session that died with its token or server: gone anyway
                if not _is_gone(e):
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
                    record=KeyRecord(keyid=keyid, role=_text(obj.label) or "unknown", gun=None,
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
    def generate(self, role: str, alg: Algorithm) -> KeyRecord:
        """A new key pair made inside the token; the private half never leaves it."""
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
        key_type, public_values, private_values = _token_attributes(key)
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
            if not _is_gone(e):
                raise
            self._signing_functions.pop(keyid, None)
            raise _token_gone(e, f"signing with key {keyid[:7]}", self._module) from None

    def _signing_function(self, keyid: str):
        """payload -> signature for one key, with everything but the token call done once."""
        from pkcs11 import MGF, Mechanism, ObjectClass

        token_key = self._get(keyid)
        private = self._login().get_key(object_class=ObjectClass.PRIVATE_KEY, id=token_key.cka_id)
        alg = token_key.algorithm
        if alg.keytype == "ecdsa":
            # SoftHSM 2.6 has no CKM_ECDSA_SHA256: hash here, sign the digest, DER-encode r||s.
            new_hash = getattr(hashlib, _EC_HASH[alg.curve])
            ecdsa = Mechanism.ECDSA

            def sign_ecdsa(payload: bytes) -> bytes:
                return _der_ecdsa_signature(private.sign(new_hash(payload).digest(), mechanism=ecdsa))
            return sign_ecdsa
        if alg.keytype == "ed25519":
            return lambda payload: private.sign(payload, mechanism=Mechanism.EDDSA)
        if alg.keytype == "rsa":
            params = (Mechanism.SHA256, MGF.SHA256, 32)
            return lambda payload: private.sign(hashlib.sha256(payload).digest(),
                                                mechanism=Mechanism.RSA_PKCS_PSS,
                                                mechanism_param=params)
        raise HsmsignError(f"cannot sign with {alg.name} keys")  # pragma: no cover


_EC_HASH = {"secp256r1": "sha256", "secp384r1": "sha384", "secp521r1": "sha512"}


def _der_ecdsa_signature(raw: bytes) -> bytes:
    """DER `SEQUENCE { r INTEGER, s INTEGER }` of a PKCS#11 raw r || s ECDSA signature.

    The same bytes as cryptography's `encode_dss_signature`, without the round trip through
    Python ints and Rust: a few microseconds per signature, ~3% of a SoftHSM P-256 signature
    (bench/bench_pkcs11_sign.py).
    """
    half = len(raw) // 2
    r = raw[:half].lstrip(b"\x00") or b"\x00"
    s = raw[half:].lstrip(b"\x00") or b"\x00"
    if r[0] & 0x80:
        r = b"\x00" + r
    if s[0] & 0x80:
        s = b"\x00" + s
    body = b"\x02" + _der_length(len(r)) + r + b"\x02" + _der_length(len(s)) + s
    return b"\x30" + _der_length(len(body)) + body


def _der_length(length: int) -> bytes:
    if length < 0x80:
        return bytes((length,))
    size = (length.bit_length() + 7) // 8
    return bytes((0x80 | size,)) + length.to_bytes(size, "big")


def _token_attributes(key) -> tuple[Any, dict, dict]:
    """PKCS#11 key type, public and private attributes for a software private key."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
    from pkcs11 import Attribute, KeyType
    from pkcs11.util.ec import encode_named_curve_parameters

    if isinstance(key, ec.EllipticCurvePrivateKey):
        size = (key.curve.key_size + 7) // 8
        point = key.public_key().public_bytes(serialization.Encoding.X962,
                                              serialization.PublicFormat.UncompressedPoint)
        params = encode_named_curve_parameters(key.curve.name)
        return (KeyType.EC,
                {Attribute.EC_PARAMS: params, Attribute.EC_POINT: _der_octet_string(point)},
                {Attribute.EC_PARAMS: params,
                 Attribute.VALUE: key.private_numbers().private_value.to_bytes(size, "big")})
    if isinstance(key, ed25519.Ed25519PrivateKey):
        raw_public = key.public_key().public_bytes(serialization.Encoding.Raw,
                                                   serialization.PublicFormat.Raw)
        seed = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                 serialization.NoEncryption())
        return (KeyType.EC_EDWARDS,
                {Attribute.EC_PARAMS: ED25519_OID_DER,
                 Attribute.EC_POINT: _der_octet_string(raw_public)},
                {Attribute.EC_PARAMS: ED25519_OID_DER, Attribute.VALUE: seed})
    if isinstance(key, rsa.RSAPrivateKey):
        n = key.private_numbers()
        big = _big_endian
        return (KeyType.RSA,
                {Attribute.MODULUS: big(n.public_numbers.n),
                 Attribute.PUBLIC_EXPONENT: big(n.public_numbers.e)},
                {Attribute.MODULUS: big(n.public_numbers.n),
                 Attribute.PUBLIC_EXPONENT: big(n.public_numbers.e),
                 Attribute.PRIVATE_EXPONENT: big(n.d), Attribute.PRIME_1: big(n.p),
                 Attribute.PRIME_2: big(n.q), Attribute.EXPONENT_1: big(n.dmp1),
                 Attribute.EXPONENT_2: big(n.dmq1), Attribute.COEFFICIENT: big(n.iqmp)})
    raise HsmsignError(f"cannot put a {type(key).__name__} on a token")


def _big_endian(value: int) -> bytes:
    return value.to_bytes((value.bit_length() + 7) // 8 or 1, "big")


def _der_octet_string(value: bytes) -> bytes:
    from asn1crypto.core import OctetString

    return OctetString(value).dump()
