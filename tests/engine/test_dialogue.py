"""The engine against a real SMTP server: aiosmtpd with trustme certificates."""

from __future__ import annotations

import base64
import json
from email import message_from_bytes
from typing import Any

import pytest

from smtpcheck.report import render_text
from tests.smtp_servers import LOCAL_DOMAIN, USERS, TargetHandler

PASSWORD = USERS["alice"]
BOB = f"bob@{LOCAL_DOMAIN}"


def client_lines(result: dict[str, Any]) -> list[str]:
    return [e["text"] for e in result["transcript"] if e["dir"] == "client"]


def server_codes(result: dict[str, Any]) -> list[str]:
    return [e["text"][:3] for e in result["transcript"] if e["dir"] == "server"]


def test_plain_ehlo_reports_banner_and_keywords(smtp_target, check):
    target = smtp_target(tls="none")
    result = check(host=target.host, port=target.port, tls="none")

    assert result["ok"] is True
    assert result["outcome"] == "ok"
    assert result["stage"] == "ehlo"
    assert result["target"] == {
        "host": "127.0.0.1",
        "port": target.port,
        "address": "127.0.0.1",
        "addresses": ["127.0.0.1"],
        "source": "127.0.0.1",  # the worker's own address on this path
    }
    assert result["banner"] == {
        "code": 220,
        "text": "mail.local.test smtpcheck-test-target",
        "class": "accepted",
    }
    ehlo = result["ehlo"]
    assert ehlo["command"] == "EHLO" and ehlo["name"] == "checker.test"
    assert ehlo["size"] == 10 * 1024 * 1024
    assert set(ehlo["auth"]) == {"PLAIN", "LOGIN", "CRAM-MD5"}
    assert "8BITMIME" in ehlo["keywords"] and "SMTPUTF8" in ehlo["keywords"]
    assert client_lines(result) == ["EHLO checker.test", "QUIT"]
    assert server_codes(result)[-1] == "221"
    assert {"connect", "banner", "ehlo", "total"} <= set(result["timings"])
    notes = [e["text"] for e in result["transcript"] if e["dir"] == "note"]
    assert notes[0] == f"connecting to 127.0.0.1:{target.port}"
    times = [e["t_ms"] for e in result["transcript"]]
    assert times == sorted(times)
    json.dumps(result)  # the result is plain JSON


def test_never_speaks_before_the_banner(smtp_target, check):
    target = smtp_target(tls="none")
    result = check(host=target.host, port=target.port, stop_after="connect")
    assert result["ok"] is True and result["stage"] == "connect"
    assert client_lines(result) == []
    assert result["banner"] is None


def test_stop_after_banner_quits_politely(smtp_target, check):
    target = smtp_target(tls="none")
    result = check(host=target.host, port=target.port, stop_after="banner")
    assert result["ok"] is True and result["stage"] == "banner"
    assert client_lines(result) == ["QUIT"]
    assert result["ehlo"] is None


def test_starttls_auto_upgrades_and_asks_ehlo_again(smtp_target, check):
    target = smtp_target(tls="starttls")
    result = check(host=target.host, port=target.port)

    assert result["ok"] is True, result["summary"]
    assert result["stage"] == "tls"
    tls = result["tls"]
    assert tls["mode"] == "starttls" and tls["established"] is True
    assert tls["version"] in ("TLSv1.2", "TLSv1.3")
    assert tls["verified"] is True and tls["verify_error"] is None
    assert tls["sni"] is None  # an IP literal gets no SNI
    assert "IP:127.0.0.1" in tls["certificate"]["sans"]
    assert tls["certificate"]["issuer"].startswith("OU=Testing CA")
    assert tls["certificate"]["not_after"].endswith("Z")
    # RFC 3207: what was learnt before TLS is forgotten and asked again.
    assert result["ehlo"]["before_tls"]["starttls"] is True
    assert result["ehlo"]["starttls"] is False
    assert client_lines(result) == ["EHLO checker.test", "STARTTLS", "EHLO checker.test", "QUIT"]
    tls_flags = [e.get("tls", False) for e in result["transcript"] if e["dir"] == "client"]
    assert tls_flags == [False, False, True, True]
    text = render_text(result)
    assert "~> EHLO checker.test" in text and "-> STARTTLS" in text
    assert "<~ 221" in text


