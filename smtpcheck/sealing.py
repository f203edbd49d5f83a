"""Sealing of secrets that must cross the queue (an AUTH password).

The API seals with ``SMTPCHECK_SECRET_KEY``; the worker opens the seal just
before it speaks AUTH. Any string is accepted as the key: it is stretched to a
Fernet key with SHA-256, so operators can use whatever their secret store
produces.
"""

from __future__ import annotations

import base64
import hashlib

from cryptography.fernet import Fernet, InvalidToken


class SealError(ValueError):
    """A sealed value could not be opened (wrong key, or tampered with)."""


def _fernet(secret_key: str) -> Fernet:
    if not secret_key:
        raise SealError("SMTPCHECK_SECRET_KEY is not set")
    digest = hashlib.sha256(secret_key.encode("utf-8")).digest()
    return Fernet(base64.urlsafe_b64encode(digest))


def seal(plaintext: str, secret_key: str) -> str:
    return _fernet(secret_key).encrypt(plaintext.encode("utf-8")).decode("ascii")


def unseal(token: str, secret_key: str) -> str:
    try:
        return _fernet(secret_key).decrypt(token.encode("ascii")).decode("utf-8")
    except (InvalidToken, ValueError, UnicodeError):
        raise SealError("sealed secret cannot be opened with this SMTPCHECK_SECRET_KEY") from None
