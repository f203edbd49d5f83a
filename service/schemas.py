"""marshmallow schemas: the check request (validated and normalized) and
the small responses (health, problems), which ``service.spec`` turns into
openapi.yaml with the response bodies typed in ``smtpcheck.contract``.

The request schema depends on the operator's limits (recipients, message
size, timeouts, ports, allowed networks), so :func:`build_schemas` makes the
classes for one :class:`~smtpcheck.config.Settings`. Every schema raises on
unknown fields, nested ones too. Every string that reaches the SMTP wire
refuses every control character and line separator (CR, LF, NUL, VT, FF,
NEL, U+2028, ...; a TAB only where header text allows it). Booleans must be JSON booleans, ports and
``ip_version`` JSON integers, timeouts JSON numbers.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import cached_property
from ipaddress import ip_address
from typing import Any, NamedTuple

from marshmallow import RAISE, Schema, ValidationError, fields, missing, post_load, validate
from marshmallow.decorators import POST_LOAD
from marshmallow.types import StrSequenceOrSet, UnknownOption

from smtpcheck import signature
from smtpcheck.config import Settings
from smtpcheck.contract import (
    AUTH_DEFAULTS,
    CHECK_ID_PATTERN,
    MESSAGE_DEFAULTS,
    PROBES,
    PROBLEM_TYPES,
    REQUEST_DEFAULTS,
    SECRET_MASK,
    STAGES,
    VANTAGE_PATTERN,
    default_retry,
    default_timeouts,
)
from smtpcheck.message import build_message, header_problem
from smtpcheck.targetpolicy import (
    IPAddress,
    IPNetwork,
    allow_hint,
    describe_ports,
    forbidden_reason,
    http_target,
)

from . import names

TLS_MODES = ("none", "starttls", "implicit", "auto")
MECHANISMS = ("auto", "PLAIN", "LOGIN", "CRAM-MD5")
MX_HOSTS = ("first", "all")

HEADER_NAME_PATTERN = r"^[!-9;-~]{1,76}$"
NO_NUL_PATTERN = r"^[^\x00]*$"
MAX_HEADERS = 50
MAX_TLS_CA = 64 * 1024  # characters of PEM in tls_ca
MAX_TLS_CA_CERTIFICATES = 16
MAX_HELO = 255
MAX_LINE = 998  # RFC 5322 line length, for subject and header values
MAX_CALLBACK_URL = 2048


# ---------------------------------------------------------------------------
# validators and strict fields
# ---------------------------------------------------------------------------


class FullMatch(validate.Regexp):
    """A Regexp that must match the whole value (``$`` may not hide a newline)."""

    def __call__(self, value: Any) -> Any:
        if self.regex.fullmatch(value) is None:
            raise ValidationError(self._format_error(value))
        return value


class MaxOctets(validate.Validator):
    """At most ``limit`` octets once encoded as UTF-8."""

    def __init__(self, limit: int) -> None:
        self.limit = limit

    def __call__(self, value: str) -> str:
        if len(value.encode("utf-8")) > self.limit:
            raise ValidationError(f"longer than {self.limit} octets (UTF-8)")
        return value


class BoundedList(fields.List):
    """A list refused by its length before any item is parsed."""

    def __init__(self, cls_or_instance: Any, *, max_items: int, **kwargs: Any) -> None:
        super().__init__(cls_or_instance, validate=validate.Length(max=max_items), **kwargs)
        self.max_items = max_items

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if isinstance(value, list) and len(value) > self.max_items:
            raise ValidationError(f"at most {self.max_items} items")
        return super()._deserialize(value, attr, data, **kwargs)


class BoundedDict(fields.Dict):
    """An object refused by its size before any entry is parsed."""

    def __init__(self, *, max_entries: int, **kwargs: Any) -> None:
        metadata = {"maxProperties": max_entries, **kwargs.pop("metadata", {})}
        super().__init__(metadata=metadata, **kwargs)
        self.max_entries = max_entries

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if isinstance(value, dict) and len(value) > self.max_entries:
            raise ValidationError(f"at most {self.max_entries} entries")
        return super()._deserialize(value, attr, data, **kwargs)


class WireSafe(validate.Regexp):
    """No control character or line separator (a TAB allowed in header text);
    documented as the pattern, refused with a message naming the character."""

    def __init__(self, *, allow_tab: bool = False) -> None:
        pattern = names.WIRE_SAFE_TEXT_PATTERN if allow_tab else names.WIRE_SAFE_PATTERN
        super().__init__(pattern)
        self.allow_tab = allow_tab

    def __call__(self, value: Any) -> Any:
        try:
            names.ensure_wire_safe(value, allow_tab=self.allow_tab)
        except ValueError as exc:
            raise ValidationError(str(exc)) from None
        return value


def wire_safe(*, allow_tab: bool = False) -> WireSafe:
    return WireSafe(allow_tab=allow_tab)


class BuildableHeader(validate.Validator):
    """A header name the message builder takes from a caller."""

    def __call__(self, value: str) -> str:
        problem = header_problem(value)
        if problem is not None:
            raise ValidationError(problem)
        return value


class StrictBoolean(fields.Boolean):
    """``true`` or ``false`` only: not "yes", 1 or "true"."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> bool:
        if not isinstance(value, bool):
            raise self.make_error("invalid", input=value)
        return value


