"""The SMTP client protocol, tested with bytes alone (no sockets, no clocks)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
from collections.abc import Callable, Iterable

import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from workers.errors import CheckAborted, LocalProtocolError, RemoteProtocolError
from workers.protocol import (
    LOGIN_PASSWORD_PROMPT,
    LOGIN_USERNAME_PROMPT,
    MAX_COMMAND_LINE,
    MAX_REPLY_LINE,
    MAX_REPLY_LINES,
    NEED_DATA,
    Reply,
    ReplyLine,
    ReplyReader,
    auth_cram_md5,
    auth_login,
    auth_plain,
    command,
    decode_challenge,
    mail_from,
    message_payload,
    parse_ehlo,
    rcpt_to,
)

# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------


def drain(reader: ReplyReader) -> list[ReplyLine]:
    """Every line the reader can give now, stopping at NEED_DATA."""
    lines = []
    while (event := reader.next_line()) is not NEED_DATA:
        assert isinstance(event, ReplyLine)
        lines.append(event)
    return lines


def read_lines(chunks: Iterable[bytes], **limits: int) -> list[ReplyLine]:
    reader = ReplyReader(**limits)
    lines = []
    for chunk in chunks:
        reader.receive_data(chunk)
        lines += drain(reader)
    return lines


def read_replies(chunks: Iterable[bytes], **limits: int) -> list[Reply]:
    return [line.reply for line in read_lines(chunks, **limits) if line.reply is not None]


def whole(data: bytes) -> list[bytes]:
    return [data]


def byte_by_byte(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


def in_threes(data: bytes) -> list[bytes]:
    return [data[i : i + 3] for i in range(0, len(data), 3)]


def between_cr_and_lf(data: bytes) -> list[bytes]:
    """Cut every CRLF in two, so each line's CR arrives before its LF."""
    return [part for piece in data.split(b"\n") for part in (piece, b"\n")][:-1]


SPLITTERS: list[Callable[[bytes], list[bytes]]] = [
    whole,
    byte_by_byte,
    in_threes,
    between_cr_and_lf,
]

POSTFIX_EHLO = (
    b"250-mx.example.com\r\n"
    b"250-PIPELINING\r\n"
    b"250-SIZE 10240000\r\n"
    b"250-VRFY\r\n"
    b"250-ETRN\r\n"
    b"250-STARTTLS\r\n"
    b"250-AUTH PLAIN LOGIN\r\n"
    b"250-AUTH=PLAIN LOGIN\r\n"
    b"250-ENHANCEDSTATUSCODES\r\n"
    b"250-8BITMIME\r\n"
    b"250-DSN\r\n"
    b"250-SMTPUTF8\r\n"
    b"250 CHUNKING\r\n"
)


def ehlo(*lines: str) -> Reply:
    return Reply(250, ("mx.example.com", *lines))


# ---------------------------------------------------------------------------
# ReplyReader: well-formed replies
# ---------------------------------------------------------------------------


def test_reader_needs_data_before_anything_arrives() -> None:
    reader = ReplyReader()
    assert reader.next_line() is NEED_DATA
    assert not reader.in_reply
    assert reader.buffered == 0


@pytest.mark.parametrize("split", SPLITTERS)
def test_single_line_reply(split: Callable[[bytes], list[bytes]]) -> None:
    [line] = read_lines(split(b"220 mx.example.com ESMTP Postfix\r\n"))
    assert (line.code, line.last, line.text) == (220, True, "mx.example.com ESMTP Postfix")
    assert line.raw == "220 mx.example.com ESMTP Postfix"
    assert line.reply == Reply(220, ("mx.example.com ESMTP Postfix",))
    assert str(line.reply) == "220 mx.example.com ESMTP Postfix"


@pytest.mark.parametrize("split", SPLITTERS)
def test_multi_line_reply(split: Callable[[bytes], list[bytes]]) -> None:
    lines = read_lines(split(POSTFIX_EHLO))
    assert len(lines) == 13
    assert all(line.code == 250 for line in lines)
    assert [line.last for line in lines] == [False] * 12 + [True]
    assert [line.reply for line in lines[:-1]] == [None] * 12
    reply = lines[-1].reply
    assert reply is not None
    assert reply.lines[0] == "mx.example.com"
    assert reply.lines[-1] == "CHUNKING"
    assert len(reply.lines) == 13
    assert reply.text == "\n".join(line.text for line in lines)
    assert lines[1].raw == "250-PIPELINING"


