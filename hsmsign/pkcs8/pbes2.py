"""PKCS#8 EncryptedPrivateKeyInfo with PBES2: PBKDF2 (HMAC-SHA1/224/256/384/512) and
AES-128/192/256-CBC, decrypted defensively and written as OpenSSL and notary read it."""

from __future__ import annotations

import os

from asn1crypto import algos, core, keys
from cryptography.hazmat.primitives import hashes, padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC

from hsmsign.pkcs8.errors import KeyFormatError, WrongPassphrase

PRF_HASHES = {
    "sha1": hashes.SHA1,
    "sha224": hashes.SHA224,
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}
AES_CBC_KEY_LENGTHS = {"aes128_cbc": 16, "aes192_cbc": 24, "aes256_cbc": 32}

# Refuse absurd PBKDF2 iteration counts in files we read (a hostile file
# could otherwise make us spin for hours).
MAX_PBKDF2_ITERATIONS = 10_000_000


def pbes2_decrypt(der: bytes, passphrase: bytes) -> bytes:
    """Decrypt a PKCS#8 EncryptedPrivateKeyInfo (PBES2 only); returns the inner DER."""
    try:
        epki = keys.EncryptedPrivateKeyInfo.load(der, strict=True)
        enc_alg = epki["encryption_algorithm"]
        scheme = enc_alg["algorithm"].native
        ciphertext = epki["encrypted_data"].native
    except Exception:  # noqa: BLE001
        raise KeyFormatError("corrupt or truncated ENCRYPTED PRIVATE KEY") from None
    if scheme != "pbes2":
        raise KeyFormatError(
            f"unsupported PKCS#8 encryption {scheme!r}: only PBES2 is supported"
        )
    try:
        params = enc_alg["parameters"]
        kdf = params["key_derivation_func"]
        kdf_name = kdf["algorithm"].native
        enc_scheme = params["encryption_scheme"]
        cipher_name = enc_scheme["algorithm"].native
    except Exception:  # noqa: BLE001
        raise KeyFormatError("corrupt PBES2 parameters") from None
    if kdf_name != "pbkdf2":
        raise KeyFormatError(f"unsupported PBES2 key derivation {kdf_name!r}: only PBKDF2")
    if cipher_name not in AES_CBC_KEY_LENGTHS:
        raise KeyFormatError(
            f"unsupported PBES2 cipher {cipher_name!r}: only AES-128/192/256-CBC"
        )
    try:
        kdf_params = kdf["parameters"]
        salt_choice = kdf_params["salt"]
        if salt_choice.name != "specified":
            raise KeyFormatError("unsupported PBKDF2 salt source")
        salt = salt_choice.chosen.native
        iterations = kdf_params["iteration_count"].native
        key_length = kdf_params["key_length"].native
        prf = kdf_params["prf"]["algorithm"].native  # asn1crypto supplies the sha1 default
        iv = enc_scheme["parameters"].native
    except KeyFormatError:
        raise
    except Exception:  # noqa: BLE001
        raise KeyFormatError("corrupt PBES2 parameters") from None
    if prf not in PRF_HASHES:
        raise KeyFormatError(f"unsupported PBKDF2 PRF {prf!r}")
    if not isinstance(iterations, int) or not 1 <= iterations <= MAX_PBKDF2_ITERATIONS:
        raise KeyFormatError("unsupported PBKDF2 iteration count")
    if not isinstance(salt, bytes):
        raise KeyFormatError("corrupt PBKDF2 salt")
    cipher_key_len = AES_CBC_KEY_LENGTHS[cipher_name]
    if key_length is not None and key_length != cipher_key_len:
        raise KeyFormatError("PBKDF2 key length does not match the cipher")
    if not isinstance(iv, bytes) or len(iv) != 16:
        raise KeyFormatError("corrupt AES-CBC IV in PBES2 parameters")
    if not ciphertext or len(ciphertext) % 16:
        raise KeyFormatError("truncated or corrupt encrypted key data")

    symkey = PBKDF2HMAC(
        algorithm=PRF_HASHES[prf](),
        length=cipher_key_len,
        salt=salt,
        iterations=iterations,
    ).derive(passphrase)
    decryptor = Cipher(algorithms.AES(symkey), modes.CBC(iv)).decryptor()
    padded = decryptor.update(ciphertext) + decryptor.finalize()
    unpadder = padding.PKCS7(128).unpadder()
    try:
        return unpadder.update(padded) + unpadder.finalize()
    except ValueError:
        raise WrongPassphrase(
            "could not decrypt the ENCRYPTED PRIVATE KEY: wrong passphrase"
        ) from None


def pbes2_encrypt(
    inner_der: bytes, passphrase: bytes, *, prf: str, iterations: int, salt_length: int
) -> bytes:
    """PKCS#8 EncryptedPrivateKeyInfo DER: PBES2, PBKDF2(prf), AES-256-CBC."""
    if prf not in PRF_HASHES:
        raise ValueError(f"unsupported prf {prf!r}; use one of {sorted(PRF_HASHES)}")
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise ValueError("iterations must be a positive int")
    if iterations > MAX_PBKDF2_ITERATIONS:
        raise ValueError(f"iterations must be at most {MAX_PBKDF2_ITERATIONS}")
    if isinstance(salt_length, bool) or not isinstance(salt_length, int) or salt_length < 8:
        raise ValueError("salt_length must be an int >= 8")

    salt = os.urandom(salt_length)
    iv = os.urandom(16)
    symkey = PBKDF2HMAC(
        algorithm=PRF_HASHES[prf](), length=32, salt=salt, iterations=iterations
    ).derive(passphrase)
    padder = padding.PKCS7(128).padder()
    plaintext = padder.update(inner_der) + padder.finalize()
    encryptor = Cipher(algorithms.AES(symkey), modes.CBC(iv)).encryptor()
    ciphertext = encryptor.update(plaintext) + encryptor.finalize()

    kdf_params = {
        "salt": algos.Pbkdf2Salt(name="specified", value=salt),
        "iteration_count": iterations,
    }
    if prf != "sha1":
        # hmacWithSHA1 is the DER DEFAULT and must then be omitted; the others
        # are written explicitly, with NULL parameters as OpenSSL does.
        kdf_params["prf"] = algos.HmacAlgorithm({"algorithm": prf, "parameters": core.Null()})
    epki = keys.EncryptedPrivateKeyInfo(
        {
            "encryption_algorithm": algos.EncryptionAlgorithm(
                {
                    "algorithm": "pbes2",
                    "parameters": algos.Pbes2Params(
                        {
                            "key_derivation_func": algos.KdfAlgorithm(
                                {
                                    "algorithm": "pbkdf2",
                                    "parameters": algos.Pbkdf2Params(kdf_params),
                                }
                            ),
                            "encryption_scheme": algos.EncryptionAlgorithm(
                                {"algorithm": "aes256_cbc", "parameters": core.OctetString(iv)}
                            ),
                        }
                    ),
                }
            ),
            "encrypted_data": ciphertext,
        }
    )
    return epki.dump()
