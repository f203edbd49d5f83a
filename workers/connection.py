"""The driver: one stream, one reply reader, one transcript.

Owns the socket, the deadlines and the TLS upgrade; records every line where
it crosses the wire. The SMTP rules themselves are in ``workers.protocol``
and ``workers.dialogue``.
"""

from __future__ import annotations

import functools
import ipaddress
import select
import ssl
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from workers import cancel, protocol
from workers.errors import (
    Canceled,
    CheckAborted,
    ConnectionClosed,
    ConnectRefused,
    ConnectTimeout,
    NetworkUnreachable,
    ReadTimeout,
    RemoteProtocolError,
)
from workers.protocol import NEED_DATA, Reply, ReplyReader, printable
from workers.stream import Stream
from workers.transcript import CLIENT, SERVER, Transcript

MAX_MESSAGE_LINES_SHOWN = 200

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
#: Connect failures after which the next address is tried (RFC 5321 s5).
TRY_NEXT = (ConnectRefused, ConnectTimeout, NetworkUnreachable)


class Sidecar(Protocol):
    """Work the check's own thread carries on while it waits for the server
    (workers.resolver.ReverseLookup): while ``waiting``, wait for ``fileno()``
    (None: nothing to read) or until ``wake_at``, then call ``step()``."""

    @property
    def waiting(self) -> bool: ...

    @property
    def wake_at(self) -> float: ...

    def fileno(self) -> int | None: ...

    def step(self) -> None: ...


@functools.lru_cache(maxsize=1024)  # said twice or more a check, of the same address
def endpoint(address: IPAddress, port: int) -> str:
    """``192.0.2.1:25``, ``[2001:db8::1]:25``."""
    return f"[{address}]:{port}" if address.version == 6 else f"{address}:{port}"


def most_informative(failures: list[CheckAborted]) -> CheckAborted:
    """The failure to report when every address failed: the last one, unless
    it is "unreachable" (often only this vantage's missing IPv6) and an
    earlier address refused or timed out, which says more about the target."""
    said = [f for f in failures if not isinstance(f, NetworkUnreachable)]
    return (said or failures)[-1]


