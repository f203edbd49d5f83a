"""Probes: short extra dialogues a caller can ask for, each on a connection
of its own to the very address the check dialled, recorded in the same
transcript. Each is a small Dialogue (the same state table, the same
verdicts); none of them ever sends DATA."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from smtpcheck.contract import Outcome, ReplyClass
from workers.connection import Connection
from workers.dialogue import Dialogue, Play, Script, SendRaw, a_label_address
from workers.driver import Handshaker, pump
from workers.errors import CheckAborted
from workers.protocol import Reply, command, mail_from, rcpt_to
from workers.verdict import Step, Verdict, judge

# Outside sender and outside recipient: RFC 2606 names nobody owns.
RELAY_SENDER = "smtpcheck-relay-probe@example.org"
RELAY_RECIPIENT = "smtpcheck-relay-probe@example.net"
#: A name no server has: what VRFY/EXPN say about it, beside what they say
#: about postmaster (which every server has), tells disclosure apart.
UNKNOWN_NAME = "smtpcheck-no-such-user-7f3a9c"

#: The non-standard ends of DATA the smuggling probe sends (SMTP smuggling,
#: CVE-2023-51764/51765/51766), each after a message of its own, on its own
#: connection. A server that takes one as the end of the message lets a
#: sender hide a second message inside the first.
TERMINATORS = {"<LF>.<LF>": b"\n.\n", "<LF>.<CR><LF>": b"\n.\r\n", "<CR>.<CR>": b"\r.\r"}
#: How long a server may take to answer a bare terminator before the probe
#: reads its silence as "still reading the message".
SMUGGLING_WAIT = 5.0
#: The proper end of data, sent when the server kept reading: the probe's
#: own message then ends normally, and nothing else is ever sent inside it.
END_OF_DATA = b"\r\n.\r\n"

_GOES_ON = (ReplyClass.ACCEPTED, ReplyClass.CANNOT_VERIFY)
_UNKNOWN = (ReplyClass.UNKNOWN_USER, ReplyClass.BAD_ADDRESS, ReplyClass.REJECTED)


def _said(reply: Reply, verdict: Verdict) -> dict[str, Any]:
    return {"code": reply.code, "text": reply.text, "class": str(verdict.reply_class)}


class Probe(Dialogue):
    """Greeting, EHLO, STARTTLS when asked and offered, then the probe's moves."""

    def __init__(
        self,
        name: str,
        helo: str,
        *,
        starttls: bool,
        implicit_tls: bool,
        envelope: tuple[str, str] | None = None,
        terminator: str | None = None,
        wait: float | None = None,
    ) -> None:
        super().__init__(
            Script(
                helo=helo,
                stop_after="tls",
                tls="auto" if starttls else "none",
                implicit_tls=implicit_tls,
            )
        )
        self.name = name
        self.envelope = envelope  # (sender, recipient): the smuggling probe's own message
        self.terminator = terminator
        self.wait = SMUGGLING_WAIT if wait is None else wait  # read here: tests shorten it
        self.finding: dict[str, Any] = {"result": "inconclusive", "detail": "no session"}

    def _stages(self) -> Play:
        if self.script.implicit_tls:
            yield from self._handshake("implicit")
        self.stage = "banner"
        yield from self._greeting()
        if self.failure is None:
            self.stage = "ehlo"
            yield from self._hello()
        if self.failure is None and self.script.tls != "none":
            self.stage = "tls"
            yield from self._starttls()
        if self.failure is not None:
            reply = self.failure.reply
            shown = f"{reply.code} {reply.text}" if reply else self.failure.detail
            self.finding = {"result": "inconclusive", "detail": f"no session: {shown}"}
            return
        self.stage = "mail"
        yield from _MOVES[self.name](self)

    def _aborted(self, exc: CheckAborted) -> None:
        super()._aborted(exc)
        self.finding = {"result": "inconclusive", "detail": f"{exc.outcome}: {exc}"}

    # -- the probes ------------------------------------------------------

    def open_relay(self) -> Play:
        """From an outside sender to an outside recipient, without AUTH."""
        mail, verdict = yield from self._send("MAIL", Step.MAIL, mail_from(RELAY_SENDER))
        if verdict.outcome is not None:
            self.finding = {
                "result": "inconclusive",
                "detail": "outside sender refused",
                "mail": _said(mail, verdict),
            }
            return
        rcpt, judged = yield from self._send("RCPT", Step.RCPT, rcpt_to(RELAY_RECIPIENT))
        if judged.outcome is None:
            result, detail = "open", f"accepted a recipient at example.net from {RELAY_SENDER}"
        elif judged.outcome in (Outcome.TEMPORARY_FAILURE, Outcome.SERVICE_UNAVAILABLE):
            result, detail = "inconclusive", "the recipient was deferred, not refused"
        else:
            result, detail = "closed", "relaying to an outside domain refused"
        self.finding = {
            "result": result,
            "detail": detail,
            "mail": _said(mail, verdict),
            "rcpt": _said(rcpt, judged),
        }

    def starttls_required(self) -> Play:
        """Is MAIL FROM refused before STARTTLS?"""
        mail, verdict = yield from self._send("MAIL", Step.MAIL, mail_from(RELAY_SENDER))
        if verdict.outcome is None:
            result, detail = "not_required", "MAIL FROM accepted in plain text"
        elif verdict.reply_class is ReplyClass.TLS_REQUIRED:
            result, detail = "required", "MAIL FROM refused until STARTTLS"
        else:
            result, detail = "inconclusive", "MAIL FROM refused for another reason"
        self.finding = {"result": result, "detail": detail, **_said(mail, verdict)}

    def disclosure(self) -> Play:
        """VRFY or EXPN of postmaster, then of a name nobody has: a server
        that answers them differently tells existing names from unknown ones
        (Postfix: 252 for a real user, 550 for an unknown one). 252 alone is
        "cannot verify"."""
        verb = self.name.upper()
        step = Step.VRFY if verb == "VRFY" else Step.EXPN
        known, kv = yield from self._send(verb, step, command(verb, "postmaster"))
        unknown, uv = yield from self._send(verb, step, command(verb, UNKNOWN_NAME))
        pair = (kv.reply_class, uv.reply_class)
        if kv.reply_class in _GOES_ON and uv.reply_class in _UNKNOWN:
            result = "enabled"
            detail = (
                f"{verb} tells names apart: {known.code} for postmaster, {unknown.code} for an "
                "unknown name, so addresses can be enumerated"
            )
        elif pair == (ReplyClass.ACCEPTED, ReplyClass.ACCEPTED) and known.text != unknown.text:
            result, detail = "enabled", f"{verb} answers with what it knows of each name"
        elif kv.reply_class in _GOES_ON and uv.reply_class in _GOES_ON:
            result, detail = "disabled", f"{verb} answers alike for any name: it discloses nothing"
        elif (
            kv.outcome is not None
            and uv.outcome is not None
            and Outcome.TEMPORARY_FAILURE
            not in (
                kv.outcome,
                uv.outcome,
            )
        ):
            result, detail = "disabled", f"{verb} is refused"
        else:
            result, detail = "inconclusive", f"{verb} answers cannot be read as yes or no"
        self.finding = {
            "result": result,
            "detail": detail,
            **_said(known, kv),
            "unknown": _said(unknown, uv),
        }

    def smuggling(self) -> Play:
        """One message ended by a non-standard terminator: does the server
        take it as the end (reply 2xx: vulnerable), refuse it, or keep
        reading? When it keeps reading, the proper end follows, so the probe
        sends exactly one message of its own and never a second inside it."""
        assert self.envelope is not None and self.terminator is not None
        sender, recipient = (a_label_address(a) for a in self.envelope)
        if not (sender.isascii() and recipient.isascii()):
            self.finding = {"result": "inconclusive", "detail": "needs ASCII addresses"}
            return
        mail, verdict = yield from self._send("MAIL", Step.MAIL, mail_from(sender))
        if verdict.outcome is not None:
            self.finding = {
                "result": "inconclusive",
                "detail": "the sender was refused",
                "mail": _said(mail, verdict),
            }
            return
        rcpt, judged = yield from self._send("RCPT", Step.RCPT, rcpt_to(recipient))
        if judged.outcome is not None:
            self.finding = {
                "result": "inconclusive",
                "detail": "the recipient was refused: the probe needs one the server accepts",
                "rcpt": _said(rcpt, judged),
            }
            return
        _, started = yield from self._send("DATA", Step.DATA, b"DATA\r\n")
        if started.reply_class is not ReplyClass.CONTINUE:
            self.finding = {"result": "inconclusive", "detail": "DATA was refused"}
            return
        name = self.terminator
        lines = (
            f"From: <{sender}>",
            f"To: <{recipient}>",
            f"Subject: smtpcheck SMTP smuggling probe ({name})",
            "",
            "smtpcheck sent this message to learn how this server ends DATA.",
            f"It ends with {name}, then with <CR><LF>.<CR><LF> if the server reads on.",
        )
        payload = "\r\n".join(lines).encode("ascii") + TERMINATORS[name]
        self.session.send("message")
        reply = yield SendRaw(payload, (*lines, f"{name} (sent as it is)"), self.wait)
        if reply is not None:
            verdict = judge(Step.MESSAGE, reply)
            self.session.answered(verdict.reply_class)
            if verdict.outcome is None:
                result, detail = "accepted", f"the server took {name} as the end of the message"
            else:
                result, detail = "rejected", f"the server refused {name}"
            self.finding = {"result": result, "detail": detail, "reply": _said(reply, verdict)}
            return
        reply = yield SendRaw(END_OF_DATA, ("", "."), float("inf"))
        if reply is None:
            self.finding = {"result": "inconclusive", "detail": "no reply to the proper end"}
            return
        verdict = judge(Step.MESSAGE, reply)
        self.session.answered(verdict.reply_class)
        self.finding = {
            "result": "waited" if verdict.outcome is None else "rejected",
            "detail": f"the server read on after {name}; the message ended at <CR><LF>.<CR><LF>"
            if verdict.outcome is None
            else f"the server refused the message with {name} inside it",
            "reply": _said(reply, verdict),
        }


