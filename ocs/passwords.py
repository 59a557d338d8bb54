"""Subscriber passwords: scrypt hashes, checked in constant time. A leaf module."""

from __future__ import annotations

import hashlib
import hmac
import os

__all__ = ["hash_password", "verify_password"]

_SCRYPT_N, _SCRYPT_R, _SCRYPT_P = 2**12, 8, 1


def hash_password(password: str, salt: bytes | None = None) -> str:
    salt = os.urandom(16) if salt is None else salt
    digest = hashlib.scrypt(password.encode(), salt=salt, n=_SCRYPT_N, r=_SCRYPT_R, p=_SCRYPT_P,
                            dklen=32)
    return f"scrypt${salt.hex()}${digest.hex()}"


def verify_password(password: str, stored: str) -> bool:
    """Constant-time check of a password against ``hash_password`` output."""
    try:
        scheme, salt_hex, digest_hex = stored.split("$")
        salt, digest = bytes.fromhex(salt_hex), bytes.fromhex(digest_hex)
    except ValueError:
        return False
    if scheme != "scrypt":
        return False
    got = hashlib.scrypt(password.encode(), salt=salt, n=_SCRYPT_N, r=_SCRYPT_R, p=_SCRYPT_P,
                         dklen=len(digest))
    return hmac.compare_digest(got, digest)
