"""Probes: short extra dialogues a caller can ask for, each on a connection
of its own to the very address the check dialled, recorded in the same
transcript. None of them ever sends DATA."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from workers import protocol
from workers.connection import Connection
from workers.errors import CheckAborted
from workers.protocol import Reply

# Outside sender and outside recipient: RFC 2606 names nobody owns.
RELAY_SENDER = "smtpcheck-relay-probe@example.org"
RELAY_RECIPIENT = "smtpcheck-relay-probe@example.net"


Upgrade = Callable[[Connection], None]


def _hello(conn: Connection, helo: str) -> Reply:
    reply = conn.command("EHLO", helo)
    if reply.permanent:
        reply = conn.command("HELO", helo)
    return reply


def _open(
    conn_factory: Callable[[], Connection], helo: str, upgrade: Upgrade | None
) -> tuple[Connection, Reply]:
    """A new session: banner, EHLO, and STARTTLS when ``upgrade`` is given and
    the server offers it (as a real sender, or abuser, would)."""
    conn = conn_factory()
    banner = conn.read_banner()
    if banner.code != 220:
        return conn, banner
    reply = _hello(conn, helo)
    if upgrade is not None and reply.positive and "STARTTLS" in protocol.parse_ehlo(reply):
        starttls = conn.command("STARTTLS")
        if starttls.code == 220:
            upgrade(conn)
            reply = _hello(conn, helo)
    return conn, reply


def _close(conn: Connection) -> None:
    try:
        if conn.state.in_transaction:
            conn.command("RSET")
        if conn.state.state not in (protocol.State.CONNECTED, protocol.State.CLOSED):
            conn.command("QUIT")
    except (CheckAborted, OSError):
        pass
    finally:
        conn.close()


def _said(reply: Reply) -> dict[str, Any]:
    return {"code": reply.code, "text": reply.text}


def open_relay(conn: Connection) -> dict[str, Any]:
    """From an outside sender to an outside recipient, without AUTH."""
    mail = conn.envelope("MAIL", protocol.mail_from(RELAY_SENDER))
    if not mail.positive:
        return {"result": "inconclusive", "detail": "outside sender refused", "mail": _said(mail)}
    rcpt = conn.envelope("RCPT", protocol.rcpt_to(RELAY_RECIPIENT))
    if rcpt.positive:
        verdict, detail = "open", f"accepted a recipient at example.net from {RELAY_SENDER}"
    elif rcpt.transient:
        verdict, detail = "inconclusive", "the recipient was deferred, not refused"
    else:
        verdict, detail = "closed", "relaying to an outside domain refused"
    return {"result": verdict, "detail": detail, "mail": _said(mail), "rcpt": _said(rcpt)}


def starttls_required(conn: Connection) -> dict[str, Any]:
    """Is MAIL FROM refused before STARTTLS?"""
    mail = conn.envelope("MAIL", protocol.mail_from(RELAY_SENDER))
    if mail.positive:
        return {
            "result": "not_required",
            "detail": "MAIL FROM accepted in plain text",
            **_said(mail),
        }
    if mail.code == 530 or "tls" in mail.text.lower():
        return {"result": "required", "detail": "MAIL FROM refused until STARTTLS", **_said(mail)}
    return {
        "result": "inconclusive",
        "detail": "MAIL FROM refused for another reason",
        **_said(mail),
    }


def _verb_probe(verb: str) -> Callable[[Connection], dict[str, Any]]:
    def probe(conn: Connection) -> dict[str, Any]:
        reply = conn.command(verb, "postmaster")
        if reply.code in (250, 251):
            verdict = "enabled"
        elif reply.code == 252 or reply.code in (500, 502, 504, 550, 551, 553):
            verdict = "disabled"  # 252: "cannot verify, will accept" discloses nothing
        else:
            verdict = "inconclusive"
        return {"result": verdict, **_said(reply)}

    return probe


_RUNNERS: dict[str, Callable[[Connection], dict[str, Any]]] = {
    "open_relay": open_relay,
    "starttls_required": starttls_required,
    "vrfy": _verb_probe("VRFY"),
    "expn": _verb_probe("EXPN"),
}


def run_probe(
    name: str, conn_factory: Callable[[], Connection], helo: str, upgrade: Upgrade | None
) -> dict[str, Any]:
    """Run one probe; a failure to talk is reported, never raised.

    ``starttls_required`` always stays in plain text: that is its question.
    """
    conn = None
    try:
        conn, hello = _open(conn_factory, helo, None if name == "starttls_required" else upgrade)
        if not hello.positive:
            return {"result": "inconclusive", "detail": "no session: " + str(hello)}
        return _RUNNERS[name](conn)
    except CheckAborted as exc:
        return {"result": "inconclusive", "detail": f"{exc.outcome}: {exc}"}
    finally:
        if conn is not None:
            _close(conn)
