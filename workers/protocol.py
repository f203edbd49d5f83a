"""The SMTP client protocol without I/O.

Bytes in, events out; commands in, bytes out. Nothing here touches a socket,
a clock or a logger, so every rule can be tested with bytes alone:

- ``ReplyReader`` turns received bytes into reply lines and whole replies,
  never buffering more than one over-long line's worth of data.
- ``command`` formats a command line and refuses CR, LF and NUL.
- ``parse_ehlo`` reads the EHLO keywords and their parameters.
- AUTH encoders for PLAIN, LOGIN and CRAM-MD5.
- ``message_payload`` normalises line ends and dot-stuffs a message for DATA.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import re
from dataclasses import dataclass, field
from enum import Enum
from typing import NamedTuple

from workers.errors import LocalProtocolError, RemoteProtocolError

MAX_REPLY_LINE = 8192  # octets, CRLF included; RFC 5321 says 512, servers overshoot
MAX_REPLY_LINES = 100
MAX_COMMAND_LINE = 12288  # RFC 4954's limit for an AUTH line; ample for any command

_REPLY_LINE = re.compile(rb"([2-5][0-9][0-9])(?:([ -])(.*))?\Z", re.DOTALL)
_ENHANCED = re.compile(r"([245])\.([0-9]{1,3})\.([0-9]{1,3})(?=\s|\Z)")
_FORBIDDEN = re.compile(r"[\r\n\x00]")


class NeedData(Enum):
    """Returned by ``ReplyReader.next_line`` when it needs more bytes."""

    NEED_DATA = "NEED_DATA"


NEED_DATA = NeedData.NEED_DATA


@dataclass(frozen=True)
class Reply:
    """A whole server reply: one code, one or more lines of text."""

    code: int
    lines: tuple[str, ...] = ("",)
    # Worked out once: the reply table asks each of its rows about the same reply.
    #: The lines joined by LF.
    text: str = field(init=False, repr=False, compare=False)
    #: The RFC 3463 enhanced status code of the first line, e.g. ``5.7.1``.
    enhanced: str | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        match = _ENHANCED.match(self.lines[0]) if self.lines else None
        enhanced = None
        if match and match.group(1) == str(self.code)[0]:
            enhanced = ".".join(match.groups())
        object.__setattr__(self, "text", "\n".join(self.lines))
        object.__setattr__(self, "enhanced", enhanced)

    @property
    def positive(self) -> bool:
        return 200 <= self.code < 300

    @property
    def intermediate(self) -> bool:
        return 300 <= self.code < 400

    @property
    def transient(self) -> bool:
        return 400 <= self.code < 500

    @property
    def permanent(self) -> bool:
        return self.code >= 500

    def __str__(self) -> str:
        return f"{self.code} {self.text}".rstrip()


class ReplyLine(NamedTuple):
    """One received line; ``reply`` is set on the line that completes a reply."""

    code: int
    last: bool
    text: str
    raw: str  # the whole line as received, decoded, without CRLF
    reply: Reply | None = None


@dataclass
class ReplyReader:
    """Incremental reply parser with bounded buffering.

    ``receive_data(b"")`` means the peer closed; bytes after that are refused.
    """

    max_line: int = MAX_REPLY_LINE
    max_lines: int = MAX_REPLY_LINES
    _buffer: bytearray = field(default_factory=bytearray)
    _pending: list[ReplyLine] = field(default_factory=list)
    closed: bool = False

    def receive_data(self, data: bytes) -> None:
        if not data:
            self.closed = True
            return
        if self.closed:
            raise LocalProtocolError("data received after the connection closed")
        self._buffer += data
        # Bound what we hold: a line without LF that is already too long is garbage.
        if b"\n" not in self._buffer and len(self._buffer) > self.max_line:
            raise RemoteProtocolError(
                f"reply line longer than {self.max_line} bytes with no line end"
            )

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    @property
    def in_reply(self) -> bool:
        """True when part of a reply has been received."""
        return bool(self._pending) or bool(self._buffer)

    def next_line(self) -> ReplyLine | NeedData:
        end = self._buffer.find(b"\n")
        if end < 0:
            if len(self._buffer) > self.max_line:
                raise RemoteProtocolError(
                    f"reply line longer than {self.max_line} bytes with no line end"
                )
            return NEED_DATA
        if end + 1 > self.max_line:
            raise RemoteProtocolError(f"reply line longer than {self.max_line} bytes")
        line = bytes(self._buffer[:end])
        del self._buffer[: end + 1]
        if line.endswith(b"\r"):
            line = line[:-1]
        match = _REPLY_LINE.match(line)
        decoded = line.decode("utf-8", errors="backslashreplace")
        if match is None:
            raise RemoteProtocolError(f'not an SMTP reply line: "{printable(decoded, 60)}"')
        digits, separator, rest = match.groups()
        if rest is not None and b"\r" in rest:
            raise RemoteProtocolError(f'not an SMTP reply line: "{printable(decoded, 60)}"')
        code = int(digits)
        if self._pending and self._pending[0].code != code:
            raise RemoteProtocolError(
                f"multi-line reply changed its code from {self._pending[0].code} to {code}"
            )
        last = separator != b"-"
        if rest is None:
            text = ""
        elif line.isascii():  # the common case: the text after "250-", decoded once
            text = decoded[4:]
        else:
            text = rest.decode("utf-8", errors="backslashreplace")
        if not last:
            reply_line = ReplyLine(code=code, last=False, text=text, raw=decoded)
            self._pending.append(reply_line)
            if len(self._pending) >= self.max_lines:
                raise RemoteProtocolError(f"reply of more than {self.max_lines} lines")
            return reply_line
        reply = Reply(code=code, lines=(*[item.text for item in self._pending], text))
        self._pending = []
        return ReplyLine(code=code, last=True, text=text, raw=decoded, reply=reply)


def parse_reply(data: bytes) -> Reply:
    """The first whole reply in ``data`` (for tests and canned answers)."""
    reader = ReplyReader()
    reader.receive_data(data)
    while True:
        event = reader.next_line()
        if event is NEED_DATA:
            raise RemoteProtocolError("no whole reply in the data")
        assert not isinstance(event, NeedData)
        if event.reply is not None:
            return event.reply


def printable(text: str, limit: int = 200) -> str:
    """Text safe to show in one transcript line: controls escaped, length capped."""
    head = text[:limit]
    if head.isprintable():  # the common case, without a per-character loop
        return head + ("..." if len(text) > limit else "")
    shown = "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in head)
    return shown + ("..." if len(text) > limit else "")


# ---------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------


def check_wire_text(value: str, what: str = "value") -> str:
    """Refuse a string that could end a command line early or smuggle one in."""
    found = _FORBIDDEN.search(value)
    if found:
        name = {"\r": "CR", "\n": "LF", "\x00": "NUL"}[found.group()]
        raise LocalProtocolError(f"{what} contains {name}, which SMTP cannot carry")
    return value


def command(verb: str, *args: str) -> bytes:
    """Format one command line, e.g. ``command("MAIL", "FROM:<a@b>")``."""
    parts = [check_wire_text(verb, "command")]
    parts += [check_wire_text(arg, f"{verb} argument") for arg in args if arg != ""]
    line = " ".join(parts).encode("utf-8") + b"\r\n"
    if len(line) > MAX_COMMAND_LINE:
        raise LocalProtocolError(f"{verb} line longer than {MAX_COMMAND_LINE} bytes")
    return line


def mail_from(address: str, params: tuple[str, ...] = ()) -> bytes:
    """``MAIL FROM:<address>``; the empty string is the null sender ``<>``."""
    return command("MAIL", f"FROM:<{check_wire_text(address, 'sender')}>", *params)


def rcpt_to(address: str, params: tuple[str, ...] = ()) -> bytes:
    return command("RCPT", f"TO:<{check_wire_text(address, 'recipient')}>", *params)


# ---------------------------------------------------------------------------
# EHLO
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Capabilities:
    """What an EHLO reply says: the greeting and each keyword's parameters."""

    greeting: str
    keywords: dict[str, tuple[str, ...]]

    def __contains__(self, keyword: str) -> bool:
        return keyword.upper() in self.keywords

    @property
    def auth_mechanisms(self) -> tuple[str, ...]:
        return self.keywords.get("AUTH", ())

    @property
    def size(self) -> int | None:
        params = self.keywords.get("SIZE", ())
        if params and params[0].isascii() and params[0].isdigit():
            return int(params[0])
        return None


_KEYWORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*\Z")


def parse_ehlo(reply: Reply) -> Capabilities:
    """Parse a 250 EHLO reply (RFC 5321 4.1.1.1), with the old ``AUTH=`` form.

    Lines that are not keywords are skipped rather than fatal: servers add
    banners and jokes, and the check can still go on.
    """
    greeting = reply.lines[0] if reply.lines else ""
    keywords: dict[str, list[str]] = {}
    for line in reply.lines[1:]:
        words = line.split()
        if not words or not words[0].isascii():
            continue
        keyword, params = words[0].upper(), words[1:]
        if keyword.startswith("AUTH="):  # pre-RFC 4954 form: "AUTH=LOGIN PLAIN"
            params = [keyword[len("AUTH=") :], *params]
            keyword = "AUTH"
        if not _KEYWORD.match(keyword):
            continue
        if keyword == "AUTH":
            params = [p.upper() for p in params if p]
        current = keywords.setdefault(keyword, [])
        for param in params:  # each once, also when a line repeats one
            if param not in current:
                current.append(param)
    return Capabilities(greeting, {k: tuple(v) for k, v in keywords.items()})


# ---------------------------------------------------------------------------
# AUTH (RFC 4954, 4616; draft-murchison-sasl-login; RFC 2195)
# ---------------------------------------------------------------------------