def test_line_is_held_until_its_lf_arrives() -> None:
    reader = ReplyReader()
    reader.receive_data(b"250 ok\r")
    assert reader.next_line() is NEED_DATA
    assert reader.in_reply
    reader.receive_data(b"\n")
    [line] = drain(reader)
    assert line.reply == Reply(250, ("ok",))
    assert not reader.in_reply


def test_in_reply_while_a_multi_line_reply_is_open() -> None:
    reader = ReplyReader()
    reader.receive_data(b"250-first\r\n")
    drain(reader)
    assert reader.in_reply and reader.buffered == 0
    reader.receive_data(b"250 last\r\n")
    drain(reader)
    assert not reader.in_reply


@pytest.mark.parametrize("split", SPLITTERS)
def test_pipelined_replies_in_one_chunk(split: Callable[[bytes], list[bytes]]) -> None:
    data = b"250 2.1.0 Ok\r\n550 5.1.1 <x@y>: Recipient address rejected\r\n354 go ahead\r\n"
    assert read_replies(split(data)) == [
        Reply(250, ("2.1.0 Ok",)),
        Reply(550, ("5.1.1 <x@y>: Recipient address rejected",)),
        Reply(354, ("go ahead",)),
    ]


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"250\r\n", Reply(250, ("",))),
        (b"250 \r\n", Reply(250, ("",))),
        (b"250-\r\n250\r\n", Reply(250, ("", ""))),
        (b"250-a\r\n250 \r\n", Reply(250, ("a", ""))),
    ],
)
def test_bare_code_lines(data: bytes, expected: Reply) -> None:
    assert read_replies([data]) == [expected]


@pytest.mark.parametrize("split", SPLITTERS)
def test_lf_only_line_ends(split: Callable[[bytes], list[bytes]]) -> None:
    data = b"250-mx.example.com\n250-SIZE 1000\n250 HELP\n"
    assert read_replies(split(data)) == [Reply(250, ("mx.example.com", "SIZE 1000", "HELP"))]


def test_mixed_line_ends_in_one_reply() -> None:
    assert read_replies([b"250-a\n250-b\r\n250 c\n"]) == [Reply(250, ("a", "b", "c"))]


def test_text_keeps_its_spaces() -> None:
    assert read_replies([b"250  two  spaces \r\n"]) == [Reply(250, (" two  spaces ",))]


def test_text_that_is_not_utf8_is_escaped_not_fatal() -> None:
    [reply] = read_replies([b"250 caf\xe9 \xff\r\n"])
    assert reply.lines == ("caf\\xe9 \\xff",)


def test_utf8_text_is_decoded() -> None:
    [reply] = read_replies(["250 Grüße\r\n".encode()])
    assert reply.lines == ("Grüße",)


# ---------------------------------------------------------------------------
# Reply: classes and enhanced status codes
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        (220, "positive"),
        (250, "positive"),
        (334, "intermediate"),
        (354, "intermediate"),
        (421, "transient"),
        (451, "transient"),
        (550, "permanent"),
        (554, "permanent"),
    ],
)
def test_reply_classes(code: int, kind: str) -> None:
    reply = Reply(code, ("text",))
    kinds = ("positive", "intermediate", "transient", "permanent")
    assert {k: getattr(reply, k) for k in kinds} == {k: k == kind for k in kinds}


@pytest.mark.parametrize(
    ("code", "first_line", "expected"),
    [
        (250, "2.1.0 Ok", "2.1.0"),
        (250, "2.0.0", "2.0.0"),
        (550, "5.7.1 Relaying denied", "5.7.1"),
        (451, "4.7.1 Try again later", "4.7.1"),
        (553, "5.1.10 Recipient address has null MX", "5.1.10"),
        (554, "5.123.123 three digits each", "5.123.123"),
        (250, "5.1.1 class does not match the code", None),
        (550, "2.1.0 class does not match the code", None),
        (354, "3.0.0 there is no class 3", None),
        (250, "Ok", None),
        (250, "", None),
        (250, "2.1.0Ok", None),
        (250, "2.1 Ok", None),
        (250, "2.1.1234 Ok", None),
        (250, "2.1234.0 Ok", None),
        (250, " 2.1.0 leading space", None),
        (250, "x 2.1.0 not first", None),
    ],
)
def test_enhanced_status_code(code: int, first_line: str, expected: str | None) -> None:
    assert Reply(code, (first_line,)).enhanced == expected


