"""A socket with deadlines: the one place OS errors become engine errors.

Modelled on httpcore's stream interface: ``read``, ``write``, ``close``,
``start_tls`` returning a new stream, and ``get_extra_info``. Every wait
takes an absolute deadline on the monotonic clock, so a server that drips one
byte a second cannot stretch a reply past its deadline.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import select
import socket
import ssl
import time
from collections.abc import Iterator
from typing import Any

from workers.errors import (
    CheckAborted,
    ConnectionClosed,
    ConnectRefused,
    ConnectTimeout,
    NetworkUnreachable,
    ReadTimeout,
    TLSError,
)

READ_CHUNK = 4096

_UNREACHABLE = {errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT}


def remaining(deadline: float) -> float:
    """Seconds left before ``deadline``; raises ReadTimeout when none are."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise ReadTimeout("deadline passed")
    return left


def translated(exc: OSError, during: str) -> CheckAborted:
    """The engine error for an OS or TLS error raised while ``during``."""
    if isinstance(exc, TimeoutError):
        if during == "connect":
            return ConnectTimeout("connect timed out")
        if during == "tls":
            return TLSError("TLS handshake timed out")
        return ReadTimeout(f"{during} timed out")
    if isinstance(exc, ssl.SSLError):
        if during == "tls":
            return TLSError(f"TLS handshake failed: {exc.reason or exc}")
        return ConnectionClosed(f"TLS error during {during}: {exc.reason or exc}")
    if isinstance(exc, ConnectionRefusedError):
        return ConnectRefused("connection refused")
    if isinstance(exc, ConnectionResetError | BrokenPipeError | ConnectionAbortedError):
        if during == "tls":
            return TLSError("connection closed during the TLS handshake")
        return ConnectionClosed(f"connection reset during {during}")
    if exc.errno in _UNREACHABLE:
        return NetworkUnreachable(exc.strerror or "network unreachable")
    if exc.errno == errno.ETIMEDOUT:
        return ConnectTimeout("connect timed out")
    if during == "tls":
        return TLSError(f"TLS handshake failed: {exc}")
    return ConnectionClosed(f"{during} failed: {exc}")


@contextlib.contextmanager
def map_exceptions(during: str) -> Iterator[None]:
    """Translate OS and TLS errors raised while ``during`` into engine errors
    (:func:`translated`; reads and writes call it directly, being hot)."""
    try:
        yield
    except OSError as exc:
        raise translated(exc, during) from exc


def _bound_address(sock: socket.socket) -> str | None:
    try:
        host = str(sock.getsockname()[0])
    except OSError:
        return None
    return None if ipaddress.ip_address(host).is_unspecified else host


def wait_for(sock: socket.socket | int, events: int, seconds: float) -> bool:
    """Whether ``sock`` is ready for ``events`` (select.POLLIN, POLLOUT) within
    ``seconds``; poll, which has no limit on descriptor numbers."""
    poller = select.poll()
    poller.register(sock, events)
    return bool(poller.poll(max(0.0, seconds) * 1000))


class Stream:
    """One connected socket, plain or TLS.

    A plain socket is non-blocking: a read or write tries at once and waits
    (poll) only when it has to, instead of setting the socket's timeout
    before every call (an ioctl, and a poll before each try). A TLS socket
    keeps the timeout per call, which the ssl module needs.
    """

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._plain = not isinstance(sock, ssl.SSLSocket)
        #: Whether this stream is the TLS one (start_tls returns a new Stream).
        self.is_tls = not self._plain
        if self._plain:
            sock.setblocking(False)

    @classmethod
    def connect(
        cls, address: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int, deadline: float
    ) -> Stream:
        family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            with map_exceptions("connect"):
                sock.settimeout(remaining_connect(deadline))
                sock.connect((str(address), port))
        except CheckAborted as exc:
            # The kernel chose a source address for the SYN even if nothing
            # answered: what a blocked-port diagnosis needs to know.
            exc.source = _bound_address(sock)
            sock.close()
            raise
        except BaseException:
            sock.close()
            raise
        return cls(sock)

    def fileno(self) -> int:
        return self._sock.fileno()

    def pending(self) -> int:
        """Bytes already decrypted and waiting (TLS); the socket's readiness does not show them."""
        return self._sock.pending() if isinstance(self._sock, ssl.SSLSocket) else 0

    def read(self, deadline: float, max_bytes: int = READ_CHUNK) -> bytes:
        """At most ``max_bytes``; ``b""`` when the peer closed."""
        sock = self._sock
        try:
            left = remaining(deadline)
            if not self._plain:
                sock.settimeout(left)
                return sock.recv(max_bytes)
            waited = False
            while True:
                try:
                    return sock.recv(max_bytes)
                except BlockingIOError:
                    pass  # nothing yet: wait for it
                if waited:  # ready, and then not after all: wait again, what is left
                    left = remaining(deadline)
                if not wait_for(sock, select.POLLIN, left):
                    raise TimeoutError
                waited = True
        except OSError as exc:
            raise translated(exc, "read") from exc

    def write(self, data: bytes, deadline: float) -> None:
        sock = self._sock
        try:
            if not self._plain:
                sock.settimeout(remaining(deadline))
                sock.sendall(data)
                return
            view = memoryview(data)
            while view:
                left = remaining(deadline)
                try:
                    sent = sock.send(view)
                except BlockingIOError:  # the send buffer is full: wait for room
                    if not wait_for(sock, select.POLLOUT, left):
                        raise TimeoutError from None
                    continue
                view = view[sent:]
        except OSError as exc:
            raise translated(exc, "write") from exc

    def start_tls(
        self, context: ssl.SSLContext, server_hostname: str | None, deadline: float
    ) -> Stream:
        """Handshake over this socket and return the TLS stream that replaces it."""
        with map_exceptions("tls"):
            self._sock.settimeout(remaining(deadline))
            # wrap_socket takes over the file descriptor: from here on, closing
            # the TLS socket is what closes the connection.
            tls_sock = context.wrap_socket(
                self._sock, server_hostname=server_hostname, do_handshake_on_connect=False
            )
            self._sock = tls_sock
            self._plain, self.is_tls = False, True
            tls_sock.do_handshake()
        return Stream(tls_sock)

    def get_extra_info(self, name: str) -> Any:
        if name == "ssl_object":
            return self._sock if isinstance(self._sock, ssl.SSLSocket) else None
        if name == "peername":
            return self._sock.getpeername()
        if name == "sockname":
            return self._sock.getsockname()
        return None

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.close()


def remaining_connect(deadline: float) -> float:
    """Like ``remaining`` but a passed deadline during connect is a connect timeout."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise ConnectTimeout("deadline passed before connecting")
    return left
