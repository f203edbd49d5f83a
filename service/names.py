"""Host names, IP literals and mail addresses, as the SMTP wire needs them.

Pure syntax: nothing here resolves a name or opens a socket (``inet_aton``
only parses). Every function raises ``ValueError`` with a message fit for a
422 response, so the schemas can hand it to the caller unchanged.

A resolver reads more than the dotted quad as an IPv4 address: ``inet_aton``
(which getaddrinfo uses) takes ``2130706433``, ``0x7f000001``,
``0177.0.0.1``, ``127.1`` and mixes of those. Such a host is refused, whatever
address it spells, with a message naming that address, so no spelling can
carry a forbidden address past the target policy as a "host name".
"""

from __future__ import annotations

import re
import socket
from ipaddress import IPv4Address, IPv6Address, ip_address

import idna  # IDNA 2008 + UTS 46, what browsers and modern resolvers use

from smtpcheck.contract import NO_CONTROLS_PATTERN, NO_CONTROLS_TEXT_PATTERN, control_character
from smtpcheck.targetpolicy import forbidden_reason

IPAddress = IPv4Address | IPv6Address

#: The rule as a JSON Schema (ECMA 262) pattern, for openapi.yaml.
WIRE_SAFE_PATTERN = NO_CONTROLS_PATTERN
WIRE_SAFE_TEXT_PATTERN = NO_CONTROLS_TEXT_PATTERN
_WIRE_SAFE = re.compile(WIRE_SAFE_PATTERN)
_WIRE_SAFE_TEXT = re.compile(WIRE_SAFE_TEXT_PATTERN)

MAX_HOSTNAME = 253
MAX_LABEL = 63
MAX_ADDRESS_OCTETS = 254
MAX_LOCAL_PART_OCTETS = 64

#: What ``ipaddress.ip_address`` can read as an address: an IPv4 address is ASCII
#: digits and dots, an IPv6 one ASCII hex digits, colons (at least one) and dots
#: (a zone index is refused before). A host name matches neither, so it is told
#: apart without the dozen calls of ip_address's two failed parses.
_MAYBE_IP_ADDRESS = re.compile(r"[0-9.]+|[0-9a-fA-F.]*:[0-9a-fA-F:.]*")
#: A dotted quad as ipaddress writes and reads it (decimal, no leading zero): read
#: by inet_aton in C, where ip_address spends seven calls.
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_DOTTED_QUAD = re.compile(rf"{_OCTET}\.{_OCTET}\.{_OCTET}\.{_OCTET}")
#: Only these characters can make up an IPv4 address in inet_aton's syntax.
_INET_ATON_CHARS = re.compile(r"[0-9a-fA-FxX.]+\Z")
_LDH_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\Z")
# RFC 5321 atext, extended with any non-ASCII character for SMTPUTF8 (RFC 6531).
_ATOM = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\-\u0080-\U0010ffff]+\Z")
# Inside a quoted local part: printable ASCII or non-ASCII, backslash pairs.
_QUOTED = re.compile(r'"(?:[\x20\x21\x23-\x5b\x5d-\x7e\u0080-\U0010ffff]|\\[\x20-\x7e])*"\Z')


def ensure_wire_safe(value: str, *, allow_tab: bool = False) -> None:
    """Refuse every control character and line separator (CR, LF and NUL
    first among them): no request may smuggle an SMTP command or a header,
    or hand the worker a string it cannot put on the wire."""
    if (_WIRE_SAFE_TEXT if allow_tab else _WIRE_SAFE).fullmatch(value) is not None:
        return  # the common case, decided in C; the loop below names what it found
    found = control_character(value, allow_tab=allow_tab)
    if found is not None:
        raise ValueError(f"must not contain control characters or line separators: {found}")


def parse_ip_literal(text: str) -> IPAddress | None:
    """``192.0.2.1``, ``2001:db8::1`` or ``[2001:db8::1]`` as an address; else None.

    A zone index (``fe80::1%eth0``) is refused: it names an interface of the
    machine that happens to run the check.
    """
    candidate = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    if "%" in candidate:
        raise ValueError("an IPv6 zone index (%...) is not allowed")
    address: IPAddress | None = None
    if _DOTTED_QUAD.fullmatch(candidate):
        address = IPv4Address(socket.inet_aton(candidate))
    elif _MAYBE_IP_ADDRESS.fullmatch(candidate):
        try:
            address = ip_address(candidate)
        except ValueError:
            address = None
    if address is None:
        if candidate is not text:
            raise ValueError(f"{text!r} is not an IP address in brackets")
        return None
    if candidate is not text and address.version != 6:
        raise ValueError("only IPv6 addresses are written in brackets")
    return address


def inet_aton_address(text: str) -> IPv4Address | None:
    """The IPv4 address a resolver reads ``text`` as (``inet_aton``), or None.

    ``2130706433``, ``0x7f000001``, ``0177.0.0.1``, ``127.1``, ``127.0.1``,
    ``0x7f.0.0.1`` and each of those with a trailing dot all read as
    127.0.0.1; so does the plain ``127.0.0.1``.
    """
    name = text[:-1] if text.endswith(".") else text
    if not name or not _INET_ATON_CHARS.match(name):
        return None
    try:
        return IPv4Address(socket.inet_aton(name))
    except (OSError, ValueError):
        return None