def test_enhanced_status_code_comes_from_the_first_line() -> None:
    [reply] = read_replies([b"550-5.7.1 Access denied\r\n550 5.7.1 see https://x\r\n"])
    assert reply.enhanced == "5.7.1"
    assert Reply(250, ("mx.example.com", "2.0.0 later line")).enhanced is None
    assert Reply(250, ()).enhanced is None


def test_enhanced_status_code_read_from_bytes() -> None:
    [reply] = read_replies([b"550 5.7.1 <a@b>: Relay access denied\r\n"])
    assert (reply.code, reply.enhanced, reply.permanent) == (550, "5.7.1", True)


# ---------------------------------------------------------------------------
# ReplyReader: malformed replies
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b"garbage\r\n",
        b"abc\r\n",
        b"2500 x\r\n",
        b"250x\r\n",
        b"25\r\n",
        b"25 short code\r\n",
        b"\r\n",
        b"\n",
        b" 250 leading space\r\n",
        b"250\tok\r\n",
        b"150 not a class SMTP uses\r\n",
        b"650 not a class SMTP uses\r\n",
        b"2x0 ok\r\n",
        b"250 o\rk\r\n",
        b"250-\rx\r\n",
        b"\x00\x01\x02\xff\xfe\r\n",
        b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\n",  # a TLS ClientHello, say
        b"HTTP/1.1 400 Bad Request\r\n",
    ],
)
def test_malformed_line_is_a_remote_protocol_error(data: bytes) -> None:
    reader = ReplyReader()
    reader.receive_data(data)
    with pytest.raises(RemoteProtocolError, match="not an SMTP reply line") as raised:
        reader.next_line()
    assert isinstance(raised.value, CheckAborted)
    assert raised.value.outcome == "protocol_error"
    message = str(raised.value)
    assert all(ch.isprintable() for ch in message), message


def test_code_change_inside_a_multi_line_reply_is_refused() -> None:
    reader = ReplyReader()
    reader.receive_data(b"250-mx.example.com\r\n251 SIZE 100\r\n")
    assert reader.next_line() != NEED_DATA
    with pytest.raises(RemoteProtocolError, match="changed its code from 250 to 251"):
        reader.next_line()


def test_malformed_line_inside_a_multi_line_reply_is_refused() -> None:
    reader = ReplyReader()
    reader.receive_data(b"250-mx.example.com\r\nSIZE 100\r\n")
    reader.next_line()
    with pytest.raises(RemoteProtocolError):
        reader.next_line()


# ---------------------------------------------------------------------------
# ReplyReader: bounded buffering and limits
# ---------------------------------------------------------------------------


def line_of(total: int, *, end: bytes = b"\r\n") -> bytes:
    """A valid reply line of exactly ``total`` octets, line end included."""
    line = b"250 " + b"x" * (total - 4 - len(end)) + end
    assert len(line) == total
    return line


@pytest.mark.parametrize("end", [b"\r\n", b"\n"])
@pytest.mark.parametrize("split", [whole, in_threes])
def test_line_exactly_at_the_limit_is_accepted(
    end: bytes, split: Callable[[bytes], list[bytes]]
) -> None:
    [reply] = read_replies(split(line_of(MAX_REPLY_LINE, end=end)))
    assert reply.lines == ("x" * (MAX_REPLY_LINE - 4 - len(end)),)


@pytest.mark.parametrize("end", [b"\r\n", b"\n"])
@pytest.mark.parametrize("split", [whole, in_threes])
def test_line_one_over_the_limit_is_refused(
    end: bytes, split: Callable[[bytes], list[bytes]]
) -> None:
    with pytest.raises(RemoteProtocolError, match=f"longer than {MAX_REPLY_LINE} bytes"):
        read_lines(split(line_of(MAX_REPLY_LINE + 1, end=end)))


def test_unterminated_line_one_over_the_limit_is_refused_on_arrival() -> None:
    reader = ReplyReader(max_line=64)
    reader.receive_data(b"250 " + b"x" * 60)  # 64 octets, no LF yet: still possible
    with pytest.raises(RemoteProtocolError, match="no line end"):
        reader.receive_data(b"x")


