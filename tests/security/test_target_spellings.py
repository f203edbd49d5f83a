"""Every way of writing a forbidden address is refused, and no packet leaves.

The API refuses what it can tell from the text (422 naming ``host``): IP
literals, and everything ``inet_aton``/getaddrinfo reads as an IPv4 address
(decimal, hex, octal, short forms, trailing dots, full-width digits). The
worker judges the address it resolved, so spellings that reach it (``smtpcheck
check --local``, a name that resolves to a private address, an MX host) end
in ``target_forbidden`` without a connection.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable
from typing import Any

import pytest
from flask.testing import FlaskClient

from smtpcheck.config import Settings, Timeouts
from smtpcheck.contract import check_request
from tests.dns_server import DNSServer
from tests.security.conftest import ALICE, Witness
from workers.engine import run_check

#: Spellings of loopback, unspecified, private, link-local (cloud metadata),
#: CGNAT, broadcast and multicast IPv4 addresses that resolvers accept.
IPV4_SPELLINGS = [
    # 127.0.0.1
    "127.0.0.1",
    "127.1",
    "127.0.1",
    "2130706433",
    "0x7f000001",
    "0X7F000001",
    "0x7f.1",
    "0x7f.0.1",
    "0x7f.0.0.1",
    "0x7f.0x0.0x0.0x1",
    "0177.0.0.1",
    "0177.1",
    "0177.0.1",
    "017700000001",
    "00000000177.0.0.1",
    "127.000.000.001",
    "127.0x0.1",
    "0x7f.0.0.01",
    "127.0.0.1.",
    "127.1.",
    "2130706433.",
    "0x7f000001.",
    "0177.0.0.1.",
    "127.255.255.254",
    "0x7ffffffe",
    # 0.0.0.0 (connects to this machine on Linux)
    "0",
    "0.0.0.0",
    "0.0",
    "0x0",
    "00",
    "0.0.0.0.",
    # private
    "10.1",
    "012.0.0.1",
    "0xa000001",
    "167772161",
    "0xc0a80001",
    "3232235521",
    "192.168.1",
    "0300.0250.0.1",
    "172.16.1",
    "0xac100001",
    # link-local, cloud metadata
    "169.254.169.254",
    "0xa9fea9fe",
    "2852039166",
    "0251.0376.0251.0376",
    "169.254.43518",
    "0xa9.0xfe.0xa9.0xfe",
    # CGNAT, broadcast, multicast, reserved, documentation
    "0x64400001",
    "100.64.1",
    "4294967295",
    "0xffffffff",
    "0xe0000001",
    "3758096385",
    "0xf0000001",
    "192.0.2.1.",
    # full-width digits (U+FF10-FF19) and ideographic full stops (U+3002), which IDNA
    # (UTS 46) maps to ASCII
    "\uff11\uff12\uff17.\uff10.\uff10.\uff11",
    "\uff11\uff12\uff17.\uff11",
    "\uff10x\uff17f\uff10\uff10\uff10\uff10\uff10\uff11",
    "127\u30020\u30020\u30021",
]

IPV6_SPELLINGS = [
    "::1",
    "[::1]",
    "0:0:0:0:0:0:0:1",
    "0000:0000:0000:0000:0000:0000:0000:0001",
    "::0001",
    "::",
    "[::]",
    # IPv4-mapped and IPv4-compatible
    "::ffff:127.0.0.1",
    "::FFFF:127.0.0.1",
    "::ffff:7f00:1",
    "[::ffff:127.0.0.1]",
    "0:0:0:0:0:ffff:127.0.0.1",
    "::ffff:169.254.169.254",
    "::ffff:10.0.0.1",
    "::ffff:0:127.0.0.1",
    "::127.0.0.1",
    "::7f00:1",
    "::10.0.0.1",
    # NAT64 (well-known and local-use prefixes), 6to4, Teredo
    "64:ff9b::127.0.0.1",
    "64:ff9b::7f00:1",
    "[64:ff9b::7f00:1]",
    "64:ff9b::a9fe:a9fe",
    "64:ff9b::10.0.0.1",
    "64:ff9b:1::a00:1",
    "64:ff9b:1::808:808",
    "2002:7f00:1::1",
    "2002:a9fe:a9fe::1",
    "2001:0:4136:e378:8000:63bf:3fff:fdd2",
    # link-local (with zone ids), ULA, site-local, multicast, documentation
    "fe80::1",
    "FE80::1",
    "[fe80::1]",
    "fe80::1%eth0",
    "fe80::1%25eth0",
    "[fe80::1%eth0]",
    "::1%lo",
    "[::1%1]",
    "fd00::1",
    "fc00::1",
    "fd00:ec2::254",
    "fec0::1",
    "ff02::1",
    "2001:db8::1",
    "3fff::1",
    "100::1",
]


def post(client: FlaskClient, host: str) -> tuple[int, dict[str, Any]]:
    body = json.dumps({"host": host}, ensure_ascii=False).encode("utf-8")
    response = client.post("/v1/checks", data=body, content_type="application/json", headers=ALICE)
    return response.status_code, response.get_json()


# ---------------------------------------------------------------------------
# the API: 422 naming host
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("host", IPV4_SPELLINGS + IPV6_SPELLINGS)
def test_api_refuses_every_spelling_of_a_forbidden_address(client: FlaskClient, host: str) -> None:
    status, problem = post(client, host)

    assert status == 422, problem
    assert problem["type"] == "urn:smtpcheck:problem:validation-error"
    assert list(problem["errors"]) == ["host"]


@pytest.mark.parametrize(
    ("host", "address"),
    [
        ("0x7f000001", "127.0.0.1"),
        ("2130706433", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("0xa9fea9fe", "169.254.169.254"),
        ("\uff10x\uff17f\uff10\uff10\uff10\uff10\uff10\uff11", "127.0.0.1"),
    ],
)
def test_the_refusal_names_the_address_the_spelling_means(
    client: FlaskClient, host: str, address: str
) -> None:
    _, problem = post(client, host)

    (message,) = problem["errors"]["host"]
    assert address in message
    assert "may not target" in message


@pytest.mark.parametrize(
    ("host", "canonical"),
    [("0x08080808", "8.8.8.8"), ("134744072", "8.8.8.8"), ("010.8.8.8", "8.8.8.8")],
)
def test_an_odd_spelling_of_a_public_address_is_refused_with_its_dotted_form(
    client: FlaskClient, host: str, canonical: str
) -> None:
    """``010.8.8.8`` is 8.8.8.8 to inet_aton, 10.8.8.8 to a person: never guess."""
    status, problem = post(client, host)

    assert status == 422
    assert f"write it as {canonical}" in problem["errors"]["host"][0]


@pytest.mark.parametrize(
    "host", ["8.8.8.8", "2001:4860:4860::8888", "64:ff9b::808:808", "deadbeef.example", "0x1.io"]
)
def test_public_addresses_and_names_that_only_look_numeric_are_accepted(
    client: FlaskClient, host: str
) -> None:
    status, problem = post(client, host)

    assert status == 202, problem


# ---------------------------------------------------------------------------
# the worker: target_forbidden, no connection
# ---------------------------------------------------------------------------

#: What the worker's resolver (ipaddress, then getaddrinfo) reads as an address
#: of this machine. Spellings getaddrinfo does not take (trailing dots, zone
#: ids on loopback) never reach a socket either; they are the API's to refuse.
WORKER_SPELLINGS = [
    "127.0.0.1",
    "127.1",
    "127.0.1",
    "2130706433",
    "0x7f000001",
    "0X7F000001",
    "0x7f.1",
    "0x7f.0.0.1",
    "0177.0.0.1",
    "017700000001",
    "127.000.000.001",
    "127.0x0.1",
    "127.255.255.254",
    "0",
    "0.0.0.0",
    "0x0",
    "localhost",
    "::1",
    "[::1]",
    "0:0:0:0:0:0:0:1",
    "::",
    "::ffff:127.0.0.1",
    "::ffff:7f00:1",
    "[::ffff:127.0.0.1]",
    "::127.0.0.1",
    "64:ff9b::7f00:1",
    "64:ff9b::127.0.0.1",
    "2002:7f00:1::1",
    "IPv6:::1",
    "[IPv6:::1]",
    "fe80::1%lo",
    "::1%lo",
]


def worker_settings(port: int, **changes: Any) -> Settings:
    """A worker with no SMTPCHECK_ALLOW_NETWORKS: loopback is forbidden."""
    return Settings(
        allowed_ports=frozenset({port}),
        helo_name="checker.test",
        timeouts=Timeouts(connect=2, command=2, total=5),
    ).replace(**changes)


def check(host: str, port: int, settings: Settings, **request: Any) -> dict[str, Any]:
    return run_check(
        check_request(
            settings,
            **{"host": host, "port": port, "tls": "none", "stop_after": "banner", **request},
        ),
        settings,
        check_id="spelling",
    )


@pytest.mark.parametrize("host", WORKER_SPELLINGS)
def test_worker_refuses_every_spelling_and_sends_nothing(witness: Witness, host: str) -> None:
    result = check(host, witness.port, worker_settings(witness.port))

    assert result["outcome"] == "target_forbidden", result["summary"]
    assert result["ok"] is False
    assert result["target"]["address"] is None
    notes = [entry["text"] for entry in result["transcript"]]
    assert not any(text.startswith("connecting to") for text in notes), notes
    assert witness.connections == []


@pytest.mark.parametrize("host", ["0x7f000001", "127.1", "2130706433", "localhost"])
def test_the_same_spellings_connect_once_the_operator_allows_loopback(
    witness: Witness, host: str
) -> None:
    """The control: the witness would have seen a connection, had one been made."""
    allowed = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))
    result = check(host, witness.port, worker_settings(witness.port, allow_networks=allowed))

    assert result["target"]["address"] in ("127.0.0.1", "::1")
    assert len(witness.connections) == 1


def test_a_forbidden_port_is_refused_before_resolving(witness: Witness) -> None:
    settings = worker_settings(witness.port + 1 if witness.port < 65535 else 1)
    result = check("127.0.0.1", witness.port, settings)

    assert result["outcome"] == "target_forbidden"
    assert "not one of the allowed ports" in result["summary"]
    assert witness.connections == []


@pytest.mark.parametrize(
    "records",
    [
        {"A": ["127.0.0.1"]},
        {"AAAA": ["::1"]},
        {"A": ["169.254.169.254"]},
        {"AAAA": ["::ffff:127.0.0.1"]},
        {"AAAA": ["64:ff9b::7f00:1"]},
        {"A": ["10.0.0.1", "127.0.0.1"], "AAAA": ["fd00::1"]},
    ],
)
def test_a_name_that_resolves_to_a_forbidden_address_is_not_dialled(
    witness: Witness, dns_server: Callable[..., DNSServer], records: dict[str, list[str]]
) -> None:
    """DNS rebinding and friends: the policy judges the answer, which is what is dialled."""
    server = dns_server({"evil.local.test.": records})
    settings = worker_settings(witness.port, dns_servers=((server.host, server.port),))

    result = check("evil.local.test", witness.port, settings)

    assert result["outcome"] == "target_forbidden", result["summary"]
    assert result["target"]["address"] is None
    assert witness.connections == []


@pytest.mark.parametrize("mx_hosts", ["first", "all"])
def test_each_mx_host_is_held_to_the_policy(
    witness: Witness, dns_server: Callable[..., DNSServer], mx_hosts: str
) -> None:
    server = dns_server(
        {
            "local.test.": {"MX": ["10 mx1.local.test.", "20 mx2.local.test."]},
            "mx1.local.test.": {"A": ["10.0.0.1"]},
            "mx2.local.test.": {"A": ["127.0.0.1"], "AAAA": ["::1"]},
        }
    )
    settings = worker_settings(witness.port, dns_servers=((server.host, server.port),))

    result = check("local.test", witness.port, settings, mx=True, mx_hosts=mx_hosts)

    assert result["outcome"] == "target_forbidden", result["summary"]
    assert [host["target"]["host"] for host in result["hosts"]] == [
        "mx1.local.test",
        "mx2.local.test",
    ]
    assert [host["outcome"] for host in result["hosts"]] == ["target_forbidden"] * 2
    assert "10.0.0.1" in result["hosts"][0]["summary"]
    assert "127.0.0.1" in result["hosts"][1]["summary"]
    assert witness.connections == []


@pytest.mark.parametrize("host", ["localhost", "LOCALHOST.", "mail.localhost", "x.y.localhost"])
def test_api_refuses_the_loopback_names_of_rfc_6761(client: FlaskClient, host: str) -> None:
    status, problem = post(client, host)

    assert status == 422, problem
    assert "127.0.0.1 is a loopback address" in problem["errors"]["host"][0]
