"""The dialogue without a socket: server bytes in, client bytes out."""

from __future__ import annotations

import ast
import base64
from pathlib import Path

import pytest

from smtpcheck.contract import Outcome, ReplyClass
from workers.dialogue import (
    MOVES,
    Close,
    Dialogue,
    Handshake,
    Note,
    ReadGreeting,
    Script,
    Send,
    SendMessage,
    Session,
    State,
    a_label_address,
    auth_candidates,
    queue_id,
)
from workers.errors import Canceled, ConnectionClosed, LocalProtocolError
from workers.protocol import parse_reply

ROOT = Path(__file__).resolve().parents[2]
EHLO_ALL = (
    b"250-mx.example.org\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250-STARTTLS\r\n"
    b"250-AUTH PLAIN LOGIN CRAM-MD5\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n"
)
EHLO_PLAIN = b"250-mx.example.org\r\n250-SIZE 1000\r\n250 AUTH PLAIN LOGIN CRAM-MD5\r\n"
QUEUED = b"250 2.0.0 Ok: queued as 4F2A1\r\n"
BYE = b"221 bye\r\n"
TLS_FACTS = {"established": True, "version": "TLSv1.3", "cipher": "X", "verified": True}


def play(dialogue: Dialogue, server: list[bytes]) -> list[str]:
    """Answer each action with the next server reply; what the client said."""
    said: list[str] = []
    replies = iter(server)
    while True:
        action = dialogue.next_action()
        if isinstance(action, Close):
            return said
        if isinstance(action, Note):
            continue
        if isinstance(action, Handshake):
            said.append(f"<handshake {action.mode}>")
            dialogue.tls_established(dict(TLS_FACTS))
            continue
        if isinstance(action, Send):
            said.append(action.line.decode().rstrip("\r\n"))
        elif isinstance(action, SendMessage):
            said.append(f"<message {len(action.payload)} bytes>")
        else:
            assert isinstance(action, ReadGreeting)
        data = next(replies, None)
        if data is None:
            dialogue.abort(ConnectionClosed("the server closed the connection"))
        else:
            dialogue.receive_reply(parse_reply(data))


def dialogue(**script) -> Dialogue:
    script.setdefault("helo", "checker.test")
    return Dialogue(Script(**script))


def test_plain_ehlo_then_quit():
    d = dialogue(stop_after="ehlo", tls="none")
    said = play(d, [b"220 mx ESMTP\r\n", EHLO_ALL, b"221 bye\r\n"])
    assert said == ["EHLO checker.test", "QUIT"]
    assert d.failure is None and d.stage == "ehlo"
    assert d.facts["ehlo"]["size"] == 10240000


def test_starttls_then_ehlo_again():
    d = dialogue(stop_after="tls", tls="starttls")
    said = play(d, [b"220 mx\r\n", EHLO_ALL, b"220 go ahead\r\n", EHLO_ALL, b"221 bye\r\n"])
    assert said == [
        "EHLO checker.test",
        "STARTTLS",
        "<handshake starttls>",
        "EHLO checker.test",
        "QUIT",
    ]
    assert d.facts["ehlo"]["before_tls"]["starttls"] is True


def test_454_at_starttls_is_starttls_unavailable_and_still_quits():
    d = dialogue(stop_after="tls", tls="auto")
    said = play(d, [b"220 mx\r\n", EHLO_ALL, b"454 4.7.0 TLS not available\r\n", b"221 bye\r\n"])
    assert said[-1] == "QUIT"
    assert d.failure.outcome is Outcome.STARTTLS_UNAVAILABLE
    assert d.failure.reply_class is ReplyClass.TEMPORARY


def test_421_at_mail_ends_the_session_without_quit():
    d = dialogue(stop_after="mail", tls="none", mail_from="a@example.org")
    said = play(d, [b"220 mx\r\n", EHLO_PLAIN, b"421 4.7.0 closing\r\n"])
    assert said == ["EHLO checker.test", "MAIL FROM:<a@example.org> "[:-1]]
    assert d.failure.outcome is Outcome.SERVICE_UNAVAILABLE
    assert d.session.state is State.CLOSED


def test_credentials_never_go_out_in_plain_text():
    d = dialogue(stop_after="auth", tls="auto", username="u", password="p")
    said = play(d, [b"220 mx\r\n", EHLO_PLAIN, b"221 bye\r\n"])
    assert said == ["EHLO checker.test", "QUIT"]
    assert d.failure.outcome is Outcome.STARTTLS_UNAVAILABLE


def test_plain_text_credentials_when_allowed():
    d = dialogue(stop_after="auth", tls="auto", username="u", password="p", allow_plaintext=True)
    said = play(d, [b"220 mx\r\n", EHLO_PLAIN, b"235 ok\r\n", b"221 bye\r\n"])
    assert said[1].startswith("AUTH PLAIN ")
    assert d.failure is None and d.facts["auth"]["accepted"] is True