class JSONInteger(fields.Integer):
    """A JSON integer (``strict``: not 25.0, "25" or true); a plain ``int`` is taken
    as it is, where Integer's checks cost five calls (an ABC isinstance among them)
    to give back the same int."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(strict=True, **kwargs)

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> int:
        if type(value) is int:
            return value
        return super()._deserialize(value, attr, data, **kwargs)


class Seconds(fields.Float):
    """A JSON number of seconds (a string such as "10" is refused)."""

    def _validated(self, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.make_error("invalid", input=value)
        return super()._validated(value)


class Positive(validate.Validator):
    def __call__(self, value: float) -> float:
        if value <= 0:
            raise ValidationError("must be greater than 0")
        return value


def _wire_safe(text: str, max_length: int) -> str:
    """The cheap checks first, before any parsing: length, then CR/LF/NUL."""
    if len(text) > max_length:
        raise ValidationError(f"longer than {max_length} characters")
    try:
        names.ensure_wire_safe(text)
    except ValueError as exc:
        raise ValidationError(str(exc)) from None
    return text


class Host(fields.String):
    """A host name (IDN converted to A-labels) or an IP literal the policy allows."""

    def __init__(self, *, allow_networks: Iterable[IPNetwork] = (), **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.allow_networks = tuple(allow_networks)

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        text = _wire_safe(super()._deserialize(value, attr, data, **kwargs), names.MAX_HOSTNAME)
        try:
            host, address = names.normalize_host(text)
        except ValueError as exc:
            raise ValidationError(f"not a host name or IP address: {exc}") from None
        refuse_forbidden(host, address, self.allow_networks, "checks may not target it")
        return host


class TLSName(fields.String):
    """The name a certificate must carry: a host name (IDN as A-labels) or an
    IP address (then it is only verified, never sent as SNI)."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        text = _wire_safe(super()._deserialize(value, attr, data, **kwargs), names.MAX_HOSTNAME)
        try:
            return names.normalize_host(text)[0]
        except ValueError as exc:
            raise ValidationError(f"not a host name or IP address: {exc}") from None


