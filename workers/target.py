"""From the requested host to the one address the check dials.

Resolution and the target policy live together here, so the address that was
checked is the address that is dialled: there is no second lookup for a DNS
rebinding trick to slip into.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
from dataclasses import dataclass, field

import dns.exception
import dns.resolver

from smtpcheck.config import Settings
from smtpcheck.targetpolicy import IPAddress, forbidden_reason, port_reason
from workers.errors import DNSError, TargetForbidden
from workers.stream import remaining_connect


@dataclass
class Target:
    host: str
    port: int
    addresses: list[IPAddress] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # addresses the policy refused, and why

    @property
    def is_literal(self) -> bool:
        return ip_literal(self.host) is not None

    @property
    def server_hostname(self) -> str | None:
        """SNI: the host name when the target was given by name."""
        return None if self.is_literal else self.host


def ip_literal(host: str) -> IPAddress | None:
    text = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if text.lower().startswith("ipv6:"):  # RFC 5321 address-literal spelling
        text = text[5:]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def resolve(
    host: str, ip_version: int | None, settings: Settings, deadline: float
) -> list[IPAddress]:
    """The host's addresses (A, then AAAA), honouring ``ip_version``."""
    literal = ip_literal(host)
    if literal is not None:
        if ip_version and literal.version != ip_version:
            raise DNSError(
                f"{host} is an IPv{literal.version} address but ip_version is {ip_version}"
            )
        return [literal]
    timeout = remaining_connect(deadline)
    if settings.dns_servers:
        addresses = _resolve_dns(host, ip_version, settings, timeout)
    else:
        addresses = _resolve_system(host, ip_version, timeout)
    if not addresses:
        kind = f"IPv{ip_version} address" if ip_version else "address"
        raise DNSError(f"{host} has no {kind} (no A/AAAA record)")
    return addresses


def _resolve_dns(
    host: str, ip_version: int | None, settings: Settings, timeout: float
) -> list[IPAddress]:
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = [ip for ip, _ in settings.dns_servers]
    resolver.nameserver_ports = {ip: port for ip, port in settings.dns_servers}
    resolver.lifetime = timeout
    resolver.timeout = min(timeout, 2.0)
    types = {4: ["A"], 6: ["AAAA"]}.get(ip_version or 0, ["A", "AAAA"])
    addresses: list[IPAddress] = []
    for rdtype in types:
        try:
            answer = resolver.resolve(host, rdtype, search=False)
        except dns.resolver.NXDOMAIN:
            raise DNSError(f"{host} does not exist (NXDOMAIN)") from None
        except dns.resolver.NoAnswer:
            continue
        except dns.resolver.NoNameservers as exc:
            raise DNSError(f"DNS servers failed to answer for {host} (SERVFAIL): {exc}") from None
        except dns.exception.Timeout:
            raise DNSError(f"DNS lookup of {host} timed out") from None
        except dns.exception.DNSException as exc:
            raise DNSError(f"DNS lookup of {host} failed: {exc}") from None
        addresses += [ipaddress.ip_address(r.to_text()) for r in answer]
    return addresses


def _resolve_system(host: str, ip_version: int | None, timeout: float) -> list[IPAddress]:
    """getaddrinfo (honours /etc/hosts), bounded by running it in a thread."""
    family = {4: socket.AF_INET, 6: socket.AF_INET6}.get(ip_version or 0, socket.AF_UNSPEC)
    outcome: dict[str, object] = {}

    def lookup() -> None:
        try:
            outcome["infos"] = socket.getaddrinfo(host, None, family, socket.SOCK_STREAM)
        except OSError as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=lookup, daemon=True, name="smtpcheck-resolve")
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise DNSError(f"DNS lookup of {host} timed out")
    error = outcome.get("error")
    if isinstance(error, socket.gaierror):
        if error.errno in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", -5)):
            raise DNSError(f"{host} does not resolve (no such name or no address)")
        raise DNSError(f"DNS lookup of {host} failed: {error.strerror}")
    if isinstance(error, OSError):
        raise DNSError(f"DNS lookup of {host} failed: {error}")
    seen: list[IPAddress] = []
    for info in outcome.get("infos", []):  # type: ignore[attr-defined]
        address = ipaddress.ip_address(info[4][0].split("%")[0])
        if address not in seen:
            seen.append(address)
    return seen


def permitted(target: Target, settings: Settings) -> list[IPAddress]:
    """The resolved addresses the policy lets us dial, in order; raises when none."""
    reason = port_reason(target.port, settings.allowed_ports)
    if reason:
        raise TargetForbidden(reason)
    allowed: list[IPAddress] = []
    for address in target.addresses:
        why = forbidden_reason(address, settings.allow_networks)
        if why:
            target.skipped.append(why)
        else:
            allowed.append(address)
    if not allowed:
        raise TargetForbidden("; ".join(target.skipped) or f"{target.host} has no address")
    return allowed