def test_ten_megabytes_without_lf_are_refused_by_receive_data() -> None:
    reader = ReplyReader()
    chunk = b"2" * 10_000_000
    with pytest.raises(RemoteProtocolError, match="no line end"):
        reader.receive_data(chunk)
    assert reader.buffered <= MAX_REPLY_LINE + len(chunk)


def test_endless_trickle_without_lf_is_refused_within_the_limit() -> None:
    reader = ReplyReader()
    chunk = b"x" * 1000
    with pytest.raises(RemoteProtocolError):
        for _ in range(100):
            reader.receive_data(chunk)
            assert reader.next_line() is NEED_DATA
            assert reader.buffered <= MAX_REPLY_LINE
    assert reader.buffered <= MAX_REPLY_LINE + len(chunk)


def test_reply_of_exactly_max_lines_is_accepted() -> None:
    data = b"250-x\r\n" * (MAX_REPLY_LINES - 1) + b"250 end\r\n"
    [reply] = read_replies([data])
    assert len(reply.lines) == MAX_REPLY_LINES


def test_reply_of_more_than_max_lines_is_refused() -> None:
    data = b"250-x\r\n" * MAX_REPLY_LINES + b"250 end\r\n"
    with pytest.raises(RemoteProtocolError, match=f"more than {MAX_REPLY_LINES} lines"):
        read_lines([data])


def test_endless_continuation_lines_are_refused() -> None:
    reader = ReplyReader(max_lines=5)
    with pytest.raises(RemoteProtocolError):
        for _ in range(10):
            reader.receive_data(b"250-again\r\n")
            drain(reader)


def test_line_limit_counts_per_reply_not_per_connection() -> None:
    data = (b"250-x\r\n" * (MAX_REPLY_LINES - 1) + b"250 end\r\n") * 3
    assert len(read_replies([data])) == 3


# ---------------------------------------------------------------------------
# ReplyReader: end of stream
# ---------------------------------------------------------------------------


def test_empty_receive_marks_closed() -> None:
    reader = ReplyReader()
    reader.receive_data(b"221 bye\r\n")
    reader.receive_data(b"")
    assert reader.closed
    [line] = drain(reader)  # what arrived before the close is still readable
    assert line.reply == Reply(221, ("bye",))


def test_data_after_close_is_a_local_error() -> None:
    reader = ReplyReader()
    reader.receive_data(b"")
    with pytest.raises(LocalProtocolError, match="after the connection closed"):
        reader.receive_data(b"250 ok\r\n")


def test_close_in_the_middle_of_a_reply_leaves_it_visible() -> None:
    """The reader cannot finish the reply; the driver sees ``closed`` and ``in_reply``."""
    reader = ReplyReader()
    reader.receive_data(b"250-mx.example.com\r\n250-SIZE")
    drain(reader)
    reader.receive_data(b"")
    assert reader.next_line() is NEED_DATA
    assert reader.closed and reader.in_reply


# ---------------------------------------------------------------------------
# Property tests
# ---------------------------------------------------------------------------

_PIECES = st.one_of(
    st.binary(max_size=24),
    st.sampled_from(
        [b"250", b"550", b"-", b" ", b"\r", b"\n", b"\r\n", b"250-", b"250 ", b"5.7.1 ", b"x" * 40]
    ),
)


def cut(data: bytes, positions: list[int]) -> list[bytes]:
    bounds = [0, *sorted(positions), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds) if b > a]


@st.composite
def chunked(draw: st.DrawFn) -> list[bytes]:
    data = b"".join(draw(st.lists(_PIECES, max_size=40)))
    return cut(data, draw(st.lists(st.integers(0, len(data)), max_size=8)))


@hypothesis_settings(max_examples=300, deadline=None)
@given(chunks=chunked(), max_line=st.integers(8, 64), max_lines=st.integers(1, 6))
def test_any_bytes_give_lines_or_a_remote_protocol_error(
    chunks: list[bytes], max_line: int, max_lines: int
) -> None:
    reader = ReplyReader(max_line=max_line, max_lines=max_lines)
    try:
        for chunk in chunks:
            held = reader.buffered
            reader.receive_data(chunk)
            assert reader.buffered == held + len(chunk)
            # Never accumulates across reads: at most one line's worth plus
            # what just arrived (see test_reader_holds_an_over_long_tail).
            assert reader.buffered <= max_line + len(chunk)
            while True:
                before = reader.buffered
                event = reader.next_line()
                if event is NEED_DATA:
                    break
                assert isinstance(event, ReplyLine)
                assert before - reader.buffered <= max_line  # the line's octets
                assert event.code in range(200, 600)
                assert (event.reply is not None) == event.last
    except RemoteProtocolError:
        pass