LOGIN_USERNAME_PROMPT = "VXNlcm5hbWU6"  # base64 of "Username:"
LOGIN_PASSWORD_PROMPT = "UGFzc3dvcmQ6"  # base64 of "Password:"  # noqa: S105


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def auth_plain(username: str, password: str, authzid: str = "") -> str:
    """The PLAIN initial response: base64 of ``authzid NUL user NUL password``."""
    for value, what in ((username, "username"), (password, "password"), (authzid, "authzid")):
        if "\x00" in value:
            raise LocalProtocolError(f"{what} contains NUL, which AUTH PLAIN cannot carry")
    return b64(f"{authzid}\x00{username}\x00{password}".encode())


def auth_login(value: str) -> str:
    """One AUTH LOGIN answer (username or password), base64."""
    return b64(value.encode("utf-8"))


def decode_challenge(text: str) -> bytes:
    """The decoded payload of a ``334`` server challenge."""
    try:
        return base64.b64decode(text.strip().encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise RemoteProtocolError(f"334 challenge is not base64: {printable(text)!r}") from None


def auth_cram_md5(username: str, password: str, challenge_text: str) -> str:
    """The CRAM-MD5 answer: base64 of ``user SP hex(HMAC-MD5(password, challenge))``."""
    challenge = decode_challenge(challenge_text)
    digest = hmac.new(password.encode("utf-8"), challenge, "md5").hexdigest()
    return b64(f"{username} {digest}".encode())


# ---------------------------------------------------------------------------
# DATA
# ---------------------------------------------------------------------------

_LINE_END = re.compile(rb"\r\n|\r|\n")


def message_payload(message: bytes) -> bytes:
    """What goes after ``354``: CRLF line ends, dot-stuffed (RFC 5321 4.5.2),
    ending with ``CRLF . CRLF``."""
    lines = _LINE_END.split(message)
    if lines and lines[-1] == b"":
        lines.pop()
    stuffed = [b"." + line if line.startswith(b".") else line for line in lines]
    return b"".join(line + b"\r\n" for line in stuffed) + b".\r\n"
