"""API keys: who is calling (``Authorization: Bearer <key>``).

``SMTPCHECK_API_KEYS`` is a comma-separated list of ``name:key``; ``key`` is
the key itself or ``sha256:<64 hex digits>`` of it, so an operator need not
keep keys in clear in the environment. Only SHA-256 digests are kept in
memory, and every digest is compared (``hmac.compare_digest``) on each call.
The key's name is the owner of the checks it creates.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass

from flask import current_app, g, request

from smtpcheck.config import ConfigError

from .problems import UNAUTHORIZED, Problem

VARIABLE = "SMTPCHECK_API_KEYS"
ANONYMOUS = "anonymous"
REALM = "smtpcheck"

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}\Z")
_SHA256 = re.compile(r"sha256:([0-9a-fA-F]{64})\Z")


@dataclass(frozen=True)
class ApiKeys:
    """Key names and the SHA-256 digests of their keys."""

    digests: tuple[tuple[str, bytes], ...] = ()

    @classmethod
    def parse(cls, raw: str) -> ApiKeys:
        """Read ``name:key,name:sha256:<hex>``; raise ConfigError on anything odd."""
        entries: list[tuple[str, bytes]] = []
        for item in raw.split(","):
            item = item.strip()
            if not item:
                continue
            name, colon, key = item.partition(":")
            name, key = name.strip(), key.strip()
            if not colon or not key:
                raise ConfigError(VARIABLE, f"entry for {name!r} is not name:key")
            if not _NAME.match(name):
                raise ConfigError(
                    VARIABLE, f"key name {name!r} must be letters, digits and . _ @ - (max 64)"
                )
            if any(existing == name for existing, _ in entries):
                raise ConfigError(VARIABLE, f"key name {name!r} appears twice")
            hashed = _SHA256.match(key)
            digest = bytes.fromhex(hashed.group(1)) if hashed else _digest(key)
            entries.append((name, digest))
        return cls(tuple(entries))

    def __bool__(self) -> bool:
        return bool(self.digests)

    def identify(self, presented: str) -> str | None:
        """The name of the key ``presented`` is, or None. Compares every digest."""
        digest = _digest(presented)
        found = None
        for name, expected in self.digests:
            if hmac.compare_digest(digest, expected):
                found = name
        return found


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


def bearer_token(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


def authenticate() -> None:
    """``before_request`` hook: set ``g.owner`` from the bearer key or raise 401."""
    # Flask's proxies resolved once each (every use of one costs three calls).
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    keys: ApiKeys | None = app.extensions["smtpcheck.apikeys"]
    here = g._get_current_object()
    if keys is None:  # SMTPCHECK_AUTH=off
        here.owner = ANONYMOUS
        return
    asked = request._get_current_object()  # type: ignore[attr-defined]
    # request.headers.get("Authorization"), read where EnvironHeaders reads it
    token = bearer_token(asked.environ.get("HTTP_AUTHORIZATION"))
    if token is None:
        raise Problem(
            401,
            "Unauthorized",
            "send an API key as 'Authorization: Bearer <key>'",
            type=UNAUTHORIZED,
            headers={"WWW-Authenticate": f'Bearer realm="{REALM}"'},
        )
    owner = keys.identify(token)
    if owner is None:
        raise Problem(
            401,
            "Unauthorized",
            "the API key is not valid",
            type=UNAUTHORIZED,
            headers={"WWW-Authenticate": f'Bearer realm="{REALM}", error="invalid_token"'},
        )
    here.owner = owner


def current_owner() -> str:
    """The owner set by :func:`authenticate` for this request."""
    return str(g._get_current_object().owner)
