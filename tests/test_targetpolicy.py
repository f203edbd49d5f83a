"""The address table, judged without any I/O."""

from __future__ import annotations

from ipaddress import ip_address, ip_network

import pytest

from smtpcheck.targetpolicy import forbidden_reason


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