def test_auto_falls_back_once_when_the_first_mechanism_is_refused():
    d = dialogue(stop_after="auth", tls="none", username="u", password="p", mechanism="auto")
    ehlo = b"250-mx\r\n250 AUTH CRAM-MD5 LOGIN\r\n"
    challenge = base64.b64encode(b"<1.2@mx>")
    said = play(
        d,
        [
            b"220 mx\r\n",
            ehlo,
            b"334 VXNlcm5hbWU6\r\n",
            b"334 UGFzc3dvcmQ6\r\n",
            b"535 5.7.8 bad\r\n",
            b"334 " + challenge + b"\r\n",
            b"235 2.7.0 ok\r\n",
            b"221 bye\r\n",
        ],
    )
    assert said[1] == "AUTH LOGIN" and said[4] == "AUTH CRAM-MD5"
    assert d.failure is None
    assert [a["mechanism"] for a in d.facts["auth"]["attempts"]] == ["LOGIN", "CRAM-MD5"]
    assert d.facts["auth"]["mechanism"] == "CRAM-MD5"


def test_a_challenge_after_plain_is_a_protocol_error_that_later_replies_do_not_overwrite():
    d = dialogue(stop_after="auth", tls="none", username="u", password="p", mechanism="PLAIN")
    said = play(d, [b"220 mx\r\n", EHLO_PLAIN, b"334 \r\n", b"501 canceled\r\n", b"221 bye\r\n"])
    assert said[2:] == ["*", "QUIT"]
    assert d.failure.outcome is Outcome.PROTOCOL_ERROR


def test_envelope_follows_the_ehlo():
    message = "Subject: \u00e9t\u00e9\r\n\r\ncaf\u00e9\r\n".encode()
    d = dialogue(
        stop_after="data",
        tls="none",
        mail_from="s@b\u00fccher.example",
        rcpt_to=["r@example.org"],
        message=message,
    )
    said = play(
        d,
        [b"220 mx\r\n", EHLO_ALL, b"250 ok\r\n", b"250 ok\r\n", b"354 go\r\n", QUEUED, BYE],
    )
    assert said[1] == "MAIL FROM:<s@xn--bcher-kva.example> BODY=8BITMIME SIZE=28"
    assert d.facts["data"]["queue_id"] == "4F2A1"


def test_non_ascii_address_without_smtputf8_sends_nothing():
    d = dialogue(
        stop_after="rcpt", tls="none", mail_from="j\u00f6rg@example.org", rcpt_to=["a@b.c"]
    )
    said = play(d, [b"220 mx\r\n", EHLO_PLAIN, b"221 bye\r\n"])
    assert said == ["EHLO checker.test", "QUIT"]
    assert d.failure.outcome is Outcome.SMTPUTF8_UNAVAILABLE


def test_non_ascii_address_with_smtputf8():
    d = dialogue(stop_after="mail", tls="none", mail_from="j\u00f6rg@example.org")
    said = play(d, [b"220 mx\r\n", EHLO_ALL, b"250 ok\r\n", b"250 ok\r\n", b"221 bye\r\n"])
    assert said[1] == "MAIL FROM:<j\u00f6rg@example.org> SMTPUTF8"
    assert said[-2:] == ["RSET", "QUIT"]


def test_first_refused_recipient_decides_and_the_others_are_kept():
    d = dialogue(stop_after="rcpt", tls="none", mail_from="", rcpt_to=["a@x", "b@x", "c@x"])
    replies = [b"220 mx\r\n", EHLO_PLAIN, b"250 ok\r\n", b"250 ok\r\n"]
    replies += [
        b"552 5.2.2 mailbox full\r\n",
        b"550 5.1.1 unknown\r\n",
        b"250 ok\r\n",
        b"221 x\r\n",
    ]
    said = play(d, replies)
    assert said[-2:] == ["RSET", "QUIT"]
    assert d.failure.outcome is Outcome.MAILBOX_UNAVAILABLE and d.failure.subject == "b@x"
    assert [r["class"] for r in d.facts["rcpt"]] == ["accepted", "mailbox_full", "unknown_user"]


def test_the_connection_closing_mid_dialogue_is_connection_closed():
    d = dialogue(stop_after="mail", tls="none", mail_from="a@b.c")
    said = play(d, [b"220 mx\r\n", EHLO_PLAIN])
    assert said == ["EHLO checker.test", "MAIL FROM:<a@b.c>"]
    assert d.failure.outcome is Outcome.CONNECTION_CLOSED


@pytest.mark.parametrize("canceled", [Canceled])  # workers.cancel raises it too
def test_canceled_says_quit_where_it_can(canceled):
    d = dialogue(stop_after="mail", tls="none", mail_from="a@b.c")
    assert isinstance(d.next_action(), ReadGreeting)
    d.receive_reply(parse_reply(b"220 mx\r\n"))
    assert isinstance(d.next_action(), Send)
    d.abort(canceled("the caller canceled the check"))
    action = d.next_action()
    assert isinstance(action, Send) and action.line == b"QUIT\r\n"
    assert d.failure.outcome is Outcome.CANCELED


