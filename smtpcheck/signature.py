"""Standard Webhooks signatures (https://www.standardwebhooks.com), sender side.

The signed content is ``<webhook-id>.<webhook-timestamp>.<body>``; the
``webhook-signature`` header holds ``v1,<base64 of its HMAC-SHA256>``. The
key is the secret's bytes, except for a ``whsec_`` secret, whose part after
the prefix is base64 and decodes to the key (24 to 64 bytes), as every
Standard Webhooks library expects. Pure: both the API (to validate
``callback.secret``) and the workers (to sign) use it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

PREFIX = "whsec_"
MIN_KEY_BYTES, MAX_KEY_BYTES = 24, 64  # the spec's bounds for a whsec_ key
MIN_SECRET, MAX_SECRET = 16, 256  # characters, for any other secret


def signing_key(secret: str) -> bytes:
    """The HMAC key ``secret`` stands for; ValueError saying why it cannot be one."""
    if len(secret) > MAX_SECRET:
        raise ValueError(f"longer than {MAX_SECRET} characters")
    if any(ord(char) < 0x21 or ord(char) == 0x7F for char in secret):
        raise ValueError("must not contain spaces or control characters")
    if secret.startswith(PREFIX):
        try:
            key = base64.b64decode(secret[len(PREFIX) :], validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("after whsec_ must come base64 (Standard Webhooks)") from None
        if not MIN_KEY_BYTES <= len(key) <= MAX_KEY_BYTES:
            raise ValueError(
                f"a whsec_ secret holds {MIN_KEY_BYTES} to {MAX_KEY_BYTES} bytes, not {len(key)}"
            )
        return key
    if not MIN_SECRET <= len(secret) <= MAX_SECRET:
        raise ValueError(f"must be {MIN_SECRET} to {MAX_SECRET} characters (or whsec_ and base64)")
    return secret.encode("utf-8")


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header value for one delivery attempt."""
    content = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(signing_key(secret), content, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")
