"""The words of the contract (DESIGN.md) that API and workers both speak.

The API validates and documents with them; the workers produce them. Kept
in one place so a stage, outcome or probe can only change on purpose, with
openapi.yaml and the tests in the same commit.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import Annotated, Any, Literal, NotRequired, TypedDict, cast

from smtpcheck.config import Settings

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

PROBES = ("open_relay", "starttls_required", "vrfy", "expn", "smuggling")

#: Finding severities, in the order a person reads them: failures first.
SEVERITIES = ("fail", "warning", "info", "pass")

#: A vantage point's name (a worker pool's, and the queue ``vantage:<name>``).
VANTAGE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"
#: Not a vantage: a check with ``vantage: "all"`` runs at every vantage.
ALL_VANTAGES = "all"

# ---------------------------------------------------------------------------
# Problem details: the API's error answers
# ---------------------------------------------------------------------------

#: RFC 9457 problem details: the media type and the ``type`` of each problem
#: the API raises on purpose (others are about:blank); service/problems.py
#: renders them.
PROBLEM_JSON = "application/problem+json"
TYPE_PREFIX = "urn:smtpcheck:problem:"

#: ``type`` of each problem the service raises on purpose; others are about:blank.
VALIDATION_ERROR = TYPE_PREFIX + "validation-error"
UNAUTHORIZED = TYPE_PREFIX + "unauthorized"
NOT_FOUND = TYPE_PREFIX + "check-not-found"
NOT_FINISHED = TYPE_PREFIX + "check-not-finished"
CHECK_RUNNING = TYPE_PREFIX + "check-running"
NO_TRANSCRIPT = TYPE_PREFIX + "check-failed"
STORE_UNAVAILABLE = TYPE_PREFIX + "store-unavailable"
MISCONFIGURED = TYPE_PREFIX + "misconfigured"
RATE_LIMITED = TYPE_PREFIX + "rate-limited"
TOO_MANY_CHECKS = TYPE_PREFIX + "too-many-checks"
TOO_MANY_HELD = TYPE_PREFIX + "too-many-held"
SERVER_BUSY = TYPE_PREFIX + "busy"
NO_LIVE_VANTAGE = TYPE_PREFIX + "no-live-vantage"
INTERNAL_ERROR = TYPE_PREFIX + "internal-error"

#: Every type above, for the spec's enum.
PROBLEM_TYPES = (
    "about:blank",
    VALIDATION_ERROR,
    UNAUTHORIZED,
    NOT_FOUND,
    NOT_FINISHED,
    CHECK_RUNNING,
    NO_TRANSCRIPT,
    STORE_UNAVAILABLE,
    MISCONFIGURED,
    RATE_LIMITED,
    TOO_MANY_CHECKS,
    TOO_MANY_HELD,
    SERVER_BUSY,
    NO_LIVE_VANTAGE,
    INTERNAL_ERROR,
)

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
#: ``<prefix><key name>``: a key's responses held open (?wait, event streams).
HELD_PREFIX = KEY_PREFIX + "held:"
#: ``<prefix><check id>``: a ``vantage: "all"`` check and its per-vantage checks.
FANOUT_PREFIX = KEY_PREFIX + "fanout:"
#: ``<prefix><address>``: the checks holding a politeness slot to one address.
TARGET_SLOTS_PREFIX = KEY_PREFIX + "target:"
#: ``<prefix><worker name>``: the checks a threaded worker process took off its
#: queue and has not started yet (put back by its pool if the process dies).
TAKEN_KEY_PREFIX = KEY_PREFIX + "taken:"

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


# ---------------------------------------------------------------------------
# The typed contract: the normalized request and the result
#
# What the API stores as the request and what a worker returns, as types.
# service/schemas.py validates the request into a CheckRequest (a test keeps
# the two in step); openapi.yaml's result schemas are generated from the
# TypedDicts below (service/typeschema.py), where every object is closed and
# ``Annotated[..., "text"]`` is a field's description. A key that is
# NotRequired is absent from some results; every other key is always there,
# null when its stage was not reached.
# ---------------------------------------------------------------------------

Stage = Literal["connect", "banner", "ehlo", "tls", "auth", "mail", "rcpt", "data"]
Probe = Literal["open_relay", "starttls_required", "vrfy", "expn", "smuggling"]
TLSMode = Literal["none", "starttls", "implicit", "auto"]
Mechanism = Literal["auto", "PLAIN", "LOGIN", "CRAM-MD5"]
Severity = Literal["fail", "warning", "info", "pass"]
Direction = Literal["note", "server", "client", "error"]
CertificateProblemCode = Literal[
    "certificate_missing",
    "certificate_unparseable",
    "certificate_untrusted",
    "certificate_name_mismatch",
    "certificate_expired",
    "certificate_not_yet_valid",
    "certificate_expiring",
]


class AuthRequest(TypedDict):
    username: str
    password: Annotated[str, f"always {SECRET_MASK} once stored: the real one travels sealed"]
    mechanism: Mechanism
    allow_plaintext: bool


class MessageRequest(TypedDict):
    subject: str
    body: str
    headers: dict[str, str]


class TimeoutsRequest(TypedDict):
    connect: float
    command: float
    total: float


class RetryRequest(TypedDict):
    attempts: int
    delay: float


class CallbackRequest(TypedDict):
    url: str
    secret: Annotated[str, f"always {SECRET_MASK} once stored: the real one travels sealed"]


class CheckRequest(TypedDict):
    """The request as the API normalized it (every default filled in); the
    worker takes it as it is, without a second normalization."""

    host: str
    mx: bool
    mx_hosts: Literal["first", "all"]
    port: int
    tls: TLSMode
    tls_verify: bool
    tls_name: str | None
    tls_ca: str | None
    helo: str | None
    auth: AuthRequest | None
    mail_from: str | None
    rcpt_to: list[str]
    data: str | None
    message: MessageRequest | None
    stop_after: Stage | None
    timeouts: TimeoutsRequest
    vantage: str
    ip_version: Literal[4, 6] | None
    probes: list[Probe]
    retry_temporary: bool
    retry: RetryRequest
    callback: CallbackRequest | None


#: The defaults of DESIGN.md's request table, in one place: the API's schema
#: takes its ``load_default`` values from here (service/schemas.py) and
#: :func:`check_request` fills the same ones, so both normalize alike (a test
#: holds them together). ``timeouts`` and ``retry`` depend on the operator's
#: settings: see :func:`request_defaults`.
DEFAULT_VANTAGE = "default"
DEFAULT_SUBJECT = "smtpcheck test message"
DEFAULT_BODY = "This is a test message sent by smtpcheck.\r\n"
DEFAULT_RETRY_ATTEMPTS = 3
DEFAULT_RETRY_DELAY = 300.0
AUTH_DEFAULTS: Mapping[str, Any] = MappingProxyType({"mechanism": "auto", "allow_plaintext": False})
MESSAGE_DEFAULTS: Mapping[str, Any] = MappingProxyType(
    {"subject": DEFAULT_SUBJECT, "body": DEFAULT_BODY, "headers": {}}
)
#: Every field but ``host`` (required), ``timeouts`` and ``retry``; null
#: ``helo`` means the worker's configured name, null ``stop_after`` the last
#: stage the request implies (both decided by the worker, which knows them).
REQUEST_DEFAULTS: Mapping[str, Any] = MappingProxyType(
    {
        "mx": False,
        "mx_hosts": "first",
        "port": 25,
        "tls": "auto",
        "tls_verify": False,
        "tls_name": None,
        "tls_ca": None,
        "helo": None,
        "auth": None,
        "mail_from": None,
        "rcpt_to": [],
        "data": None,
        "message": None,
        "stop_after": None,
        "vantage": DEFAULT_VANTAGE,
        "ip_version": None,
        "probes": [],
        "retry_temporary": False,
        "callback": None,
    }
)


def default_timeouts(settings: Settings) -> TimeoutsRequest:
    """The service's default deadlines (``SMTPCHECK_*_TIMEOUT``)."""
    defaults = settings.timeouts
    return {"connect": defaults.connect, "command": defaults.command, "total": defaults.total}


