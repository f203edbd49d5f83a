"""What real servers say, each case of issue 9 as a scripted server: the
outcome, the reply class and a summary a person can act on."""

from __future__ import annotations

import base64

import pytest

from tests.smtp_servers import canned

FAST = {"connect": 2, "command": 3, "total": 10}
EHLO_AUTH = b"250-mx.local.test\r\n250-AUTH PLAIN LOGIN CRAM-MD5\r\n250 8BITMIME\r\n"
EHLO_FULL = (
    b"250-mx.local.test\r\n250-SIZE 10240000\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250 PIPELINING\r\n"
)


def client_lines(result):
    return [e["text"] for e in result["transcript"] if e["dir"] == "client"]


@pytest.fixture
def serve(scripted_server, check):
    """``serve(replies, request..., banner=, ehlo=)`` -> (result, lines the server heard)."""

    def run(replies, *, banner=None, ehlo=None, **request):
        heard: list[bytes] = []
        kwargs = {"heard": heard}
        if banner is not None:
            kwargs["banner"] = banner
        if ehlo is not None:
            kwargs["ehlo"] = ehlo
        server = scripted_server(canned(replies, **kwargs))
        request.setdefault("tls", "none")
        result = check(host=server.host, port=server.port, timeouts=FAST, **request)
        return result, [line.decode("utf-8", "replace") for line in heard]

    return run


ENVELOPE = {"mail_from": "checker@example.org", "rcpt_to": ["bob@local.test"]}


@pytest.mark.parametrize(
    ("replies", "outcome", "reply_class", "words"),
    [
        (
            {
                "RCPT": b"554 5.7.1 Service unavailable; Client host [192.0.2.7] blocked using "
                b"zen.spamhaus.org; https://www.spamhaus.org/query/ip/192.0.2.7\r\n"
            },
            "blocked",
            "blocklisted",
            ["blocklist", "vantage"],
        ),
        (
            {
                "RCPT": b"550 5.7.1 <checker@example.org>: Sender address rejected: "
                b"SPF check failed\r\n"
            },
            "policy_rejected",
            "spf",
            ["SPF", "sender"],
        ),
        (
            {"RCPT": b"552 5.2.2 <bob@local.test>: Recipient address rejected: mailbox full\r\n"},
            "mailbox_unavailable",
            "mailbox_full",
            ["full"],
        ),
        (
            {
                "RCPT": b"450 4.1.8 <checker@example.org>: Sender address rejected: "
                b"Domain not found\r\n"
            },
            "sender_rejected",
            "sender",
            ["sender address"],
        ),
        (
            {"RCPT": b"450 4.2.0 <bob@local.test>: Recipient address rejected: Greylisted\r\n"},
            "temporary_failure",
            "greylisted",
            ["greylisting", "retry"],
        ),
        (
            {"RCPT": b"550 5.1.1 <bob@local.test>: Recipient address rejected: User unknown\r\n"},
            "recipient_rejected",
            "unknown_user",
            ["does not exist"],
        ),
        (
            {"RCPT": b"554 5.7.1 <bob@local.test>: Relay access denied\r\n"},
            "relay_denied",
            "relay",
            ["relay"],
        ),
        (
            {"MAIL": b"421 4.7.0 mx.local.test Error: too many errors\r\n"},
            "service_unavailable",
            "closing",
            ["closed the session", "retry later"],
        ),
        (
            {"RCPT": b"421 4.3.2 Service shutting down\r\n"},
            "service_unavailable",
            "closing",
            ["closed the session"],
        ),
    ],
)
def test_envelope_replies(serve, replies, outcome, reply_class, words):
    result, heard = serve(replies, **ENVELOPE)
    assert (result["outcome"], result["reply"]["class"]) == (outcome, reply_class), result[
        "summary"
    ]
    for word in words:
        assert word.lower() in result["summary"].lower(), result["summary"]
    if reply_class == "closing":
        assert "QUIT" not in heard  # the server ended the session
    else:
        assert heard[-2:] == ["RSET", "QUIT"]


