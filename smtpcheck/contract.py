"""The words of the contract (DESIGN.md) that API and workers both speak.

The API validates and documents with them; the workers produce them. Kept
in one place so a stage, outcome or probe can only change on purpose, with
openapi.yaml and the tests in the same commit.
"""

from __future__ import annotations

from enum import StrEnum

STAGES = ("connect", "banner", "ehlo", "tls", "auth", "mail", "rcpt", "data")


class Outcome(StrEnum):
    """One code per check (DESIGN.md's table); a program branches on it."""

    OK = "ok"
    DNS_ERROR = "dns_error"
    TARGET_FORBIDDEN = "target_forbidden"
    CONNECT_REFUSED = "connect_refused"
    CONNECT_TIMEOUT = "connect_timeout"
    NETWORK_UNREACHABLE = "network_unreachable"
    BANNER_TIMEOUT = "banner_timeout"
    SERVICE_UNAVAILABLE = "service_unavailable"
    CONNECTION_CLOSED = "connection_closed"
    PROTOCOL_ERROR = "protocol_error"
    EHLO_REJECTED = "ehlo_rejected"
    STARTTLS_UNAVAILABLE = "starttls_unavailable"
    TLS_ERROR = "tls_error"
    TLS_UNTRUSTED = "tls_untrusted"
    AUTH_UNAVAILABLE = "auth_unavailable"
    AUTH_FAILED = "auth_failed"
    TLS_REQUIRED = "tls_required"
    AUTH_REQUIRED = "auth_required"
    SMTPUTF8_UNAVAILABLE = "smtputf8_unavailable"
    SENDER_REJECTED = "sender_rejected"
    RELAY_DENIED = "relay_denied"
    RECIPIENT_REJECTED = "recipient_rejected"
    MAILBOX_UNAVAILABLE = "mailbox_unavailable"
    BLOCKED = "blocked"
    POLICY_REJECTED = "policy_rejected"
    TEMPORARY_FAILURE = "temporary_failure"
    DATA_REJECTED = "data_rejected"
    TIMEOUT = "timeout"
    CANCELED = "canceled"


#: The outcome codes as plain strings, in the order of DESIGN.md's table.
OUTCOMES = tuple(outcome.value for outcome in Outcome)


class ReplyClass(StrEnum):
    """What one server reply means, read from its code, its enhanced status
    code (RFC 3463) and, where those leave it open, its text. The result
    carries it beside the raw reply (``reply.class``)."""

    ACCEPTED = "accepted"  # 2xx
    CANNOT_VERIFY = "cannot_verify"  # 252: "cannot VRFY user, but will accept message"
    CONTINUE = "continue"  # 3xx: 354 for DATA, 334 for an AUTH challenge
    CLOSING = "closing"  # 421: the server is ending the session
    GREYLISTED = "greylisted"  # 4xx "try again later" for this triplet
    RATE_LIMITED = "rate_limited"  # 4xx too many connections, messages or recipients
    TEMPORARY = "temporary"  # any other 4xx
    SERVICE_REFUSED = "service_refused"  # 554 greeting: no service for anyone here
    UNKNOWN_USER = "unknown_user"  # X.1.1, "user unknown", "no such user"
    BAD_ADDRESS = "bad_address"  # other X.1.x: syntax, domain, ambiguous address
    MAILBOX_FULL = "mailbox_full"  # X.2.2, over quota
    MAILBOX_DISABLED = "mailbox_disabled"  # X.2.1, X.2.0: exists but takes no mail
    RELAY = "relay"  # X.7.1 relaying, "Relay access denied"
    BLOCKLISTED = "blocklisted"  # the client's address on a DNSBL
    CLIENT_HOST = "client_host"  # "Client host rejected", reverse DNS of the client
    SENDER = "sender"  # the envelope sender refused
    SPF = "spf"  # SPF, DMARC or DKIM
    POLICY = "policy"  # other X.7.x: content, spam, local policy
    TOO_MANY_RECIPIENTS = "too_many_recipients"  # X.5.3
    SIZE = "size"  # X.3.4, 552 message too big
    SMTPUTF8 = "smtputf8"  # X.6.7, non-ASCII address refused
    TLS_REQUIRED = "tls_required"  # 530 5.7.0 "STARTTLS first", 5.7.11, 538
    AUTH_REQUIRED = "auth_required"  # 530 5.7.0 "Authentication required"
    AUTH_FAILED = "auth_failed"  # 535 5.7.8 credentials invalid
    AUTH_MECHANISM = "auth_mechanism"  # 504 5.5.4 / 534 5.7.9 mechanism refused
    COMMAND_REFUSED = "command_refused"  # 500-504: not recognised, not implemented, bad sequence
    REJECTED = "rejected"  # a 5xx that says nothing more specific


