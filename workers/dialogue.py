"""The SMTP dialogue as a state machine without I/O, the h11 way.

``Dialogue`` says what to do next (``next_action``: send a line, send the
message, read the greeting, do the TLS handshake, or stop) and takes what
came back (``receive_reply``, ``tls_established``, ``abort``). The glue in
``workers.check`` pumps it over a Connection; tests pump it with bytes.

``Session`` keeps every legal move of the client in one table (TLS pending
and a SASL exchange included); a move that is not in it raises
LocalProtocolError. Every reply is judged by ``workers.verdict``; the first
failure is kept and nothing later overwrites it.
"""

from __future__ import annotations

import re
from collections.abc import Generator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import idna

from smtpcheck.contract import EHLO_EXTENSIONS, STAGES, Outcome, ReplyClass
from smtpcheck.contract import SECRET_MASK as REDACTED
from workers import protocol
from workers.errors import (
    CheckAborted,
    ConnectionClosed,
    ConnectTimeout,
    LocalProtocolError,
    ReadTimeout,
    TLSError,
)
from workers.protocol import Capabilities, Reply, printable
from workers.verdict import (
    Step,
    Verdict,
    allows_auth_fallback,
    error_outcome,
    judge,
    lets_helo_follow,
)

# ---------------------------------------------------------------------------
# Session: every legal move in one table
# ---------------------------------------------------------------------------


class State(StrEnum):
    CONNECTED = "connected"  # socket open, no greeting yet: we must not speak
    GREETED = "greeted"  # greeting read (or TLS just started): EHLO next
    READY = "ready"  # EHLO/HELO accepted
    TLS_PENDING = "tls_pending"  # 220 to STARTTLS: nothing but the handshake
    SASL = "sasl"  # inside an AUTH exchange: nothing but responses
    MAIL = "mail"  # MAIL FROM accepted: a transaction is open
    RCPT = "rcpt"  # some recipient accepted
    DATA = "data"  # 354 received: nothing but the message
    CLOSED = "closed"  # QUIT sent, 421 received, or the connection is gone


S = State
_OPEN = (S.GREETED, S.READY, S.MAIL, S.RCPT)

#: (state, move) -> (next state on 2xx, on 3xx, on a refusal). ``None``: that
#: answer does not fit the move (the verdict calls it a protocol error) and
#: the state stays. A 421 closes the session from anywhere.
MOVES: dict[tuple[State, str], tuple[State | None, State | None, State | None]] = {
    # state        move           2xx          3xx       refused
    (S.CONNECTED, "greeting"): (S.GREETED, None, S.GREETED),  # QUIT stays possible
    (S.GREETED, "EHLO"): (S.READY, None, S.GREETED),  # room for HELO
    (S.GREETED, "HELO"): (S.READY, None, S.GREETED),
    (S.READY, "STARTTLS"): (S.TLS_PENDING, None, S.READY),
    (S.TLS_PENDING, "handshake"): (S.GREETED, None, S.CLOSED),  # RFC 3207: EHLO again
    (S.CONNECTED, "handshake"): (S.CONNECTED, None, S.CLOSED),  # TLS on connect, as on 465
    (S.READY, "AUTH"): (S.READY, S.SASL, S.READY),
    (S.SASL, "response"): (S.READY, S.SASL, S.READY),
    (S.READY, "MAIL"): (S.MAIL, None, S.READY),
    (S.MAIL, "RCPT"): (S.RCPT, None, S.MAIL),
    (S.RCPT, "RCPT"): (S.RCPT, None, S.RCPT),  # a later refusal keeps the accepted ones
    (S.RCPT, "DATA"): (None, S.DATA, S.RCPT),
    (S.DATA, "message"): (S.READY, None, S.READY),
    (S.MAIL, "RSET"): (S.READY, None, S.MAIL),
    (S.RCPT, "RSET"): (S.READY, None, S.RCPT),
    **{(state, "RSET"): (state, None, state) for state in (S.GREETED, S.READY)},
    **{
        (state, verb): (state, None, state)
        for state in (S.GREETED, S.READY)
        for verb in ("VRFY", "EXPN", "NOOP")
    },
    **{(state, "QUIT"): (S.CLOSED, S.CLOSED, S.CLOSED) for state in _OPEN},
}


