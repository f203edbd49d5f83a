"""Which addresses a check may dial: one table of forbidden networks.

Pure: no I/O, no configuration reading. The API applies the rule early to an
IP-literal ``host`` (a 422 instead of a queued job that can only fail); the
worker applies the same table to the address it resolved, which is the
address it then dials. Webhooks (``callback.url``) pass the same table, the
same way; :func:`http_target` holds their URL rules.

Order: an operator's ``allow_networks`` win; then NAT64 and 6to4 addresses are
judged by the IPv4 address they embed; then the first matching row of
``FORBIDDEN``; then any IPv6 address outside global unicast (2000::/3).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network
from urllib.parse import quote, urlsplit

from smtpcheck.contract import control_character

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network


def _table(*rows: tuple[str, str]) -> tuple[tuple[IPNetwork, str], ...]:
    return tuple((ip_network(cidr), reason) for cidr, reason in rows)


#: First match wins, so a narrow row sits above the wider row holding it.
FORBIDDEN: tuple[tuple[IPNetwork, str], ...] = _table(
    # IPv4
    ("0.0.0.0/8", "unspecified ('this network')"),
    ("10.0.0.0/8", "private"),
    ("100.64.0.0/10", "shared address space (CGNAT)"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local"),
    ("172.16.0.0/12", "private"),
    ("192.0.0.0/24", "IETF protocol assignment"),
    ("192.0.2.0/24", "documentation"),
    ("192.88.99.0/24", "reserved (former 6to4 relay anycast)"),
    ("192.168.0.0/16", "private"),
    ("198.18.0.0/15", "benchmarking"),
    ("198.51.100.0/24", "documentation"),
    ("203.0.113.0/24", "documentation"),
    ("224.0.0.0/4", "multicast"),
    ("255.255.255.255/32", "broadcast"),
    ("240.0.0.0/4", "reserved"),
    # IPv6
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    ("::ffff:0:0/96", "IPv4-mapped"),
    ("::/96", "IPv4-compatible (deprecated)"),
    ("64:ff9b:1::/48", "local-use NAT64"),
    ("100::/64", "discard-only"),
    ("2001:db8::/32", "documentation"),
    ("2001::/23", "IETF protocol assignment (Teredo, ORCHID, ...)"),
    ("3fff::/20", "documentation"),
    ("fc00::/7", "unique local"),
    ("fe80::/10", "link-local"),
    ("fec0::/10", "site-local (deprecated)"),
    ("ff00::/8", "multicast"),
)

#: IPv6 prefixes that carry an IPv4 address, and the bit offset where it sits.
EMBEDDING_IPV4: tuple[tuple[IPv6Network, str, int], ...] = (
    (IPv6Network("64:ff9b::/96"), "NAT64", 0),
    (IPv6Network("2002::/16"), "6to4", 80),
)

GLOBAL_UNICAST_IPV6 = IPv6Network("2000::/3")

#: The tables above as integer ranges ``(first, last, ...)``, per IP version: a
#: lookup compares integers, where ``address in network`` and ``.version`` are a
#: Python call each (about 45 for a public IPv4 address).
_Range = tuple[int, int, str]
_FORBIDDEN_RANGES: dict[int, tuple[_Range, ...]] = {
    version: tuple(
        (int(network.network_address), int(network.broadcast_address), reason)
        for network, reason in FORBIDDEN
        if network.version == version
    )
    for version in (4, 6)
}
_EMBEDDING_RANGES: tuple[tuple[int, int, str, int], ...] = tuple(
    (int(prefix.network_address), int(prefix.broadcast_address), kind, shift)
    for prefix, kind, shift in EMBEDDING_IPV4
)
_GLOBAL_UNICAST_IPV6 = (
    int(GLOBAL_UNICAST_IPV6.network_address),
    int(GLOBAL_UNICAST_IPV6.broadcast_address),
)


def forbidden_reason(address: IPAddress, allow_networks: Iterable[IPNetwork] = ()) -> str | None:
    """Why ``address`` may not be dialled, or None when it may.

    ``allow_networks`` are the operator's exceptions (SMTPCHECK_ALLOW_NETWORKS).
    """
    allowed = tuple(allow_networks)
    ipv4 = isinstance(address, IPv4Address)
    family = IPv4Network if ipv4 else IPv6Network
    for net in allowed:
        if isinstance(net, family) and address in net:
            return None
    value = int(address)
    if not ipv4:
        for first, last, kind, shift in _EMBEDDING_RANGES:
            if first <= value <= last:
                embedded = IPv4Address((value >> shift) & 0xFFFFFFFF)
                reason = forbidden_reason(embedded, allowed)
                if reason is None:
                    return None
                return f"{kind} address embedding a {reason} IPv4 address ({embedded})"
    for first, last, reason in _FORBIDDEN_RANGES[4 if ipv4 else 6]:
        if first <= value <= last:
            return reason
    if not ipv4 and not _GLOBAL_UNICAST_IPV6[0] <= value <= _GLOBAL_UNICAST_IPV6[1]:
        return "reserved"
    return None


def port_reason(port: int, allowed_ports: Iterable[int]) -> str | None:
    """Why ``port`` may not be dialled, or None when it may."""
    allowed = frozenset(allowed_ports)
    if port in allowed:
        return None
    return f"port {port} is not one of the allowed ports ({describe_ports(allowed)})"


def describe_ports(ports: Iterable[int]) -> str:
    """``25, 465, 587, 2601-2614``: the ports, runs of three or more as ranges."""
    parts: list[str] = []
    run: list[int] = []
    for port in [*sorted(set(ports)), None]:
        if port is not None and run and port == run[-1] + 1:
            run.append(port)
            continue
        if len(run) >= 3:
            parts.append(f"{run[0]}-{run[-1]}")
        else:
            parts += map(str, run)
        run = [port] if port is not None else []
    return ", ".join(parts)


#: What a refusal of a non-public address adds: the operator's way through.
ALLOW_HINT = (
    "the operator of this service can allow a network with SMTPCHECK_ALLOW_NETWORKS "
    "(CIDRs, e.g. SMTPCHECK_ALLOW_NETWORKS={example})"
)


def allow_hint(address: IPAddress) -> str:
    return ALLOW_HINT.format(example=f"{address}/{address.max_prefixlen}")


@dataclass(frozen=True)
class HTTPTarget:
    """Where a webhook goes: a callback URL taken apart, once it passed the rules."""

    scheme: str  # "https" or "http"
    host: str  # a name or an IP literal, without brackets
    port: int
    target: str  # path and query, as the request line names them

    @property
    def literal(self) -> IPAddress | None:
        try:
            return ip_address(self.host)
        except ValueError:
            return None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = DEFAULT_HTTP_PORTS[self.scheme]
        return (
            f"{self.scheme}://{host}{'' if self.port == default else f':{self.port}'}{self.target}"
        )


DEFAULT_HTTP_PORTS = {"https": 443, "http": 80}


def http_target(url: str, allowed_ports: Iterable[int], allow_http: bool) -> HTTPTarget:
    """A callback URL's parts; ValueError saying why when the rules refuse it.

    The rules: https (http only when ``allow_http``), a port among
    ``allowed_ports``, a host, no credentials, no fragment. The host's
    addresses are judged separately, with :func:`forbidden_reason`.
    """
    if " " in url or control_character(url) is not None:  # C1 and U+2028/9 too
        raise ValueError("must not contain spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"not a URL: {exc}") from None
    scheme = parts.scheme.lower()
    schemes = ("https", "http") if allow_http else ("https",)
    if scheme not in schemes:
        raise ValueError(
            "must be an https:// URL" if not allow_http else "must be an https:// or http:// URL"
        )
    if parts.username is not None or parts.password is not None:
        raise ValueError("must not carry credentials; the receiver checks the signature instead")
    if parts.fragment or url.endswith("#"):
        raise ValueError("must not have a #fragment")
    if not parts.hostname:
        raise ValueError("has no host")
    if port is None:
        port = DEFAULT_HTTP_PORTS[scheme]
    reason = port_reason(port, allowed_ports)
    if reason is not None:
        raise ValueError(reason)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    target = quote(target, safe="/?#[]@!$&'()*+,;=:%~")  # non-ASCII as UTF-8 %XX
    return HTTPTarget(scheme=scheme, host=parts.hostname, port=port, target=target)