_TEXT = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"), max_size=30
)


@hypothesis_settings(max_examples=200, deadline=None)
@given(
    replies=st.lists(
        st.tuples(st.integers(200, 599), st.lists(_TEXT, min_size=1, max_size=5)),
        min_size=1,
        max_size=5,
    ),
    lf_only=st.booleans(),
    data=st.data(),
)
def test_well_formed_replies_survive_any_chunking(
    replies: list[tuple[int, list[str]]], lf_only: bool, data: st.DataObject
) -> None:
    end = b"\n" if lf_only else b"\r\n"
    wire = b"".join(
        f"{code}{'-' if i < len(texts) - 1 else ' '}{text}".encode() + end
        for code, texts in replies
        for i, text in enumerate(texts)
    )
    chunks = cut(wire, data.draw(st.lists(st.integers(0, len(wire)), max_size=10)))
    assert read_replies(chunks, max_line=1024) == [
        Reply(code, tuple(texts)) for code, texts in replies
    ]


# ---------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("EHLO", "client.example.org"), b"EHLO client.example.org\r\n"),
        (("HELO", "[192.0.2.1]"), b"HELO [192.0.2.1]\r\n"),
        (("STARTTLS",), b"STARTTLS\r\n"),
        (("AUTH", "PLAIN", "AGFsaWNlAHMzY3JldA=="), b"AUTH PLAIN AGFsaWNlAHMzY3JldA==\r\n"),
        (("DATA",), b"DATA\r\n"),
        (("RSET",), b"RSET\r\n"),
        (("QUIT",), b"QUIT\r\n"),
        (("VRFY", "postmaster"), b"VRFY postmaster\r\n"),
        (("MAIL", "FROM:<a@b>", ""), b"MAIL FROM:<a@b>\r\n"),  # empty args are dropped
    ],
)
def test_command_formatting(args: tuple[str, ...], expected: bytes) -> None:
    assert command(*args) == expected


@pytest.mark.parametrize(("char", "name"), [("\r", "CR"), ("\n", "LF"), ("\x00", "NUL")])
def test_command_refuses_forbidden_characters_in_the_verb(char: str, name: str) -> None:
    with pytest.raises(LocalProtocolError, match=f"command contains {name}"):
        command(f"NO{char}OP")


@pytest.mark.parametrize(("char", "name"), [("\r", "CR"), ("\n", "LF"), ("\x00", "NUL")])
@pytest.mark.parametrize("position", ["start", "middle", "end"])
def test_command_refuses_forbidden_characters_in_arguments(
    char: str, name: str, position: str
) -> None:
    arg = {"start": char + "host", "middle": "ho" + char + "st", "end": "host" + char}[position]
    with pytest.raises(LocalProtocolError, match=f"EHLO argument contains {name}") as raised:
        command("EHLO", "fine.example", arg)
    assert isinstance(raised.value, ValueError)
    assert raised.value.outcome == "protocol_error"


@pytest.mark.parametrize(("char", "name"), [("\r", "CR"), ("\n", "LF"), ("\x00", "NUL")])
def test_addresses_refuse_forbidden_characters(char: str, name: str) -> None:
    with pytest.raises(LocalProtocolError, match=f"sender contains {name}"):
        mail_from(f"a{char}@example.org")
    with pytest.raises(LocalProtocolError, match=f"recipient contains {name}"):
        rcpt_to(f"b{char}@example.org")
    with pytest.raises(LocalProtocolError, match=f"MAIL argument contains {name}"):
        mail_from("a@example.org", (f"SIZE=1{char}",))
    with pytest.raises(LocalProtocolError, match=f"RCPT argument contains {name}"):
        rcpt_to("b@example.org", (f"NOTIFY=NEVER{char}",))


def test_smuggled_command_is_refused() -> None:
    with pytest.raises(LocalProtocolError):
        rcpt_to("x@example.org>\r\nRCPT TO:<victim@example.net")


