"""Probes: short extra dialogues a caller can ask for, each on a connection
of its own to the very address the check dialled, recorded in the same
transcript. Each is a small Dialogue (the same state table, the same
verdicts); none of them ever sends DATA."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from smtpcheck.contract import Outcome, ReplyClass
from workers.connection import Connection
from workers.dialogue import Dialogue, Play, Script
from workers.driver import Handshaker, pump
from workers.errors import CheckAborted
from workers.protocol import Reply, command, mail_from, rcpt_to
from workers.verdict import Step, Verdict

# Outside sender and outside recipient: RFC 2606 names nobody owns.
RELAY_SENDER = "smtpcheck-relay-probe@example.org"
RELAY_RECIPIENT = "smtpcheck-relay-probe@example.net"
#: A name no server has: what VRFY/EXPN say about it, beside what they say
#: about postmaster (which every server has), tells disclosure apart.
UNKNOWN_NAME = "smtpcheck-no-such-user-7f3a9c"

_GOES_ON = (ReplyClass.ACCEPTED, ReplyClass.CANNOT_VERIFY)
_UNKNOWN = (ReplyClass.UNKNOWN_USER, ReplyClass.BAD_ADDRESS, ReplyClass.REJECTED)


def _said(reply: Reply, verdict: Verdict) -> dict[str, Any]:
    return {"code": reply.code, "text": reply.text, "class": str(verdict.reply_class)}


class Probe(Dialogue):
    """Greeting, EHLO, STARTTLS when asked and offered, then the probe's moves."""

    def __init__(self, name: str, helo: str, *, starttls: bool, implicit_tls: bool) -> None:
        super().__init__(
            Script(
                helo=helo,
                stop_after="tls",
                tls="auto" if starttls else "none",
                implicit_tls=implicit_tls,
            )
        )
        self.name = name
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


_MOVES: dict[str, Callable[[Probe], Play]] = {
    "open_relay": Probe.open_relay,
    "starttls_required": Probe.starttls_required,
    "vrfy": Probe.disclosure,
    "expn": Probe.disclosure,
}


def run_probes(
    names: list[str],
    connect: Callable[[], Connection],
    handshake_on: Callable[[Connection], Handshaker],
    *,
    helo: str,
    tls: str,
    implicit_tls: bool,
    timings: dict[str, float],
    note: Callable[[str], None],
) -> dict[str, dict[str, Any]]:
    """Run each probe on a new connection; a failure to talk is reported,
    never raised. ``starttls_required`` always stays in plain text: that is
    its question."""
    found: dict[str, dict[str, Any]] = {}
    for name in names:
        note(f"probe {name}: new connection")
        started = time.monotonic()
        starttls = tls != "none" and not implicit_tls and name != "starttls_required"
        probe = Probe(name, helo, starttls=starttls, implicit_tls=implicit_tls)
        conn: Connection | None = None
        try:
            conn = connect()
            pump(probe, conn, handshake_on(conn))
        except CheckAborted as exc:
            probe.finding = {"result": "inconclusive", "detail": f"{exc.outcome}: {exc}"}
        finally:
            if conn is not None:
                conn.close()
        found[name] = probe.finding
        timings[f"probe_{name}"] = round((time.monotonic() - started) * 1000, 1)
        note(f"probe {name}: {probe.finding['result']}")
    return found