def test_starttls_required_but_not_offered(smtp_target, check):
    target = smtp_target(tls="none")
    result = check(host=target.host, port=target.port, tls="starttls")
    assert result["ok"] is False
    assert result["outcome"] == "starttls_unavailable"
    assert result["stage"] == "tls"
    assert "does not offer STARTTLS" in result["summary"]
    assert client_lines(result)[-1] == "QUIT"


def test_starttls_auto_not_offered_goes_on_in_plain_text(smtp_target, check):
    target = smtp_target(tls="none")
    result = check(host=target.host, port=target.port, tls="auto")
    assert result["ok"] is True
    assert result["tls"]["offered"] is False
    assert "no STARTTLS offered" in result["summary"]


def test_implicit_tls(smtp_target, check):
    target = smtp_target(tls="implicit")
    result = check(host=target.host, port=target.port, tls="implicit")
    assert result["ok"] is True, result["summary"]
    assert result["tls"]["mode"] == "implicit"
    assert result["tls"]["verified"] is True
    # The banner itself came inside TLS.
    banner = next(e for e in result["transcript"] if e["dir"] == "server")
    assert banner["tls"] is True and banner["text"].startswith("220 ")


def test_certificate_name_mismatch_is_reported_and_fails_only_with_tls_verify(smtp_target, check):
    target = smtp_target(tls="starttls")
    # "localhost" resolves to 127.0.0.1 but the certificate names mail.local.test and 127.0.0.1.
    relaxed = check(host="localhost", port=target.port, ip_version=4)
    assert relaxed["ok"] is True
    assert relaxed["tls"]["verified"] is False
    assert "not valid for localhost" in relaxed["tls"]["verify_error"]
    assert relaxed["tls"]["sni"] == "localhost"

    strict = check(host="localhost", port=target.port, ip_version=4, tls_verify=True)
    assert strict["ok"] is False
    assert strict["outcome"] == "tls_untrusted"
    assert "not valid for localhost" in strict["summary"]
    assert client_lines(strict)[-1] == "QUIT"  # still polite, inside TLS


def test_untrusted_issuer(smtp_target, check, settings):
    target = smtp_target(tls="implicit")
    result = check(
        host=target.host,
        port=target.port,
        tls="implicit",
        tls_verify=True,
        settings_=settings.replace(ca_file=None),
    )
    assert result["outcome"] == "tls_untrusted"
    assert "trusted root" in result["tls"]["verify_error"]


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN", "CRAM-MD5"])
def test_auth_success_keeps_secrets_out_of_the_result(smtp_target, check, mechanism):
    target = smtp_target(tls="starttls")
    result = check(
        host=target.host,
        port=target.port,
        auth={"username": "alice", "password": PASSWORD, "mechanism": mechanism},
    )
    assert result["ok"] is True, result["summary"]
    assert result["stage"] == "auth"
    assert result["auth"]["mechanism"] == mechanism
    assert result["auth"]["accepted"] is True and result["auth"]["code"] == 235
    dumped = json.dumps(result)
    for secret in secret_forms("alice", PASSWORD):
        assert secret not in dumped
    assert f"AUTH {mechanism}" in " ".join(client_lines(result))
    if mechanism == "LOGIN":
        assert client_lines(result)[3:6] == ["AUTH LOGIN", "****", "****"]
        # the server's prompts stay readable
        assert any(e["text"].startswith("334 ") for e in result["transcript"])
    if mechanism == "PLAIN":
        assert "AUTH PLAIN ****" in client_lines(result)


def secret_forms(username: str, password: str) -> list[str]:
    plain = f"\0{username}\0{password}".encode()
    return [
        password,
        base64.b64encode(password.encode()).decode(),
        base64.b64encode(plain).decode(),
    ]