def test_non_ascii_address_refused_by_the_server(serve):
    result, _ = serve(
        {"RCPT": b"553 5.6.7 Non-ASCII address not permitted\r\n"},
        ehlo=EHLO_FULL,
        mail_from="checker@example.org",
        rcpt_to=["j\u00f6rg@local.test"],
    )
    assert (result["outcome"], result["reply"]["class"]) == ("smtputf8_unavailable", "smtputf8")
    assert "does not exist" not in result["summary"]
    assert "ASCII" in result["summary"]


def test_non_ascii_address_and_no_smtputf8_sends_nothing(serve):
    result, heard = serve({}, mail_from="j\u00f6rg@example.org", rcpt_to=["bob@local.test"])
    assert result["outcome"] == "smtputf8_unavailable"
    assert not any(line.startswith("MAIL") for line in heard)
    assert heard[-1] == "QUIT"
    assert "SMTPUTF8" in result["summary"]


def test_envelope_follows_the_ehlo(serve):
    result, heard = serve(
        {},
        ehlo=EHLO_FULL,
        mail_from="checker@b\u00fccher.example",
        rcpt_to=["bob@m\u00fcller.example"],
        message={"subject": "caf\u00e9", "body": "d\u00e9j\u00e0 vu\n"},
    )
    assert result["ok"] is True, result["summary"]
    mail = next(line for line in heard if line.startswith("MAIL"))
    assert mail.startswith("MAIL FROM:<checker@xn--bcher-kva.example> BODY=8BITMIME SIZE=")
    assert "RCPT TO:<bob@xn--mller-kva.example>" in heard
    assert "queued as 4F2A1" in result["summary"]
    assert result["data"]["queue_id"] == "4F2A1"


def test_454_to_starttls_is_starttls_unavailable_and_quits(serve):
    result, heard = serve(
        {"STARTTLS": b"454 4.7.0 TLS not available due to local problem\r\n"},
        ehlo=b"250-mx.local.test\r\n250 STARTTLS\r\n",
        tls="auto",
    )
    assert (result["outcome"], result["reply"]["class"]) == ("starttls_unavailable", "temporary")
    assert heard[-1] == "QUIT"
    assert "refused STARTTLS" in result["summary"]


def test_no_credentials_in_plain_text_with_tls_auto(serve):
    result, heard = serve({}, ehlo=EHLO_AUTH, tls="auto", auth={"username": "u", "password": "pw"})
    assert result["outcome"] == "starttls_unavailable"
    assert not any(line.startswith("AUTH") for line in heard)
    assert "plain text" in result["summary"]


def test_plain_text_credentials_when_the_caller_allows_them(serve):
    result, _heard = serve(
        {"AUTH PLAIN": b"235 2.7.0 ok\r\n"},
        ehlo=EHLO_AUTH,
        tls="auto",
        auth={"username": "u", "password": "pw", "allow_plaintext": True},
    )
    assert result["ok"] is True
    assert result["auth"]["mechanism"] == "PLAIN"


def test_auto_tries_a_second_mechanism_once(serve):
    """Dovecot with hashed passwords refuses CRAM-MD5 with 535; LOGIN works."""
    challenge = base64.b64encode(b"<1.2@mx.local.test>").decode().encode()
    result, _heard = serve(
        {
            "AUTH LOGIN": b"334 VXNlcm5hbWU6\r\n",
            "dQ==": b"334 UGFzc3dvcmQ6\r\n",  # "u"
            "cHc=": b"535 5.7.8 Authentication failed\r\n",  # "pw"
            "AUTH CRAM-MD5": b"334 " + challenge + b"\r\n",
            "dS": b"235 2.7.0 Authentication successful\r\n",  # "u <digest>"
        },
        ehlo=b"250-mx.local.test\r\n250 AUTH CRAM-MD5 LOGIN\r\n",
        auth={"username": "u", "password": "pw"},
    )
    assert result["ok"] is True, result["summary"]
    assert [a["mechanism"] for a in result["auth"]["attempts"]] == ["LOGIN", "CRAM-MD5"]
    assert [a["accepted"] for a in result["auth"]["attempts"]] == [False, True]
    assert "AUTH CRAM-MD5 accepted after LOGIN was refused" in result["summary"]
    assert [line for line in client_lines(result) if line.startswith("AUTH")] == [
        "AUTH LOGIN",
        "AUTH CRAM-MD5",
    ]