def test_implicit_tls_handshakes_before_the_greeting():
    d = dialogue(stop_after="ehlo", tls="implicit", implicit_tls=True)
    said = play(d, [b"220 mx\r\n", EHLO_PLAIN, b"221 bye\r\n"])
    assert said[0] == "<handshake implicit>"
    assert d.session.tls is True


# -- the state table -----------------------------------------------------------


def test_nothing_may_be_sent_before_the_greeting():
    session = Session()
    for move in ("EHLO", "HELO", "QUIT", "NOOP", "MAIL", "STARTTLS"):
        with pytest.raises(LocalProtocolError, match="in state connected"):
            session.send(move)


@pytest.mark.parametrize(
    ("state", "move"),
    [
        (State.GREETED, "MAIL"),
        (State.MAIL, "MAIL"),
        (State.MAIL, "DATA"),
        (State.TLS_PENDING, "EHLO"),
        (State.TLS_PENDING, "QUIT"),
        (State.SASL, "MAIL"),
        (State.DATA, "QUIT"),
        (State.CLOSED, "QUIT"),
    ],
)
def test_a_move_not_in_the_table_raises(state, move):
    with pytest.raises(LocalProtocolError):
        Session(state=state).send(move)


def test_a_whole_transaction_through_the_table():
    session = Session()
    for move, reply_class, state in [
        ("greeting", ReplyClass.ACCEPTED, State.GREETED),
        ("EHLO", ReplyClass.ACCEPTED, State.READY),
        ("STARTTLS", ReplyClass.ACCEPTED, State.TLS_PENDING),
        ("handshake", ReplyClass.ACCEPTED, State.GREETED),
        ("EHLO", ReplyClass.ACCEPTED, State.READY),
        ("AUTH", ReplyClass.CONTINUE, State.SASL),
        ("response", ReplyClass.ACCEPTED, State.READY),
        ("MAIL", ReplyClass.ACCEPTED, State.MAIL),
        ("RCPT", ReplyClass.UNKNOWN_USER, State.MAIL),
        ("RCPT", ReplyClass.ACCEPTED, State.RCPT),
        ("DATA", ReplyClass.CONTINUE, State.DATA),
        ("message", ReplyClass.ACCEPTED, State.READY),
        ("QUIT", ReplyClass.ACCEPTED, State.CLOSED),
    ]:
        session.send(move)
        session.answered(reply_class)
        assert session.state is state, move
    assert session.tls and session.authenticated
    with pytest.raises(LocalProtocolError):
        Session(state=State.READY, tls=True).send("STARTTLS")
    with pytest.raises(LocalProtocolError):
        Session(state=State.READY, authenticated=True).send("AUTH")


def test_every_state_has_a_way_out():
    reachable = {state for (state, _), nexts in MOVES.items() for state in (state, *nexts) if state}
    assert set(State) <= reachable
    for state in set(State) - {State.CLOSED}:
        assert any(s is state for s, _ in MOVES), state


def test_helpers():
    assert auth_candidates(("CRAM-MD5", "LOGIN", "PLAIN"), "auto") == ["PLAIN", "LOGIN", "CRAM-MD5"]
    assert auth_candidates(("login",), "LOGIN") == ["LOGIN"]
    assert auth_candidates(("PLAIN",), "CRAM-MD5") == []
    assert a_label_address("bob@b\u00fccher.example") == "bob@xn--bcher-kva.example"
    assert a_label_address("j\u00f6rg@example.org") == "j\u00f6rg@example.org"
    assert queue_id("2.0.0 Ok: queued as 4F2A1") == "4F2A1"
    assert queue_id("OK id=1abcde-000123-XY") == "1abcde-000123-XY"
    assert queue_id("ok") is None


# -- layer rules ---------------------------------------------------------------

PURE = {"workers/protocol.py", "workers/dialogue.py", "workers/verdict.py"}
IO_MODULES = {"socket", "ssl", "time", "logging", "select", "selectors", "asyncio", "threading"}


def imports_of(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def test_layer_rules():
    broken = []
    for path in sorted(ROOT.glob("service/**/*.py")):
        broken += [f"{path}: {m}" for m in imports_of(path) if m.split(".")[0] == "workers"]
    for path in sorted(ROOT.glob("workers/**/*.py")):
        broken += [
            f"{path}: {m}" for m in imports_of(path) if m.split(".")[0] in ("flask", "service")
        ]
    for name in PURE:
        path = ROOT / name
        broken += [f"{name}: {m}" for m in imports_of(path) if m.split(".")[0] in IO_MODULES]
    # One host's check and a domain's are two nouns: workers.engine picks one,
    # and neither imports the other.
    for name, other in (("check", "domain"), ("domain", "check")):
        tree = ast.parse((ROOT / "workers" / f"{name}.py").read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 0:
                names = {node.module, *(f"{node.module}.{alias.name}" for alias in node.names)}
            elif isinstance(node, ast.Import):
                names = {alias.name for alias in node.names}
            else:
                continue
            if f"workers.{other}" in names:
                broken.append(f"workers/{name}.py imports workers.{other}")
    assert broken == []
