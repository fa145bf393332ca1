"""Tests for hsmsign.pkcs8 against real notary / Docker Content Trust key files.

Test data: tests/data/notary (see its README.md for origin and passphrases).
"""

from __future__ import annotations

import base64
import glob
import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from asn1crypto import algos, core, keys
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed25519, rsa, x25519
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from hsmsign.pkcs8 import (
    KeyFormatError,
    PassphraseRequired,
    PemBlock,
    WrongPassphrase,
    encrypt_notary_pem,
    encrypt_private_key_pem,
    load_private_key,
    public_key_of,
    read_private_key_pem,
)

DATA = Path(__file__).parent / "data" / "notary"
VECTORS = DATA / "pkcs8-vectors"
VECTOR_PASS = b"ponies"
PASS_01 = b"randompass"
PASS_03 = b"password"

OID_NOTARY_ED25519 = "1.3.6.1.4.1.11591.15.1"
OID_HMAC_SHA256 = "1.2.840.113549.2.9"
OID_PBES2 = "1.2.840.113549.1.5.13"
OID_PBKDF2 = "1.2.840.113549.1.5.12"
OID_AES256_CBC = "2.16.840.1.101.3.4.1.42"

FAST = 1000  # PBKDF2 iterations for tests that do not check the default

SUPPORTED_VECTORS = [
    "01-rsa-2048",
    "03-ecdsa-secp256r1",
    "04-ecdsa-secp384r1",
    "05-ecdsa-secp521r1",
    "06-ed25519-notaryoid",
]

OPENSSL = shutil.which("openssl")
needs_openssl = pytest.mark.skipif(OPENSSL is None, reason="openssl CLI not installed")


# --------------------------------------------------------------------------
# helpers


def vector(name: str, kind: str) -> bytes:
    return (VECTORS / f"{name}-{kind}.pem").read_bytes()


def trustdir_keys() -> list[tuple[Path, bytes]]:
    out = []
    for version, pw in (("0.1", PASS_01), ("0.3", PASS_03)):
        base = DATA / f"trustdir-{version}" / "private"
        for f in sorted(glob.glob(str(base / "**" / "*.key"), recursive=True)):
            out.append((Path(f), pw))
    return out


TRUSTDIR_KEYS = trustdir_keys()


def spki(key) -> bytes:
    return public_key_of(key).public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def assert_same_key(a, b) -> None:
    assert type(a) is type(b)
    if isinstance(a, ed25519.Ed25519PrivateKey):
        assert a.private_bytes_raw() == b.private_bytes_raw()
    else:
        assert a.private_numbers() == b.private_numbers()
    assert spki(a) == spki(b)


def pem_body_b64(pem: bytes) -> str:
    """The base64 body of the first PEM block (header lines excluded)."""
    lines = pem.decode("ascii").replace("\r\n", "\n").split("\n")
    return "".join(
        line for line in lines if line and not line.startswith("-----") and ":" not in line
    )


def assert_message_is_clean(exc: BaseException, secrets: list[bytes], pem: bytes) -> None:
    text = str(exc) + repr(exc)
    for secret in secrets:
        assert secret.decode("latin-1") not in text
    body = pem_body_b64(pem) if pem else ""
    for i in range(0, max(len(body) - 12, 0), 4):
        assert body[i : i + 12] not in text


def strip_pem_headers(pem: bytes) -> bytes:
    """Remove 'name: value' lines and the blank line after them (for openssl)."""
    lines = pem.decode("ascii").split("\n")
    kept = [ln for ln in lines if ":" not in ln and ln != ""]
    return ("\n".join(kept) + "\n").encode("ascii")


def run_openssl(args: list[str], stdin: bytes | None = None) -> bytes:
    proc = subprocess.run(
        [OPENSSL, *args], input=stdin, capture_output=True, timeout=30, check=False
    )
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    return proc.stdout


def openssl_decrypt(tmp_path: Path, pem: bytes, passphrase: bytes):
    """Decrypt an ENCRYPTED PRIVATE KEY with the openssl CLI (passphrase from a file)."""
    enc = tmp_path / "enc.pem"
    enc.write_bytes(strip_pem_headers(pem))
    pw = tmp_path / "pw"
    pw.write_bytes(passphrase + b"\n")
    os.chmod(pw, 0o600)
    out = run_openssl(["pkcs8", "-in", str(enc), "-passin", f"file:{pw}"])
    assert out.startswith(b"-----BEGIN PRIVATE KEY-----")
    return serialization.load_pem_private_key(out, password=None)