def test_unicode_line_separators_are_not_line_ends_on_the_wire() -> None:
    line = command("EHLO", "a\u2028b\u0085c\u000bd")
    assert b"\r" not in line[:-2] and b"\n" not in line[:-2]


def test_mail_from_and_rcpt_to() -> None:
    assert mail_from("alice@example.org") == b"MAIL FROM:<alice@example.org>\r\n"
    assert rcpt_to("bob@example.net") == b"RCPT TO:<bob@example.net>\r\n"


def test_null_sender() -> None:
    assert mail_from("") == b"MAIL FROM:<>\r\n"


def test_parameters_follow_the_path() -> None:
    assert (
        mail_from("a@b.example", ("SIZE=1234", "BODY=8BITMIME"))
        == b"MAIL FROM:<a@b.example> SIZE=1234 BODY=8BITMIME\r\n"
    )
    assert (
        rcpt_to("c@d.example", ("NOTIFY=SUCCESS,FAILURE",))
        == b"RCPT TO:<c@d.example> NOTIFY=SUCCESS,FAILURE\r\n"
    )


def test_smtputf8_addresses_are_sent_as_utf8() -> None:
    line = mail_from("jörg@exämple.de", ("SMTPUTF8",))
    assert line == b"MAIL FROM:<j\xc3\xb6rg@ex\xc3\xa4mple.de> SMTPUTF8\r\n"
    assert rcpt_to("用户@例子.广告") == "RCPT TO:<用户@例子.广告>\r\n".encode()


def test_command_exactly_at_the_limit_is_accepted() -> None:
    filler = "A" * (MAX_COMMAND_LINE - len(b"AUTH PLAIN \r\n"))
    assert len(command("AUTH", "PLAIN", filler)) == MAX_COMMAND_LINE


def test_command_one_over_the_limit_is_refused() -> None:
    filler = "A" * (MAX_COMMAND_LINE - len(b"AUTH PLAIN \r\n") + 1)
    with pytest.raises(LocalProtocolError, match="longer than"):
        command("AUTH", "PLAIN", filler)


def test_command_limit_counts_utf8_octets_not_characters() -> None:
    # Each "ä" is two octets: this line has fewer characters than the limit but more octets.
    address = "ä" * (MAX_COMMAND_LINE // 2) + "@x"
    with pytest.raises(LocalProtocolError, match="longer than"):
        rcpt_to(address)


# ---------------------------------------------------------------------------
# EHLO
# ---------------------------------------------------------------------------


def test_parse_ehlo_postfix() -> None:
    [reply] = read_replies([POSTFIX_EHLO])
    caps = parse_ehlo(reply)
    assert caps.greeting == "mx.example.com"
    assert caps.keywords == {
        "PIPELINING": (),
        "SIZE": ("10240000",),
        "VRFY": (),
        "ETRN": (),
        "STARTTLS": (),
        "AUTH": ("PLAIN", "LOGIN"),
        "ENHANCEDSTATUSCODES": (),
        "8BITMIME": (),
        "DSN": (),
        "SMTPUTF8": (),
        "CHUNKING": (),
    }
    assert caps.size == 10_240_000
    assert caps.auth_mechanisms == ("PLAIN", "LOGIN")
    assert "STARTTLS" in caps
    assert "starttls" in caps
    assert "XCLIENT" not in caps


def test_parse_ehlo_lower_case_keywords() -> None:
    caps = parse_ehlo(ehlo("size 1000", "auth login plain cram-md5", "starttls", "8bitmime"))
    assert caps.keywords == {
        "SIZE": ("1000",),
        "AUTH": ("LOGIN", "PLAIN", "CRAM-MD5"),
        "STARTTLS": (),
        "8BITMIME": (),
    }
    assert caps.size == 1000


def test_parse_ehlo_merges_auth_lines_without_duplicates() -> None:
    caps = parse_ehlo(ehlo("AUTH LOGIN", "AUTH=LOGIN PLAIN", "AUTH CRAM-MD5 PLAIN"))
    assert caps.auth_mechanisms == ("LOGIN", "PLAIN", "CRAM-MD5")


def test_parse_ehlo_drops_a_parameter_repeated_on_one_line() -> None:
    caps = parse_ehlo(ehlo("AUTH PLAIN PLAIN login LOGIN", "X-THING a a b"))
    assert caps.auth_mechanisms == ("PLAIN", "LOGIN")
    assert caps.keywords["X-THING"] == ("a", "b")


def test_parse_ehlo_old_auth_form_alone() -> None:
    assert parse_ehlo(ehlo("AUTH=LOGIN")).auth_mechanisms == ("LOGIN",)
    assert parse_ehlo(ehlo("auth=login plain")).auth_mechanisms == ("LOGIN", "PLAIN")


def test_parse_ehlo_skips_junk_lines() -> None:
    caps = parse_ehlo(
        ehlo("", "   ", "*** Welcome! ***", "X_UNDERSCORE yes", "-DASH", "PIPELINING", "DSN")
    )
    assert caps.keywords == {"PIPELINING": (), "DSN": ()}


def test_parse_ehlo_single_line_reply_has_no_keywords() -> None:
    caps = parse_ehlo(Reply(250, ("mx.example.com Hello client [192.0.2.1]",)))
    assert caps.greeting == "mx.example.com Hello client [192.0.2.1]"
    assert caps.keywords == {}
    assert caps.auth_mechanisms == ()
    assert caps.size is None


def test_parse_ehlo_keeps_parameters_of_other_keywords() -> None:
    caps = parse_ehlo(ehlo("XCLIENT NAME ADDR PROTO", "DELIVERBY 300", "MT-PRIORITY MIXER"))
    assert caps.keywords["XCLIENT"] == ("NAME", "ADDR", "PROTO")
    assert caps.keywords["DELIVERBY"] == ("300",)
    assert caps.keywords["MT-PRIORITY"] == ("MIXER",)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("SIZE 52428800", 52_428_800),
        ("SIZE 0", 0),  # RFC 1870: no fixed limit
        ("SIZE", None),
        ("SIZE unlimited", None),
        ("SIZE -1", None),
        ("PIPELINING", None),
    ],
)
def test_size(line: str, expected: int | None) -> None:
    assert parse_ehlo(ehlo(line)).size == expected