class CertificatesPEM(fields.String):
    """PEM certificates, refused unless every block parses; given back as the
    canonical PEM of those certificates, so the worker reads exactly them."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        text = super()._deserialize(value, attr, data, **kwargs)
        if len(text) > MAX_TLS_CA:
            raise ValidationError(f"longer than {MAX_TLS_CA} characters")
        if not text.isascii():
            raise ValidationError("PEM is ASCII text")
        blocks = text.count("-----BEGIN ")
        if blocks == 0:
            raise ValidationError("no PEM block (-----BEGIN CERTIFICATE-----) found")
        if blocks > MAX_TLS_CA_CERTIFICATES:
            raise ValidationError(f"at most {MAX_TLS_CA_CERTIFICATES} certificates")
        if text.count("-----BEGIN CERTIFICATE-----") != blocks:
            raise ValidationError("only CERTIFICATE blocks are accepted (never a private key)")
        from cryptography import x509  # here: the CLI validates requests without it
        from cryptography.hazmat.primitives import serialization

        try:
            certificates = x509.load_pem_x509_certificates(text.encode("ascii"))
        except ValueError:
            raise ValidationError("a PEM block is not a parseable certificate") from None
        if len(certificates) != blocks:
            raise ValidationError("a PEM block is not a parseable certificate")
        return "".join(
            cert.public_bytes(serialization.Encoding.PEM).decode("ascii") for cert in certificates
        )


def refuse_forbidden(
    host: str, address: IPAddress | None, allow_networks: Iterable[IPNetwork], what: str
) -> None:
    """The target policy, as far as the API can judge it without DNS."""
    if address is None and (host == "localhost" or host.endswith(".localhost")):
        # RFC 6761: these names always mean loopback, whatever DNS says.
        address = ip_address("127.0.0.1")
    if address is not None:
        reason = forbidden_reason(address, allow_networks)
        if reason is not None:
            raise ValidationError(f"{address} is a {reason} address; {what}; {allow_hint(address)}")


class CallbackURL(fields.String):
    """A webhook URL through the HTTP target policy: scheme, port, and the same
    address table as a mail server (a host name is judged again by the worker,
    on the address it resolves)."""

    def __init__(self, *, settings: Settings, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.settings = settings

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        text = super()._deserialize(value, attr, data, **kwargs)
        if len(text) > MAX_CALLBACK_URL:
            raise ValidationError(f"longer than {MAX_CALLBACK_URL} characters")
        try:
            target = http_target(
                text, self.settings.callback_ports, allow_http=self.settings.callback_http
            )
            host, address = names.normalize_host(target.host)
        except ValueError as exc:
            raise ValidationError(str(exc)) from None
        refuse_forbidden(
            host,
            address,
            self.settings.allow_networks,
            "webhooks may not go there unless the operator allows its network",
        )
        return replace(target, host=host).url


class CallbackSecret(validate.Validator):
    def __call__(self, value: str) -> str:
        try:
            signature.signing_key(value)
        except ValueError as exc:
            raise ValidationError(str(exc)) from None
        return value


class Helo(fields.String):
    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        text = _wire_safe(super()._deserialize(value, attr, data, **kwargs), MAX_HELO)
        try:
            return names.normalize_helo(text)
        except ValueError as exc:
            raise ValidationError(f"not a host name or address literal: {exc}") from None


class Mailbox(fields.String):
    """A mail address; with ``null_sender=True`` also ``""``."""

    def __init__(self, *, null_sender: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.null_sender = null_sender

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        text = super()._deserialize(value, attr, data, **kwargs)
        text = _wire_safe(text, names.MAX_ADDRESS_OCTETS)
        if text == "" and self.null_sender:
            return text
        try:
            names.check_mailbox(text)
        except ValueError as exc:
            raise ValidationError(f"not a valid mail address: {exc}") from None
        return text


def wire_string(
    *, max_length: int, min_length: int | None = None, allow_tab: bool = False, **kwargs: Any
) -> fields.String:
    return fields.String(
        validate=[validate.Length(min=min_length, max=max_length), wire_safe(allow_tab=allow_tab)],
        **kwargs,
    )


def message_text(*, max_octets: int, **kwargs: Any) -> fields.String:
    return fields.String(
        validate=[
            validate.Length(max=max_octets),
            MaxOctets(max_octets),
            FullMatch(NO_NUL_PATTERN, error="must not contain NUL"),
        ],
        **kwargs,
    )


def default_of(defaults: Mapping[str, Any], name: str) -> Any:
    """A field's ``load_default``, taken from the contract's defaults (the one
    place that knows them); a list or object as a factory of fresh copies."""
    value = defaults[name]
    if isinstance(value, list | dict):
        return fresh_copies(value)
    return value


def fresh_copies(value: list[Any] | dict[str, Any]) -> Callable[[], Any]:
    """A factory of copies of ``value`` that share nothing mutable with it: its own
    ``copy`` (no Python call) when it holds no list or dict, else :func:`_fresh`."""
    items = value.values() if isinstance(value, dict) else value
    if any(isinstance(item, list | dict) for item in items):
        return lambda: _fresh(value)
    return value.copy


def _fresh(value: Any) -> Any:
    """A copy of a default made of lists, dicts and scalars (``copy.deepcopy`` without
    its memo and dispatch: a request takes several of these)."""
    if isinstance(value, dict):
        return {key: _fresh(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_fresh(item) for item in value]
    return value


class FieldPlan(NamedTuple):
    """How :class:`RequestSchema` loads one of its fields."""

    name: str
    field: fields.Field
    #: Its ``load_default`` (``missing`` if it has none), and whether that is a factory.
    default: Any
    factory: bool
    #: Whether its ``deserialize`` of a value (not None) is marshmallow's own
    #: ``Field.deserialize``: its ``_deserialize``, then each validator (a Validator
    #: raises; none returns False), with no pre- or post-load function.
    direct: bool


class StrictSchema(Schema):
    class Meta:
        unknown = RAISE


class RequestSchema(StrictSchema):
    """A strict schema that loads a valid body in one pass of its own over the
    fields, and leaves an invalid one to marshmallow, which names every problem;
    :meth:`whole_errors` judges the complete request either way.

    marshmallow's load costs about twenty Python calls before and around the
    fields (its error store, a getter and a store per field, the hooks) and takes
    every declared field through its machinery, given or not; a check request
    gives a few of its 22 fields. Here a body with no unknown field has each field
    it gives deserialized by the field itself (the steps of ``Field.deserialize``:
    its ``_deserialize``, then its validators, called in turn where nothing overrides
    them), and each it leaves out takes its ``load_default`` directly. The
    first ValidationError, from a field or from the rules across fields, hands the
    body to marshmallow's own load (its ``partial`` naming the fields left out, so
    :meth:`completed` fills them in), so a refusal lists what marshmallow's lists.
    The outcome is marshmallow's: the same fields in the same order, or the same
    errors (tests/service/test_validation.py compares the two on generated bodies).
    """

    def load(
        self,
        data: Mapping[str, Any] | Sequence[Mapping[str, Any]],
        *,
        many: bool | None = None,
        partial: bool | StrSequenceOrSet | None = None,
        unknown: UnknownOption | None = None,
    ) -> Any:
        if partial is None and not many and isinstance(data, Mapping):
            if unknown is None and data.keys() <= self.field_names:
                complete = self._lean_load(data)
                if complete is not None:
                    return complete
            partial = [
                name
                for name, _, default, _, _ in self.defaults
                if default is not missing and name not in data
            ]
        return super().load(data, many=many, partial=partial, unknown=unknown)

    def _lean_load(self, data: Mapping[str, Any]) -> dict[str, Any] | None:
        """The complete request of a body with no unknown field, or None if any field
        or rule refuses it. A field gets what marshmallow's load would give it: the
        value, its name, the body and an empty ``partial`` (a nested object is whole)."""
        complete: dict[str, Any] = {}
        try:
            for name, field, default, factory, direct in self.defaults:
                value = data.get(name, missing)
                if value is None or (value is not missing and not direct):
                    complete[name] = field.deserialize(value, name, data, partial=())
                elif value is not missing:  # Field.deserialize's steps for a value
                    value = field._deserialize(value, name, data, partial=())
                    for validator in field.validators:
                        validator(value)
                    complete[name] = value
                elif default is missing:
                    return None  # a required field left out
                else:
                    complete[name] = default() if factory else default
        except ValidationError:
            return None
        return None if self.whole_errors(complete) else complete

    @cached_property
    def field_names(self) -> frozenset[str]:
        return frozenset(self.load_fields)

    @cached_property
    def defaults(self) -> list[FieldPlan]:
        """Every field in its order, and how it is loaded."""
        skipped = {hook for hook, methods in self._hooks.items() if methods} - {POST_LOAD}
        if skipped or self.many or len(self._hooks[POST_LOAD]) != 1:
            raise TypeError(f"hooks the lean load would skip are not supported here: {skipped}")
        found = []
        for name, field in self.load_fields.items():
            if field.data_key is not None or field.attribute is not None:
                raise TypeError(f"{name}: data_key and attribute are not supported here")
            direct = (
                type(field).deserialize is fields.Field.deserialize
                and type(field)._validate is fields.Field._validate
                and type(field)._validate_all is fields.Field._validate_all
                and not field.pre_load
                and not field.post_load
                and all(isinstance(check, validate.Validator) for check in field.validators)
            )
            default = field.load_default
            found.append(FieldPlan(name, field, default, callable(default), direct))
        return found

    @post_load
    def completed(self, data: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        """Every field in its order: as loaded, or its default if the body left it out."""
        complete: dict[str, Any] = {}
        for name, _, default, factory, _ in self.defaults:
            if name in data:
                complete[name] = data[name]
            elif default is not missing:
                complete[name] = default() if factory else default
        errors = self.whole_errors(complete)
        if errors:
            raise ValidationError(errors)
        return complete

    def whole_errors(self, data: dict[str, Any]) -> dict[str, list[str]]:
        """What the rules across fields refuse in the complete ``data``, by field."""
        return {}


# ---------------------------------------------------------------------------
# the check request, per Settings
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Schemas:
    """The schemas that depend on Settings, built once per app."""

    check_request: type[RequestSchema]


def build_schemas(settings: Settings) -> Schemas:
    limits = settings.limits
    caps = limits.max_timeouts
    defaults = default_timeouts(settings)
    retry_defaults = default_retry(settings)
    ports = sorted(settings.allowed_ports)
    port_list = describe_ports(ports)

    def seconds(default: float, cap: float, what: str) -> Seconds:
        return Seconds(
            load_default=default,
            validate=[Positive(), validate.Range(max=cap)],
            metadata={
                "description": f"{what}, in seconds (default {default:g}, at most {cap:g})",
                "exclusiveMinimum": 0,
            },
        )

    class TimeoutsSchema(StrictSchema):
        connect = seconds(defaults["connect"], caps.connect, "deadline for the TCP connect")
        command = seconds(defaults["command"], caps.command, "deadline for each server reply")
        total = seconds(defaults["total"], caps.total, "deadline for the whole check")

    class AuthSchema(StrictSchema):
        username = wire_string(min_length=1, max_length=255, required=True)
        password = fields.String(
            required=True,
            validate=[validate.Length(max=1024), wire_safe(allow_tab=True)],
            metadata={"description": f"sent sealed to the worker; shown back as {SECRET_MASK}"},
        )
        mechanism = fields.String(
            load_default=default_of(AUTH_DEFAULTS, "mechanism"), validate=validate.OneOf(MECHANISMS)
        )
        allow_plaintext = StrictBoolean(
            load_default=default_of(AUTH_DEFAULTS, "allow_plaintext"),
            metadata={
                "description": "send the credentials even over a connection without TLS "
                "(tls none always allows it)"
            },
        )

    class MessageSchema(StrictSchema):
        subject = wire_string(
            max_length=MAX_LINE,
            allow_tab=True,
            load_default=default_of(MESSAGE_DEFAULTS, "subject"),
        )
        body = message_text(
            max_octets=limits.max_message_bytes,
            load_default=default_of(MESSAGE_DEFAULTS, "body"),
            metadata={"description": "message body; the worker builds the headers around it"},
        )
        headers = BoundedDict(
            max_entries=MAX_HEADERS,
            keys=fields.String(
                validate=[
                    FullMatch(
                        HEADER_NAME_PATTERN,
                        error="header names are 1-76 printable ASCII characters without ':'",
                    ),
                    BuildableHeader(),
                ]
            ),
            values=wire_string(max_length=MAX_LINE, allow_tab=True),
            load_default=default_of(MESSAGE_DEFAULTS, "headers"),
            metadata={
                "description": "extra header fields; names are printable ASCII without ':'; "
                "no Content-* or MIME-Version (the builder writes one text/plain part)"
            },
        )

    class RetrySchema(StrictSchema):
        attempts = JSONInteger(
            load_default=retry_defaults["attempts"],
            validate=validate.Range(min=1, max=limits.max_retry_attempts),
            metadata={"description": "attempts in all, the first included"},
        )
        delay = Seconds(
            load_default=retry_defaults["delay"],
            validate=[validate.Range(min=1, max=limits.max_retry_delay)],
            metadata={"description": "seconds between attempts (greylisting waits ~5 min)"},
        )

    callback_schemes = "https or http" if settings.callback_http else "https"
    callback_ports = ", ".join(map(str, sorted(settings.callback_ports)))

    class CallbackSchema(StrictSchema):
        url = CallbackURL(
            settings=settings,
            required=True,
            metadata={
                "description": f"where to POST the check once it ends: {callback_schemes}, "
                f"port {callback_ports}; the same address rules as a mail server (no "
                "loopback, private, link-local, ... address); redirects are not followed",
                "maxLength": MAX_CALLBACK_URL,
            },
        )
        secret = fields.String(
            required=True,
            validate=CallbackSecret(),
            metadata={
                "description": "signs each POST the Standard Webhooks way: whsec_ and the "
                f"base64 of {signature.MIN_KEY_BYTES}-{signature.MAX_KEY_BYTES} bytes, or "
                f"{signature.MIN_SECRET}-{signature.MAX_SECRET} characters used as they "
                f"are; sent sealed to the worker, shown back as {SECRET_MASK}",
                "maxLength": signature.MAX_SECRET,
            },
        )

    class CheckRequestSchema(RequestSchema):
        host = Host(
            required=True,
            allow_networks=settings.allow_networks,
            validate=[validate.Length(min=1, max=names.MAX_HOSTNAME), wire_safe()],
            metadata={
                "description": "host name (IDN accepted, sent as A-labels) or IP literal; "
                "with mx true, a mail domain. Loopback, private, link-local, CGNAT, "
                "multicast, reserved and documentation addresses are refused.",
            },
        )
        mx = StrictBoolean(
            load_default=default_of(REQUEST_DEFAULTS, "mx"),
            metadata={"description": "resolve host as a mail domain (MX, then A/AAAA)"},
        )
        mx_hosts = fields.String(
            load_default=default_of(REQUEST_DEFAULTS, "mx_hosts"),
            validate=validate.OneOf(MX_HOSTS),
            metadata={
                "description": "with mx true: stop at the first MX host that answers, "
                "or check all of them"
            },
        )
        port = JSONInteger(
            load_default=default_of(REQUEST_DEFAULTS, "port"),
            error_messages={"invalid": 'must be a JSON integer such as 25 (not 25.0 or "25")'},
            metadata={"description": f"TCP port; this service allows {port_list}"},
            validate=validate.OneOf(
                ports,
                error=f"port {{input}} is not allowed; allowed ports: {port_list} "
                "(the operator sets them with SMTPCHECK_ALLOWED_PORTS)",
            ),
        )
        tls = fields.String(
            load_default=default_of(REQUEST_DEFAULTS, "tls"),
            validate=validate.OneOf(TLS_MODES),
            metadata={
                "description": "none; starttls (required); implicit (TLS on connect); "
                "auto (STARTTLS when offered, implicit on 465)"
            },
        )
        tls_verify = StrictBoolean(
            load_default=default_of(REQUEST_DEFAULTS, "tls_verify"),
            metadata={"description": "an untrusted or mismatched certificate fails the check"},
        )
        tls_name = TLSName(
            load_default=default_of(REQUEST_DEFAULTS, "tls_name"),
            allow_none=True,
            validate=[validate.Length(min=1, max=names.MAX_HOSTNAME), wire_safe()],
            metadata={
                "description": "the name sent as SNI and verified against the certificate "
                "(for a server checked by IP, or an MX host by its MX name); an IP address "
                "is verified, never sent as SNI. null: host when it is a name, nothing "
                "verified for an IP literal"
            },
        )
        tls_ca = CertificatesPEM(
            load_default=default_of(REQUEST_DEFAULTS, "tls_ca"),
            allow_none=True,
            validate=validate.Length(min=1, max=MAX_TLS_CA),
            metadata={
                "description": "extra CA certificates (PEM, at most "
                f"{MAX_TLS_CA_CERTIFICATES}) trusted for this check on top of the worker's "
                "system store and SMTPCHECK_CA_FILE"
            },
        )
        helo = Helo(
            load_default=default_of(REQUEST_DEFAULTS, "helo"),
            allow_none=True,
            validate=[validate.Length(min=1, max=MAX_HELO), wire_safe()],
            metadata={"description": "EHLO name; null means the worker's configured name"},
        )
        auth = fields.Nested(
            AuthSchema, load_default=default_of(REQUEST_DEFAULTS, "auth"), allow_none=True
        )
        mail_from = Mailbox(
            null_sender=True,
            load_default=default_of(REQUEST_DEFAULTS, "mail_from"),
            allow_none=True,
            validate=[validate.Length(max=names.MAX_ADDRESS_OCTETS), wire_safe()],
            metadata={"description": 'envelope sender; "" is the null sender'},
        )
        rcpt_to = BoundedList(
            Mailbox(validate=[validate.Length(min=1, max=names.MAX_ADDRESS_OCTETS), wire_safe()]),
            max_items=limits.max_recipients,
            load_default=default_of(REQUEST_DEFAULTS, "rcpt_to"),
            metadata={"description": "envelope recipients (SMTPUTF8 addresses accepted)"},
        )
        data = message_text(
            max_octets=limits.max_message_bytes,
            load_default=default_of(REQUEST_DEFAULTS, "data"),
            allow_none=True,
            metadata={"description": "a whole RFC 5322 message to send after DATA"},
        )
        message = fields.Nested(
            MessageSchema,
            load_default=default_of(REQUEST_DEFAULTS, "message"),
            allow_none=True,
            metadata={"description": "have a message built instead of giving data"},
        )
        stop_after = fields.String(
            load_default=default_of(REQUEST_DEFAULTS, "stop_after"),
            allow_none=True,
            validate=validate.OneOf(STAGES),
            metadata={"description": "last stage to run; null means the last the request implies"},
        )
        timeouts = fields.Nested(
            TimeoutsSchema,
            load_default=fresh_copies(dict(default_timeouts(settings))),
        )
        vantage = fields.String(
            load_default=default_of(REQUEST_DEFAULTS, "vantage"),
            validate=FullMatch(VANTAGE_PATTERN, error="not a vantage name"),
            metadata={
                "description": "worker pool to run the check (see GET /v1/vantages); "
                '"all" runs it at every vantage with live workers, under one id'
            },
        )
        ip_version = JSONInteger(
            load_default=default_of(REQUEST_DEFAULTS, "ip_version"),
            allow_none=True,
            validate=validate.OneOf((4, 6)),
            error_messages={"invalid": "must be the JSON integer 4 or 6"},
            metadata={"description": "dial only IPv4 or only IPv6; null means either"},
        )
        probes = BoundedList(
            fields.String(validate=validate.OneOf(PROBES)),
            max_items=len(PROBES),
            load_default=default_of(REQUEST_DEFAULTS, "probes"),
            metadata={
                "description": "extra short dialogues: open_relay (never sends DATA), "
                "starttls_required, vrfy, expn"
            },
        )
        retry_temporary = StrictBoolean(
            load_default=default_of(REQUEST_DEFAULTS, "retry_temporary"),
            metadata={"description": "re-run a check that ends in temporary_failure (greylisting)"},
        )
        retry = fields.Nested(
            RetrySchema,
            load_default=fresh_copies(dict(default_retry(settings))),
            metadata={"description": "with retry_temporary: how often and how long apart"},
        )

        callback = fields.Nested(
            CallbackSchema,
            load_default=default_of(REQUEST_DEFAULTS, "callback"),
            allow_none=True,
            metadata={"description": "a webhook: POST the check's document here when it ends"},
        )

        def whole_errors(self, data: dict[str, Any]) -> dict[str, list[str]]:
            errors = request_consistency_errors(data)
            if not errors and data["message"] is not None:
                problem = unbuildable(data, settings.helo_name)
                if problem is not None:
                    errors["message"] = [problem]
            return errors

    return Schemas(check_request=CheckRequestSchema)


def unbuildable(data: dict[str, Any], default_helo: str) -> str | None:
    """Why the worker could not build this request's message, or None: the
    shared builder is run once here, so a worker never meets one it cannot."""
    try:
        build_message(
            data["message"],
            mail_from=data["mail_from"],
            rcpt_to=data["rcpt_to"],
            helo=data["helo"] or default_helo,
            check_id="00000000-0000-0000-0000-000000000000",
        )
    except Exception as exc:  # whatever the email package refuses is the caller's 422
        return f"the message cannot be built: {exc}"
    return None


def request_consistency_errors(data: dict[str, Any]) -> dict[str, list[str]]:
    """Rules across fields: what ``stop_after`` needs, what DATA needs, and so on."""
    errors: dict[str, list[str]] = {}

    def add(field: str, message: str) -> None:
        errors.setdefault(field, []).append(message)

    literal = names.parse_ip_literal(data["host"])
    if data["mx_hosts"] != "first" and not data["mx"]:
        add("mx_hosts", "only means something with mx true")
    if len(set(data["probes"])) != len(data["probes"]):
        add("probes", "each probe may be asked for once")
    if "smuggling" in data["probes"] and (data["mail_from"] is None or not data["rcpt_to"]):
        add(
            "probes",
            "smuggling sends a test message of its own: it needs mail_from and rcpt_to "
            "(one the server accepts)",
        )
    if literal is not None and data["mx"]:
        add("host", "with mx true, host must be a mail domain, not an IP address")
    for tls_field in ("tls_name", "tls_ca"):
        if data[tls_field] is not None and data["tls"] == "none":
            add(tls_field, "tls 'none' sees no certificate")
    if literal is not None and data["ip_version"] not in (None, literal.version):
        add("ip_version", f"host is an IPv{literal.version} address")
    has_message = data["data"] is not None or data["message"] is not None
    if data["data"] is not None and data["message"] is not None:
        add("message", "give either data or message, not both")
    if data["rcpt_to"] and data["mail_from"] is None:
        add("mail_from", "required when rcpt_to is given (MAIL FROM comes before RCPT TO)")
    if has_message:
        if data["mail_from"] is None:
            add("mail_from", "required to send a message")
        if not data["rcpt_to"]:
            add("rcpt_to", "at least one recipient is required to send a message")
    stop = data["stop_after"]
    needs: dict[str, Callable[[], str | None]] = {
        "tls": lambda: "tls 'none' has no TLS stage" if data["tls"] == "none" else None,
        "auth": lambda: "auth is required to stop after auth" if data["auth"] is None else None,
        "mail": lambda: (
            "mail_from is required to stop after mail" if data["mail_from"] is None else None
        ),
        "rcpt": lambda: "rcpt_to is required to stop after rcpt" if not data["rcpt_to"] else None,
        "data": lambda: (
            "data or message is required to stop after data" if not has_message else None
        ),
    }
    if stop in needs:
        problem = needs[stop]()
        if problem is not None:
            add("stop_after", problem)
    return {field: list(dict.fromkeys(messages)) for field, messages in errors.items()}


# ---------------------------------------------------------------------------
# responses (static); those that carry the contract's data (a check, a page
# of checks, a new check, the vantages) are typed in smtpcheck.contract
# ---------------------------------------------------------------------------


class HealthSchema(StrictSchema):
    status = fields.String(required=True, validate=validate.OneOf(("ok",)))


class ProblemSchema(StrictSchema):
    """RFC 9457 problem details."""

    type = fields.String(required=True, validate=validate.OneOf(PROBLEM_TYPES))
    title = fields.String(required=True)
    status = fields.Integer(required=True)
    detail = fields.String(required=True)
    errors = fields.Dict(
        keys=fields.String(),
        values=fields.List(fields.String()),
        metadata={"description": "422 only: dotted field path -> messages"},
    )


def check_id_is_valid(check_id: str) -> bool:
    return re.fullmatch(CHECK_ID_PATTERN, check_id) is not None