def default_retry(settings: Settings) -> RetryRequest:
    """Greylisting retries: DESIGN's defaults, within the operator's caps."""
    limits = settings.limits
    return {
        "attempts": min(DEFAULT_RETRY_ATTEMPTS, limits.max_retry_attempts),
        "delay": min(DEFAULT_RETRY_DELAY, limits.max_retry_delay),
    }


def request_defaults(settings: Settings) -> dict[str, Any]:
    """Every default of a check request for ``settings`` (fresh copies)."""
    return {
        **copy.deepcopy(dict(REQUEST_DEFAULTS)),
        "timeouts": default_timeouts(settings),
        "retry": default_retry(settings),
    }


#: Nested objects a caller may give in part, with the defaults of their fields.
_NESTED_DEFAULTS: dict[str, Callable[[Settings], Mapping[str, Any]]] = {
    "auth": lambda settings: AUTH_DEFAULTS,
    "message": lambda settings: MESSAGE_DEFAULTS,
    "timeouts": default_timeouts,
    "retry": default_retry,
}


def check_request(settings: Settings, /, **fields: Any) -> CheckRequest:
    """A complete normalized request: ``fields`` over :func:`request_defaults`,
    nested objects given in part (``auth``, ``message``, ``timeouts``,
    ``retry``) completed with their own defaults.

    What the API's schema makes of the same fields when they are valid (a
    test compares the two), without its validation: for tests, benchmarks
    and callers that already hold a valid request.
    """
    if "host" not in fields:
        raise TypeError("a check request needs a host")
    request = {"host": fields["host"], **request_defaults(settings)}
    unknown = set(fields) - set(request)
    if unknown:
        raise TypeError(f"not a check request field: {', '.join(sorted(unknown))}")
    for name, value in fields.items():
        if name in _NESTED_DEFAULTS and isinstance(value, Mapping):
            value = {**copy.deepcopy(dict(_NESTED_DEFAULTS[name](settings))), **value}
        request[name] = value
    return cast(CheckRequest, request)