def der_to_pem(label: str, der: bytes, header_lines: str = "") -> bytes:
    b64 = base64.b64encode(der).decode()
    body = "\n".join(b64[i : i + 64] for i in range(0, len(b64), 64))
    return f"-----BEGIN {label}-----\n{header_lines}{body}\n-----END {label}-----\n".encode()


@pytest.fixture(scope="module")
def generated_keys():
    return {
        "p256": ec.generate_private_key(ec.SECP256R1()),
        "p384": ec.generate_private_key(ec.SECP384R1()),
        "ed25519": ed25519.Ed25519PrivateKey.generate(),
        "rsa3072": rsa.generate_private_key(public_exponent=65537, key_size=3072),
    }


KEY_NAMES = ["p256", "p384", "ed25519", "rsa3072"]


# --------------------------------------------------------------------------
# notary pkcs8 vectors


@pytest.mark.parametrize("name", SUPPORTED_VECTORS)
def test_encrypted_vector_equals_plain_twin(name):
    encrypted = load_private_key(vector(name, "encrypted"), VECTOR_PASS)
    plain = load_private_key(vector(name, "plain"), None)
    assert_same_key(encrypted, plain)


def test_notary_ed25519_oid_vector():
    plain_pem = vector("06-ed25519-notaryoid", "plain")
    key = load_private_key(plain_pem, None)
    assert isinstance(key, ed25519.Ed25519PrivateKey)
    pki = core.Sequence.load(read_private_key_pem(plain_pem).der)
    assert pki[1][0].dotted == OID_NOTARY_ED25519
    body = pki[2].native
    assert len(body) == 96
    assert body[:32] == body[64:] == key.public_key().public_bytes_raw()
    assert body[32:64] == key.private_bytes_raw()
    # and it signs/verifies
    key.public_key().verify(key.sign(b"tuf"), b"tuf")


def test_notary_ed25519_mismatched_public_key_is_rejected():
    pki = core.Sequence.load(read_private_key_pem(vector("06-ed25519-notaryoid", "plain")).der)
    body = pki[2].native
    other = ed25519.Ed25519PrivateKey.generate().public_key().public_bytes_raw()
    bad = keys_sequence(pki[0].native, pki[1], other + body[32:64] + other)
    with pytest.raises(KeyFormatError, match="public key does not match") as info:
        load_private_key(der_to_pem("PRIVATE KEY", bad), None)
    assert type(info.value) is KeyFormatError
    short = keys_sequence(0, pki[1], body[:64])
    with pytest.raises(KeyFormatError, match="96 bytes"):
        load_private_key(der_to_pem("PRIVATE KEY", short), None)


def keys_sequence(version: int, algorithm, private_key: bytes) -> bytes:
    """A PrivateKeyInfo built with asn1crypto from an existing algorithm identifier."""
    return core.Sequence(
        contents=core.Integer(version).dump()
        + algorithm.dump()
        + core.OctetString(private_key).dump()
    ).dump()


@pytest.mark.parametrize("kind", ["plain", "encrypted"])
def test_secp224r1_is_unsupported(kind):
    data = vector("02-ecdsa-secp224r1", kind)
    with pytest.raises(KeyFormatError, match="secp224r1") as info:
        load_private_key(data, VECTOR_PASS)
    assert not isinstance(info.value, WrongPassphrase)
    assert "unsupported" in str(info.value)


def test_secp224r1_sec1_is_unsupported():
    key = load_private_key_unchecked(vector("02-ecdsa-secp224r1", "plain"))
    sec1 = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    with pytest.raises(KeyFormatError, match="secp224r1"):
        load_private_key(sec1, None)


def load_private_key_unchecked(pem: bytes):
    return serialization.load_der_private_key(read_private_key_pem(pem).der, password=None)


def test_rsa_vector_without_null_parameter():
    # notary writes rsaEncryption without the NULL parameter
    pki = keys.PrivateKeyInfo.load(read_private_key_pem(vector("01-rsa-2048", "plain")).der)
    assert pki["private_key_algorithm"].contents.endswith(
        core.ObjectIdentifier("1.2.840.113549.1.1.1").dump()
    )
    key = load_private_key(vector("01-rsa-2048", "plain"), None)
    assert isinstance(key, rsa.RSAPrivateKey) and key.key_size == 2048