class Connection:
    def __init__(self, transcript: Transcript, *, command_timeout: float, deadline: float) -> None:
        self.transcript = transcript
        self.command_timeout = command_timeout
        self.deadline = deadline  # the whole check's, on the monotonic clock
        self.reader = ReplyReader()
        self.stream: Stream | None = None
        #: Served while a read waits for the server, until it waits no more.
        self.sidecar: Sidecar | None = None
        #: The worker's own address on the path of the last connect, also a failed one.
        self.source: str | None = None

    # -- deadlines ---------------------------------------------------------

    def reply_deadline(self) -> float:
        return min(time.monotonic() + self.command_timeout, self.deadline)

    @property
    def total_expired(self) -> bool:
        return time.monotonic() >= self.deadline

    # -- connection --------------------------------------------------------

    def open(self, address: IPAddress, port: int, timeout: float) -> None:
        cancel.stop_if_canceled()
        try:
            self.stream = Stream.connect(
                address, port, min(time.monotonic() + timeout, self.deadline)
            )
        except CheckAborted as exc:
            self.source = exc.source
            raise
        self.source = str(self.stream.get_extra_info("sockname")[0])

    def open_first(
        self,
        addresses: Sequence[IPAddress],
        port: int,
        timeout: float,
        *,
        before: Callable[[IPAddress], None] = lambda address: None,
        after_failure: Callable[[], None] = lambda: None,
    ) -> IPAddress:
        """Connect to the first address that answers, trying the next when one
        refuses, times out or is unreachable (RFC 5321 s5), each try in the
        transcript; returns the address connected to. ``before`` runs before
        each try (the politeness gate), ``after_failure`` after a failed one.
        When every address fails, raises :func:`most_informative` of them,
        saying what each did; an expired check deadline ends the tries."""
        failures: list[CheckAborted] = []
        for index, address in enumerate(addresses):
            before(address)
            shown = endpoint(address, port)
            self.transcript.note(f"connecting to {shown}")
            try:
                self.open(address, port, timeout)
            except TRY_NEXT as exc:
                after_failure()
                failures.append(exc)
                if index == len(addresses) - 1 or self.total_expired:
                    break
                self.transcript.error(f"{shown}: {exc}; trying the next address")
                continue
            return address
        chosen = most_informative(failures)
        if len(failures) == 1:
            raise chosen
        tried = "; ".join(
            f"{endpoint(address, port)} {failure}"
            for address, failure in zip(addresses, failures, strict=False)
        )
        combined = type(chosen)(f"every address failed: {tried}")
        combined.source = chosen.source
        raise combined from chosen

    @property
    def is_tls(self) -> bool:
        return self.stream is not None and self.stream.is_tls

    def start_tls(self, context: ssl.SSLContext, server_hostname: str | None) -> ssl.SSLSocket:
        assert self.stream is not None
        if self.reader.buffered:
            # Bytes sent before the handshake would be read as if they came
            # through TLS (the STARTTLS injection of CVE-2011-0411's kind).
            raise RemoteProtocolError("server sent data after its STARTTLS reply, before TLS")
        self.stream = self.stream.start_tls(context, server_hostname, self.reply_deadline())
        ssl_object = self.stream.get_extra_info("ssl_object")
        assert isinstance(ssl_object, ssl.SSLSocket)
        return ssl_object

    def close(self) -> None:
        if self.stream is not None:
            self.stream.close()
            self.stream = None

    # -- replies -----------------------------------------------------------

    def read_reply(self) -> Reply:
        stream = self.stream
        assert stream is not None
        deadline = self.reply_deadline()
        while True:
            event = self.reader.next_line()
            if event is NEED_DATA:
                if self.sidecar is not None:
                    self._serve_sidecar(self.sidecar, deadline)
                try:
                    data = cancel.read(stream.read, deadline)  # in slices: DELETE
                except ReadTimeout as exc:
                    exc.total = self.total_expired
                    raise
                if not data:
                    partial = " in the middle of a reply" if self.reader.in_reply else ""
                    self.reader.receive_data(b"")
                    raise ConnectionClosed(f"the server closed the connection{partial}")
                self.reader.receive_data(data)
                continue
            assert not isinstance(event, protocol.NeedData)
            self.transcript.record(SERVER, printable(event.raw, 1000), tls=stream.is_tls)
            if event.reply is not None:
                return event.reply

    def _serve_sidecar(self, sidecar: Sidecar, deadline: float) -> None:
        """Wait for the server's bytes and the sidecar's at once, stepping the
        sidecar, until the server's have come (or the reply's deadline passed,
        or the check was canceled): the read that follows takes it from there
        as it would have without a sidecar."""
        assert self.stream is not None
        if self.stream.pending():
            return
        ours = self.stream.fileno()
        while sidecar.waiting:
            now = time.monotonic()
            if now >= deadline:
                return
            try:
                cancel.stop_if_canceled()
            except Canceled:
                return
            other = sidecar.fileno()
            wait = min(deadline, sidecar.wake_at, now + cancel.SLICE) - now
            poller = select.poll()
            poller.register(ours, select.POLLIN)
            if other is not None:
                poller.register(other, select.POLLIN)
            ready = {fd for fd, _ in poller.poll(max(wait, 0.0) * 1000)}
            if ours not in ready or other in ready or time.monotonic() >= sidecar.wake_at:
                sidecar.step()
            if ours in ready:
                return
        self.sidecar = None

    # -- commands ----------------------------------------------------------

    def send_line(self, line: bytes, shown: str) -> None:
        """Write one line; ``shown`` is what the transcript keeps (redacted)."""
        stream = self.stream
        assert stream is not None
        self.transcript.record(CLIENT, shown, tls=stream.is_tls)
        stream.write(line, self.reply_deadline())

    def send_raw(self, payload: bytes, shown: Sequence[str]) -> None:
        """Write ``payload`` as it is; the transcript keeps each of ``shown``."""
        assert self.stream is not None
        for line in shown:
            self.transcript.record(CLIENT, line, tls=self.is_tls)
        self.stream.write(payload, self.reply_deadline())

    def read_reply_within(self, seconds: float) -> Reply | None:
        """A reply, or None when none is complete within ``seconds`` (the
        check's own deadline still ends it with ReadTimeout)."""
        saved = self.command_timeout
        self.command_timeout = min(saved, seconds)
        try:
            return self.read_reply()
        except ReadTimeout:
            if self.total_expired:
                raise
            self.transcript.note(f"no reply within {seconds:g} s")
            return None
        finally:
            self.command_timeout = saved

    def send_message(self, payload: bytes) -> Reply:
        """Send a dot-stuffed message after 354 and read the final reply."""
        assert self.stream is not None
        lines = payload.split(b"\r\n")[:-1]
        for index, line in enumerate(lines):
            if index == MAX_MESSAGE_LINES_SHOWN and len(lines) > MAX_MESSAGE_LINES_SHOWN + 1:
                rest = lines[index:-1]
                size = sum(len(item) + 2 for item in rest)
                self.transcript.note(f"... {len(rest)} more message lines ({size} bytes) sent ...")
                self.transcript.record(CLIENT, ".", tls=self.is_tls)
                break
            text = line.decode("utf-8", errors="backslashreplace")
            self.transcript.record(CLIENT, printable(text, 1000), tls=self.is_tls)
        self.stream.write(payload, self.reply_deadline())
        return self.read_reply()