@dataclass
class Session:
    """Where the dialogue is; ``send`` refuses a move not in MOVES."""

    state: State = State.CONNECTED
    tls: bool = False  # TLS is up: never STARTTLS twice
    authenticated: bool = False  # never AUTH twice (RFC 4954)
    _move: str | None = None

    def send(self, move: str) -> None:
        if (self.state, move) not in MOVES:
            raise LocalProtocolError(f"cannot send {move} in state {self.state}")
        if move == "STARTTLS" and self.tls:
            raise LocalProtocolError("cannot send STARTTLS inside TLS")
        if move == "AUTH" and self.authenticated:
            raise LocalProtocolError("cannot send AUTH once authenticated")
        self._move = move

    def answered(self, reply_class: ReplyClass) -> None:
        """Move on after the last move got a reply of ``reply_class``."""
        move, self._move = self._move, None
        if move is None:
            raise LocalProtocolError("a reply with no move waiting for one")
        if reply_class is ReplyClass.CLOSING:
            self.state = S.CLOSED
            return
        accepted, go_on, refused = MOVES[(self.state, move)]
        if reply_class in (ReplyClass.ACCEPTED, ReplyClass.CANNOT_VERIFY):
            following = accepted
            if move == "AUTH" or move == "response":
                self.authenticated = following is S.READY
            if move == "handshake":
                self.tls = True
        elif reply_class is ReplyClass.CONTINUE:
            following = go_on
        else:
            following = refused
        self.state = following or self.state

    def closed(self) -> None:
        self.state = S.CLOSED
        self._move = None

    @property
    def in_transaction(self) -> bool:
        return self.state in (S.MAIL, S.RCPT)

    @property
    def can_quit(self) -> bool:
        return self.state in _OPEN


# ---------------------------------------------------------------------------
# Actions the driver carries out
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ReadGreeting:
    """Read the server's greeting; say nothing."""

    timing: str = "banner"


@dataclass(frozen=True)
class Send:
    """Write ``line`` (the transcript shows ``shown``) and read one reply."""

    line: bytes
    shown: str
    timing: str


@dataclass(frozen=True)
class SendMessage:
    """Write the dot-stuffed message after 354 and read the final reply."""

    payload: bytes
    timing: str = "data"


@dataclass(frozen=True)
class SendRaw:
    """Write ``payload`` exactly as it is (no dot-stuffing, no line ends
    added: a probe's deliberate bytes; the transcript shows ``shown``) and
    read a reply for at most ``wait`` seconds. Answered with the reply, or
    with ``no_reply`` when none came in that time: here silence is a fact,
    not a failure."""

    payload: bytes
    shown: tuple[str, ...]
    wait: float
    timing: str = "data"


@dataclass(frozen=True)
class Handshake:
    """Start TLS (on connect, or after 220 to STARTTLS); answer with
    ``tls_established`` and the session's facts."""

    mode: str
    timing: str = "tls"


@dataclass(frozen=True)
class Note:
    """A line of the checker's own for the transcript."""

    text: str


@dataclass(frozen=True)
class Close:
    """The dialogue is over: close the connection."""


Action = ReadGreeting | Send | SendMessage | SendRaw | Handshake | Note | Close


# ---------------------------------------------------------------------------
# What the dialogue is asked to do, and what stopped it
# ---------------------------------------------------------------------------

AUTH_ORDER = ("PLAIN", "LOGIN", "CRAM-MD5")  # DESIGN.md: `auto` picks in this order


