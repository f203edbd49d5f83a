"""SMTP TLS Reporting (RFC 8460), the pure part: the ``_smtp._tls`` TXT
record and its ``rua`` URIs. The record comes from the resolver."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from workers.mtasts import record_fields


class ReportingError(ValueError):
    """A record a reporting MTA would not use; the message says why."""


@dataclass(frozen=True)
class ReportingRecord:
    rua: tuple[str, ...]

    def as_dict(self) -> dict[str, object]:
        return {"version": "TLSRPTv1", "rua": list(self.rua)}


def reporting_record(texts: list[str]) -> ReportingRecord:
    """The one TLSRPTv1 record among the TXT strings of ``_smtp._tls.<domain>``."""
    values = record_fields(texts, "TLSRPTv1", ("rua",), ReportingError)
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
