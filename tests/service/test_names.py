"""Host names, IP literals and mail addresses: pure syntax."""

from __future__ import annotations

from ipaddress import ip_address
from typing import Any

import hypothesis
import pytest
from hypothesis import strategies

from service.names import check_mailbox, normalize_helo, normalize_host, parse_ip_literal


@pytest.mark.parametrize(
    ("text", "host"),
    [
        ("MX.Example.COM", "mx.example.com"),
        ("mx.example.com.", "mx.example.com"),
        ("localhost", "localhost"),
        ("bücher.example", "xn--bcher-kva.example"),
        ("xn--bcher-kva.example", "xn--bcher-kva.example"),
        ("192.0.2.1", "192.0.2.1"),
        ("2001:DB8:0:0::1", "2001:db8::1"),
        ("[2001:db8::1]", "2001:db8::1"),
        ("a" * 63 + ".example", "a" * 63 + ".example"),
    ],
)
def test_normalize_host(text: str, host: str) -> None:
    assert normalize_host(text)[0] == host


@pytest.mark.parametrize(
    "text",
    [
        "",
        ".",
        "a..b",
        "a_b.c",
        "a.-b.c",
        "1.2.3.4.5",
        "01.2.3.4",
        "[1.2.3.4]",
        "[::1",
        "fe80::1%25eth0",
        "☃.-x",
        "a b",
        "a\tb.example",
    ],
)
def test_normalize_host_refuses(text: str) -> None:
    with pytest.raises(ValueError, match=r"\w"):
        normalize_host(text)


def test_helo_accepts_address_literals() -> None:
    assert normalize_helo("[192.0.2.1]") == "[192.0.2.1]"
    assert normalize_helo("[IPv6:2001:db8::1]") == "[IPv6:2001:db8::1]"
    assert normalize_helo("Prüfer.Example") == "xn--prfer-lva.example"
    with pytest.raises(ValueError):
        normalize_helo("[2001:db8::1]")


@pytest.mark.parametrize(
    "address",
    [
        "a@b.example",
        "a.b+c@b.example",
        '"a b"@b.example',
        '"a\\"b"@b.example',
        "ü@ü.example",
        "a@[192.0.2.1]",
        "x" * 64 + "@b.example",
    ],
)
def test_mailbox_accepts(address: str) -> None:
    check_mailbox(address)


@pytest.mark.parametrize(
    "address",
    [
        "a",
        "a@",
        "@b",
        "a.@b.example",
        "a@b_c.example",
        '"a"b"@b.example',
        "a@[1.2.3]",
        "x" * 65 + "@b.example",
        "a@" + "b" * 250 + ".example",
        "a\r\n@b.example",
    ],
)
def test_mailbox_refuses(address: str) -> None:
    with pytest.raises(ValueError):
        check_mailbox(address)


def ipaddress_reads(text: str) -> Any:
    """What ``parse_ip_literal`` made of ``text`` when it asked ``ipaddress`` of every
    string: the outcome the screen before ip_address must keep."""
    candidate = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    if "%" in candidate:
        return ["refused", "an IPv6 zone index (%...) is not allowed"]
    try:
        address = ip_address(candidate)
    except ValueError:
        if candidate is not text:
            return ["refused", f"{text!r} is not an IP address in brackets"]
        return ["none"]
    if candidate is not text and address.version != 6:
        return ["refused", "only IPv6 addresses are written in brackets"]
    return ["address", address]


def parsed(text: str) -> Any:
    try:
        address = parse_ip_literal(text)
    except ValueError as exc:
        return ["refused", str(exc)]
    return ["none"] if address is None else ["address", address]


#: Strings near addresses: their characters, a few that are not, digits that are
#: not ASCII (str.isdigit takes them, ipaddress does not), and real addresses in
#: every spelling, some of them bracketed.
NEAR_ADDRESSES = strategies.one_of(
    strategies.text(alphabet="0123456789abcdefABCDEFxX:.[]%gG -_\u0663\u00b2\uff11", max_size=45),
    strategies.ip_addresses().map(str),
    strategies.ip_addresses(v=6).map(lambda a: a.exploded),
    strategies.ip_addresses(v=4).map(lambda a: f"::ffff:{a}"),
    strategies.lists(
        strategies.integers(0, 300).map(str) | strategies.sampled_from(["00", "01", "099", ""]),
        min_size=3,
        max_size=5,
    ).map(".".join),
    strategies.text(max_size=20),
).flatmap(lambda text: strategies.sampled_from([text, f"[{text}]", f"{text}.", f"{text}:"]))


@hypothesis.settings(max_examples=400, deadline=None, derandomize=True)
@hypothesis.given(text=NEAR_ADDRESSES)
def test_ip_literals_are_read_as_ipaddress_reads_them(text: str) -> None:
    """Only strings that can be an address go to ``ipaddress`` (a host name costs a
    regular expression, not two failed parses); every string reads as before."""
    assert parsed(text) == ipaddress_reads(text)


@pytest.mark.parametrize(
    "text",
    [
        "1.2.3.4",
        "::",
        "::1",
        "[::1]",
        "[1.2.3.4]",
        "::ffff:1.2.3.4",
        "a:b",
        "1.2.3",
        "\u0663.1.1.1",
        "mx.example.com",
        "cafe",
        "[cafe]",
        "fe80::1%eth0",
        "[]",
        "",
    ],
)
def test_ip_literals_near_the_screen_read_as_ipaddress_reads_them(text: str) -> None:
    assert parsed(text) == ipaddress_reads(text)


def test_a_host_name_or_a_dotted_quad_never_reaches_ipaddress(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def refuse(text: str) -> None:
        raise AssertionError(f"ip_address({text!r}) was asked")

    monkeypatch.setattr("service.names.ip_address", refuse)
    assert normalize_host("MX.Example.com") == ("mx.example.com", None)
    assert normalize_host("bücher.example")[0] == "xn--bcher-kva.example"
    assert normalize_host("192.0.2.10") == ("192.0.2.10", ip_address("192.0.2.10"))