def test_a_challenge_after_plain_stays_a_protocol_error(serve):
    result, heard = serve(
        {"AUTH PLAIN": b"334 \r\n", "*": b"501 5.7.0 canceled\r\n"},
        ehlo=EHLO_AUTH,
        auth={"username": "u", "password": "pw", "mechanism": "PLAIN"},
    )
    assert result["outcome"] == "protocol_error"
    assert "challenge after the PLAIN" in result["summary"]
    assert "wrong user name" not in result["summary"]
    assert heard[-2:] == ["*", "QUIT"]


def test_postfix_vrfy_discloses_by_answering_unknown_names_differently(serve):
    result, _ = serve(
        {
            "VRFY postmaster": b"252 2.0.0 postmaster\r\n",
            "VRFY": b"550 5.1.1 <smtpcheck-no-such-user-7f3a9c>: Recipient address rejected\r\n",
        },
        probes=["vrfy"],
    )
    probe = result["probes"]["vrfy"]
    assert probe["result"] == "enabled"
    assert probe["unknown"]["class"] in ("unknown_user", "bad_address", "rejected")
    assert any(f["code"] == "vrfy_enabled" for f in result["findings"])


def test_vrfy_252_for_everything_discloses_nothing(serve):
    result, _ = serve({"VRFY": b"252 2.0.0 Cannot VRFY user\r\n"}, probes=["vrfy"])
    assert result["probes"]["vrfy"]["result"] == "disabled"


def test_a_554_greeting_is_permanent_not_for_now(serve):
    result, heard = serve({}, banner=b"554 5.3.2 mx.local.test no SMTP service here\r\n")
    assert result["outcome"] == "service_unavailable"
    assert result["reply"]["class"] == "service_refused"
    assert "for now" not in result["summary"] and "permanent" in result["summary"]
    assert heard == ["QUIT"]


def test_a_multi_line_banner_makes_a_one_line_finding(serve):
    result, _ = serve({}, banner=b"220-mx.local.test ESMTP\r\n220-second line\r\n220 third\r\n")
    banner_ok = next(f for f in result["findings"] if f["code"] == "banner_ok")
    assert "\n" not in banner_ok["message"]
    assert all("\n" not in f["message"] for f in result["findings"])


def test_garbage_makes_a_short_summary(scripted_server, check):
    server = scripted_server(lambda sock: sock.sendall(b"\x00\xff\x1b[31mHELLO\x07" * 30 + b"\r\n"))
    result = check(host=server.host, port=server.port, timeouts=FAST)
    assert result["outcome"] == "protocol_error"
    assert len(result["summary"]) < 200
    assert "\\\\" not in result["summary"]  # escaped once, not twice


def test_an_8bit_body_without_8bitmime_is_noted(serve):
    result, heard = serve(
        {},
        ehlo=b"250-mx.local.test\r\n250 PIPELINING\r\n",
        mail_from="checker@example.org",
        rcpt_to=["bob@local.test"],
        message={"body": "d\u00e9j\u00e0 vu\n"},
    )
    assert result["ok"] is True
    assert next(line for line in heard if line.startswith("MAIL")) == (
        "MAIL FROM:<checker@example.org>"
    )
    notes = [e["text"] for e in result["transcript"] if e["dir"] == "note"]
    assert "the message has 8-bit bytes and the server offers no 8BITMIME" in notes