def test_auth_auto_picks_plain_first(smtp_target, check):
    target = smtp_target(tls="starttls")
    result = check(
        host=target.host, port=target.port, auth={"username": "alice", "password": PASSWORD}
    )
    assert result["auth"]["mechanism"] == "PLAIN"  # DESIGN.md: PLAIN, LOGIN, then CRAM-MD5
    assert [a["mechanism"] for a in result["auth"]["attempts"]] == ["PLAIN"]
    assert result["ok"] is True


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN", "CRAM-MD5"])
def test_auth_failure(smtp_target, check, mechanism):
    target = smtp_target(tls="starttls")
    result = check(
        host=target.host,
        port=target.port,
        auth={"username": "alice", "password": "wrong-password", "mechanism": mechanism},
    )
    assert result["ok"] is False
    assert result["outcome"] == "auth_failed"
    assert result["stage"] == "auth"
    assert result["auth"]["accepted"] is False and result["auth"]["code"] == 535
    assert "refused the credentials" in result["summary"]
    assert "wrong-password" not in json.dumps(result)
    assert client_lines(result)[-1] == "QUIT"


def test_auth_unavailable(smtp_target, check):
    target = smtp_target(tls="none", auth=False)
    result = check(
        host=target.host,
        port=target.port,
        tls="none",
        auth={"username": "alice", "password": PASSWORD},
    )
    assert result["outcome"] == "auth_unavailable"
    assert "no AUTH in the EHLO reply" in result["summary"]


def test_password_given_apart_from_the_request(smtp_target, check):
    """The worker path: the stored request says ****, the real one comes sealed."""
    target = smtp_target(tls="starttls")
    result = check(
        host=target.host,
        port=target.port,
        auth={"username": "alice", "password": "****", "mechanism": "PLAIN"},
        password=PASSWORD,
    )
    assert result["auth"]["accepted"] is True


def test_relay_denied_then_rset_and_quit(smtp_target, check):
    target = smtp_target(tls="none")
    result = check(
        host=target.host,
        port=target.port,
        tls="none",
        mail_from="checker@example.org",
        rcpt_to=["someone@example.com"],
    )
    assert result["ok"] is False
    assert result["outcome"] == "relay_denied"
    assert result["stage"] == "rcpt"
    assert result["rcpt"] == [
        {
            "to": "someone@example.com",
            "code": 554,
            "text": "5.7.1 <someone@example.com>: Relay access denied",
            "class": "relay",
            "accepted": False,
        }
    ]
    assert "refuses to relay" in result["summary"]
    assert client_lines(result)[-2:] == ["RSET", "QUIT"]


def test_every_recipient_reply_is_kept(smtp_target, check):
    target = smtp_target(tls="none")
    result = check(
        host=target.host,
        port=target.port,
        tls="none",
        mail_from="checker@example.org",
        rcpt_to=[BOB, f"nobody@{LOCAL_DOMAIN}"],
    )
    assert result["outcome"] == "recipient_rejected"
    assert [r["accepted"] for r in result["rcpt"]] == [True, False]
    assert result["rcpt"][1]["code"] == 550
    assert "the mailbox does not exist there" in result["summary"]
    assert result["reply"] == {
        "code": 550,
        "enhanced": "5.1.1",
        "text": f"5.1.1 <nobody@{LOCAL_DOMAIN}>: Recipient address rejected: User unknown",
        "class": "unknown_user",
    }
    assert result["data"] is None


def test_greylisting_is_a_temporary_failure(smtp_target, check):
    target = smtp_target(tls="none", handler=TargetHandler(greylist=True))
    result = check(
        host=target.host, port=target.port, tls="none", mail_from="a@example.org", rcpt_to=[BOB]
    )
    assert result["outcome"] == "temporary_failure"
    assert result["rcpt"][0]["code"] == 450
    assert "retry later" in result["summary"]


def test_sender_rejected(smtp_target, check):
    handler = TargetHandler(reject_senders={"spammer@example.org"})
    target = smtp_target(tls="none", handler=handler)
    result = check(host=target.host, port=target.port, tls="none", mail_from="spammer@example.org")
    assert result["outcome"] == "sender_rejected"
    assert result["stage"] == "mail"
    assert result["mail"]["code"] == 550