class TargetFacts(TypedDict):
    host: Annotated[str, "the host (or MX host) checked"]
    port: int
    address: Annotated[str | None, "the address dialled last (the one connected to, if any)"]
    addresses: Annotated[list[str], "every address the host resolved to, in the order tried"]
    source: Annotated[
        str | None, "the worker's own address on that path, also when the connect failed"
    ]


ServerReply = TypedDict(
    "ServerReply",
    {
        "code": int,
        "text": Annotated[str, "the reply's text, lines joined"],
        "class": Annotated[ReplyClass, "what the reply means (one table)"],
    },
)

VerdictReply = TypedDict(
    "VerdictReply",
    {
        "code": int,
        "enhanced": Annotated[str | None, "the enhanced status code (RFC 3463), if any"],
        "text": str,
        "class": ReplyClass | None,
    },
)


#: The service extensions an EHLO reply is read for (``ehlo.extensions``):
#: what a sender may use, and what MTA-STS, DANE and REQUIRETLS imply.
EhloExtensions = TypedDict(
    "EhloExtensions",
    {
        "8BITMIME": bool,  # RFC 6152
        "AUTH": bool,  # RFC 4954
        "BINARYMIME": bool,  # RFC 3030
        "CHUNKING": bool,  # RFC 3030
        "DSN": bool,  # RFC 3461
        "ENHANCEDSTATUSCODES": bool,  # RFC 2034
        "PIPELINING": bool,  # RFC 2920
        "REQUIRETLS": bool,  # RFC 8689
        "SIZE": bool,  # RFC 1870
        "SMTPUTF8": bool,  # RFC 6531
        "STARTTLS": bool,  # RFC 3207
    },
)
EHLO_EXTENSIONS = tuple(EhloExtensions.__annotations__)