def test_ec_pkcs8_version_1_is_accepted():
    # notary's convertTUFKeyToPKCS8 writes EC keys with version 1
    plain = read_private_key_pem(vector("03-ecdsa-secp256r1", "plain")).der
    pki = core.Sequence.load(plain)
    v1 = keys_sequence(1, pki[1], pki[2].native)
    assert core.Sequence.load(v1)[0].native == 1
    v1_pem = der_to_pem("PRIVATE KEY", v1, "role: targets\ngun: docker.io/x/y\n\n")
    key = load_private_key(v1_pem, None)
    assert_same_key(key, load_private_key(vector("03-ecdsa-secp256r1", "plain"), None))
    # and the same inside an encrypted PKCS#8 written by a notary-like writer
    enc = encrypt_with_inner(v1, b"pw", iterations=FAST)
    assert_same_key(load_private_key(enc, b"pw"), key)


def encrypt_with_inner(inner: bytes, passphrase: bytes, iterations: int) -> bytes:
    """Independent PBES2 writer (hashlib PBKDF2-SHA1, no PRF field) for arbitrary inner DER."""
    salt, iv = os.urandom(8), os.urandom(16)
    k = hashlib.pbkdf2_hmac("sha1", passphrase, salt, iterations, 32)
    pad = 16 - len(inner) % 16
    enc = Cipher(algorithms.AES(k), modes.CBC(iv)).encryptor()
    ct = enc.update(inner + bytes([pad]) * pad) + enc.finalize()
    epki = keys.EncryptedPrivateKeyInfo(
        {
            "encryption_algorithm": {
                "algorithm": "pbes2",
                "parameters": {
                    "key_derivation_func": {
                        "algorithm": "pbkdf2",
                        "parameters": algos.Pbkdf2Params(
                            {
                                "salt": algos.Pbkdf2Salt(name="specified", value=salt),
                                "iteration_count": iterations,
                            }
                        ),
                    },
                    "encryption_scheme": {"algorithm": "aes256_cbc", "parameters": iv},
                },
            },
            "encrypted_data": ct,
        }
    )
    return der_to_pem("ENCRYPTED PRIVATE KEY", epki.dump(), "role: root\n\n")


def test_standard_ed25519_pkcs8(generated_keys):
    key = generated_keys["ed25519"]
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    assert_same_key(load_private_key(pem, None), key)
    enc = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    assert_same_key(load_private_key(enc, b"secret"), key)


def test_notary_headers_in_pkcs8_pem():
    for name in ("03-ecdsa-secp256r1", "06-ed25519-notaryoid"):
        for kind, pw in (("encrypted", VECTOR_PASS), ("plain", None)):
            pem = vector(name, kind).decode()
            first, rest = pem.split("\n", 1)
            with_headers = (
                f"{first}\ngun: docker.io/library/alpine\npath: abc\nrole: targets\n\n{rest}"
            ).encode()
            block = read_private_key_pem(with_headers)
            assert block.headers == {
                "gun": "docker.io/library/alpine",
                "path": "abc",
                "role": "targets",
            }
            assert_same_key(load_private_key(with_headers, pw), load_private_key(pem.encode(), pw))


# --------------------------------------------------------------------------
# notary trust dirs (legacy OpenSSL-encrypted SEC1 / PKCS#1)