@dataclass
class Script:
    """The request's part that the dialogue plays, defaults applied."""

    helo: str
    stop_after: str = "tls"
    tls: str = "auto"  # none, starttls, implicit, auto
    implicit_tls: bool = False
    tls_verify: bool = False
    username: str | None = None
    password: str | None = None
    mechanism: str = "auto"
    allow_plaintext: bool = False
    mail_from: str | None = None
    rcpt_to: list[str] = field(default_factory=list)
    message: bytes | None = None  # the whole message, before dot-stuffing

    def wants(self, stage: str) -> bool:
        return STAGES.index(stage) <= STAGES.index(self.stop_after)


@dataclass
class Failure:
    """What stopped the check: the first failure, kept for the summary."""

    outcome: Outcome
    stage: str
    detail: str = ""
    reply: Reply | None = None
    reply_class: ReplyClass | None = None
    subject: str = ""  # the address or command concerned
    ours: bool = False  # the checker's own fault, never the server's
    deadline: str = ""  # for a timeout: "total" (the check's) or "command" (one reply's)


def auth_candidates(offered: tuple[str, ...], requested: str) -> list[str]:
    """The mechanisms to try, in order: the requested one if offered, or for
    ``auto`` those offered of PLAIN, LOGIN, CRAM-MD5 in that order."""
    offered_upper = {m.upper() for m in offered}
    if requested.lower() != "auto":
        return [requested.upper()] if requested.upper() in offered_upper else []
    return [m for m in AUTH_ORDER if m in offered_upper]


def a_label_address(address: str) -> str:
    """The address with an IDN domain in A-labels (RFC 5891); the local part
    is left as it is."""
    local, at, domain = address.rpartition("@")
    if not at or domain.isascii():
        return address
    try:
        return f"{local}@{idna.encode(domain, uts46=True).decode('ascii')}"
    except idna.IDNAError:
        return address  # left as UTF-8: only SMTPUTF8 can carry it


_QUEUE_ID = re.compile(r"queued as ([A-Za-z0-9._-]+)|\bid=([A-Za-z0-9._-]+)|<([^<>\s]{6,})>", re.I)


def queue_id(text: str) -> str | None:
    """The queue id a 250 after the message names, when it names one."""
    match = _QUEUE_ID.search(text)
    return next((group for group in match.groups() if group), None) if match else None


def reply_facts(reply: Reply, reply_class: ReplyClass) -> dict[str, Any]:
    return {"code": reply.code, "text": reply.text, "class": str(reply_class)}


# ---------------------------------------------------------------------------
# The dialogue
# ---------------------------------------------------------------------------

Play = Generator[Action, Any, None]
Exchange = Generator[Action, Any, tuple[Reply, Verdict]]