# ---------------------------------------------------------------------------
# AUTH
# ---------------------------------------------------------------------------


def test_auth_plain_known_vector() -> None:
    assert auth_plain("alice", "s3cret") == base64.b64encode(b"\x00alice\x00s3cret").decode()


@pytest.mark.parametrize(
    ("authzid", "user", "password", "expected"),
    [
        # RFC 4616 section 4, first example: <NUL>tim<NUL>tanstaaftanstaaf
        ("", "tim", "tanstaaftanstaaf", "AHRpbQB0YW5zdGFhZnRhbnN0YWFm"),
        # RFC 4616 section 4, second example: Ursel<NUL>Kurt<NUL>xipj3plmq
        ("Ursel", "Kurt", "xipj3plmq", "VXJzZWwAS3VydAB4aXBqM3BsbXE="),
    ],
)
def test_auth_plain_rfc4616_examples(authzid: str, user: str, password: str, expected: str) -> None:
    assert auth_plain(user, password, authzid) == expected
    assert base64.b64decode(expected) == f"{authzid}\0{user}\0{password}".encode()


def test_auth_plain_encodes_utf8() -> None:
    decoded = base64.b64decode(auth_plain("jörg", "pässwörd"))
    assert decoded == "\0jörg\0pässwörd".encode()


@pytest.mark.parametrize("what", ["username", "password", "authzid"])
def test_auth_plain_refuses_nul(what: str) -> None:
    values = {"username": "alice", "password": "s3cret", "authzid": ""}
    values[what] = "a\0b"
    with pytest.raises(LocalProtocolError, match=f"{what} contains NUL"):
        auth_plain(values["username"], values["password"], values["authzid"])


def test_login_prompts() -> None:
    assert base64.b64decode(LOGIN_USERNAME_PROMPT) == b"Username:"
    assert base64.b64decode(LOGIN_PASSWORD_PROMPT) == b"Password:"
    assert decode_challenge(LOGIN_USERNAME_PROMPT) == b"Username:"
    assert decode_challenge(LOGIN_PASSWORD_PROMPT) == b"Password:"


def test_auth_login_answers() -> None:
    assert auth_login("alice") == base64.b64encode(b"alice").decode()
    assert auth_login("s3cret-Pa55") == "czNjcmV0LVBhNTU="
    assert base64.b64decode(auth_login("pässwörd")) == "pässwörd".encode()