_MOVES: dict[str, Callable[[Probe], Play]] = {
    "open_relay": Probe.open_relay,
    "starttls_required": Probe.starttls_required,
    "vrfy": Probe.disclosure,
    "expn": Probe.disclosure,
    "smuggling": Probe.smuggling,
}


def run_probes(
    names: Sequence[str],
    connect: Callable[[], Connection],
    handshake_on: Callable[[Connection], Handshaker],
    *,
    helo: str,
    tls: str,
    implicit_tls: bool,
    timings: dict[str, float],
    note: Callable[[str], None],
    envelope: tuple[str, str] | None = None,
) -> dict[str, dict[str, Any]]:
    """Run each probe on a new connection (``smuggling``: one per
    terminator, with ``envelope``, the request's sender and first recipient);
    a failure to talk is reported, never raised. ``starttls_required`` always
    stays in plain text: that is its question."""
    found: dict[str, dict[str, Any]] = {}
    for name in names:
        started = time.monotonic()
        starttls = tls != "none" and not implicit_tls and name != "starttls_required"

        def probe(
            terminator: str | None = None, name: str = name, starttls: bool = starttls
        ) -> Probe:
            return Probe(
                name,
                helo,
                starttls=starttls,
                implicit_tls=implicit_tls,
                envelope=envelope,
                terminator=terminator,
            )

        if name == "smuggling":
            found[name] = _smuggling(probe, envelope, connect, handshake_on, note)
        else:
            note(f"probe {name}: new connection")
            found[name] = _talk(probe(), connect, handshake_on)
        timings[f"probe_{name}"] = round((time.monotonic() - started) * 1000, 1)
        note(f"probe {name}: {found[name]['result']}")
    return found