class Dialogue:
    """One SMTP session as the request scripts it.

    Facts land in ``facts`` (banner, ehlo, tls, auth, mail, rcpt, data),
    the last stage reached in ``stage``, the first failure in ``failure``.
    """

    def __init__(self, script: Script) -> None:
        self.script = script
        self.session = Session()
        self.stage = "connect"
        self.failure: Failure | None = None
        self.capabilities: Capabilities | None = None
        self.facts: dict[str, Any] = {
            "banner": None,
            "ehlo": None,
            "tls": None,
            "auth": None,
            "mail": None,
            "rcpt": [],
            "data": None,
        }
        self._recipients: list[str] = []
        self._total_expired = False
        self._play = self._run()
        self._answer: Any = None
        self._pending: Action | None = None
        self._queued: Action | None = None
        self._started = False

    # -- the driver's side -------------------------------------------------

    def next_action(self) -> Action:
        """What to do now. Call again after answering the last action."""
        if self._pending is not None:
            raise LocalProtocolError(f"{type(self._pending).__name__} not answered yet")
        if self._queued is not None:
            action, self._queued = self._queued, None
        else:
            self._started = True
            try:
                action = self._play.send(self._answer)
            except StopIteration:
                action = Close()
        self._answer = None
        if isinstance(action, ReadGreeting | Send | SendMessage | SendRaw | Handshake):
            self._pending = action
        return action

    def receive_reply(self, reply: Reply) -> None:
        self._answered(reply)

    def tls_established(self, facts: dict[str, Any]) -> None:
        self._answered(facts)

    def no_reply(self) -> None:
        """No reply came within a :class:`SendRaw`'s ``wait``."""
        if not isinstance(self._pending, SendRaw):
            raise LocalProtocolError("only a SendRaw may go unanswered")
        self._answered(None)

    def abort(self, exc: CheckAborted, *, total_expired: bool = False) -> None:
        """The driver could not carry out the last action: ``exc`` says why."""
        self._pending = None
        self._answer = None
        self._total_expired = total_expired
        if not self._started:  # before a word was said (connect, DNS): nothing to end
            self._aborted(exc)
            self.session.closed()
            self._play.close()
            return
        try:
            self._queued = self._play.throw(exc)
        except StopIteration:
            self._queued = Close()

    def _answered(self, answer: Any) -> None:
        if self._pending is None:
            raise LocalProtocolError("an answer with no action waiting for one")
        self._pending = None
        self._answer = answer

    # -- failing -----------------------------------------------------------

    def fail(
        self,
        outcome: Outcome,
        detail: str = "",
        reply: Reply | None = None,
        reply_class: ReplyClass | None = None,
        subject: str = "",
        *,
        ours: bool = False,
    ) -> None:
        """Record a failure unless one was recorded first: the first wins."""
        if self.failure is None:
            self.failure = Failure(outcome, self.stage, detail, reply, reply_class, subject, ours)

    def _refused(self, reply: Reply, verdict: Verdict, subject: str = "") -> None:
        assert verdict.outcome is not None
        self.fail(verdict.outcome, verdict.detail, reply, verdict.reply_class, subject)

    def _enter(self, stage: str) -> bool:
        """Move to ``stage`` if the request wants it and nothing failed yet."""
        if self.failure is not None or not self.script.wants(stage):
            return False
        self.stage = stage
        return True

    # -- one command -------------------------------------------------------

    def _send(self, move: str, step: Step, line: bytes, shown: str | None = None) -> Exchange:
        """Send one line, get the reply, move the session; returns (reply, verdict)."""
        self.session.send(move)
        text = shown if shown is not None else line.decode("utf-8").rstrip("\r\n")
        timing = "ehlo_tls" if self.stage == "tls" and move in ("EHLO", "HELO") else self.stage
        reply = yield Send(line, text, timing)
        verdict = judge(step, reply)
        self.session.answered(verdict.reply_class)
        return reply, verdict

    # -- the play ----------------------------------------------------------

    def _run(self) -> Play:
        try:
            yield from self._stages()
        except CheckAborted as exc:
            self._aborted(exc)
            # Canceled (any CheckAborted whose outcome is canceled, e.g.
            # workers.cancel's) and our own faults leave the stream sane: QUIT.
            if exc.outcome != Outcome.CANCELED and not isinstance(exc, LocalProtocolError):
                self.session.closed()  # the stream is in no state for more talk
        yield from self._goodbye()

    def _aborted(self, exc: CheckAborted) -> None:
        step = Step.BANNER if self.stage == "banner" else None
        outcome = error_outcome(exc, step, total_expired=self._total_expired)
        self.fail(outcome, str(exc), ours=isinstance(exc, LocalProtocolError))
        if outcome is Outcome.TIMEOUT and self.failure is not None:
            if isinstance(exc, ReadTimeout):
                total = self._total_expired or exc.total
                self.failure.deadline = "total" if total else "command"
            elif isinstance(exc, ConnectTimeout | TLSError):
                self.failure.deadline = "total"  # the check's deadline passed, not the server's

    def _stages(self) -> Play:
        script = self.script
        if script.implicit_tls:
            yield from self._handshake("implicit")
            if self.failure is not None:
                return
        if not self._enter("banner"):
            return
        yield from self._greeting()
        if self._enter("ehlo"):
            yield from self._hello()
        if self._enter("tls") and not self.session.tls:
            yield from self._starttls()
        if script.username is not None and self._enter("auth"):
            yield from self._auth()
        if script.mail_from is not None and self._enter("mail"):
            yield from self._mail()
        if script.rcpt_to and self._enter("rcpt"):
            yield from self._rcpt()
        if script.message is not None and self._enter("data"):
            yield from self._data()

    def _greeting(self) -> Play:
        reply = yield ReadGreeting()
        self.session.send("greeting")
        verdict = judge(Step.BANNER, reply)
        self.session.answered(verdict.reply_class)
        self.facts["banner"] = reply_facts(reply, verdict.reply_class)
        if verdict.outcome is not None:
            self._refused(reply, verdict)

    def _hello(self) -> Play:
        """EHLO, then HELO when EHLO is refused for good."""
        name = self.script.helo
        reply, verdict = yield from self._send("EHLO", Step.EHLO, protocol.command("EHLO", name))
        if verdict.outcome is None:
            self._record_ehlo("EHLO", protocol.parse_ehlo(reply))
            return
        if lets_helo_follow(reply):
            reply, verdict = yield from self._send(
                "HELO", Step.HELO, protocol.command("HELO", name)
            )
            if verdict.outcome is None:
                self._record_ehlo("HELO", Capabilities(reply.lines[0], {}))
                return
        self._refused(reply, verdict, name)

    def _record_ehlo(self, verb: str, caps: Capabilities) -> None:
        before = self.facts["ehlo"]
        self.facts["ehlo"] = {
            "command": verb,
            "name": self.script.helo,
            "greeting": caps.greeting,
            "keywords": {k: list(v) for k, v in caps.keywords.items()},
            "size": caps.size,
            "auth": list(caps.auth_mechanisms),
            "starttls": "STARTTLS" in caps,
            # the names are upper case, as Capabilities keeps its keywords
            "extensions": {name: name in caps.keywords for name in EHLO_EXTENSIONS},
        }
        if self.session.tls and before is not None and "before_tls" not in before:
            self.facts["ehlo"]["before_tls"] = before
        self.capabilities = caps

    def _starttls(self) -> Play:
        script = self.script
        caps = self.capabilities or Capabilities("", {})
        offered = "STARTTLS" in caps
        self.facts["tls"] = {"mode": "starttls", "offered": offered, "established": False}
        if script.tls == "none":
            return
        if not offered:
            if script.tls == "starttls":
                self.fail(Outcome.STARTTLS_UNAVAILABLE, "STARTTLS not in the EHLO reply")
            else:
                yield Note("STARTTLS not offered; going on in plain text")
            return
        reply, verdict = yield from self._send("STARTTLS", Step.STARTTLS, b"STARTTLS\r\n")
        if verdict.outcome is not None:
            self._refused(reply, verdict, "STARTTLS")
            return
        yield from self._handshake("starttls")
        if self.failure is None:
            self.capabilities = None  # RFC 3207: forget what was learnt before TLS
            yield from self._hello()

    def _handshake(self, mode: str) -> Play:
        self.session.send("handshake")
        facts = yield Handshake(mode)
        self.session.answered(ReplyClass.ACCEPTED)
        self.facts["tls"] = {"mode": mode, "offered": True, **facts}
        if self.script.tls_verify and not facts.get("verified"):
            self.stage = "tls"
            self.fail(Outcome.TLS_UNTRUSTED, str(facts.get("verify_error")))

    # -- AUTH ----------------------------------------------------------------

    def _auth(self) -> Play:
        script = self.script
        caps = self.capabilities or Capabilities("", {})
        offered = caps.auth_mechanisms
        candidates = auth_candidates(offered, script.mechanism)
        self.facts["auth"] = {
            "mechanism": candidates[0] if candidates else None,
            "offered": list(offered),
            "accepted": False,
            "attempts": [],
        }
        if not self.session.tls and script.tls != "none" and not script.allow_plaintext:
            self.fail(
                Outcome.STARTTLS_UNAVAILABLE,
                "no TLS on this connection, and credentials are never sent in plain text "
                "(tls=none or auth.allow_plaintext allows it)",
                subject="AUTH",
            )
            return
        if not candidates:
            wanted = "any" if script.mechanism.lower() == "auto" else script.mechanism
            has = ", ".join(offered) if offered else "no AUTH in the EHLO reply"
            self.fail(Outcome.AUTH_UNAVAILABLE, f"wanted {wanted}; offered: {has}")
            return
        reply, verdict = yield from self._sasl(candidates[0])
        fallback = candidates[1] if len(candidates) > 1 else None
        if (
            verdict.outcome is not None
            and fallback is not None
            and script.mechanism.lower() == "auto"
            and allows_auth_fallback(reply)
            and self.session.state is S.READY
            and self.failure is None
        ):
            yield Note(f"AUTH {candidates[0]} refused with {reply.code}; trying {fallback} once")
            reply, verdict = yield from self._sasl(fallback)
        auth = self.facts["auth"]
        auth.update(
            mechanism=auth["attempts"][-1]["mechanism"], **reply_facts(reply, verdict.reply_class)
        )
        if verdict.outcome is None:
            auth["accepted"] = True
        else:
            subject = "AUTH"
            self._refused(reply, verdict, subject)

    def _sasl(self, mechanism: str) -> Exchange:
        """One AUTH exchange; client payloads are shown as ****."""
        user, password = self.script.username or "", self.script.password or ""
        if mechanism == "PLAIN":
            line = protocol.command("AUTH", "PLAIN", protocol.auth_plain(user, password))
            reply, verdict = yield from self._send(
                "AUTH", Step.AUTH_FINAL, line, f"AUTH PLAIN {REDACTED}"
            )
            if verdict.reply_class is ReplyClass.CONTINUE:
                # A challenge after the initial response: cancel it (RFC 4954 "*").
                self.fail(
                    Outcome.PROTOCOL_ERROR,
                    "the server sent a challenge after the PLAIN initial response",
                    reply,
                    verdict.reply_class,
                )
                yield from self._send("response", Step.AUTH, b"*\r\n", "*")
        else:
            reply, verdict = yield from self._send(
                "AUTH", Step.AUTH, protocol.command("AUTH", mechanism)
            )
            answers: list[str] = []
            while verdict.reply_class is ReplyClass.CONTINUE and self.session.state is S.SASL:
                if mechanism == "CRAM-MD5":
                    if answers:
                        break
                    answers.append(protocol.auth_cram_md5(user, password, reply.text))
                    step = Step.AUTH_FINAL
                else:  # LOGIN: username, then password
                    prompt = protocol.decode_challenge(reply.text)
                    yield Note(f"server asks {printable(prompt.decode('latin-1'))!r}")
                    if len(answers) == 2:
                        break
                    answers.append(protocol.auth_login(password if answers else user))
                    step = Step.AUTH_FINAL if len(answers) == 2 else Step.AUTH
                reply, verdict = yield from self._send(
                    "response", step, protocol.command(answers[-1]), REDACTED
                )
            if self.session.state is S.SASL:  # challenged once too often
                self.fail(
                    Outcome.PROTOCOL_ERROR,
                    f"the server went on challenging after the last {mechanism} response",
                    reply,
                    verdict.reply_class,
                )
                yield from self._send("response", Step.AUTH, b"*\r\n", "*")
        self.facts["auth"]["attempts"].append(
            {
                "mechanism": mechanism,
                **reply_facts(reply, verdict.reply_class),
                "accepted": verdict.outcome is None,
            }
        )
        return reply, verdict

    # -- the envelope ----------------------------------------------------

    def _mail(self) -> Play:
        script = self.script
        caps = self.capabilities or Capabilities("", {})
        sender = a_label_address(script.mail_from or "")
        recipients = [a_label_address(r) for r in script.rcpt_to]
        params: list[str] = []
        if not all(address.isascii() for address in (sender, *recipients)):
            if "SMTPUTF8" not in caps:
                self.fail(
                    Outcome.SMTPUTF8_UNAVAILABLE,
                    "a non-ASCII address, and the server offers no SMTPUTF8",
                    subject=next(a for a in (sender, *recipients) if not a.isascii()),
                )
                return
            params.append("SMTPUTF8")
        message = script.message
        if message is not None and script.wants("data"):
            if not message.isascii() and "8BITMIME" in caps:
                params.append("BODY=8BITMIME")
            elif not message.isascii():
                yield Note("the message has 8-bit bytes and the server offers no 8BITMIME")
            if "SIZE" in caps:
                params.append(f"SIZE={len(protocol.message_payload(message))}")
        reply, verdict = yield from self._send(
            "MAIL", Step.MAIL, protocol.mail_from(sender, tuple(params))
        )
        self.facts["mail"] = {
            "from": script.mail_from or "",
            **reply_facts(reply, verdict.reply_class),
            "accepted": verdict.outcome is None,
        }
        if verdict.outcome is not None:
            subject = "MAIL FROM" if verdict.outcome in _POLICY_SUBJECT else (sender or "<>")
            self._refused(reply, verdict, subject)
        self._recipients = recipients

    def _rcpt(self) -> Play:
        for shown, address in zip(self.script.rcpt_to, self._recipients, strict=True):
            if self.session.state is S.CLOSED:
                break
            reply, verdict = yield from self._send("RCPT", Step.RCPT, protocol.rcpt_to(address))
            self.facts["rcpt"].append(
                {
                    "to": shown,
                    **reply_facts(reply, verdict.reply_class),
                    "accepted": verdict.outcome is None,
                }
            )
            if verdict.outcome is not None:
                subject = "RCPT TO" if verdict.outcome in _POLICY_SUBJECT else shown
                self._refused(reply, verdict, subject)

    def _data(self) -> Play:
        message = self.script.message
        assert message is not None
        reply, verdict = yield from self._send("DATA", Step.DATA, b"DATA\r\n")
        if verdict.outcome is not None:
            self.facts["data"] = {**reply_facts(reply, verdict.reply_class), "accepted": False}
            self._refused(reply, verdict, "DATA")
            return
        payload = protocol.message_payload(message)
        self.session.send("message")
        reply = yield SendMessage(payload)
        verdict = judge(Step.MESSAGE, reply)
        self.session.answered(verdict.reply_class)
        self.facts["data"] = {
            **reply_facts(reply, verdict.reply_class),
            "accepted": verdict.outcome is None,
            "bytes": len(payload),
            "queue_id": queue_id(reply.text) if verdict.outcome is None else None,
        }
        if verdict.outcome is not None:
            self._refused(reply, verdict, "the message")

    # -- ending --------------------------------------------------------------

    def _goodbye(self) -> Play:
        """RSET if a transaction is open, then QUIT; never changes the verdict."""
        try:
            if self.session.in_transaction:
                yield from self._send("RSET", Step.MAIL, b"RSET\r\n")
            if self.session.can_quit:
                self.session.send("QUIT")
                yield Send(b"QUIT\r\n", "QUIT", "quit")
                self.session.closed()
        except CheckAborted as exc:
            self.session.closed()
            if not isinstance(exc, ConnectionClosed):
                yield Note(f"no answer to QUIT ({exc})")


_POLICY_SUBJECT = (Outcome.TLS_REQUIRED, Outcome.AUTH_REQUIRED)