def test_null_sender(smtp_target, check):
    target = smtp_target(tls="none")
    result = check(host=target.host, port=target.port, tls="none", mail_from="")
    assert result["ok"] is True and result["stage"] == "mail"
    assert "MAIL FROM:<>" in client_lines(result)
    assert result["mail"]["from"] == ""


def test_tls_required_by_policy(smtp_target, check):
    target = smtp_target(tls="starttls_required")
    result = check(
        host=target.host, port=target.port, tls="none", mail_from="a@example.org", rcpt_to=[BOB]
    )
    assert result["outcome"] == "tls_required"
    assert "policy, not a fault" in result["summary"]
    # and with STARTTLS the same request passes
    again = check(host=target.host, port=target.port, mail_from="a@example.org", rcpt_to=[BOB])
    assert again["ok"] is True, again["summary"]


def test_auth_required_by_policy(smtp_target, check):
    target = smtp_target(tls="none", auth_required=True)
    result = check(host=target.host, port=target.port, tls="none", mail_from="a@example.org")
    assert result["outcome"] == "auth_required"
    assert "requires authentication" in result["summary"]


def test_message_is_built_and_received_intact(smtp_target, check):
    target = smtp_target(tls="starttls")
    body = "Hello,\n.leading dot line\n..two dots\nbye\n"
    result = check(
        host=target.host,
        port=target.port,
        mail_from="checker@example.org",
        rcpt_to=[BOB],
        message={"subject": "Ping ✓", "body": body, "headers": {"X-Test": "yes"}},
    )
    assert result["ok"] is True, result["summary"]
    assert result["stage"] == "data"
    assert result["data"]["accepted"] is True and result["data"]["code"] == 250
    assert "-> ..leading dot line" not in render_text(result)  # inside TLS: ~>
    assert "~> ..leading dot line" in render_text(result)
    [received] = target.received
    assert received.mail_from == "checker@example.org" and received.rcpt_tos == [BOB]
    msg = message_from_bytes(received.data)
    assert msg["X-Smtpcheck-Id"] == "test-check"
    assert msg["X-Test"] == "yes"
    assert msg["To"] == BOB and msg["From"] == "checker@example.org"
    assert msg["Date"] and msg["Message-ID"]
    assert msg.get_payload(decode=True).decode().replace("\r\n", "\n") == body


def test_raw_data_is_sent_with_crlf_and_dot_stuffing(smtp_target, check):
    target = smtp_target(tls="none")
    data = "Subject: raw\nFrom: a@example.org\n\n.\n.x\nend"
    result = check(
        host=target.host,
        port=target.port,
        tls="none",
        mail_from="a@example.org",
        rcpt_to=[BOB],
        data=data,
    )
    assert result["ok"] is True, result["summary"]
    [received] = target.received
    # aiosmtpd un-stuffs: what it stored is the message as given, with CRLF ends
    assert received.data == b"Subject: raw\r\nFrom: a@example.org\r\n\r\n.\r\n.x\r\nend\r\n"


def test_data_rejected(smtp_target, check):
    target = smtp_target(tls="none", handler=TargetHandler(reject_data=True))
    result = check(
        host=target.host,
        port=target.port,
        tls="none",
        mail_from="a@example.org",
        rcpt_to=[BOB],
        message={"subject": "x"},
    )
    assert result["outcome"] == "data_rejected"
    assert result["data"]["code"] == 554


def test_stop_after_mail_does_not_send_recipients(smtp_target, check):
    target = smtp_target(tls="none")
    result = check(
        host=target.host,
        port=target.port,
        tls="none",
        mail_from="a@example.org",
        rcpt_to=[BOB],
        stop_after="mail",
    )
    assert result["ok"] is True and result["stage"] == "mail"
    assert result["rcpt"] == []
    assert client_lines(result)[-2:] == ["RSET", "QUIT"]