class EhloFacts(TypedDict):
    command: Literal["EHLO", "HELO"]
    name: Annotated[str, "the name the checker sent"]
    greeting: Annotated[str, "the first line of the server's reply"]
    keywords: Annotated[dict[str, list[str]], "EHLO keywords and their parameters"]
    size: Annotated[int | None, "the SIZE limit advertised"]
    auth: Annotated[list[str], "AUTH mechanisms offered"]
    starttls: bool
    extensions: Annotated[EhloExtensions, "whether each well-known extension is offered"]
    before_tls: NotRequired[Annotated[EhloFacts, "the EHLO reply before STARTTLS"]]


class CertificateFacts(TypedDict):
    subject: str
    common_name: str | None
    sans: Annotated[list[str], "subjectAltNames, DNS:... and IP:..."]
    issuer: str
    not_before: str
    not_after: str
    serial: Annotated[str, "hexadecimal"]
    sha256: Annotated[str, "fingerprint of the DER certificate"]


class CertificateProblem(TypedDict):
    code: Annotated[CertificateProblemCode, "also the code of the finding it makes"]
    message: str


class ChainCertificate(TypedDict):
    """A certificate the server sent, as DANE (RFC 7672) matches it."""

    subject: str
    issuer: str
    cert_sha256: str
    cert_sha512: str
    spki_sha256: str
    spki_sha512: str
    issued_by_next: Annotated[bool, "signed by the next certificate in the chain"]


class TLSFacts(TypedDict):
    mode: Literal["starttls", "implicit"]
    offered: bool
    established: bool
    version: NotRequired[str | None]
    cipher: NotRequired[str | None]
    bits: NotRequired[int | None]
    sni: NotRequired[Annotated[str | None, "the name sent as SNI (none for an IP)"]]
    verify_name: NotRequired[
        Annotated[str | None, "the name verified (tls_name or host); null: chain only"]
    ]
    verified: NotRequired[
        Annotated[bool, "trusted, in date and (with verify_name) valid for that name"]
    ]
    verify_error: NotRequired[Annotated[str | None, "every reason it did not verify"]]
    problems: NotRequired[Annotated[list[CertificateProblem], "every problem found, at once"]]
    certificate: NotRequired[CertificateFacts | None]
    chain_length: NotRequired[int]
    chain: NotRequired[Annotated[list[ChainCertificate], "the certificates sent, leaf first"]]


AuthAttempt = TypedDict(
    "AuthAttempt",
    {
        "mechanism": str,
        "code": int,
        "text": str,
        "class": ReplyClass,
        "accepted": bool,
    },
)

AuthFacts = TypedDict(
    "AuthFacts",
    {
        "mechanism": Annotated[str | None, "the mechanism used last (null: none usable)"],
        "offered": list[str],
        "accepted": bool,
        "attempts": Annotated[list[AuthAttempt], "each exchange, in order"],
        "code": NotRequired[int],
        "text": NotRequired[str],
        "class": NotRequired[ReplyClass],
    },
)

MailFacts = TypedDict(
    "MailFacts",
    {
        "from": str,
        "code": int,
        "text": str,
        "class": ReplyClass,
        "accepted": bool,
    },
)

RcptFacts = TypedDict(
    "RcptFacts",
    {
        "to": str,
        "code": int,
        "text": str,
        "class": ReplyClass,
        "accepted": bool,
    },
)

DataFacts = TypedDict(
    "DataFacts",
    {
        "code": int,
        "text": str,
        "class": ReplyClass,
        "accepted": bool,
        "bytes": NotRequired[Annotated[int, "the message as sent, dot-stuffed"]],
        "queue_id": NotRequired[Annotated[str | None, "the queue id the server named"]],
    },
)


