"""The address table, judged without any I/O."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network

import hypothesis
import pytest
from hypothesis import strategies

from smtpcheck.targetpolicy import (
    EMBEDDING_IPV4,
    FORBIDDEN,
    GLOBAL_UNICAST_IPV6,
    IPAddress,
    IPNetwork,
    forbidden_reason,
)


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("0.0.0.0", "unspecified ('this network')"),
        ("10.1.2.3", "private"),
        ("100.64.0.1", "shared address space (CGNAT)"),
        ("127.0.0.1", "loopback"),
        ("169.254.169.254", "link-local"),
        ("172.31.255.255", "private"),
        ("192.0.0.8", "IETF protocol assignment"),
        ("192.0.2.1", "documentation"),
        ("192.168.0.1", "private"),
        ("198.19.0.1", "benchmarking"),
        ("224.0.0.251", "multicast"),
        ("255.255.255.255", "broadcast"),
        ("250.1.2.3", "reserved"),
        ("::", "unspecified"),
        ("::1", "loopback"),
        ("::ffff:8.8.8.8", "IPv4-mapped"),
        ("::8.8.8.8", "IPv4-compatible (deprecated)"),
        ("64:ff9b:1::1", "local-use NAT64"),
        ("100::1", "discard-only"),
        ("2001:db8::1", "documentation"),
        ("2001::1", "IETF protocol assignment (Teredo, ORCHID, ...)"),
        ("fd00::1", "unique local"),
        ("fe80::1", "link-local"),
        ("ff02::1", "multicast"),
        ("4000::1", "reserved"),
        ("64:ff9b::7f00:1", "NAT64 address embedding a loopback IPv4 address (127.0.0.1)"),
        ("2002:c0a8:101::1", "6to4 address embedding a private IPv4 address (192.168.1.1)"),
    ],
)
def test_forbidden(address: str, reason: str) -> None:
    assert forbidden_reason(ip_address(address)) == reason


@pytest.mark.parametrize(
    "address", ["8.8.8.8", "1.1.1.1", "2001:4860:4860::8888", "64:ff9b::808:808", "2002:808:808::1"]
)
def test_public_addresses_pass(address: str) -> None:
    assert forbidden_reason(ip_address(address)) is None


def test_allow_networks_win() -> None:
    allow = (ip_network("127.0.0.0/8"), ip_network("fd00::/8"))

    assert forbidden_reason(ip_address("127.0.0.1"), allow) is None
    assert forbidden_reason(ip_address("fd12::1"), allow) is None
    assert forbidden_reason(ip_address("64:ff9b::7f00:1"), allow) is None
    assert forbidden_reason(ip_address("10.0.0.1"), allow) == "private"


def test_allowed_ports_take_ranges() -> None:
    from smtpcheck.config import ConfigError, Settings
    from smtpcheck.targetpolicy import describe_ports

    settings = Settings.from_env({"SMTPCHECK_ALLOWED_PORTS": "25, 2601-2614,587"})
    assert settings.allowed_ports == frozenset({25, 587, *range(2601, 2615)})
    assert describe_ports(settings.allowed_ports) == "25, 587, 2601-2614"
    assert describe_ports([25, 26, 465, 466, 467]) == "25, 26, 465-467"
    for bad in ("2614-2601", "1-70000", "25-", "a-b", "-"):
        with pytest.raises(ConfigError, match="SMTPCHECK_ALLOWED_PORTS"):
            Settings.from_env({"SMTPCHECK_ALLOWED_PORTS": bad})


def table_reason(address: IPAddress, allow_networks: tuple[IPNetwork, ...] = ()) -> str | None:
    """The rule read straight off the tables with ipaddress's own operations: what
    forbidden_reason's integer ranges must keep."""
    if any(address in net for net in allow_networks if net.version == address.version):
        return None
    if isinstance(address, IPv6Address):
        for prefix, kind, shift in EMBEDDING_IPV4:
            if address in prefix:
                embedded = IPv4Address((int(address) >> shift) & 0xFFFFFFFF)
                reason = table_reason(embedded, allow_networks)
                if reason is None:
                    return None
                return f"{kind} address embedding a {reason} IPv4 address ({embedded})"
    for network, reason in FORBIDDEN:
        if address.version == network.version and address in network:
            return reason
    if isinstance(address, IPv6Address) and address not in GLOBAL_UNICAST_IPV6:
        return "reserved"
    return None


#: Every table row's network, and the networks an operator might allow.
EDGES = [network for network, _ in FORBIDDEN] + [prefix for prefix, _, _ in EMBEDDING_IPV4]
ALLOWABLE = [ip_network(cidr) for cidr in ("127.0.0.0/8", "10.1.0.0/16", "fd00::/8", "::1/128")]


@strategies.composite
def addresses(draw: strategies.DrawFn) -> IPAddress:
    """Anywhere, inside a row (its ends included), or embedding an IPv4 address."""
    network = draw(strategies.sampled_from(EDGES))
    return draw(
        strategies.one_of(
            strategies.ip_addresses(),
            strategies.ip_addresses(network=network),
            strategies.sampled_from([network.network_address, network.broadcast_address]),
            strategies.ip_addresses(v=4).map(lambda v4: IPv6Address(f"64:ff9b::{v4}")),
            strategies.ip_addresses(v=4).map(
                lambda v4: IPv6Address((0x2002 << 112) | (int(v4) << 80))
            ),
        )
    )


@hypothesis.settings(max_examples=600, deadline=None, derandomize=True)
@hypothesis.given(
    address=addresses(),
    allowed=strategies.lists(strategies.sampled_from(ALLOWABLE), max_size=3, unique=True),
)
def test_the_ranges_judge_as_the_tables_do(address: IPAddress, allowed: list[IPNetwork]) -> None:
    assert forbidden_reason(address, allowed) == table_reason(address, tuple(allowed))
