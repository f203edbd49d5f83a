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