class DNSFacts(TypedDict):
    address: Annotated[str, "the dialled address"]
    ptr: list[str]
    ptr_error: str | None
    forward_confirmed: Annotated[bool | None, "a PTR name resolves back to the address"]
    ptr_skipped: NotRequired[Annotated[str, "why no PTR lookup was made"]]
    banner_host: str | None
    banner_matches_ptr: bool | None
    ehlo_host: str | None
    ehlo_matches_ptr: bool | None


ProbeReply = TypedDict("ProbeReply", {"code": int, "text": str, "class": NotRequired[ReplyClass]})


class SmugglingTry(TypedDict):
    """One non-standard end-of-data sequence sent after a message (SMTP smuggling)."""

    result: Annotated[
        Literal["accepted", "waited", "rejected", "inconclusive"],
        "accepted: the server took it as the end of the message (vulnerable); waited: it "
        "kept reading; rejected: it refused the bare line end",
    ]
    detail: str
    reply: NotRequired[ProbeReply]


ProbeResult = TypedDict(
    "ProbeResult",
    {
        "result": Annotated[str, "the probe's verdict, e.g. open, closed, inconclusive"],
        "detail": NotRequired[str],
        "code": NotRequired[int],
        "text": NotRequired[str],
        "class": NotRequired[ReplyClass],
        "mail": NotRequired[ProbeReply],
        "rcpt": NotRequired[ProbeReply],
        "unknown": NotRequired[Annotated[ProbeReply, "the answer for a name that cannot exist"]],
        "terminators": NotRequired[
            Annotated[
                dict[str, SmugglingTry],
                "smuggling: each non-standard end of data tried, on its own connection",
            ]
        ],
    },
)


class Finding(TypedDict):
    severity: Severity
    code: Annotated[str, "see the README's list of findings"]
    message: Annotated[str, "one line"]


class TranscriptLine(TypedDict):
    t_ms: Annotated[float, "milliseconds since the check started"]
    dir: Direction
    text: str
    tls: NotRequired[Annotated[bool, "spoken inside TLS"]]


class MXRecord(TypedDict):
    preference: int
    host: str
    implicit: Annotated[bool, "no MX record: the domain itself (RFC 5321 5.1)"]


class MXFacts(TypedDict):
    domain: str
    mode: Literal["first", "all"]
    hosts: list[MXRecord]
    checked: Annotated[int, "how many MX hosts were checked"]


class StsRecord(TypedDict):
    id: str


class StsPolicy(TypedDict):
    version: Literal["STSv1"]
    mode: Literal["enforce", "testing", "none"]
    max_age: int
    mx: list[str]


class StsHost(TypedDict):
    host: str
    pattern: Annotated[str | None, "the policy's mx pattern covering the host"]
    covered: bool
    certificate_ok: Annotated[bool | None, "null: the host was not checked"]
    reason: str | None


class MtaStsFacts(TypedDict):
    record: StsRecord | None
    record_error: str | None
    policy_url: str | None
    policy: StsPolicy | None
    policy_error: str | None
    hosts: list[StsHost]


class TlsRptRecord(TypedDict):
    version: Literal["TLSRPTv1"]
    rua: list[str]


class TlsRptFacts(TypedDict):
    record: TlsRptRecord | None
    error: str | None


class TlsaJudgement(TypedDict):
    record: str
    usage: str | None
    matched: bool
    reason: str


#: RFC 4035's states of a DNS answer, as RFC 7672 2.1.1 uses them.
DnssecState = Literal["secure", "insecure", "bogus"]