#: The reply classes as plain strings.
REPLY_CLASSES = tuple(reply_class.value for reply_class in ReplyClass)

PROBES = ("open_relay", "starttls_required", "vrfy", "expn")

#: Finding severities, in the order a person reads them: failures first.
SEVERITIES = ("fail", "warning", "info", "pass")

#: A vantage point's name (a worker pool's, and the queue ``vantage:<name>``).
VANTAGE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"
#: Not a vantage: a check with ``vantage: "all"`` runs at every vantage.
ALL_VANTAGES = "all"

# ---------------------------------------------------------------------------
# Redis: the queue of each vantage and the keys besides RQ's own
# ---------------------------------------------------------------------------

#: RQ queue of a vantage: ``vantage:<name>`` (docs/architecture.md).
QUEUE_PREFIX = "vantage:"
#: The RQ job function, enqueued by dotted path (the API never imports it).
JOB_FUNCTION = "workers.job.run_check_job"
#: Every key smtpcheck itself writes starts with this.
KEY_PREFIX = "smtpcheck:"
#: hash vantage -> checks submitted (API).
SUBMITTED_KEY = KEY_PREFIX + "metrics:submitted"
#: hash ``vantage|outcome`` -> checks finished (workers).
FINISHED_KEY = KEY_PREFIX + "metrics:finished"
#: hash ``vantage|le``, ``vantage|sum``, ``vantage|count`` (workers).
DURATION_KEY = KEY_PREFIX + "metrics:duration"
#: fixed windows of the per-key rate limits (the ``limits`` package's prefix).
RATELIMIT_PREFIX = KEY_PREFIX + "ratelimit"
#: ``<prefix><key name>``: a key's checks in flight.
ACTIVE_PREFIX = KEY_PREFIX + "active:"
#: ``<prefix><check id>``: a ``vantage: "all"`` check and its per-vantage checks.
FANOUT_PREFIX = KEY_PREFIX + "fanout:"
#: ``<prefix><address>``: the checks holding a politeness slot to one address.
TARGET_SLOTS_PREFIX = KEY_PREFIX + "target:"

#: A check's live view in Redis, each key with the check's TTL: the worker
#: appends every transcript line to the stream ``smtpcheck:events:<id>``
#: (capped at EVENTS_MAXLEN entries) and the API streams it to callers;
#: ``DELETE`` of a running check sets ``smtpcheck:cancel:<id>``, which the
#: worker polls between and within reads; ``smtpcheck:checks:<key name>``
#: indexes a key's checks for ``GET /v1/checks``.
EVENTS_KEY_PREFIX = KEY_PREFIX + "events:"
EVENTS_MAXLEN = 6000
CANCEL_KEY_PREFIX = KEY_PREFIX + "cancel:"
CHECKS_INDEX_PREFIX = KEY_PREFIX + "checks:"

#: What stored requests, transcripts and logs show instead of a secret.
SECRET_MASK = "****"  # noqa: S105 - the mask, not a secret


def queue_name(vantage: str) -> str:
    """The RQ queue a vantage's workers listen on."""
    return QUEUE_PREFIX + vantage


# ---------------------------------------------------------------------------
# What no string bound for the wire may hold
# ---------------------------------------------------------------------------

#: Every C0 control, DEL, every C1 control (U+0085 NEL among them) and the
#: Unicode line and paragraph separators: each ends a line for someone
#: (SMTP, Python's ``str.splitlines``, the email package, a terminal), so
#: none may reach a command or a header. As a JSON Schema (ECMA 262) pattern.
NO_CONTROLS_PATTERN = r"^[^\x00-\x1f\x7f-\x9f\u2028\u2029]*$"
#: The same for header text (a subject, a header value, a password), where a
#: horizontal TAB is ordinary white space.
NO_CONTROLS_TEXT_PATTERN = r"^[^\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]*$"

_CONTROL_NAMES = {
    "\x00": "NUL",
    "\t": "TAB",
    "\n": "LF",
    "\x0b": "VT",
    "\x0c": "FF",
    "\r": "CR",
    "\x1c": "FS",
    "\x1d": "GS",
    "\x1e": "RS",
    "\x7f": "DEL",
    "\x85": "NEL",
    "\u2028": "LINE SEPARATOR",
    "\u2029": "PARAGRAPH SEPARATOR",
}


def control_character(text: str, *, allow_tab: bool = False) -> str | None:
    """A description of the first control or line separator in ``text``
    (``"LF (U+000A) at position 3"``), or None when there is none."""
    for position, char in enumerate(text):
        code = ord(char)
        if (char == "\t" and allow_tab) or not (
            code < 0x20 or 0x7F <= code <= 0x9F or char in "\u2028\u2029"
        ):
            continue
        name = _CONTROL_NAMES.get(char, "a control character")
        return f"{name} (U+{code:04X}) at position {position}"
    return None