class IPv4Spelling(ValueError):
    """A "name" that resolvers read as an IPv4 address (``0x7f000001``)."""

    def __init__(self, text: str, address: IPv4Address) -> None:
        super().__init__(f"{text!r} is read by resolvers as the IPv4 address {address}")
        self.address = address


def to_ascii_hostname(text: str) -> str:
    """A host name in lower-case A-labels (IDNA), without a trailing dot.

    Raises ValueError unless every label is letters, digits and hyphens (at
    most 63 octets, no hyphen at either end), the whole name at most 253
    octets, the name is not an IPv4 address in any spelling ``inet_aton``
    accepts (after IDNA mapping, so full-width digits count too), and the
    last label not all digits (so ``1.2.3.999`` is refused rather than
    looked up).
    """
    ensure_wire_safe(text)
    name = text[:-1] if text.endswith(".") else text
    if not name:
        raise ValueError("the name is empty")
    if not name.isascii():
        name = _idna_encode(name)
    name = name.lower()
    spelled = inet_aton_address(name)
    if spelled is not None:
        raise IPv4Spelling(text, spelled)
    if len(name) > MAX_HOSTNAME:
        raise ValueError(f"the name is longer than {MAX_HOSTNAME} characters")
    labels = name.split(".")
    for label in labels:
        if not label:
            raise ValueError("the name has an empty label (two dots in a row, or a leading dot)")
        if len(label) > MAX_LABEL:
            raise ValueError(f"the name has a label longer than {MAX_LABEL} characters")
        if not _LDH_LABEL.match(label):
            raise ValueError(
                f"label {label!r} is not letters, digits and hyphens (no hyphen at either end)"
            )
    if labels[-1].isdigit():
        raise ValueError("neither an IP address nor a host name (all-numeric last label)")
    return name


def _idna_encode(name: str) -> str:
    try:
        return str(idna.encode(name, uts46=True).decode("ascii"))
    except (UnicodeError, ValueError) as exc:
        raise ValueError(f"not a valid internationalized domain name ({exc})") from None


def normalize_host(text: str) -> tuple[str, IPAddress | None]:
    """The host as the worker should receive it, and its address if it is a literal."""
    ensure_wire_safe(text)
    address = parse_ip_literal(text)
    if address is not None:
        return str(address), address
    try:
        return to_ascii_hostname(text), None
    except IPv4Spelling as exc:
        reason = forbidden_reason(exc.address)
        if reason is not None:
            raise ValueError(f"{exc} ({reason}); checks may not target it") from None
        raise ValueError(f"{exc}; write it as {exc.address}") from None


def normalize_helo(text: str) -> str:
    """An EHLO name: a host name (as A-labels) or an address literal in brackets."""
    ensure_wire_safe(text)
    if text.startswith("["):
        _address_literal(text)
        return text
    return to_ascii_hostname(text)


def check_mailbox(text: str) -> None:
    """Accept ``local@domain`` (RFC 5321, SMTPUTF8 allowed); raise ValueError otherwise."""
    ensure_wire_safe(text)
    if len(text.encode("utf-8")) > MAX_ADDRESS_OCTETS:
        raise ValueError(f"the address is longer than {MAX_ADDRESS_OCTETS} octets")
    local, at, domain = text.rpartition("@")
    if not at or not local:
        raise ValueError("not a mail address (local-part@domain)")
    if len(local.encode("utf-8")) > MAX_LOCAL_PART_OCTETS:
        raise ValueError(f"the local part is longer than {MAX_LOCAL_PART_OCTETS} octets")
    if local.startswith('"'):
        if not _QUOTED.match(local):
            raise ValueError("the quoted local part is malformed")
    elif not all(_ATOM.match(atom) for atom in local.split(".")):
        raise ValueError(
            "the local part is not a dot-atom (letters, digits, !#$%&'*+/=?^_`{|}~- and dots);"
            " quote it if it must hold other characters"
        )
    if domain.startswith("["):
        _address_literal(domain)
    else:
        try:
            to_ascii_hostname(domain)
        except ValueError as exc:
            raise ValueError(f"the domain is not valid: {exc}") from None


def _address_literal(text: str) -> IPAddress:
    """``[192.0.2.1]`` or ``[IPv6:2001:db8::1]`` (RFC 5321 section 4.1.3)."""
    if not (text.startswith("[") and text.endswith("]")):
        raise ValueError("not an address literal ([192.0.2.1] or [IPv6:2001:db8::1])")
    inner = text[1:-1]
    if "%" in inner:
        raise ValueError("an IPv6 zone index (%...) is not allowed")
    try:
        if inner[:5].lower() == "ipv6:":
            return IPv6Address(inner[5:])
        return IPv4Address(inner)
    except ValueError:
        raise ValueError("not an address literal ([192.0.2.1] or [IPv6:2001:db8::1])") from None