class DaneHost(TypedDict):
    host: str
    name: Annotated[str | None, "the TLSA name looked up, _port._tcp.<host> (or its CNAME target)"]
    status: Annotated[
        Literal[
            "valid",
            "mismatch",
            "unusable",
            "unverified",
            "not_applicable",
            "lookup_failed",
            "unauthenticated",
        ],
        "valid or mismatch: DANE applies (RFC 7672 2.2); unusable: it applies but no record "
        "is usable for SMTP, so senders require TLS without authenticating it; unverified: "
        "it applies, but the check ended before TLS (stop_after, or the host did not "
        "answer), so the certificate was not judged; "
        "not_applicable: it does not "
        "(an insecure MX, address or TLSA answer, or no TLSA records), reason says why; "
        "lookup_failed: a bogus answer or a failed lookup, senders that use DANE defer "
        "mail to the host; unauthenticated: SMTPCHECK_DNSSEC=off, not judged",
    ]
    authenticated: Annotated[bool, "the TLSA records are there and DNSSEC-authenticated"]
    address_security: Annotated[
        DnssecState | None, "of the host's A and AAAA answers (null: not looked up)"
    ]
    tlsa_security: Annotated[DnssecState | None, "of the TLSA answer (null: not judged)"]
    reason: str | None
    tlsa: list[str] | None
    matched: Annotated[int | None, "index in records of the record that matched"]
    records: list[TlsaJudgement]


class DaneFacts(TypedDict):
    dnssec: Literal["off", "trust-ad", "validate"]
    mx_security: Annotated[
        DnssecState | None,
        "of the domain's MX RRset (null: SMTPCHECK_DNSSEC=off, or no MX records)",
    ]
    hosts: list[DaneHost]
    error: NotRequired[str]


class PolicyFacts(TypedDict):
    """What a sending MTA would enforce for the domain (with mx true)."""

    mta_sts: MtaStsFacts
    tls_rpt: TlsRptFacts
    dane: DaneFacts


class AttemptSummary(TypedDict):
    """An earlier attempt of a greylisted check, without its transcript."""

    outcome: Outcome
    stage: Stage
    summary: str
    started_at: str | None
    finished_at: str | None
    target: TargetFacts
    rcpt: list[RcptFacts]
    mail: MailFacts | None


class _ResultFacts(TypedDict):
    check_id: str | None
    ok: Annotated[bool, "every stage asked for passed"]
    outcome: Outcome
    stage: Annotated[Stage, "the last stage reached"]
    summary: Annotated[str, "one sentence a person can act on"]
    reply: NotRequired[
        Annotated[VerdictReply | None, "the reply the verdict rests on (not yet with mx)"]
    ]
    target: TargetFacts
    vantage: str
    started_at: str
    finished_at: str
    banner: ServerReply | None
    ehlo: EhloFacts | None
    tls: TLSFacts | None
    auth: AuthFacts | None
    mail: MailFacts | None
    rcpt: list[RcptFacts]
    data: DataFacts | None
    dns: Annotated[DNSFacts | None, "PTR of the dialled address, forward confirmation"]
    probes: dict[Probe, ProbeResult] | None
    findings: Annotated[list[Finding], "failures first"]
    timings: Annotated[dict[str, float], "milliseconds per step, and total"]


class MXHostResult(_ResultFacts):
    """One MX host's result (its transcript is in the domain's)."""

    preference: int


class ListedResult(_ResultFacts):
    """A check's result as ``GET /v1/checks`` lists it: all but the transcript."""

    mx: NotRequired[Annotated[MXFacts, "with mx true: the MX hosts found"]]
    policy: NotRequired[Annotated[PolicyFacts, "with mx true: MTA-STS, TLS-RPT and DANE"]]
    hosts: NotRequired[Annotated[list[MXHostResult], "with mx true: a result per host checked"]]
    attempts: NotRequired[
        Annotated[list[AttemptSummary], "with retry_temporary: every attempt made"]
    ]
    worker: NotRequired[Annotated[str, "the RQ worker that ran the check"]]


class CheckResult(ListedResult):
    """What a worker returns for one check (``GET /v1/checks/{id}`` ``result``)."""

    transcript: list[TranscriptLine]


class VantageRow(TypedDict):
    """``vantage: "all"``: one vantage's check, side by side with the others."""

    vantage: str
    status: str
    id: NotRequired[str]
    ok: NotRequired[bool]
    outcome: NotRequired[Outcome]
    stage: NotRequired[Stage]
    summary: NotRequired[str]
    address: NotRequired[str | None]
    worker: NotRequired[str | None]
    error: NotRequired[str]