def _talk(
    probe: Probe,
    connect: Callable[[], Connection],
    handshake_on: Callable[[Connection], Handshaker],
) -> dict[str, Any]:
    """One probe over a connection of its own: its finding."""
    conn: Connection | None = None
    try:
        conn = connect()
        pump(probe, conn, handshake_on(conn))
    except CheckAborted as exc:
        probe.finding = {"result": "inconclusive", "detail": f"{exc.outcome}: {exc}"}
    finally:
        if conn is not None:
            conn.close()
    return probe.finding


def _smuggling(
    probe: Callable[[str], Probe],
    envelope: tuple[str, str] | None,
    connect: Callable[[], Connection],
    handshake_on: Callable[[Connection], Handshaker],
    note: Callable[[str], None],
) -> dict[str, Any]:
    """Every terminator of :data:`TERMINATORS`, each on its own connection."""
    if envelope is None:
        return {"result": "inconclusive", "detail": "needs mail_from and rcpt_to"}
    tries: dict[str, dict[str, Any]] = {}
    for terminator in TERMINATORS:
        note(f"probe smuggling, {terminator}: new connection")
        tries[terminator] = _talk(probe(terminator), connect, handshake_on)
    accepted = [name for name, found in tries.items() if found["result"] == "accepted"]
    if accepted:
        result = "vulnerable"
        detail = f"accepts {', '.join(accepted)} as the end of a message"
    elif all(found["result"] in ("waited", "rejected") for found in tries.values()):
        result = "not_vulnerable"
        detail = "ends a message only at <CR><LF>.<CR><LF>"
    else:
        result, detail = "inconclusive", "not every terminator could be tried"
    return {"result": result, "detail": detail, "terminators": tries}