def notary_key_id(key) -> str:
    """notary's key ID: sha256 of canonical JSON of the public key."""
    keytype = "rsa" if isinstance(key, rsa.RSAPrivateKey) else "ecdsa"
    public = base64.b64encode(spki(key)).decode()
    doc = {"keytype": keytype, "keyval": {"private": None, "public": public}}
    canonical = json.dumps(doc, separators=(",", ":"), sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


@pytest.mark.parametrize(
    "path,passphrase", TRUSTDIR_KEYS, ids=lambda v: getattr(v, "name", "")[:20]
)
def test_trustdir_key_loads(path, passphrase):
    data = path.read_bytes()
    key = load_private_key(data, passphrase)
    block = read_private_key_pem(data)
    assert block.encrypted
    if block.label == "RSA PRIVATE KEY":
        assert isinstance(key, rsa.RSAPrivateKey)
    else:
        assert block.label == "EC PRIVATE KEY"
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        assert key.curve.name == "secp256r1"
    # the file is named after notary's key ID of exactly this key
    assert path.name.startswith(notary_key_id(key))


def test_trustdir_counts():
    assert len(TRUSTDIR_KEYS) == 7
    rsa_keys = [p for p, _ in TRUSTDIR_KEYS if b"RSA PRIVATE KEY" in p.read_bytes()]
    assert len(rsa_keys) == 1


def test_legacy_headers_are_read():
    path = next(p for p, _ in TRUSTDIR_KEYS if b"RSA PRIVATE KEY" in p.read_bytes())
    block = read_private_key_pem(path.read_bytes())
    assert block.label == "RSA PRIVATE KEY"
    assert list(block.headers) == ["Proc-Type", "DEK-Info", "role"]
    assert block.headers["Proc-Type"] == "4,ENCRYPTED"
    assert block.headers["DEK-Info"].startswith("AES-256-CBC,")
    assert block.headers["role"] == "targets/releases"
    assert block.encrypted


def test_plain_sec1_and_pkcs1_with_role_header(generated_keys):
    for key in (generated_keys["p384"], generated_keys["rsa3072"]):
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        ).decode()
        first, rest = pem.split("\n", 1)
        data = f"{first}\nrole: root\n\n{rest}".encode()
        block = read_private_key_pem(data)
        assert not block.encrypted
        assert_same_key(load_private_key(data, None), key)
        assert_same_key(load_private_key(data, b"ignored for plain keys"), key)


# --------------------------------------------------------------------------
# errors


def legacy_key() -> tuple[bytes, bytes]:
    path, pw = TRUSTDIR_KEYS[-1]
    return path.read_bytes(), pw


@pytest.mark.parametrize("which", ["pbes2", "legacy"])
def test_wrong_passphrase(which):
    if which == "pbes2":
        data, pw = vector("03-ecdsa-secp256r1", "encrypted"), VECTOR_PASS
    else:
        data, pw = legacy_key()
    wrong = b"not-" + pw
    with pytest.raises(WrongPassphrase) as info:
        load_private_key(data, wrong)
    assert_message_is_clean(info.value, [pw, wrong], data)


@pytest.mark.parametrize("which", ["pbes2", "legacy"])
def test_passphrase_required(which):
    data = vector("01-rsa-2048", "encrypted") if which == "pbes2" else legacy_key()[0]
    with pytest.raises(PassphraseRequired) as info:
        load_private_key(data, None)
    assert isinstance(info.value, KeyFormatError)
    assert_message_is_clean(info.value, [], data)


def split_pem(data: bytes) -> tuple[str, list[str], list[str], str]:
    """(BEGIN line, header lines, base64 lines, END line) of a single-block PEM."""
    lines = [ln for ln in data.decode().split("\n") if ln]
    begin, end = lines[0], lines[-1]
    headers = [ln for ln in lines[1:-1] if ":" in ln]
    body = [ln for ln in lines[1:-1] if ":" not in ln]
    return begin, headers, body, end


def join_pem(begin: str, headers: list[str], body: list[str], end: str | None) -> bytes:
    parts = [begin, *headers]
    if headers:
        parts.append("")
    parts += body
    if end:
        parts.append(end)
    return ("\n".join(parts) + "\n").encode()


