"""Host names, IP literals and mail addresses: pure syntax."""

from __future__ import annotations

import pytest

from service.names import check_mailbox, normalize_helo, normalize_host


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
