"""The one place a server reply or an engine error becomes an outcome.

Two tables, read top to bottom, the first matching row wins:

- ``REPLY_RULES``: a reply (its code, its RFC 3463 enhanced status code,
  and its text where the codes leave the class open) -> a ``ReplyClass``.
  X.7.1 alone covers relaying, blocklists and local policy, and many
  servers send no enhanced code at all, so a few rows read the text.
- ``OUTCOME_RULES``: (the step that was answered, the reply class, 4xx or
  5xx) -> an ``Outcome``.

``judge(step, reply)`` applies both; ``error_outcome`` does the same for
the exceptions that end a check. Nothing else in the engine maps reply
codes to outcomes (tests/engine/test_verdict.py greps for it). Pure: no
I/O, no clock, no logging.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from enum import StrEnum

from smtpcheck.contract import Outcome, ReplyClass
from workers.errors import CheckAborted, ReadTimeout
from workers.protocol import Reply


class Step(StrEnum):
    """What the server is answering: a command, or the greeting."""

    BANNER = "banner"
    EHLO = "ehlo"
    HELO = "helo"
    STARTTLS = "starttls"
    AUTH = "auth"  # AUTH <mechanism>, or a client response the server may still challenge
    AUTH_FINAL = "auth_final"  # the last client response: only 235 (or a refusal) may follow
    MAIL = "mail"
    RCPT = "rcpt"
    DATA = "data"  # the DATA command: 354 expected
    MESSAGE = "message"  # the message, after its final dot
    VRFY = "vrfy"
    EXPN = "expn"


#: The replies each step expects to go on; any other reply is a refusal
#: (judged by OUTCOME_RULES) or, when it is a 2xx/3xx out of place, a
#: broken state machine (protocol_error).
EXPECTED: dict[Step, frozenset[int] | None] = {
    Step.BANNER: frozenset({220}),
    Step.EHLO: frozenset({250}),
    Step.HELO: frozenset({250}),
    Step.STARTTLS: frozenset({220}),
    Step.AUTH: frozenset({235, 334}),
    Step.AUTH_FINAL: frozenset({235}),
    Step.MAIL: None,  # None: any 2xx
    Step.RCPT: None,
    Step.DATA: frozenset({354}),
    Step.MESSAGE: None,
    Step.VRFY: None,
    Step.EXPN: None,
}


@dataclass(frozen=True)
class Rule:
    """One row of REPLY_RULES. Empty fields match anything.

    ``codes``: ``|``-separated patterns, ``x`` a wildcard digit (``5xx``).
    ``enhanced``: ``|``-separated, ``X`` for the class digit, ``*`` for a
    whole field (``X.7.*``); ``none`` matches a reply without one.
    ``text``: a regular expression searched in the reply text, any case.
    ``steps``: where the row applies.
    """

    reply_class: ReplyClass
    codes: str = ""
    enhanced: str = ""
    text: str = ""
    steps: frozenset[Step] = frozenset()

    def matches(self, step: Step, reply: Reply) -> bool:
        if self.steps and step not in self.steps:
            return False
        if self.codes and not _codes_match(self.codes, reply.code):
            return False
        if self.enhanced and not _enhanced_matches(self.enhanced, reply.enhanced):
            return False
        return not self.text or _compiled(self.text).search(reply.text) is not None


_TLS_WORDS = r"starttls|\btls\b|encrypt|secure connection|\bssl\b"
_AUTH_WORDS = (
    r"authentication required|not authenticated|must (first )?authenticate"
    r"|auth(entication)? first|requires? auth"
)
_BLOCKLIST_WORDS = (
    r"blocked using|\blisted (at|on|in|by)\b|block ?list|black ?list|\bdnsbl\b|\brbl\b"
    r"|spamhaus|spamcop|barracuda|sorbs\.net|\bip .*\b(is )?(on|in) (our|the|a) .*list"
)
_CLIENT_HOST_WORDS = (
    r"client host rejected|reverse (dns|hostname|lookup)|cannot find your (reverse )?hostname"
    r"|\bno ptr\b|\bptr record|rdns"
)
_SPF_WORDS = r"\bspf\b|\bdmarc\b|\bdkim\b|sender policy framework"
_SENDER_WORDS = (
    r"sender address rejected|sender (domain )?(address )?(is )?(rejected|refused|denied|unknown|"
    r"not allowed|not permitted)|domain of sender address|sender verify failed|bad sender"
)
_RELAY_WORDS = r"relay|not permitted to relay|no such domain here|\bnot local\b"
_FULL_WORDS = r"mailbox (is )?full|over ?quota|quota exceeded|exceeded (its |the )?(storage|quota)"
_DISABLED_WORDS = r"(mailbox|account|user) (is )?(disabled|inactive|suspended|locked|blocked)"
_SIZE_WORDS = r"(message|mail) (size )?(is )?(too (big|large)|exceeds)|size limit|exceeds .*size"
_UTF8_WORDS = r"smtputf8|non-?ascii (address|character|local)"
_UNKNOWN_WORDS = (
    r"user unknown|unknown (user|recipient|mailbox)|no such (user|mailbox|recipient|address)"
    r"|(mailbox|user|recipient|address) (does not|doesn't) exist|invalid (recipient|mailbox)"
    r"|mailbox unavailable|mailbox not found|recipient not found|undeliverable address"
)
_RATE_WORDS = (
    r"too many (connections|messages|mails|sessions|errors|commands)|rate.?limit|slow down"
)
_POLICY_WORDS = r"\bspam\b|policy|virus|malware|prohibited|not allowed|denied|blocked"

ALL_STEPS_BUT_AUTH = frozenset(Step) - {Step.AUTH, Step.AUTH_FINAL}

#: Reply -> class. Read top to bottom; the first row that matches wins.
REPLY_RULES: tuple[Rule, ...] = (
    # -- the reply lets the dialogue go on -------------------------------
    Rule(ReplyClass.CANNOT_VERIFY, codes="252", steps=frozenset({Step.VRFY, Step.EXPN})),
    Rule(ReplyClass.ACCEPTED, codes="2xx"),
    Rule(ReplyClass.CONTINUE, codes="3xx"),
    # -- the server ends the session, wherever it says so ------------------
    Rule(ReplyClass.CLOSING, codes="421"),
    # -- the server refuses the checker itself: a fact about the vantage ---
    Rule(ReplyClass.BLOCKLISTED, text=_BLOCKLIST_WORDS),
    Rule(ReplyClass.CLIENT_HOST, enhanced="X.7.25"),
    Rule(ReplyClass.CLIENT_HOST, text=_CLIENT_HOST_WORDS),
    # -- a refused greeting ------------------------------------------------
    Rule(ReplyClass.SERVICE_REFUSED, steps=frozenset({Step.BANNER})),
    # -- greylisting says so; it often borrows X.7.1 or X.2.0 --------------
    Rule(ReplyClass.GREYLISTED, codes="4xx", text=r"gr[ae]y.?list"),
    # -- TLS and AUTH policy, and AUTH itself --------------------------------
    Rule(ReplyClass.TLS_REQUIRED, codes="538"),
    Rule(ReplyClass.TLS_REQUIRED, enhanced="X.7.11"),
    Rule(ReplyClass.TLS_REQUIRED, codes="530", text=_TLS_WORDS),
    Rule(ReplyClass.TLS_REQUIRED, codes="5xx", enhanced="X.7.0", text=_TLS_WORDS),
    Rule(ReplyClass.AUTH_REQUIRED, codes="530"),
    Rule(ReplyClass.AUTH_REQUIRED, codes="5xx", text=_AUTH_WORDS, steps=ALL_STEPS_BUT_AUTH),
    Rule(ReplyClass.AUTH_FAILED, codes="535"),
    Rule(ReplyClass.AUTH_FAILED, enhanced="X.7.8"),
    Rule(ReplyClass.AUTH_MECHANISM, codes="534"),
    Rule(ReplyClass.AUTH_MECHANISM, enhanced="X.7.9"),
    Rule(ReplyClass.AUTH_MECHANISM, codes="504", steps=frozenset({Step.AUTH, Step.AUTH_FINAL})),
    # -- the address, the sender, the mailbox --------------------------------
    Rule(ReplyClass.SMTPUTF8, enhanced="X.6.7"),
    Rule(ReplyClass.SMTPUTF8, text=_UTF8_WORDS),
    Rule(ReplyClass.SPF, enhanced="X.7.20|X.7.21|X.7.22|X.7.23|X.7.24|X.7.26"),
    Rule(ReplyClass.SPF, text=_SPF_WORDS),
    Rule(ReplyClass.SENDER, enhanced="X.1.7|X.1.8|X.7.27"),
    Rule(ReplyClass.SENDER, text=_SENDER_WORDS),
    Rule(ReplyClass.RELAY, text=_RELAY_WORDS),
    Rule(ReplyClass.MAILBOX_FULL, enhanced="X.2.2"),
    Rule(ReplyClass.MAILBOX_FULL, text=_FULL_WORDS),
    Rule(ReplyClass.SIZE, enhanced="X.3.4|X.2.3"),
    Rule(ReplyClass.SIZE, text=_SIZE_WORDS),
    Rule(ReplyClass.MAILBOX_DISABLED, enhanced="X.2.*"),
    Rule(ReplyClass.MAILBOX_DISABLED, text=_DISABLED_WORDS),
    Rule(ReplyClass.TOO_MANY_RECIPIENTS, enhanced="X.5.3"),
    Rule(ReplyClass.TOO_MANY_RECIPIENTS, text=r"too many recipients"),
    Rule(ReplyClass.UNKNOWN_USER, enhanced="X.1.1"),
    Rule(ReplyClass.UNKNOWN_USER, text=_UNKNOWN_WORDS),
    Rule(ReplyClass.BAD_ADDRESS, enhanced="X.1.*"),
    Rule(ReplyClass.SENDER, codes="501|553", steps=frozenset({Step.MAIL})),
    Rule(ReplyClass.BAD_ADDRESS, codes="501|553", steps=frozenset({Step.RCPT})),
    # -- what is left: rate limits, policy, commands, the rest -------------
    Rule(ReplyClass.RATE_LIMITED, codes="4xx", text=_RATE_WORDS),
    Rule(ReplyClass.POLICY, codes="5xx", enhanced="X.7.*"),
    Rule(ReplyClass.POLICY, codes="5xx", enhanced="none", text=_POLICY_WORDS),
    Rule(ReplyClass.COMMAND_REFUSED, codes="500|501|502|503|504"),
    Rule(ReplyClass.COMMAND_REFUSED, codes="5xx", enhanced="X.5.*"),
    Rule(ReplyClass.TEMPORARY, codes="4xx"),
    Rule(ReplyClass.REJECTED),
)


@dataclass(frozen=True)
class OutcomeRule:
    step: Step | None  # None: any step
    reply_class: ReplyClass | None  # None: any class
    kind: str  # "4", "5", or "" for either
    outcome: Outcome

    def matches(self, step: Step, reply_class: ReplyClass, code: int) -> bool:
        return (
            (self.step is None or self.step == step)
            and (self.reply_class is None or self.reply_class == reply_class)
            and (not self.kind or str(code)[0] == self.kind)
        )


ANY = None  # in OUTCOME_RULES: any step, any class

#: (step, class, 4xx/5xx) -> outcome, for a reply the step did not expect.
#: Read top to bottom; the first row that matches wins.
_OUTCOME_ROWS: tuple[tuple[Step | None, ReplyClass | None, str, Outcome], ...] = (
    # (step, reply class, "4"/"5"/"" for either, outcome)
    # 421 anywhere: the server ends the session
    (ANY, ReplyClass.CLOSING, "", Outcome.SERVICE_UNAVAILABLE),
    (ANY, ReplyClass.BLOCKLISTED, "", Outcome.BLOCKED),
    (ANY, ReplyClass.CLIENT_HOST, "", Outcome.BLOCKED),
    (Step.BANNER, ANY, "", Outcome.SERVICE_UNAVAILABLE),  # 554 (or any refusing) greeting
    (Step.STARTTLS, ANY, "", Outcome.STARTTLS_UNAVAILABLE),  # 454 TLS not available, 502
    # a sender refused, also at RCPT: Postfix's delayed 450 4.1.8 is not greylisting
    (ANY, ReplyClass.SENDER, "", Outcome.SENDER_REJECTED),
    (ANY, ReplyClass.SMTPUTF8, "", Outcome.SMTPUTF8_UNAVAILABLE),
    (ANY, ReplyClass.MAILBOX_FULL, "", Outcome.MAILBOX_UNAVAILABLE),
    (ANY, ReplyClass.MAILBOX_DISABLED, "", Outcome.MAILBOX_UNAVAILABLE),
    (ANY, ANY, "4", Outcome.TEMPORARY_FAILURE),  # greylisting, rate limits, any other 4xx
    (ANY, ReplyClass.TLS_REQUIRED, "", Outcome.TLS_REQUIRED),
    (ANY, ReplyClass.AUTH_REQUIRED, "", Outcome.AUTH_REQUIRED),
    (Step.EHLO, ANY, "", Outcome.EHLO_REJECTED),  # the dialogue tries HELO before this counts
    (Step.HELO, ANY, "", Outcome.EHLO_REJECTED),
    (Step.AUTH, ReplyClass.AUTH_MECHANISM, "", Outcome.AUTH_UNAVAILABLE),
    (Step.AUTH, ReplyClass.COMMAND_REFUSED, "", Outcome.AUTH_UNAVAILABLE),  # 502: no AUTH here
    (Step.AUTH, ANY, "", Outcome.AUTH_FAILED),
    (Step.AUTH_FINAL, ReplyClass.AUTH_MECHANISM, "", Outcome.AUTH_UNAVAILABLE),
    (Step.AUTH_FINAL, ANY, "", Outcome.AUTH_FAILED),
    (ANY, ReplyClass.SPF, "", Outcome.POLICY_REJECTED),
    (ANY, ReplyClass.POLICY, "", Outcome.POLICY_REJECTED),
    (ANY, ReplyClass.SIZE, "", Outcome.POLICY_REJECTED),
    (ANY, ReplyClass.TOO_MANY_RECIPIENTS, "", Outcome.POLICY_REJECTED),
    (ANY, ReplyClass.RELAY, "", Outcome.RELAY_DENIED),
    # 500/502/503 to a command the dialogue cannot do without
    (ANY, ReplyClass.COMMAND_REFUSED, "", Outcome.PROTOCOL_ERROR),
    (Step.MAIL, ANY, "", Outcome.SENDER_REJECTED),
    (ANY, ReplyClass.UNKNOWN_USER, "", Outcome.RECIPIENT_REJECTED),
    (ANY, ReplyClass.BAD_ADDRESS, "", Outcome.RECIPIENT_REJECTED),
    (Step.RCPT, ANY, "", Outcome.RECIPIENT_REJECTED),
    (ANY, ANY, "", Outcome.DATA_REJECTED),  # DATA or the message: refused for no reason above
)
OUTCOME_RULES = tuple(OutcomeRule(*row) for row in _OUTCOME_ROWS)


@dataclass(frozen=True)
class Verdict:
    """A reply judged: its class, and the outcome it decides (None: go on)."""

    reply_class: ReplyClass
    outcome: Outcome | None
    detail: str = ""


def classify(step: Step, reply: Reply) -> ReplyClass:
    """The class of ``reply`` as an answer to ``step`` (REPLY_RULES)."""
    for rule in REPLY_RULES:
        if rule.matches(step, reply):
            return rule.reply_class
    raise AssertionError("REPLY_RULES ends with a row that matches everything")


def judge(step: Step, reply: Reply) -> Verdict:
    """Class and outcome of ``reply`` at ``step``; outcome None when it lets
    the dialogue go on."""
    reply_class = classify(step, reply)
    if reply_class in (ReplyClass.ACCEPTED, ReplyClass.CONTINUE, ReplyClass.CANNOT_VERIFY):
        expected = EXPECTED[step]
        if expected is None and reply_class is not ReplyClass.CONTINUE:
            return Verdict(reply_class, None)
        if expected is not None and reply.code in expected:
            return Verdict(reply_class, None)
        shown = str(reply).splitlines()[0] if str(reply) else str(reply.code)
        return Verdict(
            reply_class, Outcome.PROTOCOL_ERROR, f"{reply.code} is not an answer to {step}: {shown}"
        )
    for rule in OUTCOME_RULES:
        if rule.matches(step, reply_class, reply.code):
            return Verdict(reply_class, rule.outcome)
    raise AssertionError("OUTCOME_RULES ends with a row that matches everything")


def is_closing(reply: Reply) -> bool:
    """The server said it is ending the session (421): say nothing more."""
    return reply.code == 421


def lets_helo_follow(reply: Reply) -> bool:
    """An EHLO refusal after which HELO is worth a try (RFC 5321 4.1.4):
    a permanent no that is not about the checker itself."""
    return reply.permanent and classify(Step.EHLO, reply) in (
        ReplyClass.COMMAND_REFUSED,
        ReplyClass.REJECTED,
    )


#: AUTH refusals after which `auto` may try another offered mechanism once:
#: 504 (mechanism unknown), 534 (too weak), 535 (servers with hashed
#: passwords refuse CRAM-MD5 like this).
AUTH_FALLBACK_CODES = frozenset({504, 534, 535})


def allows_auth_fallback(reply: Reply) -> bool:
    return reply.code in AUTH_FALLBACK_CODES


def error_outcome(exc: CheckAborted, step: Step | None, *, total_expired: bool) -> Outcome:
    """The one outcome of an exception that ended the check at ``step``."""
    if isinstance(exc, ReadTimeout):
        if exc.total or total_expired:
            return Outcome.TIMEOUT
        return Outcome.BANNER_TIMEOUT if step is Step.BANNER else Outcome.TIMEOUT
    outcome = Outcome(exc.outcome)
    if total_expired and outcome in (Outcome.CONNECT_TIMEOUT, Outcome.TLS_ERROR):
        return Outcome.TIMEOUT  # the check's own deadline passed, not the server's fault
    return outcome


# -- pattern matching ------------------------------------------------------


@functools.lru_cache(maxsize=4096)  # (a row's codes, a reply code): a small, bounded set
def _codes_match(patterns: str, code: int) -> bool:
    """``code`` against a row's ``"5x1|550"``: each a code with ``x`` for any digit."""
    digits = str(code)
    return any(
        len(pattern) == 3 and all(p in ("x", d) for p, d in zip(pattern, digits, strict=True))
        for pattern in patterns.split("|")
    )


@functools.lru_cache(maxsize=4096)  # an enhanced code is at most 1+3+3 digits: bounded
def _enhanced_matches(patterns: str, enhanced: str | None) -> bool:
    for pattern in patterns.split("|"):
        if pattern == "none":
            if enhanced is None:
                return True
            continue
        if enhanced is None:
            continue
        wanted = pattern.split(".")
        have = enhanced.split(".")
        if all(w in ("X", "*", h) for w, h in zip(wanted, have, strict=True)):
            return True
    return False


_PATTERNS: dict[str, re.Pattern[str]] = {}


def _compiled(text: str) -> re.Pattern[str]:
    pattern = _PATTERNS.get(text)
    if pattern is None:
        pattern = _PATTERNS[text] = re.compile(text, re.IGNORECASE)
    return pattern


for _rule in REPLY_RULES:  # compiled once at import, not in every forked work horse
    if _rule.text:
        _compiled(_rule.text)
del _rule