def truncations(data: bytes) -> list[bytes]:
    begin, headers, body, end = split_pem(data)
    no_end = join_pem(begin, headers, body[:-1], None)  # END line cut off
    half = join_pem(begin, headers, body[: len(body) // 2], end)
    # drop whole base64 quanta so the base64 stays valid but the DER is short
    last = body[-1]
    short_last = last[:-4] if "=" not in last[-4:] else last[:-8]
    one_quantum = join_pem(begin, headers, [*body[:-1], short_last], end)
    broken_b64 = join_pem(begin, headers, [body[0], "!!" + body[1][2:], *body[2:]], end)
    return [no_end, half, one_quantum, broken_b64]


@pytest.mark.parametrize(
    "name,pw",
    [
        ("03-ecdsa-secp256r1-encrypted", VECTOR_PASS),
        ("01-rsa-2048-encrypted", VECTOR_PASS),
        ("06-ed25519-notaryoid-plain", None),
        ("05-ecdsa-secp521r1-plain", None),
        ("legacy", PASS_03),
    ],
)
def test_truncated_input(name, pw):
    data = legacy_key()[0] if name == "legacy" else (VECTORS / f"{name}.pem").read_bytes()
    for bad in truncations(data):
        with pytest.raises(KeyFormatError) as info:
            load_private_key(bad, pw)
        assert_message_is_clean(info.value, [pw or b"\x00never"], data)
    # the same truncations in bare DER
    der = read_private_key_pem(data).der
    for cut in (len(der) // 2, len(der) - 1):
        with pytest.raises(KeyFormatError):
            load_private_key(der[:cut], pw)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"hello world",
        os.urandom(300),
        b"\x30\x82\x01\x00" + os.urandom(40),
        b"-----BEGIN PRIVATE KEY-----\n-----END PRIVATE KEY-----\n",
        b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        der_to_pem("PRIVATE KEY", os.urandom(120)),
        der_to_pem("ENCRYPTED PRIVATE KEY", os.urandom(120)),
        der_to_pem("EC PRIVATE KEY", os.urandom(120)),
        b"-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-256-CBC,00\n\n"
        + base64.b64encode(os.urandom(64)) + b"\n-----END RSA PRIVATE KEY-----\n",
        b"-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: CAMELLIA-256-CBC,"
        + b"00" * 16
        + b"\n\n"
        + base64.b64encode(os.urandom(64))
        + b"\n-----END RSA PRIVATE KEY-----\n",
    ],
    ids=[
        "empty", "text", "random", "der-like", "empty-block", "tiny-block", "random-pkcs8",
        "random-encrypted-pkcs8", "random-sec1", "bad-dek-iv", "unknown-dek-cipher",
    ],
)
def test_garbage_input(data):
    with pytest.raises(KeyFormatError) as info:
        load_private_key(data, b"passphrase-xyz")
    pem = data if data.startswith(b"-") else b""
    assert_message_is_clean(info.value, [b"passphrase-xyz"], pem)


def test_no_private_key_block():
    cert = next(DATA.glob("trustdir-0.1/trusted_certificates/**/*.crt"))
    with pytest.raises(KeyFormatError, match="no private key"):
        read_private_key_pem(cert.read_bytes())
    with pytest.raises(KeyFormatError, match="no private key"):
        load_private_key(cert.read_bytes(), None)


def test_unsupported_key_types():
    dsa_key = dsa.generate_private_key(key_size=1024)
    x_key = x25519.X25519PrivateKey.generate()
    for key, label in ((dsa_key, "DSA"), (x_key, "X25519")):
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        with pytest.raises(KeyFormatError, match=f"unsupported key: {label}"):
            load_private_key(pem, None)
        with pytest.raises(TypeError):
            encrypt_private_key_pem(key, b"pw", iterations=FAST)


def test_unsupported_pbes2_cipher():
    pem = encrypt_private_key_pem(ec.generate_private_key(ec.SECP256R1()), b"pw", iterations=FAST)
    epki = keys.EncryptedPrivateKeyInfo.load(read_private_key_pem(pem).der)
    alg = epki["encryption_algorithm"]["parameters"]["encryption_scheme"]
    alg["algorithm"] = "aes256_ofb"
    with pytest.raises(KeyFormatError, match="unsupported PBES2 cipher") as info:
        load_private_key(der_to_pem("ENCRYPTED PRIVATE KEY", epki.dump(force=True)), b"pw")
    assert not isinstance(info.value, WrongPassphrase)


# --------------------------------------------------------------------------
# PEM reading


def test_read_pem_tolerates_crlf_junk_and_other_blocks():
    cert = next(DATA.glob("trustdir-0.1/trusted_certificates/**/*.crt")).read_bytes()
    key_pem = vector("04-ecdsa-secp384r1", "encrypted").decode()
    first, rest = key_pem.split("\n", 1)
    key_with_headers = f"{first}\nrole: snapshot\ngun: example.com/app\n\n{rest}"
    data = (
        "some junk text\r\n"
        + cert.decode().replace("\n", "\r\n")
        + "more junk\r\n"
        + key_with_headers.replace("\n", "\r\n")
        + "trailing junk"
    ).encode()
    block = read_private_key_pem(data)
    assert isinstance(block, PemBlock)
    assert block.label == "ENCRYPTED PRIVATE KEY"
    assert block.headers == {"role": "snapshot", "gun": "example.com/app"}
    assert block.encrypted
    assert block.der == read_private_key_pem(key_pem.encode()).der
    assert_same_key(
        load_private_key(data, VECTOR_PASS),
        load_private_key(vector("04-ecdsa-secp384r1", "plain"), None),
    )
    assert "der=<" in repr(block) and pem_body_b64(key_pem.encode())[:12] not in repr(block)


def test_pem_block_encrypted_property():
    assert not read_private_key_pem(vector("03-ecdsa-secp256r1", "plain")).encrypted
    assert PemBlock("EC PRIVATE KEY", {"Proc-Type": "4,ENCRYPTED"}, b"x").encrypted
    assert not PemBlock("EC PRIVATE KEY", {"role": "root"}, b"x").encrypted


def test_bare_der_input():
    enc_der = read_private_key_pem(vector("05-ecdsa-secp521r1", "encrypted")).der
    plain_der = read_private_key_pem(vector("05-ecdsa-secp521r1", "plain")).der
    assert_same_key(load_private_key(enc_der, VECTOR_PASS), load_private_key(plain_der, None))
    with pytest.raises(PassphraseRequired):
        load_private_key(enc_der, None)


# --------------------------------------------------------------------------
# encrypt_private_key_pem


def epki_params(pem: bytes):
    epki = keys.EncryptedPrivateKeyInfo.load(read_private_key_pem(pem).der)
    alg = epki["encryption_algorithm"]
    assert alg["algorithm"].dotted == OID_PBES2
    kdf = alg["parameters"]["key_derivation_func"]
    assert kdf["algorithm"].dotted == OID_PBKDF2
    scheme = alg["parameters"]["encryption_scheme"]
    assert scheme["algorithm"].dotted == OID_AES256_CBC
    assert len(scheme["parameters"].native) == 16
    return kdf["parameters"], epki


@pytest.mark.parametrize("name", KEY_NAMES)
def test_encrypt_private_key_pem_round_trip(generated_keys, name):
    key = generated_keys[name]
    headers = {"role": "targets", "gun": "docker.io/library/busybox", "path": "abc"}
    pem = encrypt_private_key_pem(key, b"correct horse", headers, iterations=FAST)
    text = pem.decode("ascii")
    assert text.startswith(
        "-----BEGIN ENCRYPTED PRIVATE KEY-----\nrole: targets\n"
        "gun: docker.io/library/busybox\npath: abc\n\n"
    )
    assert text.endswith("-----END ENCRYPTED PRIVATE KEY-----\n")
    body = text.split("\n\n", 1)[1].split("\n")[:-2]
    assert all(len(ln) == 64 for ln in body[:-1]) and 0 < len(body[-1]) <= 64

    block = read_private_key_pem(pem)
    assert block.label == "ENCRYPTED PRIVATE KEY" and block.encrypted
    assert block.headers == headers
    assert list(block.headers) == ["role", "gun", "path"]

    kdf_params, _ = epki_params(pem)
    assert kdf_params["prf"]["algorithm"].dotted == OID_HMAC_SHA256
    assert kdf_params["iteration_count"].native == FAST
    assert len(kdf_params["salt"].chosen.native) == 16

    assert_same_key(load_private_key(pem, b"correct horse"), key)
    with pytest.raises(WrongPassphrase):
        load_private_key(pem, b"correct horse!")


def test_encrypt_private_key_pem_defaults(generated_keys):
    key = generated_keys["p256"]
    pem = encrypt_private_key_pem(key, b"s3cret")
    assert b"\n\n" not in pem  # no headers, no blank line
    kdf_params, _ = epki_params(pem)
    assert kdf_params["prf"]["algorithm"].dotted == OID_HMAC_SHA256
    assert kdf_params["iteration_count"].native >= 600_000
    assert_same_key(load_private_key(pem, b"s3cret"), key)


def test_encrypt_private_key_pem_sha1_omits_prf(generated_keys):
    pem = encrypt_private_key_pem(
        generated_keys["p384"], b"pw", prf="sha1", iterations=FAST, salt_length=8
    )
    kdf_params, _ = epki_params(pem)
    assert len(core.Sequence.load(kdf_params.dump())) == 2  # salt, iterationCount only
    assert len(kdf_params["salt"].chosen.native) == 8
    assert_same_key(load_private_key(pem, b"pw"), generated_keys["p384"])


def test_encrypt_private_key_pem_rejects_bad_arguments(generated_keys):
    key = generated_keys["p256"]
    with pytest.raises(ValueError):
        encrypt_private_key_pem(key, b"", iterations=FAST)
    with pytest.raises(ValueError):
        encrypt_private_key_pem(key, b"pw", {"role": "a\nDEK-Info: x"}, iterations=FAST)
    with pytest.raises(ValueError):
        encrypt_private_key_pem(key, b"pw", {"Proc-Type": "4,ENCRYPTED"}, iterations=FAST)
    with pytest.raises(ValueError):
        encrypt_private_key_pem(key, b"pw", {"bad name": "x"}, iterations=FAST)
    with pytest.raises(ValueError):
        encrypt_private_key_pem(key, b"pw", prf="md5", iterations=FAST)
    with pytest.raises(ValueError):
        encrypt_private_key_pem(key, b"pw", iterations=0)
    with pytest.raises(TypeError):
        encrypt_private_key_pem(key.public_key(), b"pw", iterations=FAST)
    p224 = load_private_key_unchecked(vector("02-ecdsa-secp224r1", "plain"))
    with pytest.raises(KeyFormatError, match="secp224r1"):
        encrypt_private_key_pem(p224, b"pw", iterations=FAST)


@needs_openssl
@pytest.mark.parametrize("name", KEY_NAMES)
def test_openssl_decrypts_encrypt_private_key_pem(tmp_path, generated_keys, name):
    key = generated_keys[name]
    pem = encrypt_private_key_pem(key, b"open sesame", {"role": "root"}, iterations=FAST)
    assert_same_key(openssl_decrypt(tmp_path, pem, b"open sesame"), key)


@needs_openssl
def test_openssl_decrypts_sha1_prf(tmp_path, generated_keys):
    key = generated_keys["ed25519"]
    pem = encrypt_private_key_pem(key, b"pw", prf="sha1", iterations=FAST)
    assert_same_key(openssl_decrypt(tmp_path, pem, b"pw"), key)


@needs_openssl
@pytest.mark.parametrize(
    "cipher,prf",
    [
        ("aes-128-cbc", "hmacWithSHA512"),
        ("aes-192-cbc", "hmacWithSHA384"),
        ("aes-256-cbc", "hmacWithSHA1"),
    ],
)
def test_reads_openssl_written_pbes2(tmp_path, generated_keys, cipher, prf):
    key = generated_keys["p256"]
    plain = tmp_path / "plain.pem"
    plain.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    pw = tmp_path / "pw"
    pw.write_bytes(b"from openssl\n")
    out = run_openssl(
        ["pkcs8", "-topk8", "-in", str(plain), "-v2", cipher, "-v2prf", prf,
         "-iter", str(FAST), "-passout", f"file:{pw}"]
    )
    assert_same_key(load_private_key(out, b"from openssl"), key)
    with pytest.raises(WrongPassphrase):
        load_private_key(out, b"from openssl?")


@needs_openssl
def test_pbes1_is_unsupported(tmp_path, generated_keys):
    plain = tmp_path / "plain.pem"
    plain.write_bytes(
        generated_keys["p256"].private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    pw = tmp_path / "pw"
    pw.write_bytes(b"x\n")
    proc = subprocess.run(
        [OPENSSL, "pkcs8", "-topk8", "-in", str(plain), "-v1", "PBE-SHA1-3DES",
         "-passout", f"file:{pw}"],
        capture_output=True, check=False, timeout=30,
    )
    if proc.returncode != 0:
        pytest.skip("openssl cannot write PBES1 here")
    with pytest.raises(KeyFormatError, match="only PBES2"):
        load_private_key(proc.stdout, b"x")


# --------------------------------------------------------------------------
# encrypt_notary_pem, checked with an independent reader


def independent_notary_decrypt(pem: bytes, passphrase: bytes) -> tuple[dict, core.Sequence]:
    """What notary's ParsePKCS8ToTufKey does: PBES2, PBKDF2-HMAC-SHA1 (PRF ignored),
    AES-256-CBC. Written here without hsmsign: hashlib + cryptography AES + asn1crypto."""
    begin, header_lines, body, end = split_pem(pem)
    assert begin == "-----BEGIN ENCRYPTED PRIVATE KEY-----"
    assert end == "-----END ENCRYPTED PRIVATE KEY-----"
    headers = dict(ln.split(": ", 1) for ln in header_lines)
    b64 = "".join(body)
    epki = core.Sequence.load(base64.b64decode(b64))
    alg, encrypted = epki[0], epki[1].native
    assert alg[0].dotted == OID_PBES2
    kdf, scheme = alg[1][0], alg[1][1]
    assert kdf[0].dotted == OID_PBKDF2
    kdf_params = kdf[1]
    assert len(kdf_params) == 2, "PRF (and keyLength) must be absent"
    salt, iterations = kdf_params[0].native, kdf_params[1].native
    assert scheme[0].dotted == OID_AES256_CBC
    iv = scheme[1].native
    symkey = hashlib.pbkdf2_hmac("sha1", passphrase, salt, iterations, 32)
    dec = Cipher(algorithms.AES(symkey), modes.CBC(iv)).decryptor()
    padded = dec.update(encrypted) + dec.finalize()
    pad = padded[-1]
    assert 1 <= pad <= 16 and padded[-pad:] == bytes([pad]) * pad
    inner = core.Sequence.load(padded[:-pad])
    info = {"headers": headers, "salt": salt, "iterations": iterations}
    return info, inner


@pytest.mark.parametrize("name", KEY_NAMES)
def test_encrypt_notary_pem_independent_reader(generated_keys, name):
    key = generated_keys[name]
    headers = {"role": "targets", "gun": "docker.io/me/app"}
    pem = encrypt_notary_pem(key, b"notary pass", headers, iterations=FAST)
    info, inner = independent_notary_decrypt(pem, b"notary pass")
    assert info["headers"] == headers
    assert info["iterations"] == FAST and len(info["salt"]) == 16
    assert inner[0].native == 0
    oid = inner[1][0].dotted
    if name == "ed25519":
        assert oid == OID_NOTARY_ED25519
        assert len(inner[1]) == 1  # no parameters, as notary writes it
        body = inner[2].native
        pub = key.public_key().public_bytes_raw()
        assert body == pub + key.private_bytes_raw() + pub
    elif name == "rsa3072":
        pki = keys.PrivateKeyInfo.load(inner.dump())
        assert pki["private_key_algorithm"]["algorithm"].native == "rsa"
        priv = pki["private_key"].parsed
        nums = key.private_numbers()
        assert priv["modulus"].native == nums.public_numbers.n
        assert priv["private_exponent"].native == nums.d
    else:
        pki = keys.PrivateKeyInfo.load(inner.dump())
        assert pki["private_key_algorithm"]["algorithm"].native == "ec"
        assert pki["private_key_algorithm"]["parameters"].chosen.native == key.curve.name
        private_value = pki["private_key"].parsed["private_key"].native
        assert private_value == key.private_numbers().private_value
    loaded = load_private_key(pem, b"notary pass")
    assert_same_key(loaded, key)
    with pytest.raises(WrongPassphrase):
        load_private_key(pem, b"notary pass?")


def test_encrypt_notary_pem_defaults(generated_keys):
    key = generated_keys["p256"]
    pem = encrypt_notary_pem(key, b"docker", {"role": "root"})
    info, _ = independent_notary_decrypt(pem, b"docker")
    assert info["iterations"] >= 600_000
    assert info["headers"] == {"role": "root"}
    assert_same_key(load_private_key(pem, b"docker"), key)


def test_encrypt_notary_pem_same_shape_as_notary_vectors():
    """Our notary output and notary's own vectors have the same outer structure."""
    key = load_private_key(vector("06-ed25519-notaryoid", "plain"), None)
    ours = encrypt_notary_pem(key, b"ponies", {}, iterations=2048, salt_length=8)
    theirs = vector("06-ed25519-notaryoid", "encrypted")
    for pem in (ours, theirs):
        info, inner = independent_notary_decrypt(pem, b"ponies")
        assert inner[1][0].dotted == OID_NOTARY_ED25519
        assert info["iterations"] == 2048 and len(info["salt"]) == 8
    assert_same_key(load_private_key(ours, b"ponies"), load_private_key(theirs, b"ponies"))


def test_public_key_of(generated_keys):
    for key in generated_keys.values():
        assert public_key_of(key).public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ) == spki(key)
