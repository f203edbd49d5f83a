"""MTA-STS and TLS-RPT records and policies, parsed as a strict sender would."""

from __future__ import annotations

import pytest

from workers import mtasts, tlsrpt

POLICY = (
    b"version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\n"
    b"mx: *.example.net\r\nmax_age: 604800\r\n"
)


@pytest.mark.parametrize(
    ("texts", "record_id"),
    [
        (["v=STSv1; id=20240101T000000;"], "20240101T000000"),
        (["v=STSv1;id=abc"], "abc"),
        (["v=spf1 -all", "v=STSv1; id=1; ext=yes"], "1"),
    ],
)
def test_a_valid_record_gives_its_id(texts: list[str], record_id: str) -> None:
    assert mtasts.sts_record(texts).id == record_id


@pytest.mark.parametrize(
    ("texts", "reason"),
    [
        ([], "no TXT record starting with v=STSv1"),
        (["v=STSv1; id=1;", "v=STSv1; id=2;"], "2 v=STSv1 records"),
        (["v=STSv1;"], "no id field"),
        (["v=STSv1; id=has-dash;"], "is not 1 to 32 letters and digits"),
        (["v=STSv1; id=" + "a" * 33], "is not 1 to 32 letters and digits"),
        (["v=STSv1; id=1; id=2"], "appears twice"),
        (["v=STSv1; garbage"], "malformed field"),
    ],
)
def test_an_invalid_record_says_why(texts: list[str], reason: str) -> None:
    with pytest.raises(mtasts.PolicyError, match=reason):
        mtasts.sts_record(texts)


def test_a_policy_is_parsed_with_every_mx_pattern() -> None:
    policy = mtasts.parse_policy(POLICY)
    assert policy.mode == "enforce"
    assert policy.max_age == 604800
    assert policy.mx == ("mail.example.com", "*.example.net")
    assert policy.as_dict()["version"] == "STSv1"


def test_lf_line_ends_are_accepted_too() -> None:
    assert mtasts.parse_policy(POLICY.replace(b"\r\n", b"\n")).mode == "enforce"


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"mode: enforce\nmx: a.example\nmax_age: 1\n", "no version line"),
        (b"version: STSv2\nmode: enforce\nmx: a.example\nmax_age: 1\n", "not STSv1"),
        (b"version: STSv1\nmode: strict\nmx: a.example\nmax_age: 1\n", "not one of enforce"),
        (b"version: STSv1\nmode: enforce\nmax_age: 1\n", "mode enforce but no mx line"),
        (b"version: STSv1\nmode: enforce\nmx: a.example\nmax_age: soon\n", "not a number"),
        (b"version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 31557601\n", "over the limit"),
        (b"version: STSv1\nmode: enforce\nmode: none\nmx: a.example\nmax_age: 1\n", "2 mode"),
        (b"version: STSv1\nmode: enforce\nmx: *.com\nmax_age: 1\n", "is not a host name"),
        (b"version: STSv1\nmode: enforce\nmx: a.*.example\nmax_age: 1\n", "is not a host name"),
        (b"<html>not a policy</html>", "is not 'key: value'"),
        (b"version: STSv1\nmode: enforce\n\xff\n", "not UTF-8"),
    ],
)
def test_an_invalid_policy_says_why(body: bytes, reason: str) -> None:
    with pytest.raises(mtasts.PolicyError, match=reason):
        mtasts.parse_policy(body)


def test_mode_none_needs_no_mx() -> None:
    assert mtasts.parse_policy(b"version: STSv1\nmode: none\nmax_age: 86400\n").mx == ()


@pytest.mark.parametrize(
    ("pattern", "host", "matches"),
    [
        ("mail.example.com", "mail.example.com", True),
        ("mail.example.com", "MAIL.example.com.", True),
        ("*.example.com", "mx1.example.com", True),
        ("*.example.com", "example.com", False),  # the wildcard is one whole label
        ("*.example.com", "a.b.example.com", False),  # and only one
        ("mail.example.com", "mail.example.org", False),
    ],
)
def test_mx_patterns_follow_rfc_8461_4_1(pattern: str, host: str, matches: bool) -> None:
    assert mtasts.mx_matches(pattern, host) is matches


def test_a_tls_rpt_record_gives_its_report_addresses() -> None:
    record = tlsrpt.reporting_record(
        ["v=TLSRPTv1; rua=mailto:tls@example.com,https://reports.example.com/v1"]
    )
    assert record.rua == ("mailto:tls@example.com", "https://reports.example.com/v1")


@pytest.mark.parametrize(
    ("texts", "reason"),
    [
        ([], "no TXT record starting with v=TLSRPTv1"),
        (["v=TLSRPTv1;"], "no rua field"),
        (["v=TLSRPTv1; rua=http://reports.example.com/"], "only mailto: and https:"),
        (["v=TLSRPTv1; rua=mailto:nobody"], "not a mail address"),
        (["v=TLSRPTv1; rua=mailto:a@b.example", "v=TLSRPTv1; rua=mailto:c@d.example"], "2 v="),
    ],
)
def test_an_invalid_tls_rpt_record_says_why(texts: list[str], reason: str) -> None:
    with pytest.raises(tlsrpt.ReportingError, match=reason):
        tlsrpt.reporting_record(texts)
