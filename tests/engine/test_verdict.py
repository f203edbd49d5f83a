"""The outcome table, row by row, from the bytes a server sends.

Every row of REPLY_RULES and OUTCOME_RULES is the first match of at least
one case here (checked below), so a row nobody can reach, or a change that
moves a real server's reply into another class, fails a test.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from smtpcheck.contract import Outcome, ReplyClass
from workers.errors import (
    Canceled,
    ConnectionClosed,
    ConnectTimeout,
    DNSError,
    LocalProtocolError,
    ReadTimeout,
    RemoteProtocolError,
    TLSError,
)
from workers.protocol import Reply, parse_reply
from workers.verdict import (
    OUTCOME_RULES,
    REPLY_RULES,
    Step,
    allows_auth_fallback,
    error_outcome,
    judge,
    lets_helo_follow,
)

C = ReplyClass
O = Outcome  # noqa: E741
S = Step


# step, bytes the server sends, class, outcome (None: the dialogue goes on)
CASES: list[tuple[Step, bytes, ReplyClass, Outcome | None]] = [
    # going on
    (S.BANNER, b"220 mx.example.org ESMTP Postfix\r\n", C.ACCEPTED, None),
    (S.EHLO, b"250-mx.example.org\r\n250 8BITMIME\r\n", C.ACCEPTED, None),
    (S.RCPT, b"250 2.1.5 Ok\r\n", C.ACCEPTED, None),
    (S.VRFY, b"252 2.0.0 bob\r\n", C.CANNOT_VERIFY, None),
    (S.DATA, b"354 End data with <CR><LF>.<CR><LF>\r\n", C.CONTINUE, None),
    (S.AUTH, b"334 VXNlcm5hbWU6\r\n", C.CONTINUE, None),
    # a 2xx/3xx out of place breaks the state machine
    (S.BANNER, b"250 hello\r\n", C.ACCEPTED, O.PROTOCOL_ERROR),
    (S.AUTH_FINAL, b"334 \r\n", C.CONTINUE, O.PROTOCOL_ERROR),
    (S.MESSAGE, b"354 go on\r\n", C.CONTINUE, O.PROTOCOL_ERROR),
    # 421 anywhere: the server ends the session
    (S.BANNER, b"421 4.3.2 Service shutting down\r\n", C.CLOSING, O.SERVICE_UNAVAILABLE),
    (S.MAIL, b"421 4.7.0 mx closing connection\r\n", C.CLOSING, O.SERVICE_UNAVAILABLE),
    (S.RCPT, b"421 Too many errors\r\n", C.CLOSING, O.SERVICE_UNAVAILABLE),
    # the checker itself refused
    (
        S.RCPT,
        b"554 5.7.1 Service unavailable; Client host [192.0.2.7] blocked using "
        b"zen.spamhaus.org; https://www.spamhaus.org/query/ip/192.0.2.7\r\n",
        C.BLOCKLISTED,
        O.BLOCKED,
    ),
    (S.BANNER, b"554 Your IP is listed at bl.spamcop.net\r\n", C.BLOCKLISTED, O.BLOCKED),
    (S.MAIL, b"550 5.7.25 Reverse DNS validation failed\r\n", C.CLIENT_HOST, O.BLOCKED),
    (
        S.RCPT,
        b"450 4.7.1 Client host rejected: cannot find your hostname, [192.0.2.7]\r\n",
        C.CLIENT_HOST,
        O.BLOCKED,
    ),
    # a refused greeting
    (
        S.BANNER,
        b"554 5.3.2 mx.example.org: no SMTP service here\r\n",
        C.SERVICE_REFUSED,
        O.SERVICE_UNAVAILABLE,
    ),
    (S.BANNER, b"450 busy\r\n", C.SERVICE_REFUSED, O.SERVICE_UNAVAILABLE),
    # greylisting
    (
        S.RCPT,
        b"450 4.2.0 <bob@example.org>: Recipient address rejected: Greylisted, see "
        b"http://postgrey.schweikert.ch/\r\n",
        C.GREYLISTED,
        O.TEMPORARY_FAILURE,
    ),
    (
        S.RCPT,
        b"451 4.7.1 Greylisting in action, please come back later\r\n",
        C.GREYLISTED,
        O.TEMPORARY_FAILURE,
    ),
    # TLS and AUTH policy
    (
        S.MAIL,
        b"538 5.7.11 Encryption required for requested authentication mechanism\r\n",
        C.TLS_REQUIRED,
        O.TLS_REQUIRED,
    ),
    (S.AUTH, b"554 5.7.11 Encryption needed\r\n", C.TLS_REQUIRED, O.TLS_REQUIRED),
    (S.MAIL, b"530 Must issue a STARTTLS command first\r\n", C.TLS_REQUIRED, O.TLS_REQUIRED),
    (S.MAIL, b"550 5.7.0 Must issue a STARTTLS command first\r\n", C.TLS_REQUIRED, O.TLS_REQUIRED),
    (S.MAIL, b"530 5.7.0 Authentication required\r\n", C.AUTH_REQUIRED, O.AUTH_REQUIRED),
    (S.RCPT, b"550 5.7.1 Client was not authenticated\r\n", C.AUTH_REQUIRED, O.AUTH_REQUIRED),
    (S.AUTH_FINAL, b"535 5.7.8 Error: authentication failed\r\n", C.AUTH_FAILED, O.AUTH_FAILED),
    (S.AUTH_FINAL, b"554 5.7.8 Invalid credentials\r\n", C.AUTH_FAILED, O.AUTH_FAILED),
    (
        S.AUTH,
        b"534 5.7.9 Authentication mechanism is too weak\r\n",
        C.AUTH_MECHANISM,
        O.AUTH_UNAVAILABLE,
    ),
    (S.AUTH_FINAL, b"554 5.7.9 Mechanism too weak\r\n", C.AUTH_MECHANISM, O.AUTH_UNAVAILABLE),
    (
        S.AUTH,
        b"504 5.5.4 Unrecognized authentication type\r\n",
        C.AUTH_MECHANISM,
        O.AUTH_UNAVAILABLE,
    ),
    (S.AUTH, b"454 4.7.0 Temporary authentication failure\r\n", C.TEMPORARY, O.TEMPORARY_FAILURE),
    (S.AUTH, b"502 5.5.1 AUTH not implemented\r\n", C.COMMAND_REFUSED, O.AUTH_UNAVAILABLE),
    (S.AUTH, b"554 no\r\n", C.REJECTED, O.AUTH_FAILED),
    (S.AUTH_FINAL, b"550 no\r\n", C.REJECTED, O.AUTH_FAILED),
    # the address, the sender, the mailbox
    (S.RCPT, b"553 5.6.7 Non-ASCII address not permitted\r\n", C.SMTPUTF8, O.SMTPUTF8_UNAVAILABLE),
    (S.MAIL, b"555 SMTPUTF8 not supported\r\n", C.SMTPUTF8, O.SMTPUTF8_UNAVAILABLE),
    (S.MAIL, b"550 5.7.23 SPF validation failed\r\n", C.SPF, O.POLICY_REJECTED),
    (
        S.RCPT,
        b"550 5.7.1 <s@example.org>: Sender address rejected: SPF check failed\r\n",
        C.SPF,
        O.POLICY_REJECTED,
    ),
    (
        S.RCPT,
        b"450 4.1.8 <s@example.org>: Sender address rejected: Domain not found\r\n",
        C.SENDER,
        O.SENDER_REJECTED,
    ),
    (S.MAIL, b"550 5.7.1 Sender address rejected: access denied\r\n", C.SENDER, O.SENDER_REJECTED),
    (S.RCPT, b"554 5.7.1 <x@example.net>: Relay access denied\r\n", C.RELAY, O.RELAY_DENIED),
    (S.RCPT, b"550 Unable to relay for x@example.net\r\n", C.RELAY, O.RELAY_DENIED),
    (
        S.RCPT,
        b"552 5.2.2 <bob@example.org>: Recipient address rejected: mailbox full\r\n",
        C.MAILBOX_FULL,
        O.MAILBOX_UNAVAILABLE,
    ),
    (S.RCPT, b"452 Mailbox is over quota\r\n", C.MAILBOX_FULL, O.MAILBOX_UNAVAILABLE),
    (S.MESSAGE, b"552 5.3.4 Message size exceeds fixed limit\r\n", C.SIZE, O.POLICY_REJECTED),
    (S.MESSAGE, b"552 Message too large\r\n", C.SIZE, O.POLICY_REJECTED),
    (
        S.RCPT,
        b"550 5.2.1 Mailbox disabled for this recipient\r\n",
        C.MAILBOX_DISABLED,
        O.MAILBOX_UNAVAILABLE,
    ),
    (S.RCPT, b"550 Account is suspended\r\n", C.MAILBOX_DISABLED, O.MAILBOX_UNAVAILABLE),
    (
        S.RCPT,
        b"452 4.5.3 Error: too many recipients\r\n",
        C.TOO_MANY_RECIPIENTS,
        O.TEMPORARY_FAILURE,
    ),
    (S.RCPT, b"550 Too many recipients\r\n", C.TOO_MANY_RECIPIENTS, O.POLICY_REJECTED),
    (
        S.RCPT,
        b"550 5.1.1 <nobody@example.org>: Recipient address rejected: User unknown\r\n",
        C.UNKNOWN_USER,
        O.RECIPIENT_REJECTED,
    ),
    (
        S.RCPT,
        b"550 Requested action not taken: mailbox unavailable\r\n",
        C.UNKNOWN_USER,
        O.RECIPIENT_REJECTED,
    ),
    (S.MAIL, b"550 5.1.1 <x@example.org>: user unknown\r\n", C.UNKNOWN_USER, O.SENDER_REJECTED),
    (S.RCPT, b"553 5.1.3 Bad recipient address syntax\r\n", C.BAD_ADDRESS, O.RECIPIENT_REJECTED),
    (S.MAIL, b"501 Syntax: MAIL FROM:<address>\r\n", C.SENDER, O.SENDER_REJECTED),
    (S.RCPT, b"501 Syntax: RCPT TO:<address>\r\n", C.BAD_ADDRESS, O.RECIPIENT_REJECTED),
    # what is left
    (
        S.MAIL,
        b"451 4.7.0 Too many connections from your network\r\n",
        C.RATE_LIMITED,
        O.TEMPORARY_FAILURE,
    ),
    (
        S.MESSAGE,
        b"550 5.7.1 Message rejected as spam by Content Filtering\r\n",
        C.POLICY,
        O.POLICY_REJECTED,
    ),
    (S.MAIL, b"550 5.7.1 Access denied\r\n", C.POLICY, O.POLICY_REJECTED),
    (S.MESSAGE, b"554 Message refused: virus found\r\n", C.POLICY, O.POLICY_REJECTED),
    (S.RCPT, b"503 5.5.1 Error: need MAIL command\r\n", C.COMMAND_REFUSED, O.PROTOCOL_ERROR),
    (S.MAIL, b"555 5.5.4 Unsupported option: SIZE=100\r\n", C.COMMAND_REFUSED, O.PROTOCOL_ERROR),
    (S.EHLO, b"502 5.5.2 Error: command not recognized\r\n", C.COMMAND_REFUSED, O.EHLO_REJECTED),
    (S.HELO, b"550 go away\r\n", C.REJECTED, O.EHLO_REJECTED),
    (S.EHLO, b"451 4.3.0 try again\r\n", C.TEMPORARY, O.TEMPORARY_FAILURE),
    (
        S.STARTTLS,
        b"454 4.7.0 TLS not available due to local problem\r\n",
        C.TEMPORARY,
        O.STARTTLS_UNAVAILABLE,
    ),
    (S.STARTTLS, b"502 5.5.1 Not implemented\r\n", C.COMMAND_REFUSED, O.STARTTLS_UNAVAILABLE),
    (S.STARTTLS, b"421 4.7.0 closing\r\n", C.CLOSING, O.SERVICE_UNAVAILABLE),
    (S.DATA, b"554 5.5.1 Error: no valid recipients\r\n", C.COMMAND_REFUSED, O.PROTOCOL_ERROR),
    (S.MESSAGE, b"554 5.6.0 Message content rejected\r\n", C.REJECTED, O.DATA_REJECTED),
    (S.MESSAGE, b"451 4.3.0 Error: queue file write error\r\n", C.TEMPORARY, O.TEMPORARY_FAILURE),
    (S.RCPT, b"550 nope\r\n", C.REJECTED, O.RECIPIENT_REJECTED),
    (S.MAIL, b"554 nope\r\n", C.REJECTED, O.SENDER_REJECTED),
    (S.DATA, b"554 nope\r\n", C.REJECTED, O.DATA_REJECTED),
]


@pytest.mark.parametrize(("step", "data", "reply_class", "outcome"), CASES)
def test_reply_is_classed_and_judged(step, data, reply_class, outcome):
    verdict = judge(step, parse_reply(data))
    assert (verdict.reply_class, verdict.outcome) == (reply_class, outcome)


def test_every_row_of_both_tables_is_reached_by_a_case():
    reply_rows, outcome_rows = set(), set()
    for step, data, _, _ in CASES:
        reply = parse_reply(data)
        reply_rows.add(next(i for i, r in enumerate(REPLY_RULES) if r.matches(step, reply)))
        reply_class = judge(step, reply).reply_class
        if reply_class not in (C.ACCEPTED, C.CONTINUE, C.CANNOT_VERIFY):
            outcome_rows.add(
                next(
                    i
                    for i, rule in enumerate(OUTCOME_RULES)
                    if rule.matches(step, reply_class, reply.code)
                )
            )
    assert set(range(len(REPLY_RULES))) - reply_rows == set()
    assert set(range(len(OUTCOME_RULES))) - outcome_rows == set()


def test_helo_fallback_and_auth_fallback():
    assert lets_helo_follow(parse_reply(b"502 5.5.2 Error: command not recognized\r\n"))
    assert lets_helo_follow(parse_reply(b"550 no EHLO here\r\n"))
    assert not lets_helo_follow(parse_reply(b"421 closing\r\n"))
    assert not lets_helo_follow(parse_reply(b"451 later\r\n"))
    assert not lets_helo_follow(parse_reply(b"554 5.7.1 Client host rejected: no PTR\r\n"))
    for code in (504, 534, 535):
        assert allows_auth_fallback(Reply(code, ("no",)))
    assert not allows_auth_fallback(Reply(454, ("4.7.0 later",)))


@pytest.mark.parametrize(
    ("exc", "step", "expired", "outcome"),
    [
        (ReadTimeout("read timed out"), S.BANNER, False, O.BANNER_TIMEOUT),
        (ReadTimeout("read timed out"), S.MAIL, False, O.TIMEOUT),
        (ReadTimeout("deadline passed"), S.BANNER, True, O.TIMEOUT),
        (ConnectTimeout("connect timed out"), None, False, O.CONNECT_TIMEOUT),
        (ConnectTimeout("connect timed out"), None, True, O.TIMEOUT),
        (TLSError("handshake failed"), S.STARTTLS, False, O.TLS_ERROR),
        (TLSError("handshake timed out"), S.STARTTLS, True, O.TIMEOUT),
        (ConnectionClosed("closed"), S.RCPT, False, O.CONNECTION_CLOSED),
        (RemoteProtocolError("garbage"), S.EHLO, False, O.PROTOCOL_ERROR),
        (LocalProtocolError("LF in helo"), S.EHLO, False, O.PROTOCOL_ERROR),
        (DNSError("SERVFAIL", temporary=True), None, False, O.DNS_ERROR),
        (Canceled("the caller canceled the check"), S.RCPT, False, O.CANCELED),
    ],
)
def test_one_outcome_per_exception(exc, step, expired, outcome):
    assert error_outcome(exc, step, total_expired=expired) is outcome


# -- no other module maps reply codes to outcomes ----------------------------

ENGINE = Path(__file__).resolve().parents[2] / "workers"
#: Reading a reply's code or its kind is the verdict's job; protocol.py
#: defines Reply, and these two only.
READS_A_REPLY = re.compile(
    r"\.code\s*(==|!=|>=|<=|<|>|in\b|not in\b)|\.code\[|str\(\w+\.code\)"
    r"|\.(transient|permanent|positive|intermediate)\b"
    r"|\.enhanced\s*(==|!=|in\b|not in\b)|\.enhanced\.startswith"
)
MAY_READ_REPLIES = {"verdict.py", "protocol.py"}


def test_no_other_engine_module_reads_reply_codes():
    offenders = []
    for path in sorted(ENGINE.glob("*.py")):
        if path.name in MAY_READ_REPLIES:
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if READS_A_REPLY.search(line.split("#")[0]):
                offenders.append(f"{path.name}:{number}: {line.strip()}")
    assert offenders == []
