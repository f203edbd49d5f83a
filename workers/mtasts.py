"""MTA-STS (RFC 8461), the pure part: the ``_mta-sts`` TXT record, the
policy file, and whether an MX host name is covered by the policy's ``mx``
patterns. No I/O here: the record comes from the resolver and the policy
body from :mod:`workers.https`; :mod:`workers.mailpolicy` puts them together.

Parsing is strict the way a sending MTA's is: a policy a compliant sender
would discard is reported as invalid, with the reason, rather than half
understood.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

#: RFC 8461 3.1: ``v=STSv1; id=<1-32 alphanumerics>;`` plus extensions.
_RECORD_ID = re.compile(r"^[A-Za-z0-9]{1,32}$")
_EXT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$")
_EXT_VALUE = re.compile(r"^[\x21-\x3a\x3c\x3e-\x7e]{1,}$")
#: RFC 8461 3.2: max_age is at most 31557600 seconds (about a year).
MAX_AGE_LIMIT = 31_557_600
MODES = ("enforce", "testing", "none")
#: RFC 8461 3.3: the policy lives at this path of ``mta-sts.<domain>``.
POLICY_PATH = "/.well-known/mta-sts.txt"
#: A policy body larger than this is refused (RFC 8461 3.3 suggests 64 KiB).
MAX_POLICY_BYTES = 64 * 1024


class PolicyError(ValueError):
    """A record or policy a compliant sender would not use; the message says why."""


@dataclass(frozen=True)
class StsRecord:
    id: str
    extensions: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Policy:
    mode: str
    max_age: int
    mx: tuple[str, ...]

    def as_dict(self) -> dict[str, object]:
        return {"version": "STSv1", "mode": self.mode, "max_age": self.max_age, "mx": list(self.mx)}


def is_record(text: str, version: str) -> bool:
    """Whether a TXT string is a ``v=<version>`` record (others are ignored)."""
    return text.replace(" ", "").startswith(f"v={version}")


def record_fields(
    texts: list[str], version: str, known: tuple[str, ...], error: type[ValueError]
) -> dict[str, str]:
    """The fields of the one ``v=<version>`` record among TXT strings.

    The grammar MTA-STS (RFC 8461 3.1) and TLS-RPT (RFC 8460 3) share:
    ``v=<version>`` first, ``name=value`` fields separated by ``;``, each
    name once; a field not in ``known`` is an extension, whose name and
    value must be well formed. Records for another version are ignored;
    more than one record for this one is an error (senders then use none).
    Every problem raises ``error`` saying what is wrong.
    """
    candidates = [t for t in texts if is_record(t, version)]
    if not candidates:
        raise error(f"no TXT record starting with v={version}")
    if len(candidates) > 1:
        raise error(f"{len(candidates)} v={version} records (there must be exactly one)")
    fields = [part.strip() for part in candidates[0].split(";")]
    if fields and fields[-1] == "":
        fields.pop()
    values: dict[str, str] = {}
    for position, part in enumerate(fields):
        name, eq, value = part.partition("=")
        name, value = name.strip(), value.strip()
        if not eq or not name:
            raise error(f"malformed field {part!r} (expected name=value)")
        if position == 0 and (name, value) != ("v", version):
            raise error(f"the record must start with v={version}")
        if name in values:
            raise error(f"field {name!r} appears twice")
        if name not in ("v", *known) and not (_EXT_NAME.match(name) and _EXT_VALUE.match(value)):
            raise error(f"malformed extension field {part!r}")
        values[name] = value
    return values


def sts_record(texts: list[str]) -> StsRecord:
    """The one STSv1 record among the TXT strings of ``_mta-sts.<domain>``."""
    values = record_fields(texts, "STSv1", ("id",), PolicyError)
    record_id = values.get("id")
    if record_id is None:
        raise PolicyError("the record has no id field")
    if not _RECORD_ID.match(record_id):
        raise PolicyError(f"id {record_id!r} is not 1 to 32 letters and digits")
    extensions = {k: v for k, v in values.items() if k not in ("v", "id")}
    return StsRecord(id=record_id, extensions=extensions)


def parse_policy(body: bytes) -> Policy:
    """The policy file of RFC 8461 3.2: ``key: value`` lines, CRLF or LF.

    ``version: STSv1``, ``mode`` and ``max_age`` exactly once; ``mx`` at
    least once unless the mode is ``none``; unknown keys are ignored.
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PolicyError(f"the policy is not UTF-8 text ({exc.reason})") from None
    seen: dict[str, list[str]] = {}
    for number, line in enumerate(text.replace("\r\n", "\n").split("\n"), start=1):
        if not line.strip():
            continue
        key, colon, value = line.partition(":")
        if not colon or not key or key != key.strip():
            raise PolicyError(f"line {number} is not 'key: value': {line[:60]!r}")
        seen.setdefault(key, []).append(value.strip())
    for key in ("version", "mode", "max_age"):
        if key not in seen:
            raise PolicyError(f"the policy has no {key} line")
        if len(seen[key]) > 1:
            raise PolicyError(f"the policy has {len(seen[key])} {key} lines")
    if seen["version"][0] != "STSv1":
        raise PolicyError(f"version is {seen['version'][0]!r}, not STSv1")
    mode = seen["mode"][0]
    if mode not in MODES:
        raise PolicyError(f"mode is {mode!r}, not one of enforce, testing, none")
    raw_age = seen["max_age"][0]
    if not raw_age.isdigit() or len(raw_age) > 10:
        raise PolicyError(f"max_age {raw_age!r} is not a number of seconds")
    max_age = int(raw_age)
    if max_age > MAX_AGE_LIMIT:
        raise PolicyError(f"max_age {max_age} is over the limit of {MAX_AGE_LIMIT} seconds")
    patterns = tuple(p.lower().rstrip(".") for p in seen.get("mx", []))
    for pattern in patterns:
        if not _valid_pattern(pattern):
            raise PolicyError(f"mx pattern {pattern!r} is not a host name or *.domain")
    if not patterns and mode != "none":
        raise PolicyError(f"mode {mode} but no mx line")
    return Policy(mode=mode, max_age=max_age, mx=patterns)


_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


def _valid_pattern(pattern: str) -> bool:
    labels = pattern.split(".")
    if labels[0] == "*":
        labels = labels[1:]
        if len(labels) < 2:
            return False
    return bool(labels) and all(_LABEL.match(label) for label in labels)


def mx_matches(pattern: str, host: str) -> bool:
    """RFC 8461 4.1: a literal name, or ``*.`` standing for exactly one
    leftmost label (``*.example.com`` matches ``mx.example.com``, not
    ``example.com`` nor ``a.b.example.com``)."""
    pattern, host = pattern.lower().rstrip("."), host.lower().rstrip(".")
    if pattern.startswith("*."):
        head, dot, rest = host.partition(".")
        return bool(head) and bool(dot) and rest == pattern[2:]
    return pattern == host


def covering_pattern(policy: Policy, host: str) -> str | None:
    """The first of the policy's ``mx`` patterns that covers ``host``."""
    return next((p for p in policy.mx if mx_matches(p, host)), None)