class FanOutVerdict(TypedDict):
    """The result of a ``vantage: "all"`` check: every vantage's verdict."""

    ok: bool
    outcome: Outcome
    summary: str
    vantages: list[VantageRow]


# ---------------------------------------------------------------------------
# The API's response bodies that carry the contract's data: a check's
# document (also what its webhook POSTs, smtpcheck/document.py), a page of
# checks, a new check, the vantages. openapi.yaml's components for them are
# generated from these types, like the result's.
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class JSONSchema:
    """JSON Schema keywords a type cannot say, for ``Annotated``:
    ``Annotated[str, JSONSchema(format="date-time")]``."""

    format: str | None = None
    pattern: str | None = None

    def keywords(self) -> dict[str, str]:
        return {key: value for key, value in vars(self).items() if value is not None}


STATUSES = ("queued", "running", "retrying", "finished", "failed", "canceled")
CheckStatus = Literal["queued", "running", "retrying", "finished", "failed", "canceled"]
CHECK_ID_PATTERN = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
CheckId = Annotated[str, JSONSchema(pattern=CHECK_ID_PATTERN)]
Timestamp = Annotated[str, JSONSchema(format="date-time"), "UTC, ISO 8601"]


class Links(TypedDict):
    self: Annotated[str, "this check"]
    transcript: Annotated[str, "its text transcript"]


class CallbackAttempt(TypedDict):
    at: Timestamp
    status_code: Annotated[int | None, "the receiver's HTTP status"]
    error: Annotated[str | None, "why the attempt failed (no answer, a non-2xx, a redirect)"]
    duration_ms: float
    address: Annotated[str | None, "the address dialled"]


class CallbackDelivery(TypedDict):
    status: Literal["pending", "retrying", "delivered", "failed"]
    attempts: list[CallbackAttempt]
    next_attempt_at: NotRequired[Timestamp]  # status retrying: when the next POST goes


class _CheckEnvelope(TypedDict):
    id: CheckId
    status: CheckStatus
    vantage: str
    created_at: Timestamp
    started_at: Timestamp | None
    ended_at: Timestamp | None
    request: Annotated[
        CheckRequest, f"the normalized request; AUTH password shown as {SECRET_MASK}"
    ]
    error: Annotated[str | None, "why the check failed to run (status failed), else null"]
    attempts: NotRequired[
        Annotated[list[AttemptSummary], "status retrying: the attempts so far (greylisting)"]
    ]
    next_attempt_at: NotRequired[Timestamp | None]  # status retrying: when it runs again
    vantages: NotRequired[
        Annotated[
            list[VantageRow],
            'vantage "all": each vantage\'s check (id, status, ok, outcome, summary, address, '
            "worker) side by side",
        ]
    ]
    callback: NotRequired[
        Annotated[CallbackDelivery, "with a callback: how its webhook delivery stands"]
    ]
    links: Links


class CheckDocument(_CheckEnvelope):
    """A check as ``GET /v1/checks/{id}`` returns it, and its webhook POSTs it."""

    result: Annotated[
        CheckResult | FanOutVerdict | None,
        "the worker's result once finished (for vantage \"all\", every vantage's verdict "
        "side by side); else null",
    ]


class ListedCheck(_CheckEnvelope):
    """A check as ``GET /v1/checks`` lists it: its document, the result without transcript."""

    result: Annotated[
        ListedResult | FanOutVerdict | None,
        "the result without its transcript once finished; else null",
    ]


class CheckPage(TypedDict):
    """One page of ``GET /v1/checks``, newest first."""

    items: list[ListedCheck]
    next: Annotated[str | None, "pass it back as cursor for the next page; null on the last"]


class CheckCreated(TypedDict):
    id: CheckId
    status: Literal["queued"]
    vantage: str
    created_at: Timestamp
    links: Links


class Vantage(TypedDict):
    name: str
    workers: Annotated[int, "live workers"]
    queued: Annotated[int, "checks waiting"]
