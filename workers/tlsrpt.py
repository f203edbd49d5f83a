"""SMTP TLS Reporting (RFC 8460), the pure part: the ``_smtp._tls`` TXT
record and its ``rua`` URIs. The record comes from the resolver."""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

_EXT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$")


class ReportingError(ValueError):
    """A record a reporting MTA would not use; the message says why."""


@dataclass(frozen=True)
class ReportingRecord:
    rua: tuple[str, ...]

    def as_dict(self) -> dict[str, object]:
        return {"version": "TLSRPTv1", "rua": list(self.rua)}


def reporting_record(texts: list[str]) -> ReportingRecord:
    """The one TLSRPTv1 record among the TXT strings of ``_smtp._tls.<domain>``."""
    candidates = [t for t in texts if t.replace(" ", "").startswith("v=TLSRPTv1")]
    if not candidates:
        raise ReportingError("no TXT record starting with v=TLSRPTv1")
    if len(candidates) > 1:
        raise ReportingError(f"{len(candidates)} v=TLSRPTv1 records (there must be exactly one)")
    fields = [part.strip() for part in candidates[0].split(";")]
    if fields and fields[-1] == "":
        fields.pop()
    values: dict[str, str] = {}
    for position, part in enumerate(fields):
        name, eq, value = part.partition("=")
        name, value = name.strip(), value.strip()
        if not eq or not name:
            raise ReportingError(f"malformed field {part!r} (expected name=value)")
        if position == 0 and (name, value) != ("v", "TLSRPTv1"):
            raise ReportingError("the record must start with v=TLSRPTv1")
        if name in values:
            raise ReportingError(f"field {name!r} appears twice")
        if name not in ("v", "rua") and not _EXT_NAME.match(name):
            raise ReportingError(f"malformed extension field {part!r}")
        values[name] = value
    if "rua" not in values:
        raise ReportingError("the record has no rua field (where reports go)")
    uris = tuple(u.strip() for u in values["rua"].split(","))
    for uri in uris:
        problem = _uri_problem(uri)
        if problem:
            raise ReportingError(f"rua {uri!r}: {problem}")
    return ReportingRecord(rua=uris)


def _uri_problem(uri: str) -> str | None:
    if not uri:
        return "empty URI"
    parts = urlsplit(uri)
    if parts.scheme == "mailto":
        address = unquote(parts.path)
        local, at, domain = address.rpartition("@")
        if not at or not local or "." not in domain:
            return "not a mail address"
        return None
    if parts.scheme == "https":
        if not parts.hostname:
            return "no host"
        return None
    return "only mailto: and https: URIs are allowed"
