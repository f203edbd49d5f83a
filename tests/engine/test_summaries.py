"""Every outcome, and every refusing reply class, gets a sentence of its own."""

from __future__ import annotations

import pytest

from smtpcheck.contract import Outcome, ReplyClass
from workers.dialogue import Failure
from workers.protocol import Reply
from workers.result import summarize, where_of

TIMEOUTS = {"connect": 3.0, "command": 5.0, "total": 20.0}
GOING_ON = {ReplyClass.ACCEPTED, ReplyClass.CONTINUE, ReplyClass.CANNOT_VERIFY}


def result_for(host: str = "mx.example.org", address: str = "192.0.2.7") -> dict:
    return {"target": {"host": host, "port": 25, "address": address}, "stage": "rcpt"}


@pytest.mark.parametrize("outcome", [o for o in Outcome if o is not Outcome.OK])
def test_every_outcome_has_its_sentence(outcome):
    failure = Failure(outcome, "rcpt", "why", Reply(550, ("5.0.0 no",)), ReplyClass.REJECTED, "a@b")
    sentence = summarize(result_for(), failure, TIMEOUTS)
    assert f"{outcome} during" not in sentence  # not the fallback
    assert "\n" not in sentence and len(sentence) < 400


@pytest.mark.parametrize("reply_class", [c for c in ReplyClass if c not in GOING_ON])
def test_every_refusing_class_reads_as_a_sentence(reply_class):
    failure = Failure(
        Outcome.RECIPIENT_REJECTED, "rcpt", "", Reply(550, ("5.0.0 no",)), reply_class, "a@b"
    )
    sentence = summarize(result_for(), failure, TIMEOUTS)
    assert "550 5.0.0 no" in sentence and "\n" not in sentence


def test_ipv6_addresses_are_bracketed():
    assert where_of({"host": "::1", "port": 25, "address": "::1"}) == "[::1]:25"
    assert where_of({"host": "mx", "port": 25, "address": "2001:db8::1"}) == "mx ([2001:db8::1]:25)"


def test_a_fault_of_the_checker_is_not_blamed_on_the_server():
    failure = Failure(Outcome.PROTOCOL_ERROR, "ehlo", "helo contains LF", ours=True)
    sentence = summarize(result_for(), failure, TIMEOUTS)
    assert "not of the server" in sentence and "broke the SMTP protocol" not in sentence


def test_the_tarpit_summary_suggests_implicit_tls_only_on_465():
    failure = Failure(Outcome.BANNER_TIMEOUT, "banner")
    assert "implicit" not in summarize(result_for(), failure, TIMEOUTS)
    on_465 = {"target": {"host": "mx", "port": 465, "address": "192.0.2.7"}, "stage": "banner"}
    assert "tls=implicit" in summarize(on_465, failure, TIMEOUTS)
