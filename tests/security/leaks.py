"""Looking for a secret everywhere it must not be: every Redis key of every
type, and log files; in clear, in base64 at any alignment, and as the AUTH
PLAIN blob."""

from __future__ import annotations

import base64
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import redis

#: Every Fernet token starts with the version byte 0x80 and a timestamp.
FERNET_PREFIX = b"gAAAAA"


def base64_forms(secret: bytes) -> set[bytes]:
    """What ``secret`` looks like inside any base64 text, at each of the three
    alignments it can have there (the characters that depend on it alone)."""
    forms = set()
    for offset in range(3):
        padded = b"\0" * offset + secret
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            encoded = encode(padded).rstrip(b"=")
            start = -(-8 * offset // 6)  # first character made of secret bits only
            end = 8 * len(padded) // 6  # past the last one
            if end - start >= 4:
                forms.add(encoded[start:end])
    return forms


@dataclass(frozen=True)
class Needle:
    what: str
    data: bytes


def needles(username: str, password: str) -> list[Needle]:
    """The password, its base64 forms, and the PLAIN blob (base64 of the user
    name alone is no secret)."""
    secret = password.encode()
    plain = f"\0{username}\0{password}".encode()
    found = [
        Needle("password", secret),
        Needle("base64(password)", base64.b64encode(secret)),
        Needle("PLAIN blob", base64.b64encode(plain)),
        Needle("PLAIN blob, raw", plain),
    ]
    found += [Needle("password inside base64", form) for form in sorted(base64_forms(secret))]
    return found


def unwrap(value: bytes) -> Iterator[bytes]:
    """A value and what it holds compressed (RQ stores job data with zlib)."""
    yield value
    try:
        inner = zlib.decompress(value)
    except (zlib.error, ValueError):
        return
    yield from unwrap(inner)


def redis_values(connection: redis.Redis) -> Iterator[tuple[str, bytes]]:
    """``(key, bytes)`` for every key and everything stored under it, all types."""
    for key in connection.scan_iter(count=1000):
        name = key.decode(errors="replace")
        yield name, key
        kind = connection.type(key).decode()
        values: list[bytes] = []
        if kind == "string":
            values = [connection.get(key) or b""]
        elif kind == "hash":
            for field, value in connection.hgetall(key).items():
                values += [field, value]
        elif kind == "list":
            values = connection.lrange(key, 0, -1)
        elif kind == "set":
            values = list(connection.smembers(key))
        elif kind == "zset":
            values = [member for member, _ in connection.zrange(key, 0, -1, withscores=True)]
        elif kind == "stream":
            for entry_id, entry in connection.xrange(key):
                values.append(entry_id)
                for field, value in entry.items():
                    values += [field, value]
        elif kind != "none":  # expired meanwhile
            raise AssertionError(f"Redis key {name} has a type this scan cannot read: {kind}")
        dumped = connection.dump(key)
        if dumped:
            values.append(dumped)
        for value in values:
            yield name, value


def find(haystack: Iterable[tuple[str, bytes]], wanted: Iterable[Needle]) -> list[str]:
    """Where each needle turns up (also inside zlib data), as ``"<what> in <where>"``."""
    wanted = list(wanted)
    hits = []
    for where, value in haystack:
        for data in unwrap(value):
            for needle in wanted:
                if needle.data in data:
                    hits.append(f"{needle.what} in {where}")
    return sorted(set(hits))