def test_cram_md5_rfc2195_example() -> None:
    challenge = base64.b64encode(b"<1896.697170952@postoffice.reston.mci.net>").decode()
    assert challenge == "PDE4OTYuNjk3MTcwOTUyQHBvc3RvZmZpY2UucmVzdG9uLm1jaS5uZXQ+"
    answer = auth_cram_md5("tim", "tanstaaftanstaaf", challenge)
    assert answer == "dGltIGI5MTNhNjAyYzdlZGE3YTQ5NWI0ZTZlNzMzNGQzODkw"
    assert base64.b64decode(answer) == b"tim b913a602c7eda7a495b4e6e7334d3890"


def test_cram_md5_matches_an_independent_hmac() -> None:
    challenge = b"<12345.67890@mx.example.com>"
    digest = hmac.new(b"s3cret", challenge, hashlib.md5).hexdigest()
    answer = auth_cram_md5("alice", "s3cret", " " + base64.b64encode(challenge).decode() + " ")
    assert base64.b64decode(answer) == f"alice {digest}".encode()


@pytest.mark.parametrize(
    "challenge",
    ["not base64!", "abc", "PDE4OTYu*", "éé==", "QUJD\x00"],
)
def test_invalid_challenge_is_a_remote_protocol_error(challenge: str) -> None:
    with pytest.raises(RemoteProtocolError, match="not base64"):
        decode_challenge(challenge)
    with pytest.raises(RemoteProtocolError, match="not base64"):
        auth_cram_md5("tim", "tanstaaftanstaaf", challenge)


def test_empty_challenge_decodes_to_nothing() -> None:
    assert decode_challenge("") == b""


# ---------------------------------------------------------------------------
# DATA
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (b"", b".\r\n"),
        (b"Hi", b"Hi\r\n.\r\n"),
        (b"Hi\r\n", b"Hi\r\n.\r\n"),
        (b"Hi\n", b"Hi\r\n.\r\n"),
        (b"Hi\r", b"Hi\r\n.\r\n"),
        (b"a\nb\n", b"a\r\nb\r\n.\r\n"),
        (b"a\rb\r", b"a\r\nb\r\n.\r\n"),
        (b"a\r\nb", b"a\r\nb\r\n.\r\n"),
        (b"a\r\n\nb\r\r\nc", b"a\r\n\r\nb\r\n\r\nc\r\n.\r\n"),
        (b"\n", b"\r\n.\r\n"),
        (b"a\n\n", b"a\r\n\r\n.\r\n"),
        (b".", b"..\r\n.\r\n"),
        (b".\n", b"..\r\n.\r\n"),
        (b"..x\n", b"...x\r\n.\r\n"),
        (b". \n", b".. \r\n.\r\n"),
        (b"a\n.\nb\n", b"a\r\n..\r\nb\r\n.\r\n"),
        (b"a\r\n.\r\n", b"a\r\n..\r\n.\r\n"),
        (b"x.\ny.z\n", b"x.\r\ny.z\r\n.\r\n"),
        (b" .\n", b" .\r\n.\r\n"),
    ],
)
def test_message_payload(message: bytes, expected: bytes) -> None:
    assert message_payload(message) == expected


def test_message_payload_whole_message() -> None:
    message = b"Subject: test\nFrom: a@b\n\nline one\n.\n..two\n"
    assert message_payload(message) == (
        b"Subject: test\r\nFrom: a@b\r\n\r\nline one\r\n..\r\n...two\r\n.\r\n"
    )


_MESSAGES = st.binary(max_size=200) | st.lists(
    st.sampled_from([b".", b"..", b"a", b"\r", b"\n", b"\r\n"])
).map(b"".join)


@given(_MESSAGES)
def test_message_payload_round_trips(message: bytes) -> None:
    payload = message_payload(message)
    assert payload.endswith(b".\r\n")
    body = payload[: -len(b".\r\n")]
    assert body == b"" or body.endswith(b"\r\n")
    lines = body.split(b"\r\n")[:-1] if body else []
    assert all(b"\r" not in line and b"\n" not in line for line in lines)
    assert b".\r\n" not in lines  # only the terminator is a lone dot
    assert all(line != b"." for line in lines)
    unstuffed = [line[1:] if line.startswith(b".") else line for line in lines]
    normalised = message.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    expected_lines = normalised.split(b"\n")
    if expected_lines[-1] == b"":
        expected_lines.pop()
    assert unstuffed == expected_lines
