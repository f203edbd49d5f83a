"""From the requested host to the one address the check dials.

Resolution and the target policy live together here, so the address that was
checked is the address that is dialled: there is no second lookup for a DNS
rebinding trick to slip into.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from smtpcheck.config import Settings
from smtpcheck.targetpolicy import IPAddress, forbidden_reason, port_reason
from workers.errors import TargetForbidden
from workers.resolver import ip_literal


@dataclass
class Target:
    host: str
    port: int
    addresses: list[IPAddress] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # addresses the policy refused, and why
    tls_name: str | None = None  # the request's: the name the certificate must carry

    @property
    def is_literal(self) -> bool:
        return ip_literal(self.host) is not None

    @property
    def verify_name(self) -> str | None:
        """The name the certificate is verified against: ``tls_name``, else
        the host when it is a name; None (no name checked) for an IP literal."""
        if self.tls_name is not None:
            return self.tls_name
        return None if self.is_literal else self.host

    @property
    def server_hostname(self) -> str | None:
        """SNI: the name verified, unless it is an IP address (RFC 6066 s3)."""
        name = self.verify_name
        return None if name is None or ip_literal(name) is not None else name


def permitted(target: Target, settings: Settings) -> list[IPAddress]:
    """The resolved addresses the policy lets us dial, in order; raises when none."""
    reason = port_reason(target.port, settings.allowed_ports)
    if reason:
        raise TargetForbidden(reason)
    allowed: list[IPAddress] = []
    for address in target.addresses:
        why = forbidden_reason(address, settings.allow_networks)
        if why:
            target.skipped.append(f"{address} is not a public address ({why})")
        else:
            allowed.append(address)
    if not allowed:
        raise TargetForbidden("; ".join(target.skipped) or f"{target.host} has no address")
    return allowed
